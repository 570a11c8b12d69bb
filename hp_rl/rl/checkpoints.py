"""Checkpoints of a run: written after an update, by rename, pruned, and read back without unpickling.

A checkpoint ``checkpoints/rl_model_<steps>_steps.zip`` is written when a rollout starts, that is after
the previous rollout's update: the weights it holds have learned from exactly the ``<steps>`` steps it
counts, so a resumed run makes the same updates as an uninterrupted one.

Reading never uses SB3's loader (which unpickles the ``data`` member): the model is rebuilt from the
run's ``config.yml`` and hub spec by :func:`~hp_rl.rl.models.build_model`, then the weights
(``weights_only``) and the plain counters of ``data`` are filled in (:mod:`hp_rl.core.archive`). DQN's replay
buffer is kept as ``.npz`` arrays, read with ``allow_pickle=False``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import zipfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from hp_rl.core.archive import ArchiveError, SB3Archive, check_npz_file, load_json_bytes, read_sb3_archive
from hp_rl.core.errors import HpRlError
from hp_rl.core.paths import written_by_rename
from hp_rl.hub.trusted_code import refuse_untrusted_hub
from hp_rl.rl.models import build_model
from hp_rl.rl.runs import AgentRunFolder, RunConfig, checkpoints_by_step

__all__ = [
    "NoCheckpointError",
    "CheckpointAfterUpdate",
    "DEFAULT_KEEP_CHECKPOINTS",
    "save_atomically",
    "save_checkpoint",
    "prune_checkpoints",
    "replay_buffer_path",
    "save_replay_buffer",
    "load_replay_buffer",
    "restore_from_archive",
    "load_model",
    "load_latest",
    "config_for_loading",
]

logger = logging.getLogger(__name__)

DEFAULT_KEEP_CHECKPOINTS = 5
# Plain counters of SB3's ``data`` that a resumed model continues from (the rest is rebuilt from config.yml).
_INT_COUNTERS = ("num_timesteps", "_num_timesteps_at_start", "_episode_num", "_n_updates", "_n_calls")
_FLOAT_COUNTERS = ("_current_progress_remaining", "exploration_rate")
_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


# The key of a checkpoint's data that lists the frozen trunks it was saved without (prefix -> file sha256).
FROZEN_FROM_HUB = "hp_rl_frozen_from_hub"


class NoCheckpointError(HpRlError, FileNotFoundError):
    """A run folder has no checkpoint that can be loaded, so it cannot be resumed."""


# --- writing -----------------------------------------------------------------------------------------------------
def save_atomically(model: BaseAlgorithm, path: Path, without_frozen_trunks: bool = False) -> Path:
    """``model.save(path)`` through a temporary file renamed into place when complete
    (:func:`~hp_rl.core.paths.written_by_rename`).

    :param without_frozen_trunks: leave out the weights of frozen expert trunks loaded from hub files (they
        are the files' weights; :func:`restore_from_archive` takes them from the rebuilt model after checking
        each file's sha256). A checkpoint of a hub of frozen NatureCNN experts then holds what trains.
    """
    frozen = frozen_hub_trunks(model) if without_frozen_trunks else {}
    with written_by_rename(path) as partial:
        if not frozen:
            model.save(partial)
            return path
        full = model.get_parameters

        def trimmed() -> dict[str, dict]:
            params = full()
            params["policy"] = {k: v for k, v in params["policy"].items() if not k.startswith(tuple(frozen))}
            return params

        model.get_parameters = trimmed  # type: ignore[method-assign]  # this save only
        setattr(model, FROZEN_FROM_HUB, frozen)  # plain JSON in the zip's data: prefix -> sha256
        try:
            model.save(partial, exclude=["get_parameters"])
        finally:
            del model.get_parameters
            delattr(model, FROZEN_FROM_HUB)
    return path


def frozen_hub_trunks(model: BaseAlgorithm) -> dict[str, str]:
    """Policy state-dict key prefix of every frozen expert trunk loaded from a hub file -> that file's sha256."""
    from hp_rl.hub.expert import HubExpert
    from hp_rl.routing.experts import TrunkExpert

    found = {}
    # every name of a shared module (SB3's features_extractor is also pi_ and vf_features_extractor)
    for name, module in model.policy.named_modules(remove_duplicate=False):
        if not isinstance(module, TrunkExpert) or not module.frozen:
            continue
        inner = module.inner_trunk
        if (
            isinstance(inner, HubExpert)
            and inner.provenance.sha256
            and not any(p.requires_grad for p in module.trunk.parameters())
        ):
            found[f"{name}.trunk."] = inner.provenance.sha256
    return found


def _with_frozen_trunks(model: BaseAlgorithm, policy: dict[str, Any], saved: Any, path: Path) -> dict[str, Any]:
    """``policy`` with the frozen trunks a trimmed checkpoint left out, from the freshly built ``model``."""
    if not isinstance(saved, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in saved.items()):
        raise ArchiveError(f"{path}: its '{FROZEN_FROM_HUB}' record is not a mapping of names to digests.")
    built = frozen_hub_trunks(model)
    for prefix, digest in saved.items():
        if built.get(prefix) != digest:
            now = built.get(prefix, "not a frozen trunk of this hub")
            raise ArchiveError(
                f"{path} was saved without the frozen trunk {prefix.rstrip('.')} of the hub file with sha256 {digest}; "
                f"the run's hub now gives {now}. Restore that file (the run's hub.yml names it)."
            )
    state = model.policy.state_dict()
    return {**{k: v for k, v in state.items() if k.startswith(tuple(saved))}, **policy}


def replay_buffer_path(folder: AgentRunFolder, steps: int) -> Path:
    """Where the replay buffer saved with the checkpoint of ``steps`` steps lives."""
    return folder.checkpoints / f"rl_model_replay_buffer_{steps}_steps.npz"


def save_replay_buffer(buffer: ReplayBuffer, path: Path) -> Path:
    """The filled rows of ``buffer`` and its position, as ``.npz`` arrays (no pickle), written by rename."""
    rows = buffer.buffer_size if buffer.full else buffer.pos
    arrays: dict[str, np.ndarray] = {"pos": np.asarray(buffer.pos), "full": np.asarray(buffer.full)}
    for name in _BUFFER_ARRAYS:
        value = getattr(buffer, name, None)
        if isinstance(value, np.ndarray):
            arrays[name] = value[:rows]
    with written_by_rename(path) as partial, open(partial, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    return path


def load_replay_buffer(buffer: ReplayBuffer, path: Path) -> int:
    """Fill ``buffer`` from a file of :func:`save_replay_buffer`; returns the rows read.

    Array shapes and dtypes must be the buffer's (the run's config decides them); each member's size is
    checked before it is read, so a file cannot claim more memory than the buffer holds.

    :raises ArchiveError: for a file that does not match the buffer or is corrupt.
    """
    expected = {name: value for name in _BUFFER_ARRAYS if isinstance(value := getattr(buffer, name, None), np.ndarray)}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            for name, info in members.items():
                limit = expected[name].nbytes + 4096 if name in expected else 4096
                if info.file_size > limit:
                    raise ArchiveError(
                        f"{path}: array '{name}' is larger ({info.file_size} bytes) than the replay "
                        f"buffer can hold ({limit}); the file does not belong to this run."
                    )
        check_npz_file(path)
        with np.load(path, allow_pickle=False) as stored:
            missing = sorted(set(expected) | {"pos", "full"} - set(stored.files))
            if missing:
                raise ArchiveError(f"{path}: no array(s) {missing}; it is not a replay buffer saved by hp_rl.")
            pos, full = int(stored["pos"]), bool(stored["full"])
            rows = buffer.buffer_size if full else pos
            if not 0 <= pos <= buffer.buffer_size:
                raise ArchiveError(f"{path}: position {pos} is outside the buffer of {buffer.buffer_size} rows.")
            for name, target in expected.items():
                value = stored[name]
                if value.shape != (rows, *target.shape[1:]) or value.dtype != target.dtype:
                    raise ArchiveError(
                        f"{path}: array '{name}' has shape {value.shape} {value.dtype}, the run's "
                        f"buffer needs ({rows}, *{target.shape[1:]}) {target.dtype}."
                    )
                target[:rows] = value
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ArchiveError(f"{path} cannot be read as a replay buffer ({error}).") from error
    buffer.pos, buffer.full = pos % buffer.buffer_size, full or pos == buffer.buffer_size
    return rows


def episodes_path(checkpoint: Path) -> Path:
    """The episode statistics saved beside a checkpoint (``rl_model_<steps>_steps.episodes.json``)."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".zip") + ".episodes.json")


_MAX_EPISODES_BYTES = 1 << 20


def save_episode_stats(model: BaseAlgorithm, checkpoint: Path) -> None:
    """SB3's recent-episode buffers (``rollout/ep_rew_mean`` averages them) as plain JSON beside ``checkpoint``.

    SB3 keeps them pickled in the zip's ``data``, which is never decoded here; without this a resumed run
    would log its first episode means over the few episodes since the resume.
    """

    def plain(buffer: Any) -> list[Any]:
        return (
            []
            if buffer is None
            else [
                {str(k): float(v) for k, v in dict(item).items()} if isinstance(item, dict) else float(item)
                for item in buffer
            ]
        )

    stats = {"ep_info_buffer": plain(model.ep_info_buffer), "ep_success_buffer": plain(model.ep_success_buffer)}
    with written_by_rename(episodes_path(checkpoint)) as partial:
        partial.write_text(json.dumps(stats), encoding="utf-8")


def restore_episode_stats(model: BaseAlgorithm, checkpoint: Path) -> None:
    """Refill SB3's recent-episode buffers from the JSON beside ``checkpoint`` (nothing when absent or bad)."""
    path = episodes_path(checkpoint)
    if not path.is_file() or path.stat().st_size > _MAX_EPISODES_BYTES:
        return
    try:
        stats = load_json_bytes(path.read_bytes(), str(path))
        window = int(getattr(model, "_stats_window_size", 100))
        infos = [{str(k): float(v) for k, v in item.items()} for item in stats["ep_info_buffer"]]
        successes = [float(item) for item in stats["ep_success_buffer"]]
    except (ValueError, TypeError, KeyError, AttributeError):  # ArchiveError is a ValueError
        logger.warning(f"{path} is not a valid episode record; episode means restart after the resume.")
        return
    model.ep_info_buffer = deque(infos[-window:], maxlen=window)
    model.ep_success_buffer = deque(successes[-window:], maxlen=window)


def prune_checkpoints(folder: AgentRunFolder, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0``: keep every one); returns the deleted."""
    if keep <= 0:
        return []
    deleted = []
    for path, _ in checkpoints_by_step(folder.checkpoints)[keep:]:
        path.unlink(missing_ok=True)
        episodes_path(path).unlink(missing_ok=True)
        deleted.append(path)
    return deleted


def save_checkpoint(
    model: BaseAlgorithm,
    folder: AgentRunFolder,
    algo: str,
    keep: int = DEFAULT_KEEP_CHECKPOINTS,
    same_as: Path | None = None,
) -> Path:
    """Write ``rl_model_<steps>_steps.zip`` (and DQN's replay buffer, only the newest kept) by rename, so a
    process killed while writing never leaves a truncated checkpoint; then prune to ``keep`` checkpoints.

    :param same_as: a file already holding exactly this model (the final ``model.zip``): the checkpoint
        becomes a hard link to it (a copy where links are not supported) instead of a second save.
    """
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    target = folder.checkpoints / f"rl_model_{model.num_timesteps}_steps.zip"
    if same_as is None:
        path = save_atomically(model, target, without_frozen_trunks=True)
    else:
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        try:
            os.link(same_as, partial)
        except OSError:  # no hard links on this file system
            shutil.copyfile(same_as, partial)
        os.replace(partial, target)
        path = target
    save_episode_stats(model, path)
    buffer = getattr(model, "replay_buffer", None)
    if algo == "dqn" and isinstance(buffer, ReplayBuffer):
        newest = save_replay_buffer(buffer, replay_buffer_path(folder, model.num_timesteps))
        for old in folder.checkpoints.glob("rl_model_replay_buffer_*_steps.*"):
            if old != newest and not old.name.endswith(".partial"):
                old.unlink(missing_ok=True)
    prune_checkpoints(folder, keep)
    return path


class CheckpointAfterUpdate(BaseCallback):
    """Writes a checkpoint at the first rollout start past each multiple of ``save_freq`` steps.

    SB3 starts a rollout after the previous rollout's update (on- and off-policy alike), so the
    checkpoint's weights, optimizer and counters agree with its step count.

    :param save_freq: environment steps between checkpoints.
    :param folder: the run folder.
    :param algo: algorithm name (DQN also saves its replay buffer).
    :param keep: checkpoints kept (older ones are deleted; 0 keeps all).
    """

    def __init__(self, save_freq: int, folder: AgentRunFolder, algo: str, keep: int = DEFAULT_KEEP_CHECKPOINTS) -> None:
        super().__init__()
        self.save_freq = max(int(save_freq), 1)
        self.folder = folder
        self.algo = algo
        self.keep = keep
        self.last_saved = 0

    def _on_training_start(self) -> None:
        self.last_saved = self.num_timesteps

    def _on_rollout_start(self) -> None:
        if self.num_timesteps // self.save_freq > self.last_saved // self.save_freq:
            save_checkpoint(self.model, self.folder, self.algo, self.keep)
            self.last_saved = self.num_timesteps

    def _on_step(self) -> bool:
        return True


# --- reading -----------------------------------------------------------------------------------------------------
def config_for_loading(config: RunConfig, folder: AgentRunFolder | None) -> RunConfig:
    """The config that rebuilds a saved model: the run's own copy of its hub spec where it has one, and no
    work whose result the checkpoint overwrites (``prior="auto"`` scoring only sets initial biases)."""
    result = copy.deepcopy(config)
    if folder is not None and config.hub is not None and folder.hub_spec.is_file():
        result.hub = str(folder.hub_spec.resolve())
    if folder is not None:  # a run folder names the hub: its TorchScript files run only if the user trusts them
        refuse_untrusted_hub(result.hub, str(folder.hub_spec if folder.hub_spec.is_file() else folder.config))
    if result.hub_kwargs.get("prior") == "auto":
        result.hub_kwargs["prior"] = None
    return result


def _counter(archive: SB3Archive, key: str, kind: type) -> Any:
    value = archive.data[key]
    ok = not isinstance(value, bool) and isinstance(value, kind if kind is int else int | float)
    if not ok or (kind is int and value < 0) or (kind is float and not np.isfinite(value)):
        raise ArchiveError(f"{archive.path}: data['{key}'] = {value!r} is not a valid counter; the file is corrupt.")
    return kind(value)


def restore_from_archive(model: BaseAlgorithm, archive: SB3Archive) -> None:
    """Fill a freshly built ``model`` with the weights, optimizer states and counters of ``archive``.

    :raises ArchiveError: when the archive does not hold the model's parameters (another config, a foreign
        or damaged file).
    """
    state_names, variable_names = model._get_torch_save_params()
    missing = sorted(set(state_names) - set(archive.state_dicts))
    if missing or "num_timesteps" not in archive.data:
        what = f"the state(s) {missing}" if missing else "the step counter num_timesteps"
        raise ArchiveError(f"{archive.path} lacks {what}; it is not a checkpoint of a {type(model).__name__} model.")
    params = {name: archive.state_dicts[name] for name in state_names}
    if FROZEN_FROM_HUB in archive.data:  # a checkpoint saved without the frozen trunks of its hub files
        params["policy"] = _with_frozen_trunks(model, params["policy"], archive.data[FROZEN_FROM_HUB], archive.path)
    try:
        model.set_parameters(params, exact_match=True, device=model.device)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ArchiveError(f"{archive.path} does not fit the model its run's config.yml builds ({error}).") from error
    for name in variable_names:
        tensor = archive.pytorch_variables.get(name)
        if tensor is None:
            raise ArchiveError(f"{archive.path}: pytorch_variables.pth lacks '{name}'.")
        target = model
        *parents, leaf = name.split(".")
        for part in parents:
            target = getattr(target, part)
        getattr(target, leaf).data.copy_(tensor.data)
    for key in _INT_COUNTERS:
        if key in archive.data:
            setattr(model, key, _counter(archive, key, int))
    for key in _FLOAT_COUNTERS:
        if key in archive.data:
            setattr(model, key, _counter(archive, key, float))


def load_model(
    config: RunConfig,
    path: Path,
    env: VecEnv,
    folder: AgentRunFolder | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
) -> BaseAlgorithm:
    """The model saved in ``path``, rebuilt from ``config`` (and ``folder``'s hub spec) on ``env``.

    Only the weights (``*.pth``, weights only) and the plain counters of ``data`` are read; the pickled
    objects SB3 keeps in ``data`` (policy class, spaces, schedules, last observation, episode buffer) are
    never decoded: ``config.yml`` decides them.

    :raises ArchiveError: for a file that cannot be read or does not fit the model.
    """
    archive = read_sb3_archive(path)
    model = build_model(config_for_loading(config, folder), env, tensorboard_log, verbose=verbose)
    restore_from_archive(model, archive)
    return model


def load_latest(
    config: RunConfig, folder: AgentRunFolder, env: VecEnv, tensorboard_log: str | None = None, verbose: int = 0
) -> tuple[BaseAlgorithm, Path, int]:
    """The model of the newest checkpoint in ``folder`` that loads, with its path and step count.

    A checkpoint that cannot be read for any reason (truncated, corrupt, foreign, a payload refused) is
    reported and the previous one is tried. The model is built once from the run's config; a failure while
    building it (a missing hub file) is the run's problem, not the checkpoint's, and is raised as such.
    DQN's replay buffer is restored when the one saved with that checkpoint is there and readable.

    :raises NoCheckpointError: when no checkpoint can be loaded.
    """
    problems = []
    model: BaseAlgorithm | None = None
    for path, steps in checkpoints_by_step(folder.checkpoints):
        try:
            archive = read_sb3_archive(path)
            if archive.data.get("num_timesteps") != steps:  # a file named for steps it does not hold
                raise ArchiveError(f"it holds {archive.data.get('num_timesteps')!r} steps, not the {steps} of its name")
            if model is None:
                model = build_model(config_for_loading(config, folder), env, tensorboard_log, verbose=verbose)
            restore_from_archive(model, archive)
        except ArchiveError as error:
            problems.append(f"{path.name}: {error}")
            logger.warning(f"checkpoint {path} cannot be used ({error}); trying the previous one.")
            model = None  # a partly filled model is not reused
            continue
        if config.algo == "dqn":
            _restore_buffer(model, folder, path, steps)
        restore_episode_stats(model, path)
        return model, path, steps
    detail = f" Unusable: {'; '.join(problems)}." if problems else ""
    raise NoCheckpointError(
        f"{folder.checkpoints} holds no checkpoint (rl_model_<steps>_steps.zip) that can be resumed from.{detail} "
        "Start a new run instead, or point --resume at the run folder that holds the checkpoints."
    )


def _restore_buffer(model: BaseAlgorithm, folder: AgentRunFolder, path: Path, steps: int) -> None:
    buffer = getattr(model, "replay_buffer", None)
    replay = replay_buffer_path(folder, steps)
    if not isinstance(buffer, ReplayBuffer):
        return
    if replay.is_file():
        try:
            load_replay_buffer(buffer, replay)
            return
        except ArchiveError as error:
            logger.warning(f"{error} DQN continues with an empty replay buffer.")
            return
    stale = sorted(p.name for p in folder.checkpoints.glob("rl_model_replay_buffer_*_steps.pkl"))
    why = f" ({', '.join(stale)} are pickle files, which are never read)" if stale else ""
    logger.warning(f"no replay buffer saved with {path.name}{why}; DQN continues with an empty buffer.")
