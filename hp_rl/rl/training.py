"""Training a run from its :class:`RunConfig`: checkpoints after updates, evaluation, signals and resume."""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage

from hp_rl.core.paths import append_text_by_rename, write_text_by_rename
from hp_rl.hub.trusted_code import trust_hub_code
from hp_rl.rl.checkpoints import (
    CheckpointAfterUpdate,
    NoCheckpointError,
    load_latest,
    save_atomically,
    save_checkpoint,
)
from hp_rl.rl.envs import BrokenEnvironmentError, FiniteObservations, make_env
from hp_rl.rl.models import ALGOS, UnknownAlgoError, algo_class, build_model, hub_manifest
from hp_rl.rl.runs import AgentRunFolder, RunConfig

__all__ = [
    "ALGOS",
    "UnknownAlgoError",
    "NoCheckpointError",
    "TrainOutcome",
    "algo_class",
    "build_model",
    "train",
    "run_training",
    "training_env",
    "load_latest",
    "hub_manifest",
    "StopOnSignal",
    "StopTraining",
    "save_atomically",
]

logger = logging.getLogger(__name__)


class StopTraining(BaseException):
    """Raised by the signal handler to leave an on-policy rollout or update at once.

    A ``BaseException``, so that no ``except Exception`` in SB3 or a user's callback swallows it.
    """


class StopOnSignal(BaseCallback):
    """Stops training cleanly within moments of SIGINT or SIGTERM, so a checkpoint can be written.

    On-policy algorithms (PPO, A2C) stop at once, even in the middle of an update or an evaluation: the
    handler raises :class:`StopTraining`, the policy and optimizer are put back as they were when the
    current rollout ended (:meth:`restore`; a copy is kept at each rollout end), and the rollout is not
    counted, as SB3 discards an on-policy rollout cut short. The checkpoint then holds exactly the updates
    of the steps it counts. Off-policy algorithms (DQN) stop at their next step. A second signal aborts at
    once (``KeyboardInterrupt``) for a user who does not want to wait.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: int | None = None
        self.rollout_start_timesteps = 0
        self.stop_at_once = False
        self._snapshot: tuple[dict[str, Any], dict[str, Any], int] | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: remember the signal, and leave an on-policy rollout or update at once."""
        if self.received is not None:
            raise KeyboardInterrupt(f"second signal {signum}: aborting without a checkpoint")
        self.received = signum
        if self.stop_at_once:
            self.stop_at_once = False  # the saves that follow must not be interrupted by it
            raise StopTraining(signum)

    def _on_training_start(self) -> None:
        self.rollout_start_timesteps = self.num_timesteps
        self.stop_at_once = isinstance(self.model, OnPolicyAlgorithm) and self.received is None

    def _on_rollout_start(self) -> None:
        self.rollout_start_timesteps = self.num_timesteps
        self._snapshot = None

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm):  # the weights the update is about to change
            policy = self.model.policy
            self._snapshot = (
                copy.deepcopy(policy.state_dict()),
                copy.deepcopy(policy.optimizer.state_dict()),
                self.model._n_updates,
            )

    def _on_training_end(self) -> None:
        self.stop_at_once = False

    def _on_step(self) -> bool:
        return self.received is None

    def restore(self, model: BaseAlgorithm) -> None:
        """After :class:`StopTraining`: the policy and optimizer as they were before the cut update."""
        self.stop_at_once = False
        if self._snapshot is not None:
            weights, optimizer, updates = self._snapshot
            model.policy.load_state_dict(weights)
            model.policy.optimizer.load_state_dict(optimizer)
            model._n_updates = updates
        if isinstance(model, OnPolicyAlgorithm):
            model.rollout_buffer.reset()


