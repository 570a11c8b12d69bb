"""Building a model from a :class:`RunConfig` and training it with checkpoints, evaluation and resume."""

from __future__ import annotations

import difflib
import signal
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage

from hp_rl.paths import written_by_rename
from hp_rl.rl.config import resolve_hyperparams
from hp_rl.rl.envs import make_env
from hp_rl.rl.runs import RunConfig, RunFolder, checkpoints_by_step

__all__ = ["ALGOS", "UnknownAlgoError", "NoCheckpointError", "TrainOutcome", "algo_class", "build_model", "train",
           "run_training", "load_latest", "hub_manifest", "StopOnSignal", "save_atomically"]  # fmt: skip

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
        policy_kwargs.setdefault("net_arch", [])  # the MinAtar paper network: linear heads on the trunk
    return cls(
        _policy_name(env), env, seed=config.seed, device=config.device, tensorboard_log=tensorboard_log,
        verbose=verbose, policy_kwargs=policy_kwargs or None, **params,
    )  # fmt: skip


def hub_manifest(model: BaseAlgorithm) -> dict[str, Any]:
    """Every expert of the model's hub: source, file digest, architecture, size, training mode."""
    from hp_rl.hub import HubExpert
    from hp_rl.rl.extractor import find_hub_extractors
    from hp_rl.routing import TrunkExpert

    experts = []
    for extractor in find_hub_extractors(model)[:1]:
        for name, module in extractor.pathway.experts.items():
            assert isinstance(module, TrunkExpert)
            trunk = module.inner_trunk
            adapter = repr(module.input_adapter) if list(module.input_adapter.children()) else None
            entry: dict[str, Any] = {"name": name, "frozen": module.frozen, "input_adapter": adapter,
                                     "parameters": sum(p.numel() for p in trunk.parameters())}  # fmt: skip
            if isinstance(trunk, HubExpert):
                info, provenance = trunk.info, trunk.provenance
                entry.update({
                    "source": provenance.source, "location": provenance.location, "sha256": provenance.sha256,
                    "arch": info.arch, "input_shape": list(info.input_shape), "features_dim": info.features_dim,
                    "details": dict(provenance.details),
                })  # fmt: skip
            else:  # the base expert: the target's plain network, trained from scratch's start
                entry.update({"source": "base", "arch": type(trunk).__name__})
            if name in extractor.head_sources:
                entry["policy_head"] = extractor.head_sources[name]
            experts.append(entry)
        return {"k": extractor.k, "spec_origin": extractor.hub_spec.origin, "experts": experts}
    return {"experts": []}


class StopOnSignal(BaseCallback):
    """Stops training cleanly at the next step after SIGINT or SIGTERM, so a checkpoint can be written.

    A second signal aborts at once (``KeyboardInterrupt``) for a user who does not want to wait. The step
    count at the start of the current rollout is kept: an on-policy rollout cut short is discarded by SB3,
    so its steps are not counted in the checkpoint (see :func:`run_training`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self.rollout_start_timesteps = 0

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember the signal; the training loop stops at its next step."""
        if self.received is not None:
            raise KeyboardInterrupt(f"second signal {signum}: aborting without a checkpoint")
        self.received = signum

    def _on_training_start(self) -> None:
        self.rollout_start_timesteps = self.num_timesteps

    def _on_rollout_start(self) -> None:
        self.rollout_start_timesteps = self.num_timesteps

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


class _PeriodicCheckpoint(BaseCallback):
    """Writes a checkpoint every ``every`` calls (each call is ``n_envs`` steps), atomically.

    :param every: calls between checkpoints.
    :param folder: the run folder.
    :param algo: algorithm name (DQN also saves its replay buffer; only the latest one is kept).
    """

    def __init__(self, every: int, folder: RunFolder, algo: str) -> None:
        super().__init__()
        self.every = every
        self.folder = folder
        self.algo = algo

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            _save_checkpoint(self.model, self.folder, self.algo)
        return True


