"""Throughput of the Hub-Pathway agent against plain Stable-Baselines3, in one process run.

Three measurements, one command::

    python benchmarks/throughput.py --threads 1 --steps 4096 --out bench_out

(a) **Training throughput.** Environment steps per second of ``model.learn`` (rollouts and updates) on a
    fixed number of steps after a warm-up of one rollout and update, for plain SB3 PPO and for PPO with
    :class:`~hp_rl.rl.extractor.HubPathwayExtractor` in several configurations, each reported as a ratio
    to plain PPO measured in the same run. Plain PPO and the HubPPO row are built as ``python -m
    hp_rl.train`` builds them (a :class:`~hp_rl.rl.runs.RunConfig` through
    :func:`hp_rl.rl.training.build_model`); the other hub rows are SB3's PPO with the extractor, as a
    user's own SB3 script builds it:

    - Breakout (``BreakoutNoFrameskip-v4``, rl-baselines3-zoo preprocessing and PPO settings from
      ``configs/ppo.yml``: 8 envs, n_steps 128, batch 256, 4 epochs). Plain PPO is ``CnnPolicy``
      (NatureCNN); hubs are ``random:N`` hubs of randomly initialised NatureCNN experts at 84x84. A frozen
      random trunk costs exactly what a frozen pretrained trunk of the same architecture costs.
    - MinAtar (``MinAtar/Breakout-v1`` through :func:`hp_rl.rl.envs.make_env`, PPO settings from the
      ``minatar`` section). Plain PPO is ``CnnPolicy`` with :class:`~hp_rl.rl.baselines.SmallFrameCNN` (the
      MinAtar paper's network), and the hub experts are random ``small_frame_cnn`` trunks, the same network
      (the MinAtar transfer hub's architecture). Two extra rows plug Atari-sized experts into MinAtar:
      random NatureCNN trunks taking 36x36 frames (the smallest valid NatureCNN input) and 84x84 frames,
      reached through the hub's nearest-neighbour ``Resize`` input adapter.

    Two more rows per game show what the extras cost: the same hub with
    :class:`~hp_rl.rl.callbacks.GateUsageCallback` attached, and :class:`~hp_rl.rl.algorithms.HubPPO`
    (exploitation loss). Every rate is given per second of wall time and per second of this process's
    CPU time: on a shared machine other processes slow the wall clock unevenly, CPU time far less.
    ``--repeats R`` measures every configuration R times in interleaved rounds and reports the median round
    (the upper median for even R: with 2 rounds, the faster one; a measured round, never an average).
    Rollout share is the fraction of the wall time spent collecting rollouts (environment stepping and
    acting forwards); the rest is the PPO update.

(b) **Extractor alone.** Forward time (eval mode, no gradient: the acting path) and forward+backward
    time (train mode, backward of the features' sum, exploration loss included) of
    ``HubPathwayExtractor`` on a batch of ``--batch`` 4x84x84 frames, against m (experts) and k (active),
    with frozen and with fine-tuned trunks. Routing is ``sparse`` (top-k, only routed experts run),
    ``dense-dispatch`` (the same top-k weights, but every expert runs on every sample:
    ``pathway.sparse = False``) or ``dense-mixture`` (``dense=True``: all m experts with softmax weights,
    the dense baseline). Times are the median of ``--reps`` repetitions after one warm-up.

    Peak memory: each configuration runs again in a fresh subprocess. On CPU the subprocess sets
    ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then returns every freed block larger than 64 KiB to the
    system at once, so the resident set tracks live tensors), runs one warm-up step, resets the
    kernel's peak-RSS mark (``/proc/self/clear_refs``), runs the step and reports ``VmHWM - VmRSS``
    before the step: memory added by activations, autograd buffers and temporaries (parameters and
    gradients already allocated are not counted). Where the reset is not allowed it falls back to
    ``getrusage`` max-RSS deltas. On CUDA it reports ``torch.cuda.max_memory_allocated`` above the
    memory allocated before the step.

(c) **Acting forward, taken apart.** Where the time of one acting forward goes at the rollout batch (one
    observation per environment: 8), for each game: CPU microseconds per call of the plain extractor, of
    the hub extractor with m = 2, 4 and 8 experts at k=2 (with and without routing noise) and of the dense
    mixture, and of the hub's parts on their own (pathway generator; routing = generator and noisy top-k
    router; one expert on the B*k/m observations it gets on average, and on the whole batch). The
    ``experts run`` column is the mean number of distinct experts a forward calls: at small batches
    sparse dispatch still calls nearly every expert, and each call costs about as much on 4 observations
    as on 8.

Outputs in ``--out``: ``throughput.md`` (markdown tables), ``throughput.json`` (every number, the machine
and the settings) and ``extractor_time_vs_m.png``. ``--quick`` shrinks every budget for a smoke test.
Torch threads are pinned with ``--threads``; report the load of other processes on the machine beside
the numbers (the tables record the load average at the start).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ATARI_GAME = "BreakoutNoFrameskip-v4"
MINATAR_GAME = "MinAtar/Breakout-v1"


# --------------------------------------------------------------------------------------------------------
# Settings and results


@dataclass
class TrainCase:
    """One training-throughput configuration.

    :param name: row label.
    :param experts: m, or 0 for the plain SB3 policy.
    :param k: experts per observation (m for the dense mixture).
    :param frozen: frozen expert trunks.
    :param dense: dense mixture of all experts.
    :param expert_size: MinAtar only: side of the NatureCNN experts' input frames; ``None``: the
        SmallFrameCNN trunk on the 10x10 frames (Atari experts always take the frames as they are).
    :param algo: ``ppo`` (SB3's PPO with the extractor) or ``hubppo`` (HubPPO: the exploitation loss too).
    :param gate_callback: train with :class:`~hp_rl.rl.callbacks.GateUsageCallback` attached.
    :param execution: the extractor's ``execution`` (``auto``, ``fused``, ``sparse``).
    :param user_agents: MinAtar only: agents of the bundled MinAtar hub given as bare SB3 zips to
        ``hp_rl.train``'s command line, the model built as that command builds it (its default configuration:
        ``preset=transfer``, the hub scored, what has evidence routed beside the base network).
    :param hub_set: ``--hub-set`` values for ``user_agents`` rows (``freeze_experts=true``).
    """

    name: str
    experts: int = 0
    k: int = 0
    frozen: bool = True
    dense: bool = False
    expert_size: int | None = None
    algo: str = "ppo"
    gate_callback: bool = False
    execution: str = "auto"
    user_agents: tuple[str, ...] = ()
    hub_set: tuple[str, ...] = ()


@dataclass
class TrainResult:
    """Measured training throughput of one :class:`TrainCase` on one game.

    ``steps_per_s`` divides by wall time; ``steps_per_cpu_s`` by this process's CPU time (all its threads),
    which other processes on a shared machine disturb far less. The ratios compare each with plain PPO's.
    """

    game: str
    case: str
    experts: int
    k: int
    frozen: bool
    dense: bool
    steps: int
    seconds: float
    cpu_seconds: float
    steps_per_s: float
    steps_per_cpu_s: float
    rollout_share: float
    ratio_to_plain: float | None = None
    cpu_ratio_to_plain: float | None = None
    repeats: list[float] = field(default_factory=list)


@dataclass
class ExtractorResult:
    """Measured time and memory of one extractor configuration (``*_cpu_ms``: process CPU time)."""

    mode: str
    routing: str
    experts: int
    k: int
    batch: int
    forward_ms: float
    forward_backward_ms: float
    forward_cpu_ms: float
    forward_backward_cpu_ms: float
    parameters: int
    forward_peak_mib: float | None = None
    forward_backward_peak_mib: float | None = None
    memory_method: str | None = None


@dataclass
class ActingResult:
    """Median time of one call of an acting-path module at the rollout batch (``*_us``: microseconds)."""

    game: str
    part: str
    batch: int
    cpu_us: float
    wall_us: float
    experts_run: float | None = None


# --------------------------------------------------------------------------------------------------------
# Machine


def machine_info(threads: int, device: str) -> dict[str, Any]:
    """CPU model, cores, load, library versions: what the numbers were measured on."""
    import stable_baselines3
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "torch_threads": threads,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _pin_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # the inter-op pool can be sized only once per process
        torch.set_num_interop_threads(1)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------------
# (a) Training throughput


def minatar_hub(experts: int, channels: int, size: int | None) -> dict[str, Any]:
    """A hub of ``experts`` random trunks for ``channels x 10 x 10`` MinAtar frames.

    :param size: ``None``: SmallFrameCNN trunks on the frames as they are; else NatureCNN trunks taking
        ``channels x size x size`` frames, which reach them through the hub's nearest-neighbour resize adapter.
    """
    arch, side = ("small_frame_cnn", 10) if size is None else ("nature_cnn", size)
    return {
        "experts": [
            {"name": f"random{i}", "source": "random", "arch": arch, "input_shape": [channels, side, side]}
            for i in range(experts)
        ]
    }


def train_cases(game: str, quick: bool) -> list[TrainCase]:
    """The configurations measured on ``game`` (``"breakout"`` or ``"minatar"``)."""
    plain = "plain PPO (NatureCNN)" if game == "breakout" else "plain PPO (SmallFrameCNN)"
    cases = [
        TrainCase(plain),
        TrainCase("hub m=4 k=1 frozen", 4, 1),
        TrainCase("hub m=4 k=2 frozen", 4, 2),
        TrainCase("hub m=4 k=2 fine-tuned", 4, 2, frozen=False),
        TrainCase("hub m=4 k=2 frozen, sparse execution", 4, 2, execution="sparse"),
        TrainCase("hub m=4 k=2 fine-tuned, sparse execution", 4, 2, frozen=False, execution="sparse"),
        TrainCase("hub m=8 k=2 frozen", 8, 2),
        TrainCase("hub m=2 k=2 frozen", 2, 2),
        TrainCase("dense mixture m=4 frozen", 4, 4, dense=True),
        TrainCase("hub m=4 k=2 frozen + GateUsageCallback", 4, 2, gate_callback=True),
        TrainCase("HubPPO m=4 k=2 frozen (exploitation loss)", 4, 2, algo="hubppo"),
    ]
    if game == "minatar":  # what users run: the needle's agents as zips, hp_rl.train's defaults
        needle = ("breakout_nosticky", "asterix", "freeway", "seaquest")
        cases.append(TrainCase("hp_rl.train defaults, 4 agents as zips (needle)", 4, user_agents=needle))
        cases.append(
            TrainCase("hp_rl.train defaults, 4 agents, frozen", 4, user_agents=needle, hub_set=("freeze_experts=true",))
        )
    if game == "minatar" and not quick:
        cases.append(TrainCase("hub m=4 k=2 frozen (NatureCNN 36x36 experts)", 4, 2, expert_size=36))
        cases.append(TrainCase("hub m=4 k=2 frozen (NatureCNN 84x84 experts)", 4, 2, expert_size=84))
    return cases


def _ppo_params(family: str, quick: bool) -> tuple[int, dict[str, Any]]:
    """Number of envs and the PPO hyperparameters of ``configs/ppo.yml`` as written there (``lin_`` schedules
    unresolved; shrunk with ``quick``)."""
    from hp_rl.rl.config import load_hyperparams
    from hp_rl.rl.models import RUN_KEYS

    raw = load_hyperparams("ppo", family)
    n_envs = int(raw.get("n_envs", 8))
    if quick:
        n_envs = 2
        raw.update(n_steps=16, batch_size=32, n_epochs=1)
    return n_envs, {k: v for k, v in raw.items() if k not in RUN_KEYS}


class _RolloutTimer:
    """Builds an SB3 callback that adds up the wall time spent in rollouts."""

    def __init__(self) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        timer = self

        class _Callback(BaseCallback):
            def _on_rollout_start(self) -> None:
                timer.started = time.perf_counter()

            def _on_rollout_end(self) -> None:
                timer.seconds += time.perf_counter() - timer.started

            def _on_step(self) -> bool:
                return True

        self.started = 0.0
        self.seconds = 0.0
        self.callback = _Callback()


def _user_agents_model(env_id: str, n_envs: int, case: TrainCase, args: argparse.Namespace) -> Any:
    """The model ``python -m hp_rl.train --env ENV --hub a.zip,b.zip,...`` builds (its parser, checks and defaults;
    the prior scored before any step is timed), the agents written as bare SB3 zips from the bundled MinAtar hub."""
    import importlib.util
    import tempfile

    from hp_rl.paths import BUNDLED_HUB_DIR
    from hp_rl.rl.training import build_model
    from hp_rl.train import build_parser
    from hp_rl.train_config import config_and_env

    spec = importlib.util.spec_from_file_location("user_agents", Path(__file__).with_name("user_agents.py"))
    assert spec is not None and spec.loader is not None
    user_agents = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user_agents)
    folder = Path(tempfile.mkdtemp(prefix="throughput_zips_"))
    written = user_agents.write_bare_zips(BUNDLED_HUB_DIR / "minatar" / "hub.yaml", folder, case.user_agents)
    zips = [str(written[name]) for name in case.user_agents]
    argv = ["--env", env_id, "--hub", ",".join(zips), "-n", str(args.steps or 4096), "--seed", str(args.seed)]
    argv += ["--n-envs", str(n_envs), "--device", args.device, *[a for v in case.hub_set for a in ("--hub-set", v)]]
    config, env = config_and_env(build_parser().parse_args(argv))
    return build_model(config, env)


def _build_train_model(game: str, case: TrainCase, args: argparse.Namespace) -> Any:
    """The model of one case. Plain PPO and HubPPO are built by :func:`hp_rl.rl.training.build_model` from a
    :class:`~hp_rl.rl.runs.RunConfig`, the construction path of ``python -m hp_rl.train`` (``--hub none`` and a
    hub run); the ``ppo`` hub rows are SB3's PPO with the extractor, as a user's own SB3 script builds it
    (README, "In your own SB3 script")."""
    from stable_baselines3 import PPO

    from hp_rl.rl.config import resolve_hyperparams
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.extractor import HubPathwayExtractor
    from hp_rl.rl.runs import RunConfig
    from hp_rl.rl.training import build_model

    env_id = args.atari_game if game == "breakout" else args.minatar_game
    n_envs, params = _ppo_params("atari" if game == "breakout" else "minatar", args.quick)
    if case.user_agents:
        return _user_agents_model(env_id, n_envs, case, args)
    env = make_env(env_id, n_envs, seed=args.seed)
    hub: Any = None
    if case.experts:
        shape = env.observation_space.shape
        assert shape is not None
        hub = (
            f"random:{case.experts}"
            if game == "breakout"
            else minatar_hub(case.experts, int(shape[0]), case.expert_size)
        )
    options = {"freeze_experts": case.frozen, "dense": case.dense, "execution": case.execution}
    if hub is None or case.algo == "hubppo":  # what hp_rl.train builds
        config = RunConfig(
            algo="ppo",
            env_id=env_id,
            hub=hub,
            k=case.k or 2,
            n_timesteps=args.steps,
            seed=args.seed,
            n_envs=n_envs,
            device=args.device,
            hyperparams=params,
            hub_kwargs=options if hub is not None else {},
        )
        return build_model(config, env)
    policy_kwargs = {
        "net_arch": [],
        "features_extractor_class": HubPathwayExtractor,
        "features_extractor_kwargs": {"hub": hub, "k": case.k, **options},
    }
    resolved = resolve_hyperparams(params)
    return PPO("CnnPolicy", env, seed=args.seed, device=args.device, policy_kwargs=policy_kwargs, **resolved)


def measure_training(game: str, args: argparse.Namespace, log: Callable[[str], None]) -> list[TrainResult]:
    """Steps/s of every case on ``game``; repeats are interleaved rounds and the median is reported."""
    cases = train_cases(game, args.quick)
    if args.only:
        pattern = re.compile(args.only)
        cases = [cases[0]] + [case for case in cases[1:] if pattern.search(case.name)]
    models: dict[str, Any] = {}
    samples: dict[str, list[tuple[int, float, float, float]]] = {case.name: [] for case in cases}
    for round_index in range(args.repeats):
        for case in cases:
            model = models.get(case.name)
            if model is None:
                model = _build_train_model(game, case, args)
                warmup = args.warmup_steps or model.n_steps * model.n_envs
                model.learn(warmup)
                models[case.name] = model
            timer = _RolloutTimer()
            start_steps = model.num_timesteps
            callbacks: list[Any] = [timer.callback]
            if case.gate_callback:
                from hp_rl.rl.callbacks import GateUsageCallback

                callbacks.append(GateUsageCallback())
            _sync(args.device)
            began, began_cpu = time.perf_counter(), time.process_time()
            model.learn(args.steps, reset_num_timesteps=False, callback=callbacks)
            _sync(args.device)
            seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - began_cpu
            steps = model.num_timesteps - start_steps
            samples[case.name].append((steps, seconds, cpu_seconds, timer.seconds))
            log(
                f"  [{game}] round {round_index + 1}: {case.name:<44} {steps / seconds:8.1f} steps/s "
                f"{steps / cpu_seconds:8.1f} steps/cpu-s"
            )
            if args.repeats == 1:  # free the rollout buffer and envs before the next case
                model.env.close()
                models.pop(case.name)
    results = []
    for case in cases:
        runs = samples[case.name]
        rates = [steps / seconds for steps, seconds, _, _ in runs]
        steps, seconds, _, rollout = runs[sorted(range(len(runs)), key=rates.__getitem__)[len(runs) // 2]]
        cpu_rates = [steps / cpu for steps, _, cpu, _ in runs]
        cpu_steps, _, cpu_seconds, _ = runs[sorted(range(len(runs)), key=cpu_rates.__getitem__)[len(runs) // 2]]
        results.append(
            TrainResult(
                game,
                case.name,
                case.experts,
                case.k,
                case.frozen,
                case.dense,
                steps,
                round(seconds, 3),
                round(cpu_seconds, 3),
                round(steps / seconds, 1),
                round(cpu_steps / cpu_seconds, 1),
                round(rollout / seconds, 3),
                repeats=[round(r, 1) for r in rates],
            )
        )
    plain, plain_cpu = results[0].steps_per_s, results[0].steps_per_cpu_s
    for result in results:
        result.ratio_to_plain = round(result.steps_per_s / plain, 3)
        result.cpu_ratio_to_plain = round(result.steps_per_cpu_s / plain_cpu, 3)
    for model in models.values():
        model.env.close()
    return results


# --------------------------------------------------------------------------------------------------------
# (b) The extractor alone


def _extractor_configs(ms: Sequence[int], ks: Sequence[int], modes: Sequence[str]) -> list[dict[str, Any]]:
    configs = []
    for mode in modes:
        for m in ms:
            for k in ks:
                if k <= m:
                    configs.append({"mode": mode, "routing": "sparse", "experts": m, "k": k})
            if m >= 2:
                configs.append({"mode": mode, "routing": "dense-dispatch", "experts": m, "k": 2})
            configs.append({"mode": mode, "routing": "dense-mixture", "experts": m, "k": m})
    return configs


def _build_extractor(config: dict[str, Any], device: str) -> Any:
    import numpy as np
    from gymnasium import spaces

    from hp_rl.rl.extractor import HubPathwayExtractor

    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    extractor = HubPathwayExtractor(
        space,
        hub=f"random:{config['experts']}",
        k=config["k"],
        freeze_experts=config["mode"] == "frozen",
        dense=config["routing"] == "dense-mixture",
    )
    if config["routing"] == "dense-dispatch":
        extractor.pathway.sparse = False
    return extractor.to(device)


def _frames(batch: int, device: str, seed: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    # What SB3 hands the extractor: uint8 frames scaled to [0, 1].
    return (torch.randint(0, 256, (batch, 4, 84, 84), generator=generator).float() / 255.0).to(device)


def _forward(extractor: Any, frames: Any) -> None:
    import torch

    extractor.eval()
    with torch.no_grad():
        extractor(frames)


def _forward_backward(extractor: Any, frames: Any) -> None:
    extractor.train()
    extractor(frames).sum().backward()


def _median_ms(step: Callable[[], None], reps: int, device: str) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds of ``step`` over ``reps`` runs after one warm-up."""
    step()  # warm-up
    _sync(device)
    wall, cpu = [], []
    for _ in range(reps):
        began, began_cpu = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    return round(1000.0 * statistics.median(wall), 2), round(1000.0 * statistics.median(cpu), 2)


