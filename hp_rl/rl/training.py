"""Building a model from a :class:`RunConfig` and training it with checkpoints, evaluation and resume."""

from __future__ import annotations

import difflib
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecEnv

from hp_rl.rl.config import resolve_hyperparams
from hp_rl.rl.envs import make_env
from hp_rl.rl.runs import RunConfig, RunFolder, latest_checkpoint

__all__ = ["ALGOS", "UnknownAlgoError", "algo_class", "build_model", "train", "hub_manifest", "StopOnSignal"]

ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN}
# Algorithm keys that are not constructor arguments.
_RUN_KEYS = ("n_envs", "n_timesteps", "frame_stack", "normalize", "policy")


class UnknownAlgoError(ValueError):
    """An algorithm name this project does not train."""


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


def build_model(config: RunConfig, env: VecEnv, tensorboard_log: str | None = None, verbose: int = 0) -> BaseAlgorithm:
    """A fresh model for ``config`` on ``env``.

    With ``config.hub`` the policy's features extractor is :class:`HubPathwayExtractor` with linear heads
    (``net_arch=[]``); without, the plain SB3 policy (NatureCNN for frames; a small CNN for MinAtar).
    """
    params = {k: v for k, v in resolve_hyperparams(config.hyperparams).items() if k not in _RUN_KEYS}
    policy_kwargs: dict[str, Any] = dict(params.pop("policy_kwargs", None) or {})
    cls = algo_class(config.algo, config.hub is not None)
    shape = env.observation_space.shape or ()
    if config.hub is not None:
        from hp_rl.rl.extractor import HubPathwayExtractor

        extractor_kwargs = {"hub": config.hub, "k": config.k, **config.hub_kwargs}
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
    return cls(
        _policy_name(env), env, seed=config.seed, device=config.device, tensorboard_log=tensorboard_log,
        verbose=verbose, policy_kwargs=policy_kwargs or None, **params,
    )  # fmt: skip


def hub_manifest(model: BaseAlgorithm) -> dict[str, Any]:
    """Every expert of the model's hub: source, file digest, architecture, size, training mode."""
    from hp_rl.rl.extractor import find_hub_extractors
    from hp_rl.routing import AdaptedExpert

    experts = []
    for extractor in find_hub_extractors(model)[:1]:
        for name, module in extractor.pathway.experts.items():
            assert isinstance(module, AdaptedExpert)
            trunk = module.trunk.module
            info, provenance = trunk.info, trunk.provenance
            experts.append({
                "name": name, "source": provenance.source, "location": provenance.location,
                "sha256": provenance.sha256, "arch": info.arch, "input_shape": list(info.input_shape),
                "features_dim": info.features_dim, "parameters": trunk.num_parameters,
                "frozen": module.frozen, "input_adapter": repr(module.input_adapter) if list(module.input_adapter.children()) else None,
                "details": dict(provenance.details),
            })  # fmt: skip
        return {"k": extractor.k, "spec_origin": extractor.hub_spec.origin, "experts": experts}
    return {"experts": []}