@contextmanager
def _signals_to(callback: StopOnSignal) -> Iterator[None]:
    previous = {sig: signal.signal(sig, callback.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Steps of the episode a route picture shows at most (a picture, not an evaluation: Atari episodes run long).
ROUTE_PICTURE_STEPS = 1_000


class _NoiseFreeEval(EvalCallback):
    """EvalCallback that evaluates with deterministic (noise-free) routing and, for hub runs, logs a route
    picture of one more noise-free episode (``routes/episode``) after each evaluation."""

    def _on_training_start(self) -> None:
        # A resumed run evaluates at its own multiples of the evaluation interval (20,000, 30,000, ... steps), not
        # at intervals counted from where it resumed: the calls so far are those of the steps already taken.
        self.n_calls = self.model.num_timesteps // self.model.n_envs
        super()._on_training_start()

    def _on_step(self) -> bool:
        from hp_rl.rl.pathway_control import find_hub_extractors, routing_noise

        evaluating = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
        with routing_noise(self.model, enabled=False):
            keep_going = super()._on_step()
        if evaluating:
            self._say_return()
            if find_hub_extractors(self.model):
                self._log_routes()
        return keep_going

    def _say_return(self) -> None:
        """One line on the console per evaluation: the step, the mean return and the best so far."""
        from tqdm import tqdm

        returns = self.evaluations_results[-1] if self.evaluations_results else []
        spread = float(np.std(returns)) if len(returns) else 0.0
        tqdm.write(
            f"eval at step {self.num_timesteps}: return {self.last_mean_reward:.2f} ± {spread:.2f} over "
            f"{len(returns)} episodes (best so far {self.best_mean_reward:.2f})"
        )

    def _log_routes(self) -> None:
        from stable_baselines3.common.logger import Image

        from hp_rl.rl.route_picture import RoutePictureError, record_routes, routes_image

        try:
            picture = routes_image(record_routes(self.model, self.eval_env, max_steps=ROUTE_PICTURE_STEPS))
        except RoutePictureError:  # matplotlib missing: the scalars are logged, the picture is not
            return
        self.logger.record("routes/episode", Image(picture, "HWC"), exclude=("stdout", "log", "json", "csv"))
        self.logger.dump(self.num_timesteps)


class StepsBar(BaseCallback):
    """A progress bar in the run's own steps: from the step a resumed run starts at, to the steps asked for.

    SB3's bar counts from 0 to the steps still to do, so a resumed run shows 5,120/9,976,448; and the last
    rollout may end past the steps asked for (whole rollouts), where the bar then grows to the steps taken.

    :param total: the run's steps asked for (``n_timesteps``).
    """

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.bar: Any = None

    def _on_training_start(self) -> None:
        import warnings

        from tqdm import TqdmExperimentalWarning
        from tqdm.rich import tqdm

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TqdmExperimentalWarning)
            self.bar = tqdm(total=max(self.total, self.num_timesteps), initial=self.num_timesteps, unit="steps")

    def _on_step(self) -> bool:
        if self.num_timesteps > self.bar.total:
            self.bar.total = self.num_timesteps
        self.bar.update(self.num_timesteps - self.bar.n)
        return True

    def _on_training_end(self) -> None:
        self.bar.refresh()
        self.bar.close()


class _SanitizedCount(BaseCallback):
    """Logs ``env/nonfinite_observations``: NaN/inf values replaced by 0 so far (``nonfinite_obs=sanitize``)."""

    def _on_rollout_end(self) -> None:
        env: Any = self.training_env
        while env is not None and not isinstance(env, FiniteObservations):
            env = getattr(env, "venv", None)
        if isinstance(env, FiniteObservations):
            self.logger.record("env/nonfinite_observations", env.sanitized_values)

    def _on_step(self) -> bool:
        return True


def _callbacks(config: RunConfig, folder: AgentRunFolder, stopper: StopOnSignal, with_hub: bool) -> list[BaseCallback]:
    callbacks: list[BaseCallback] = [stopper]
    if with_hub:
        from hp_rl.rl.callbacks import GateUsageCallback

        # Before evaluation: the gate statistics must read this step's acting forward, not an evaluation's.
        callbacks.append(GateUsageCallback())
        if config.algo not in ("ppo", "a2c"):  # HubPPO/HubA2C apply the pathway schedules themselves
            from hp_rl.rl.callbacks import PathwayScheduleCallback

            callbacks.append(PathwayScheduleCallback())
    if config.nonfinite_obs == "sanitize":
        callbacks.append(_SanitizedCount())
    if config.save_freq > 0:
        callbacks.append(CheckpointAfterUpdate(config.save_freq, folder, config.algo, config.keep_checkpoints))
    if config.eval_freq > 0:
        eval_env: VecEnv = make_env(
            config.env_id,
            1,
            config.seed + 10_000,
            config.env_preset,
            evaluation=True,
            env_kwargs=config.env_kwargs,
            nonfinite=config.nonfinite_obs,
        )
        space = eval_env.observation_space
        if is_image_space(space) and not is_image_space_channels_first(space):  # type: ignore[arg-type]
            eval_env = VecTransposeImage(eval_env)  # as SB3 wraps the training env
        callbacks.append(
            _NoiseFreeEval(
                eval_env,
                n_eval_episodes=config.eval_episodes,
                eval_freq=max(config.eval_freq // config.n_envs, 1),
                best_model_save_path=str(folder.path / "eval"),
                log_path=str(folder.path / "eval"),
                verbose=0,
            )
        )
    return callbacks


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


def _write_hub_spec(model: BaseAlgorithm, folder: AgentRunFolder) -> None:
    """The run's own copy of the hub spec it trains with (absolute paths), which resume and evaluate read,
    so the run does not depend on a spec file elsewhere (``--hub auto`` writes one into the user cache)."""
    from hp_rl.rl.pathway_control import find_hub_extractors

    extractors = find_hub_extractors(model)
    if extractors:
        spec = extractors[0].hub_spec
        text = f"# The hub spec this run trains with (from {spec.origin}).\n" + yaml.safe_dump(
            spec.as_dict(), sort_keys=False
        )
        write_text_by_rename(folder.hub_spec, text)
        trust_hub_code(spec.experts)  # the user started this run with them: its resume may run them


def training_env(config: RunConfig) -> Any:
    """The vectorised environment a run trains on: ``n_envs`` seeded copies, its preset and ``gym.make`` arguments,
    its non-finite observation rule, in this process or one process per copy."""
    return make_env(
        config.env_id,
        config.n_envs,
        config.seed,
        config.env_preset,
        env_kwargs=config.env_kwargs,
        nonfinite=config.nonfinite_obs,
        subprocess=config.vec_env == "subproc",
    )


def _model_to_train(
    config: RunConfig,
    folder: AgentRunFolder,
    resume: bool,
    tb_log: str | None,
    verbose: int,
    model: BaseAlgorithm | None,
) -> BaseAlgorithm:
    """``model`` set to log into the run, or, when ``None``, one built (or with ``resume`` loaded) on a new
    environment."""
    if model is not None:
        model.tensorboard_log = tb_log
        model.verbose = verbose
        return model
    env = training_env(config)
    if resume:
        return load_latest(config, folder, env, tb_log, verbose)[0]
    return build_model(config, env, tb_log, verbose=verbose)


def _record_timing(folder: AgentRunFolder, start_steps: int, steps: int, elapsed: float, interrupted: bool) -> None:
    """Append this start's steps and speed to the run's ``timing.yml``."""
    timing = {
        "start_step": start_steps,
        "steps": steps,
        "seconds": round(elapsed, 1),
        "steps_per_second": round(steps / max(elapsed, 1e-9), 1),
        "interrupted": interrupted,
    }
    append_text_by_rename(folder.path / "timing.yml", yaml.safe_dump([timing], sort_keys=False))


def _learn(
    model: BaseAlgorithm,
    steps: int,
    every: CallbackList,
    stopper: StopOnSignal,
    config: RunConfig,
    folder: AgentRunFolder,
    resume: bool,
) -> None:
    """``model.learn`` for ``steps`` more steps, until done or stopped by a signal; a broken environment leaves a
    checkpoint of the training so far and is raised again saying where it is."""
    try:
        model.learn(steps, callback=every, tb_log_name="tb", reset_num_timesteps=not resume, progress_bar=False)
    except StopTraining:
        stopper.restore(model)
    except BrokenEnvironmentError as error:
        # Keep what was learnt: the weights are those of the last update, so count only its steps.
        if isinstance(model, OnPolicyAlgorithm):
            model.num_timesteps = stopper.rollout_start_timesteps
        kept = save_checkpoint(model, folder, config.algo, config.keep_checkpoints)
        vec_env = model.get_env()
        with contextlib.suppress(Exception):  # the environment is broken: closing it may fail too
            if vec_env is not None:
                vec_env.close()
        raise type(error)(f"{error} Checkpoint {kept} holds the training so far.") from error


def run_training(
    config: RunConfig,
    folder: AgentRunFolder,
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
    :param progress_bar: a tqdm/rich progress bar in the run's steps (:class:`StepsBar`).
    :param tensorboard: write TensorBoard events into the folder.
    :param verbose: SB3 verbosity.
    :param model: a model already built by :func:`build_model` or, with ``resume``, loaded by
        :func:`~hp_rl.rl.checkpoints.load_latest` (its environment included); built or loaded here when
        ``None``.
    :param callbacks: extra callbacks.
    :raises NoCheckpointError: ``resume`` with no readable checkpoint.
    """
    from hp_rl.rl.models import apply_threads

    apply_threads(config.threads, config.device)  # config.yml records the request
    tb_log = str(folder.path) if tensorboard else None
    with_hub = config.hub is not None
    model = _model_to_train(config, folder, resume, tb_log, verbose, model)
    if with_hub and not resume:
        write_text_by_rename(folder.hub_manifest, yaml.safe_dump(hub_manifest(model), sort_keys=False))
        _write_hub_spec(model, folder)
    vec_env = model.get_env()
    assert vec_env is not None
    start_steps = model.num_timesteps
    remaining = max(config.n_timesteps - start_steps, 0)
    stopper = StopOnSignal()
    started = time.time()
    with _signals_to(stopper):
        bar = [StepsBar(config.n_timesteps)] if progress_bar else []
        every = CallbackList([*_callbacks(config, folder, stopper, with_hub), *bar, *(callbacks or [])])
        _learn(model, remaining, every, stopper, config, folder, resume)
        stopper.stop_at_once = False
        elapsed = time.time() - started
        interrupted = stopper.received  # a signal during the saves below no longer counts as an interruption
        if interrupted is not None and isinstance(model, OnPolicyAlgorithm):
            model.num_timesteps = stopper.rollout_start_timesteps  # SB3 threw the partial rollout away
        steps = model.num_timesteps - start_steps
        final = save_atomically(model, folder.final_model) if interrupted is None else None
        # The last checkpoint of a finished run is model.zip itself (a hard link): resumable, no second copy.
        checkpoint = save_checkpoint(model, folder, config.algo, config.keep_checkpoints, same_as=final)
    _record_timing(folder, start_steps, steps, elapsed, interrupted is not None)
    vec_env.close()
    return TrainOutcome(
        model, interrupted, checkpoint, None if interrupted is not None else folder.final_model, steps, elapsed
    )


def train(
    config: RunConfig,
    folder: AgentRunFolder,
    resume: bool = False,
    progress_bar: bool = True,
    tensorboard: bool = True,
    verbose: int = 0,
) -> BaseAlgorithm:
    """Train (or continue) the run in ``folder``; returns the trained model (see :func:`run_training`).

    An interrupted run returns with ``model.num_timesteps < config.n_timesteps`` and a checkpoint written.
    """
    outcome = run_training(
        config, folder, resume=resume, progress_bar=progress_bar, tensorboard=tensorboard, verbose=verbose
    )
    if outcome.interrupted_by is not None:
        logger.info(
            f"Interrupted at step {outcome.model.num_timesteps}; checkpoint {outcome.checkpoint}. Continue with: "
            f"python -m hp_rl.train --resume {folder.path}"
        )
    return outcome.model