def measure_extractor(args: argparse.Namespace, log: Callable[[str], None]) -> list[ExtractorResult]:
    """Forward and forward+backward time (and peak memory) of every extractor configuration."""
    import torch
    from stable_baselines3.common.torch_layers import NatureCNN

    frames = _frames(args.batch, args.device, args.seed)
    results = []
    # Reference: SB3's NatureCNN on the same batch.
    import numpy as np
    from gymnasium import spaces

    nature = NatureCNN(spaces.Box(0, 255, (4, 84, 84), np.uint8)).to(args.device)
    forward = _median_ms(lambda: _forward(nature, frames), args.reps, args.device)
    both = _median_ms(lambda: _forward_backward(nature, frames), args.reps, args.device)
    reference = ExtractorResult(
        "trained",
        "NatureCNN (plain SB3)",
        0,
        0,
        args.batch,
        forward[0],
        both[0],
        forward[1],
        both[1],
        sum(p.numel() for p in nature.parameters()),
    )
    results.append(reference)
    configs = _extractor_configs(args.ms, args.ks, args.modes)
    for config in configs:
        torch.manual_seed(args.seed)
        extractor = _build_extractor(config, args.device)
        forward = _median_ms(functools.partial(_forward, extractor, frames), args.reps, args.device)
        both = _median_ms(functools.partial(_forward_backward, extractor, frames), args.reps, args.device)
        result = ExtractorResult(
            config["mode"],
            config["routing"],
            config["experts"],
            config["k"],
            args.batch,
            forward[0],
            both[0],
            forward[1],
            both[1],
            sum(p.numel() for p in extractor.parameters()),
        )
        del extractor
        if args.memory:
            peaks = _memory_in_subprocess(config, args)
            result.forward_peak_mib = peaks.get("forward_peak_mib")
            result.forward_backward_peak_mib = peaks.get("forward_backward_peak_mib")
            result.memory_method = peaks.get("method")
        log(
            f"  {config['mode']:<10} {config['routing']:<15} m={config['experts']:<2} k={config['k']:<2} "
            f"fwd {forward[0]:7.1f} ms (cpu {forward[1]:7.1f})  fwd+bwd {both[0]:7.1f} ms (cpu {both[1]:7.1f})  "
            f"peak {result.forward_backward_peak_mib} MiB"
        )
        results.append(result)
    if args.memory:
        peaks = _memory_in_subprocess({"mode": "nature_cnn"}, args)
        reference.forward_peak_mib = peaks.get("forward_peak_mib")
        reference.forward_backward_peak_mib = peaks.get("forward_backward_peak_mib")
        reference.memory_method = peaks.get("method")
    return results


