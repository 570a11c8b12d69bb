"""(a) Training throughput: env steps per second of ``model.learn``, plain PPO against hub agents."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hp_rl.bench.throughput.results import TrainCase, TrainResult, sync_device


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


# --quick: tiny rollouts and updates on two environment copies
_QUICK = {"n_envs": 2, "n_steps": 16, "batch_size": 32, "n_epochs": 1}


def ppo_params(family: str, quick: bool) -> tuple[int, dict[str, Any]]:
    """Number of envs and the PPO hyperparameters of ``configs/ppo.yml`` as written there (``lin_`` schedules
    unresolved; shrunk with ``quick``)."""
    from hp_rl.rl.hyperparams import load_hyperparams
    from hp_rl.rl.models import RUN_KEYS

    raw = load_hyperparams("ppo", family)
    if quick:
        raw.update(_QUICK)
    return int(raw.get("n_envs", 8)), {k: v for k, v in raw.items() if k not in RUN_KEYS}


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
    import tempfile

    from hp_rl.bench import user_agents
    from hp_rl.core.paths import BUNDLED_HUB_DIR
    from hp_rl.rl.training import build_model
    from hp_rl.train import build_parser
    from hp_rl.train_config import config_and_env

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

    from hp_rl.rl.envs import make_env
    from hp_rl.rl.extractor import HubPathwayExtractor
    from hp_rl.rl.hyperparams import resolve_hyperparams
    from hp_rl.rl.runs import RunConfig
    from hp_rl.rl.training import build_model

    env_id = args.atari_game if game == "breakout" else args.minatar_game
    n_envs, params = ppo_params("atari" if game == "breakout" else "minatar", args.quick)
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
        config = RunConfig.for_task(
            "ppo",
            env_id,
            overrides=_QUICK if args.quick else None,
            n_timesteps=args.steps,
            seed=args.seed,
            device=args.device,
            hub=hub,
            k=case.k or 2,
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


def _median_result(game: str, case: TrainCase, runs: list[tuple[int, float, float, float]]) -> TrainResult:
    """A case's row from its rounds ``(steps, wall s, CPU s, rollout s)``: the median round by wall rate and by
    CPU rate (upper median of an even count)."""
    rates = [steps / seconds for steps, seconds, _, _ in runs]
    steps, seconds, _, rollout = runs[sorted(range(len(runs)), key=rates.__getitem__)[len(runs) // 2]]
    cpu_rates = [steps / cpu for steps, _, cpu, _ in runs]
    cpu_steps, _, cpu_seconds, _ = runs[sorted(range(len(runs)), key=cpu_rates.__getitem__)[len(runs) // 2]]
    return TrainResult(
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
            sync_device(args.device)
            began, began_cpu = time.perf_counter(), time.process_time()
            model.learn(args.steps, reset_num_timesteps=False, callback=callbacks)
            sync_device(args.device)
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
    results = [_median_result(game, case, samples[case.name]) for case in cases]
    plain, plain_cpu = results[0].steps_per_s, results[0].steps_per_cpu_s
    for result in results:
        result.ratio_to_plain = round(result.steps_per_s / plain, 3)
        result.cpu_ratio_to_plain = round(result.steps_per_cpu_s / plain_cpu, 3)
    for model in models.values():
        model.env.close()
    return results
