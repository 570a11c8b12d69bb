"""Building the model of a run from its :class:`~hp_rl.rl.runs.RunConfig`: one construction path for new
runs, resumed runs and evaluation (a checkpoint only fills in the weights)."""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecEnv

from hp_rl.core.errors import HpRlError
from hp_rl.rl.hyperparams import ConfigError, resolve_hyperparams
from hp_rl.rl.runs import RunConfig

__all__ = ["ALGOS", "RUN_KEYS", "UnknownAlgoError", "algo_class", "build_model", "hub_manifest", "check_device"]

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN}
# Algorithm keys that are not constructor arguments.
RUN_KEYS = ("n_envs", "n_timesteps", "frame_stack", "normalize", "policy")


class UnknownAlgoError(HpRlError, ValueError):
    """An algorithm name this project does not train."""


def check_device(device: str, where: str) -> str:
    """``device`` if torch can parse it (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    :raises ConfigError: naming ``where`` (the flag or key) and the accepted forms.
    """
    import torch

    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConfigError(
            f"{where} {device!r} is not a torch device ({error}); use auto, cpu, cuda, cuda:N or mps."
        ) from error
    # SB3 would fall back to the CPU without a word (and the thread rule would still count a GPU): refuse instead
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{where} {device}: this machine has no CUDA device torch can use; use --device cpu (or auto)."
        )
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(f"{where} {device}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...).")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{where} {device}: this machine has no MPS device; use --device cpu (or auto).")
    return device


def apply_threads(threads: int, device: str) -> int:
    """Set torch's intra-op thread count for this process; returns the count in effect.

    ``threads`` 0 means automatic: one thread for CPU training, torch's own default where the network runs
    on a GPU. The networks of these agents are small, so a CPU thread pool mostly waits: measured on a busy
    2-core machine, plain PPO on MinAtar ran at 240 steps/s with torch's default threads and at 2,710 with
    one (docs/results/throughput.md, "Threads, sweeps on Ray, stopping"). Several runs side by side then share the
    cores instead of fighting for them.

    :param threads: threads to use, or 0 for the automatic choice.
    :param device: the run's device (``auto`` counts as a GPU where one is available).
    """
    import torch

    if threads < 0:
        raise ConfigError(f"--threads {threads}: must be at least 0 (0: one thread on CPU, torch's default on GPU).")
    if threads == 0:
        on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if on_gpu:
            return int(torch.get_num_threads())
        threads = 1
    torch.set_num_threads(threads)
    return threads