def _memory_in_subprocess(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    probe = {**config, "batch": args.batch, "threads": args.threads, "device": args.device, "seed": args.seed}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-probe", json.dumps(probe)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe {probe} failed:\n{completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_mib(step: Callable[[], None], device: str) -> tuple[float, str]:
    """Memory added at the peak of ``step`` (after a warm-up run of it), and the method used."""
    step()  # warm-up: gradients, one-time caches
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        allocated = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - allocated) / 2**20, "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _proc_status_kib("VmRSS")
        step()
        peak = _proc_status_kib("VmHWM")
        if before is not None and peak is not None:
            return (peak - before) / 1024, "VmHWM - VmRSS (clear_refs reset), MALLOC_MMAP_THRESHOLD_=65536"
    except OSError:
        pass
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max_rss
    ) / 1024, "getrusage ru_maxrss delta (lower bound)"


def memory_probe(raw: str) -> None:
    """Subprocess entry: peak memory of one configuration, printed as one JSON line."""
    import torch

    probe = json.loads(raw)
    _pin_threads(int(probe["threads"]))
    device = probe["device"]
    torch.manual_seed(int(probe["seed"]))
    if probe["mode"] == "nature_cnn":
        import numpy as np
        from gymnasium import spaces
        from stable_baselines3.common.torch_layers import NatureCNN

        module: Any = NatureCNN(spaces.Box(0, 255, (4, 84, 84), np.uint8)).to(device)
    else:
        module = _build_extractor(probe, device)
    frames = _frames(int(probe["batch"]), device, int(probe["seed"]))
    forward_peak, method = _peak_mib(lambda: _forward(module, frames), device)
    both_peak, _ = _peak_mib(lambda: _forward_backward(module, frames), device)
    print(
        json.dumps(
            {
                "forward_peak_mib": round(forward_peak, 1),
                "forward_backward_peak_mib": round(both_peak, 1),
                "method": method,
            }
        )
    )