def _callbacks(config: RunConfig, folder: RunFolder, stopper: StopOnSignal, with_hub: bool) -> list[BaseCallback]:
    callbacks: list[BaseCallback] = [stopper]
    if with_hub:
        from hp_rl.rl.callbacks import GateUsageCallback

        # Before evaluation: the gate statistics must read this step's acting forward, not an evaluation's.
        callbacks.append(GateUsageCallback())
    if config.save_freq > 0:
        callbacks.append(_PeriodicCheckpoint(max(config.save_freq // config.n_envs, 1), folder, config.algo))
    if config.eval_freq > 0:
        eval_env: VecEnv = make_env(config.env_id, 1, config.seed + 10_000, config.env_preset, evaluation=True,
                                    env_kwargs=config.env_kwargs)  # fmt: skip
        space = eval_env.observation_space
        if is_image_space(space) and not is_image_space_channels_first(space):  # type: ignore[arg-type]
            eval_env = VecTransposeImage(eval_env)  # as SB3 wraps the training env
        callbacks.append(_NoiseFreeEval(eval_env, n_eval_episodes=config.eval_episodes,
                                        eval_freq=max(config.eval_freq // config.n_envs, 1),
                                        best_model_save_path=str(folder.path / "eval"),
                                        log_path=str(folder.path / "eval"), verbose=0))  # fmt: skip
    return callbacks


def _replay_buffer_path(folder: RunFolder, steps: int) -> Path:
    return folder.checkpoints / f"rl_model_replay_buffer_{steps}_steps.pkl"


def save_atomically(model: BaseAlgorithm, path: Path) -> Path:
    """``model.save(path)`` through a temporary file renamed into place when complete
    (:func:`~hp_rl.paths.written_by_rename`)."""
    with written_by_rename(path) as partial:
        model.save(partial)
    return path


def _save_checkpoint(model: BaseAlgorithm, folder: RunFolder, algo: str) -> Path:
    """Write ``rl_model_<steps>_steps.zip`` (and DQN's replay buffer) through a temporary file, so that a
    process killed while writing never leaves a truncated checkpoint for ``--resume`` to pick."""
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    path = save_atomically(model, folder.checkpoints / f"rl_model_{model.num_timesteps}_steps.zip")
    if algo == "dqn":
        buffer_path = _replay_buffer_path(folder, model.num_timesteps)
        with written_by_rename(buffer_path) as partial:
            model.save_replay_buffer(partial)  # type: ignore[attr-defined]
        for old in folder.checkpoints.glob("rl_model_replay_buffer_*_steps.pkl"):
            if old != buffer_path:
                old.unlink(missing_ok=True)
    return path


class NoCheckpointError(FileNotFoundError):
    """A run folder has no checkpoint that can be loaded, so it cannot be resumed."""


def load_latest(config: RunConfig, folder: RunFolder, env: VecEnv, tensorboard_log: str | None = None) -> BaseAlgorithm:
    """The model of the newest readable checkpoint in ``folder`` (DQN: with its replay buffer, if kept).

    A checkpoint that cannot be read (truncated by a crash) is reported and the previous one is used.

    :raises NoCheckpointError: when no checkpoint can be loaded.
    """
    cls = algo_class(config.algo, config.hub is not None)
    problems = []
    for path, steps in checkpoints_by_step(folder.checkpoints):
        try:
            model = cls.load(path, env=env, device=config.device, tensorboard_log=tensorboard_log)
        except (zipfile.BadZipFile, EOFError, KeyError, RuntimeError, ValueError, OSError) as error:
            problems.append(f"{path.name}: {error}")
            print(f"warning: checkpoint {path} cannot be read ({error}); trying the previous one.", file=sys.stderr)
            continue
        if config.algo == "dqn":
            replay = _replay_buffer_path(folder, steps)
            if replay.is_file():
                model.load_replay_buffer(replay)  # type: ignore[attr-defined]
            else:
                print(f"warning: no replay buffer saved with {path.name}; DQN continues with an empty buffer.",
                      file=sys.stderr)  # fmt: skip
        return model
    detail = f" Unreadable: {'; '.join(problems)}." if problems else ""
    raise NoCheckpointError(
        f"{folder.checkpoints} holds no checkpoint (rl_model_<steps>_steps.zip) to resume from.{detail} "
        "Start a new run instead, or point --resume at the run folder that holds the checkpoints."
    )


@dataclass
class TrainOutcome:
    """What :func:`run_training` did.

    :param model: the trained model.
    :param interrupted_by: the signal that stopped training early, or ``None`` when it finished.
    :param checkpoint: the last checkpoint written.
    :param final_model: ``model.zip`` when training finished, else ``None``.
    :param steps: environment steps taken by this call (counted ones: a discarded partial rollout is not).
    :param seconds: wall-clock time of ``learn``.
    """

    model: BaseAlgorithm
    interrupted_by: int | None
    checkpoint: Path
    final_model: Path | None
    steps: int
    seconds: float


def run_training(
    config: RunConfig,
    folder: RunFolder,
    resume: bool = False,
    progress_bar: bool = True,
    tensorboard: bool = True,
    verbose: int = 0,
    model: BaseAlgorithm | None = None,
    callbacks: list[BaseCallback] | None = None,
) -> TrainOutcome:
    """Train (or continue) the run in ``folder`` up to ``config.n_timesteps`` steps in all.

    Periodic checkpoints go to ``folder/checkpoints``. SIGINT/SIGTERM stop training at the next step and
    write a checkpoint that ``resume=True`` continues from, step count included. For PPO/A2C, the rollout
    that the signal cuts short is discarded (as SB3 does) and its steps are not counted, so the resumed
    run makes the same updates, with the same schedules, as an uninterrupted one. The final model is
    ``folder/model.zip``.

    :param config: the run's configuration.
    :param folder: the run folder (already holding ``config.yml``).
    :param resume: continue from the newest checkpoint in the folder.
    :param progress_bar: SB3's tqdm/rich progress bar.
    :param tensorboard: write TensorBoard events into the folder.
    :param verbose: SB3 verbosity.
    :param model: a model already built by :func:`build_model` (its environment included); built here
        when ``None``. Ignored with ``resume``.
    :param callbacks: extra callbacks.
    :raises NoCheckpointError: ``resume`` with no readable checkpoint.
    """
    tb_log = str(folder.path) if tensorboard else None
    with_hub = config.hub is not None
    if resume:
        env = make_env(config.env_id, config.n_envs, config.seed, config.env_preset, env_kwargs=config.env_kwargs)
        model = load_latest(config, folder, env, tb_log)
    else:
        if model is None:
            env = make_env(config.env_id, config.n_envs, config.seed, config.env_preset, env_kwargs=config.env_kwargs)
            model = build_model(config, env, tb_log, verbose=verbose)
        else:
            model.tensorboard_log = tb_log
            model.verbose = verbose
        if with_hub:
            folder.hub_manifest.write_text(yaml.safe_dump(hub_manifest(model), sort_keys=False))
    vec_env = model.get_env()
    assert vec_env is not None
    start_steps = model.num_timesteps
    remaining = max(config.n_timesteps - start_steps, 0)
    stopper = StopOnSignal()
    started = time.time()
    with _signals_to(stopper):
        every = CallbackList([*_callbacks(config, folder, stopper, with_hub), *(callbacks or [])])
        model.learn(remaining, callback=every, tb_log_name="tb", reset_num_timesteps=not resume,
                    progress_bar=progress_bar)  # fmt: skip
        elapsed = time.time() - started
        interrupted = stopper.received  # a signal during the saves below no longer counts as an interruption
        if interrupted is not None and isinstance(model, OnPolicyAlgorithm):
            model.num_timesteps = stopper.rollout_start_timesteps  # SB3 threw the partial rollout away
        steps = model.num_timesteps - start_steps
        if interrupted is None:
            save_atomically(model, folder.final_model)
        checkpoint = _save_checkpoint(model, folder, config.algo)
    with open(folder.path / "timing.yml", "a") as handle:
        yaml.safe_dump([{"start_step": start_steps, "steps": steps, "seconds": round(elapsed, 1),
                         "steps_per_second": round(steps / max(elapsed, 1e-9), 1),
                         "interrupted": interrupted is not None}], handle, sort_keys=False)  # fmt: skip
    vec_env.close()
    return TrainOutcome(model, interrupted, checkpoint, None if interrupted is not None else folder.final_model,
                        steps, elapsed)  # fmt: skip


def train(config: RunConfig, folder: RunFolder, resume: bool = False, progress_bar: bool = True,
          tensorboard: bool = True, verbose: int = 0) -> BaseAlgorithm:  # fmt: skip
    """Train (or continue) the run in ``folder``; returns the trained model (see :func:`run_training`).

    An interrupted run returns with ``model.num_timesteps < config.n_timesteps`` and a checkpoint written.
    """
    outcome = run_training(config, folder, resume=resume, progress_bar=progress_bar, tensorboard=tensorboard,
                           verbose=verbose)  # fmt: skip
    if outcome.interrupted_by is not None:
        print(f"Interrupted at step {outcome.model.num_timesteps}; checkpoint {outcome.checkpoint}. Continue with: "
              f"python -m hp_rl.train --resume {folder.path}")  # fmt: skip
    return outcome.model