def algo_class(algo: str, with_hub: bool) -> type[BaseAlgorithm]:
    """The class that trains ``algo``: HubPPO/HubA2C with a hub (full method), else plain SB3."""
    if algo not in ALGOS:
        close = difflib.get_close_matches(algo, list(ALGOS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownAlgoError(f"Unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}.{hint}")
    if with_hub and algo in ("ppo", "a2c"):
        from hp_rl.rl.algorithms import HubA2C, HubPPO

        return HubPPO if algo == "ppo" else HubA2C
    return ALGOS[algo]


def _policy_name(env: VecEnv) -> str:
    return "CnnPolicy" if len(env.observation_space.shape or ()) == 3 else "MlpPolicy"


def _available_memory() -> int | None:
    """Bytes of memory the system can still give (``MemAvailable``), or ``None`` where it cannot tell."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_replay_memory(cls: type[BaseAlgorithm], params: dict[str, Any], env: VecEnv) -> None:
    """Refuse a replay buffer that cannot fit in memory before it is allocated: numpy reserves it lazily, so it
    would otherwise fill until the machine runs out, hours into the run.

    :raises ConfigError: naming the size, what is available and the ``--set`` values that fit.
    """
    default = inspect.signature(cls.__init__).parameters.get("buffer_size")
    if default is None:
        return  # on-policy: no replay buffer
    size = int(params.get("buffer_size", default.default))
    row = int(np.prod(env.observation_space.shape or (1,))) * np.dtype(env.observation_space.dtype).itemsize
    copies = 1 if params.get("optimize_memory_usage") else 2  # observations and next observations
    needed = size * row * copies
    available = _available_memory()
    if available is None or needed <= 0.8 * available:
        return
    fits = max(int(0.5 * available / (row * copies)), 1)
    raise ConfigError(
        f"The replay buffer needs {needed / 2**30:.1f} GiB ({size:,} observations of {row:,} bytes, {copies} copies), "
        f"but {available / 2**30:.1f} GiB of memory is available. Give a smaller one: --set buffer_size={fits}"
        + ("" if copies == 1 else " (or --set optimize_memory_usage=True handle_timeout_termination=False)")
        + "."
    )


def build_model(config: RunConfig, env: VecEnv, tensorboard_log: str | None = None, verbose: int = 0) -> BaseAlgorithm:
    """A fresh model for ``config`` on ``env``.

    With ``config.hub`` the policy's features extractor is :class:`HubPathwayExtractor` with linear heads
    (``net_arch=[]``); without, the plain SB3 policy (NatureCNN for frames; a small CNN for MinAtar).
    """
    params = {k: v for k, v in resolve_hyperparams(config.hyperparams).items() if k not in RUN_KEYS}
    policy_kwargs: dict[str, Any] = dict(params.pop("policy_kwargs", None) or {})
    cls = algo_class(config.algo, config.hub is not None)
    shape = env.observation_space.shape or ()
    scores = None
    if config.hub is not None:
        from hp_rl.rl.extractor import HubPathwayExtractor

        extractor_kwargs = {"hub": config.hub, "k": config.k, **config.hub_kwargs}
        if extractor_kwargs.get("prior") == "auto":  # scored on the run's own target, variant arguments included
            from hp_rl.rl.scoring import AUTO_PRIOR_SEED, score_hub

            scores = score_hub(
                config.hub,
                config.env_id,
                seed=AUTO_PRIOR_SEED,
                env_kwargs=config.env_kwargs,
                env_preset=config.env_preset,
            )
            extractor_kwargs["prior"] = dict(scores["prior"])
        if cls is not ALGOS.get(config.algo):  # HubPPO / HubA2C take the hub directly
            params.update(extractor_kwargs)
        else:
            policy_kwargs.setdefault("features_extractor_class", HubPathwayExtractor)
            policy_kwargs.setdefault("features_extractor_kwargs", extractor_kwargs)
            if config.algo != "dqn":
                policy_kwargs.setdefault("net_arch", [])
    elif len(shape) == 3 and not is_image_space(env.observation_space, check_channels=False):
        from hp_rl.rl.baselines import SmallFrameCNN

        policy_kwargs.setdefault("features_extractor_class", SmallFrameCNN)
        policy_kwargs.setdefault("net_arch", [])  # the MinAtar paper network: linear heads on the trunk
    _check_replay_memory(cls, params, env)
    try:
        model = cls(
            _policy_name(env),
            env,
            seed=config.seed,
            device=config.device,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            policy_kwargs=policy_kwargs or None,
            **params,
        )
        if scores is not None:  # what was measured, for the user (HubPPO/HubA2C keep it; any model can carry it)
            model.prior_scores = scores  # type: ignore[attr-defined]
        return model
    except (AssertionError, TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, HpRlError) or not _raised_by_library(error):
            raise
        message = str(error).strip() or "an assertion failed"
        raise ConfigError(
            f"{cls.__name__} refused the run's hyperparameters ({type(error).__name__}: {message}). Check the values "
            f"given with --set / --hub-set or in configs/{config.algo}.yml (and policy_kwargs keys: SB3's policy "
            "takes net_arch, activation_fn, ortho_init, optimizer_class, optimizer_kwargs, ...)."
        ) from error


def _raised_by_library(error: BaseException) -> bool:
    """Whether ``error`` comes from Stable-Baselines3, torch or gymnasium checking its arguments (a bad value
    given by the user) rather than from this package (a bug, which keeps its traceback)."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    innermost = frames[-1].filename.replace("\\", "/")
    return any(f"/{name}/" in innermost for name in ("stable_baselines3", "torch", "gymnasium", "typing"))


def hub_manifest(model: BaseAlgorithm) -> dict[str, Any]:
    """Every expert of the model's hub: source, file digest, architecture, size, training mode."""
    from hp_rl.hub.trunks import manifest_entry
    from hp_rl.rl.extractor import BASE_EXPERT
    from hp_rl.rl.pathway_control import find_hub_extractors

    for extractor in find_hub_extractors(model)[:1]:
        experts = []
        for name, module in extractor.pathway.experts.items():
            entry = manifest_entry(name, module)
            if name == BASE_EXPERT:  # the target's plain network, trained from scratch's start
                entry.update({"source": "base", "arch": type(getattr(module, "inner_trunk", module)).__name__})
            if name in extractor.head_sources:
                entry["policy_head"] = extractor.head_sources[name]
            experts.append(entry)
        return {"k": extractor.k, "spec_origin": extractor.hub_spec.origin, "experts": experts}
    return {"experts": []}