class StopOnSignal(BaseCallback):
    """Stops training cleanly at the next step after SIGINT or SIGTERM, so a checkpoint can be written."""

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember the signal; the training loop stops at its next step."""
        self.received = signum

    def _on_step(self) -> bool:
        return self.received is None


@contextmanager
def _signals_to(callback: StopOnSignal) -> Iterator[None]:
    previous = {sig: signal.signal(sig, callback.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _NoiseFreeEval(EvalCallback):
    """EvalCallback that evaluates with deterministic (noise-free) routing."""

    def _on_step(self) -> bool:
        from hp_rl.rl.extractor import routing_noise

        with routing_noise(self.model, enabled=False):
            return super()._on_step()


def _callbacks(config: RunConfig, folder: RunFolder, stopper: StopOnSignal, with_hub: bool) -> list[BaseCallback]:
    callbacks: list[BaseCallback] = [stopper]
    if config.save_freq > 0:
        callbacks.append(CheckpointCallback(max(config.save_freq // config.n_envs, 1), str(folder.checkpoints),
                                            save_replay_buffer=config.algo == "dqn"))  # fmt: skip
    if config.eval_freq > 0:
        eval_env = make_env(config.env_id, 1, config.seed + 10_000, config.env_preset, evaluation=True)
        callbacks.append(_NoiseFreeEval(eval_env, n_eval_episodes=config.eval_episodes,
                                        eval_freq=max(config.eval_freq // config.n_envs, 1),
                                        best_model_save_path=str(folder.path / "eval"),
                                        log_path=str(folder.path / "eval"), verbose=0))  # fmt: skip
    if with_hub:
        from hp_rl.rl.callbacks import GateUsageCallback

        callbacks.append(GateUsageCallback())
    return callbacks


def _save_checkpoint(model: BaseAlgorithm, folder: RunFolder, algo: str) -> Path:
    path = folder.checkpoints / f"rl_model_{model.num_timesteps}_steps.zip"
    model.save(path)
    if algo == "dqn":
        model.save_replay_buffer(folder.checkpoints / f"rl_model_replay_buffer_{model.num_timesteps}_steps.pkl")  # type: ignore[attr-defined]
    return path


def train(config: RunConfig, folder: RunFolder, resume: bool = False, progress_bar: bool = True,
          tensorboard: bool = True, verbose: int = 0) -> BaseAlgorithm:  # fmt: skip
    """Train (or continue) the run in ``folder``; returns the trained model.

    Periodic checkpoints go to ``folder/checkpoints``; SIGINT/SIGTERM stop at the next step and write a
    checkpoint that ``resume=True`` continues from, step count included. The final model is
    ``folder/model.zip``.
    """
    env = make_env(config.env_id, config.n_envs, config.seed, config.env_preset)
    tb_log = str(folder.path) if tensorboard else None
    with_hub = config.hub is not None
    if resume:
        found = latest_checkpoint(folder.checkpoints)
        if found is None:
            raise FileNotFoundError(f"{folder.checkpoints} holds no checkpoint to resume from; start a new run instead.")
        path, _ = found
        model = algo_class(config.algo, with_hub).load(path, env=env, device=config.device, tensorboard_log=tb_log)
        replay = folder.checkpoints / f"rl_model_replay_buffer_{model.num_timesteps}_steps.pkl"
        if config.algo == "dqn" and replay.is_file():
            model.load_replay_buffer(replay)  # type: ignore[attr-defined]
    else:
        model = build_model(config, env, tb_log, verbose=verbose)
        if with_hub:
            folder.hub_manifest.write_text(yaml.safe_dump(hub_manifest(model), sort_keys=False))
    remaining = max(config.n_timesteps - model.num_timesteps, 0)
    stopper = StopOnSignal()
    started = time.time()
    with _signals_to(stopper):
        model.learn(remaining, callback=CallbackList(_callbacks(config, folder, stopper, with_hub)),
                    tb_log_name="tb", reset_num_timesteps=not resume, progress_bar=progress_bar)  # fmt: skip
    elapsed = time.time() - started
    if stopper.received is not None:
        path = _save_checkpoint(model, folder, config.algo)
        print(f"Interrupted at step {model.num_timesteps}; checkpoint {path}. Continue with: "
              f"python -m hp_rl.train --resume {folder.path}")  # fmt: skip
        return model
    model.save(folder.final_model)
    _save_checkpoint(model, folder, config.algo)
    with open(folder.path / "timing.yml", "a") as handle:
        yaml.safe_dump([{"steps": remaining, "seconds": round(elapsed, 1),
                         "steps_per_second": round(remaining / max(elapsed, 1e-9), 1)}], handle)  # fmt: skip
    env.close()
    return model