# --------------------------------------------------------------------------------------------------------
# Report


# --------------------------------------------------------------------------------------------------------
# (c) Acting forward, taken apart


def _acting_frames(game: str, args: argparse.Namespace, batch: int) -> tuple[Any, Any]:
    """The observation space and ``(batch, C, H, W)`` float frames as SB3 hands them to the extractor."""
    import torch

    from hp_rl.rl.envs import make_env

    if game == "breakout":
        import numpy as np
        from gymnasium import spaces

        return spaces.Box(0, 255, (4, 84, 84), np.uint8), _frames(batch, args.device, args.seed)
    env = make_env(args.minatar_game, 1, seed=args.seed)
    space = env.observation_space
    env.close()
    generator = torch.Generator().manual_seed(args.seed)
    shape = tuple(space.shape or ())
    return space, (torch.rand((batch, *shape), generator=generator) < 0.1).float().to(args.device)


def _per_call_us(call: Callable[[], Any], calls: int, reps: int, device: str) -> tuple[float, float]:
    """Median over ``reps`` of the mean CPU and wall microseconds of ``calls`` calls, without gradient."""
    import torch

    cpu, wall = [], []
    with torch.no_grad():
        for _ in range(max(calls // 10, 1)):  # warm-up: allocator and oneDNN primitive caches
            call()
        for _ in range(reps):
            began, began_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                call()
            _sync(device)
            cpu.append((time.process_time() - began_cpu) / calls)
            wall.append((time.perf_counter() - began) / calls)
    return round(1e6 * statistics.median(cpu), 1), round(1e6 * statistics.median(wall), 1)


def measure_acting(game: str, args: argparse.Namespace, log: Callable[[str], None]) -> list[ActingResult]:
    """CPU time per acting forward of the plain extractor, the hub extractor and the hub's parts."""
    import torch

    from hp_rl.rl.extractor import HubPathwayExtractor

    batch, _ = _ppo_params("atari" if game == "breakout" else "minatar", args.quick)
    space, frames = _acting_frames(game, args, batch)
    calls = 5 if args.quick else 200

    def hub(m: int, **kwargs: Any) -> Any:
        torch.manual_seed(args.seed)
        spec: Any = f"random:{m}" if game == "breakout" else minatar_hub(m, int(space.shape[0]), None)
        return HubPathwayExtractor(space, hub=spec, k=min(2, m), **kwargs).to(args.device).eval()

    if game == "breakout":
        from stable_baselines3.common.torch_layers import NatureCNN

        plain: Any = NatureCNN(space).to(args.device).eval()
        label = "plain extractor (NatureCNN)"
    else:
        from hp_rl.rl.baselines import SmallFrameCNN

        plain = SmallFrameCNN(space).to(args.device).eval()
        label = "plain extractor (SmallFrameCNN)"
    main_hub = hub(4)
    expert = next(iter(main_hub.pathway.experts.values()))
    share = frames[: max(batch * 2 // 4, 1)].contiguous()
    extractors: list[tuple[str, Any]] = [
        (label, plain),
        ("hub m=2 k=2 extractor", hub(2)),
        ("hub m=4 k=2 extractor", main_hub),
        ("hub m=4 k=2 extractor, no routing noise", hub(4, noise="none")),
        ("hub m=8 k=2 extractor", hub(8)),
        ("dense mixture m=4 extractor", hub(4, dense=True)),
    ]
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("part: pathway generator (m=4)", lambda: main_hub.pathway.generator(frames)),
        ("part: routing (generator + noisy top-k, m=4)", lambda: main_hub.pathway.route(frames)),
        (f"part: one expert on {len(share)} observations (B*k/m)", lambda: expert(share)),
        (f"part: one expert on {batch} observations", lambda: expert(frames)),
    ]
    results = []
    calls_to_time: list[tuple[str, Callable[[], Any]]] = [
        *[(name, functools.partial(module, frames)) for name, module in extractors],
        *parts,
    ]
    for part, call in calls_to_time:
        cpu_us, wall_us = _per_call_us(call, calls, args.reps, args.device)
        module = dict(extractors).get(part)
        experts_run = None
        if isinstance(module, HubPathwayExtractor):
            with torch.no_grad():  # noise differs per call only across rollouts: advance it to sample routes
                counts = []
                for _ in range(20):
                    module.advance_noise()
                    counts.append(float((module.pathway(frames).routes.weights > 0).any(0).sum()))
            experts_run = round(statistics.mean(counts), 2)
        results.append(ActingResult(game, part, batch, cpu_us, wall_us, experts_run))
        log(f"  [{game}] {part:<50} {cpu_us:8.1f} us/call (cpu)")
    return results


def _find(results: Sequence[ExtractorResult], mode: str, routing: str, m: int, k: int) -> ExtractorResult | None:
    for result in results:
        if (result.mode, result.routing, result.experts, result.k) == (mode, routing, m, k):
            return result
    return None


# The speed targets: (game, case) -> least steps/s as a ratio to plain PPO in the same run.
TRAINING_TARGETS = {
    ("minatar", "hub m=4 k=2 frozen"): 0.7,
    ("minatar", "hub m=4 k=2 fine-tuned"): 0.6,
    ("breakout", "hub m=4 k=2 frozen"): 0.9,
    ("breakout", "hub m=4 k=2 fine-tuned"): 0.6,
}
SPARSE_OVER_DENSE_MAX = 0.6  # Hub-Pathway at k=2 of 4: at most this share of the dense mixture's CPU per step
SIXTEEN_OVER_TWO_MAX = 1.15  # extractor, batch 256, k=2: 16 experts within this factor of 2


def check_targets(train: Sequence[TrainResult], extractor: Sequence[ExtractorResult]) -> list[dict[str, Any]]:
    """The speed targets, measured on process CPU time (and wall time for the training ratios)."""
    targets = []
    by_case = {(r.game, r.case): r for r in train}
    for (game, case), least in TRAINING_TARGETS.items():
        result = by_case.get((game, case))
        if result is None:
            continue
        name = "Breakout" if game == "breakout" else "MinAtar"
        for clock, ratio in (("cpu", result.cpu_ratio_to_plain), ("wall", result.ratio_to_plain)):
            targets.append(
                {
                    "target": f"{name}: {case} >= {least}x plain PPO steps/s ({clock} time)",
                    "value": ratio,
                    "passed": (ratio or 0.0) >= least,
                }
            )
    for game in sorted({r.game for r in train}):
        sparse, dense = by_case.get((game, "hub m=4 k=2 frozen")), by_case.get((game, "dense mixture m=4 frozen"))
        if sparse and dense and sparse.steps_per_cpu_s:
            # CPU time per step is the inverse of steps per CPU-second.
            share = round(dense.steps_per_cpu_s / sparse.steps_per_cpu_s, 3)
            targets.append(
                {
                    "target": f"{game}: Hub-Pathway k=2 of 4 <= {SPARSE_OVER_DENSE_MAX}x the dense mixture's "
                    "CPU time per training step",
                    "value": share,
                    "passed": share <= SPARSE_OVER_DENSE_MAX,
                }
            )
    for mode in ("frozen", "finetuned"):
        two, sixteen = _find(extractor, mode, "sparse", 2, 2), _find(extractor, mode, "sparse", 16, 2)
        if two and sixteen:
            ratio = round(sixteen.forward_backward_cpu_ms / two.forward_backward_cpu_ms, 3)
            targets.append(
                {
                    "target": f"Extractor, {mode} trunks, batch 256: fwd+bwd m=16 k=2 <= "
                    f"{SIXTEEN_OVER_TWO_MAX}x m=2 k=2 (cpu time)",
                    "value": ratio,
                    "passed": ratio <= SIXTEEN_OVER_TWO_MAX,
                }
            )
    return targets


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    machine = report["machine"]
    lines = [
        "# Throughput: Hub-Pathway against plain SB3",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, torch {machine['torch']}, "
        f"SB3 {machine['stable_baselines3']}, {machine['torch_threads']} torch thread(s), device {machine['device']}, "
        f"load average at start {machine['load_average_at_start']}. Wall time counts every process on the machine; "
        "CPU time counts only this one's (all its threads), so on a shared machine the CPU-time ratios are the "
        "steadier figures.",
        "",
    ]
    if report["training"]:
        settings = report["settings"]
        lines += [
            "## Training throughput (env steps/s of `model.learn`, PPO)",
            "",
            f"{settings['steps']} measured steps per configuration after a warm-up; {settings['repeats']} "
            "interleaved round(s), median round reported (upper median: with 2 rounds, the faster). "
            "Hubs are random NatureCNN experts (frozen speed equals "
            "pretrained speed); MinAtar hubs: random SmallFrameCNN experts (the plain network) unless noted. "
            "Rollout share: fraction of the wall time spent collecting rollouts (the rest is the update).",
            "",
            "| game | configuration | steps/s (wall) | ratio to plain | steps/CPU-s | ratio to plain (CPU) "
            "| rollout share |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in report["training"]:
            lines.append(
                f"| {r['game']} | {r['case']} | {r['steps_per_s']:.1f} | {r['ratio_to_plain']:.2f} | "
                f"{r['steps_per_cpu_s']:.1f} | {r['cpu_ratio_to_plain']:.2f} | {r['rollout_share']:.2f} |"
            )
        lines.append("")
    if report["extractor"]:
        lines += [
            f"## Extractor alone (batch {report['settings']['batch']} of 4x84x84 frames)",
            "",
            "Median of repetitions; wall ms with CPU ms in brackets. `sparse`: only routed experts run; "
            "`dense-dispatch`: the same top-k weights with every expert run on every sample; `dense-mixture`: "
            "all experts, softmax weights. Ratio: fwd+bwd CPU time against m=2 with the same trunks, routing and k "
            f"(k=2 for the dense mixture). Peak memory: {report.get('memory_method') or 'not measured'}.",
            "",
            "| trunks | routing | m | k | forward ms | fwd+bwd ms | fwd+bwd / m=2 | peak fwd MiB | "
            "peak fwd+bwd MiB | parameters |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["extractor"]:
            base_k = 2 if r["routing"] == "dense-mixture" else r["k"]
            base = next(
                (
                    b
                    for b in report["extractor"]
                    if (b["mode"], b["routing"], b["experts"], b["k"]) == (r["mode"], r["routing"], 2, base_k)
                ),
                None,
            )
            ratio = r["forward_backward_cpu_ms"] / base["forward_backward_cpu_ms"] if base and r["experts"] else None
            lines.append(
                f"| {r['mode']} | {r['routing']} | {r['experts'] or '-'} | {r['k'] or '-'} | "
                f"{r['forward_ms']:.1f} ({r['forward_cpu_ms']:.1f}) | "
                f"{r['forward_backward_ms']:.1f} ({r['forward_backward_cpu_ms']:.1f}) | {_fmt(ratio, 2)} | "
                f"{_fmt(r['forward_peak_mib'])} | {_fmt(r['forward_backward_peak_mib'])} | {r['parameters']:,} |"
            )
        lines.append("")
    if report.get("acting"):
        lines += [
            f"## Acting forward, taken apart (batch {report['acting'][0]['batch']}: one observation per env)",
            "",
            "CPU microseconds per call without gradient (median of repetitions of many calls; wall in brackets). "
            "Ratio: against the plain extractor of the same game. Experts run: mean number of distinct experts "
            "one forward calls.",
            "",
            "| game | what | µs per call | ratio to plain | experts run |",
            "|---|---|---:|---:|---:|",
        ]
        plain_us = {r["game"]: r["cpu_us"] for r in report["acting"] if r["part"].startswith("plain")}
        for r in report["acting"]:
            lines.append(
                f"| {r['game']} | {r['part']} | {r['cpu_us']:.0f} ({r['wall_us']:.0f}) | "
                f"{r['cpu_us'] / plain_us[r['game']]:.2f} | {_fmt(r['experts_run'], 2)} |"
            )
        lines.append("")
    if report["targets"]:
        lines += ["## Targets", "", "| target | measured | result |", "|---|---:|---|"]
        for t in report["targets"]:
            lines.append(f"| {t['target']} | {t['value']:.2f} | {'pass' if t['passed'] else 'MISSED'} |")
        lines.append("")
    return "\n".join(lines)


def plot(extractor: Sequence[ExtractorResult], path: Path) -> bool:
    """Time (and peak memory) against m, one panel per trunk mode; ``False`` if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r.mode for r in extractor if r.experts}, key=["frozen", "finetuned"].index)
    if not modes:
        return False
    has_memory = any(r.forward_backward_peak_mib is not None for r in extractor)
    rows = [("forward_cpu_ms", "forward, CPU ms"), ("forward_backward_cpu_ms", "forward+backward, CPU ms")]
    if has_memory:
        rows.append(("forward_backward_peak_mib", "peak fwd+bwd memory (MiB)"))
    figure, axes = plt.subplots(len(rows), len(modes), figsize=(5.5 * len(modes), 3.6 * len(rows)), squeeze=False)
    reference = next((r for r in extractor if not r.experts), None)
    for column, mode in enumerate(modes):
        series: dict[str, list[ExtractorResult]] = {}
        for r in extractor:
            if r.mode != mode or not r.experts:
                continue
            label = (
                f"sparse k={r.k}"
                if r.routing == "sparse"
                else ("dense-dispatch k=2" if r.routing == "dense-dispatch" else "dense mixture")
            )
            series.setdefault(label, []).append(r)
        for row, (key, title) in enumerate(rows):
            axis = axes[row][column]
            for label, points in series.items():
                points = sorted(points, key=lambda r: r.experts)
                values = [getattr(p, key) for p in points]
                if any(v is None for v in values):
                    continue
                style = "-o" if label.startswith("sparse") else "--s"
                axis.plot([p.experts for p in points], values, style, label=label)
            if reference is not None and getattr(reference, key) is not None:
                axis.axhline(getattr(reference, key), color="grey", linestyle=":", label="NatureCNN (plain)")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("experts in the hub (m)")
            axis.set_ylabel(title)
            axis.set_title(f"{mode} trunks: {title}")
            axis.grid(alpha=0.3)
            if row == 0:
                axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# --------------------------------------------------------------------------------------------------------
# Command line


# Budgets of a full run and of --quick (options given on the command line win over both).
_FULL: dict[str, Any] = {
    "steps": 4096,
    "warmup_steps": 0,
    "repeats": 1,
    "batch": 256,
    "ms": [2, 4, 8, 16],
    "ks": [1, 2, 4],
    "modes": ["frozen", "finetuned"],
    "reps": 5,
}
_QUICK: dict[str, Any] = {
    "steps": 32,
    "warmup_steps": 32,
    "repeats": 1,
    "batch": 8,
    "ms": [2, 4],
    "ks": [1, 2],
    "modes": ["frozen"],
    "reps": 1,
}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` replaces every budget by a tiny one)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", default="bench_out", help="output folder (default: bench_out)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="tiny budgets for every option not given explicitly (smoke test)"
    )
    training = parser.add_argument_group("(a) training throughput")
    training.add_argument("--steps", type=int, help="measured env steps per configuration and round (default: 4096)")
    training.add_argument("--warmup-steps", type=int, help="warm-up steps (default: one rollout and update)")
    training.add_argument("--repeats", type=int, help="interleaved rounds; the median is reported (default: 1)")
    training.add_argument("--games", default="breakout,minatar", help="breakout, minatar or both (default)")
    training.add_argument("--atari-game", default=ATARI_GAME)
    training.add_argument("--minatar-game", default=MINATAR_GAME)
    training.add_argument("--only", help="regular expression: measure only the matching configurations (plain always)")
    training.add_argument("--skip-training", action="store_true")
    extractor = parser.add_argument_group("(b) extractor alone")
    extractor.add_argument("--batch", type=int, help="frames per batch (default: 256)")
    extractor.add_argument("--ms", type=_ints, help="numbers of experts (default: 2,4,8,16)")
    extractor.add_argument("--ks", type=_ints, help="experts per sample (default: 1,2,4)")
    extractor.add_argument("--modes", type=_names, help="trunk modes: frozen, finetuned (default: both)")
    extractor.add_argument("--reps", type=int, help="timed repetitions, median reported (default: 5)")
    extractor.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    extractor.add_argument("--skip-extractor", action="store_true")
    acting = parser.add_argument_group("(c) acting forward, taken apart")
    acting.add_argument("--skip-acting", action="store_true")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = _QUICK if args.quick else _FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    bad_modes = sorted(set(args.modes) - {"frozen", "finetuned"})
    if bad_modes:
        parser.error(f"unknown --modes {bad_modes}; choose frozen, finetuned")
    bad_games = sorted(set(_names(args.games)) - {"breakout", "minatar"})
    if bad_games:
        parser.error(f"unknown --games {bad_games}; choose breakout, minatar")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report; returns the exit status."""
    args = parse_args(argv)
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    _pin_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, flush=True)

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "machine": machine_info(args.threads, args.device),
        "settings": {k: v for k, v in vars(args).items() if k != "memory_probe"},
        "training": [],
        "extractor": [],
    }
    began = time.perf_counter()
    train_results: list[TrainResult] = []
    extractor_results: list[ExtractorResult] = []
    acting_results: list[ActingResult] = []

    def save(complete: bool) -> str:
        """Write what is measured so far (each section as it ends; ``complete`` once all have)."""
        report["acting"] = [asdict(r) for r in acting_results]
        report["training"] = [asdict(r) for r in train_results]
        report["extractor"] = [asdict(r) for r in extractor_results]
        report["targets"] = check_targets(train_results, extractor_results)
        report["wall_seconds"] = round(time.perf_counter() - began, 1)
        report["complete"] = complete
        (out / "throughput.json").write_text(json.dumps(report, indent=2))
        text = markdown(report)
        (out / "throughput.md").write_text(text)
        return text

    if not args.skip_training:
        for game in _names(args.games):
            log(f"(a) training throughput: {game}")
            train_results += measure_training(game, args, log)
            save(False)
    if not args.skip_extractor:
        log(f"(b) extractor alone, batch {args.batch}")
        extractor_results = measure_extractor(args, log)
        methods = sorted({r.memory_method for r in extractor_results if r.memory_method})
        if methods:
            report["memory_method"] = "; ".join(methods) + (
                " (fresh subprocess per configuration, after one warm-up step)"
            )
        save(False)
    if not args.skip_acting:
        for game in _names(args.games):
            log(f"(c) acting forward, taken apart: {game}")
            acting_results += measure_acting(game, args, log)
            save(False)
    text = save(True)
    if extractor_results and plot(extractor_results, out / "extractor_time_vs_m.png"):
        log(f"plot: {out / 'extractor_time_vs_m.png'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
