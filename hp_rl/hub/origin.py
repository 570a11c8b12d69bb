"""Where an agent given as an SB3 zip comes from, read from the zip and the files beside it.

A user brings agents as the files they have: a zip saved by ``model.save()``, an rl-baselines3-zoo run folder, a
Hugging Face ``sb3/...`` repository, a run folder of ``python -m hp_rl.train`` or ``python -m hp_rl.hub build``.
What each says about the agent's task (so that its channels and actions can be given meanings) and about the
observations it was trained on (``VecNormalize`` statistics):

- the zip's ``data``: its observation and action spaces (always), an ``env_id`` where a program recorded one;
- an hp_rl run folder (the zip's folder, or the folder above ``checkpoints/`` or ``eval/``): ``config.yml``
  (``algo``, ``env_id``, ``env_kwargs``, ``env_preset``) and the hub builder's ``source_eval.yml`` (the agent's
  return on its own task and a random policy's, for this very file);
- an rl-baselines3-zoo run folder (``<algo>/<env>_<N>/<env>.zip`` with ``<env>/args.yml``, ``config.yml``,
  ``vecnormalize.pkl``) or a zoo repository (``args.yml``, ``config.yml``, ``env_kwargs.yml``,
  ``vec_normalize.pkl`` beside the zip).

Nothing is unpickled into objects: YAML is read safely (:func:`hp_rl.core.yaml_files.read_foreign_yaml`: the zoo's
``OrderedDict`` tags as plain mappings, other Python tags as nothing), the normalisation statistics with
:func:`hp_rl.hub.pickle_numbers.read_pickle_numbers`, and the zip's ``data`` as JSON without its ``:serialized:``
payloads.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hp_rl.core.archive import ArchiveError, load_json_bytes
from hp_rl.core.yaml_files import read_foreign_yaml
from hp_rl.hub.pickle_numbers import PickleReadError, Record, read_pickle_numbers

__all__ = ["ObservationNormalization", "ObservationNormalizer", "AgentOrigin", "read_agent_origin"]

# Side files are small text; larger ones are not what they claim to be and are left unread.
_MAX_SIDE_FILE_BYTES = 256 * 2**10
_MAX_DATA_BYTES = 64 * 2**20
_ZOO_NORMALIZATION_FILES = ("vecnormalize.pkl", "vec_normalize.pkl")


@dataclass(frozen=True)
class ObservationNormalization:
    """``VecNormalize``'s observation statistics: the agent saw ``clip((obs - mean) / sqrt(var + epsilon))``.

    :param mean: ``(*obs_shape)`` running mean.
    :param var: ``(*obs_shape)`` running variance.
    :param epsilon: added to the variance.
    :param clip: bound of the normalised observation (``clip_obs``).
    :param file: the file the statistics came from.
    """

    mean: np.ndarray
    var: np.ndarray
    epsilon: float
    clip: float
    file: str

    def module(self) -> ObservationNormalizer:
        """The normalisation as a module (the statistics as buffers, so they move and save with the expert)."""
        return ObservationNormalizer(self)


class ObservationNormalizer(nn.Module):
    """Normalises observations as the agent's ``VecNormalize`` did during its training (fixed statistics).

    :param stats: the statistics.
    """

    mean: Tensor
    inv_std: Tensor

    def __init__(self, stats: ObservationNormalization) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(stats.mean, dtype=np.float32)))
        std = np.sqrt(np.asarray(stats.var, dtype=np.float64) + stats.epsilon)
        self.register_buffer("inv_std", torch.as_tensor((1.0 / std).astype(np.float32)))
        self.clip = float(stats.clip)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, *obs_shape)`` raw observations. :return: the same shape, normalised and clipped."""
        return ((x - self.mean) * self.inv_std).clamp(-self.clip, self.clip)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}, clip={self.clip}"


@dataclass(frozen=True)
class AgentOrigin:
    """What the files say about an agent.

    :param env_id: the task it was trained on, where some file names it.
    :param env_kwargs: ``gym.make`` arguments of that task (a variant), where recorded.
    :param env_preset: the hp_rl environment preset it was trained with, where recorded.
    :param algo: the algorithm, where recorded.
    :param told_by: which files said so, for the user (``config.yml (hp_rl run folder)``, ...).
    :param observation_shape: the observation shape in the zip.
    :param num_actions: the number of discrete actions in the zip (``None`` for other action spaces).
    :param source_return: its mean return on its own task, where a record of this very file says.
    :param random_return: a random policy's mean return there, from the same record.
    :param normalization: the observation statistics it was trained with, if any.
    """

    env_id: str | None = None
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    env_preset: str | None = None
    algo: str | None = None
    told_by: tuple[str, ...] = ()
    observation_shape: tuple[int, ...] | None = None
    num_actions: int | None = None
    source_return: float | None = None
    random_return: float | None = None
    normalization: ObservationNormalization | None = None

    def input_normalizer(self, input_shape: tuple[int, ...]) -> ObservationNormalizer | None:
        """The agent's observation normalisation as a module, where its statistics fit ``input_shape``."""
        if self.normalization is None or tuple(self.normalization.mean.shape) != tuple(input_shape):
            return None
        return self.normalization.module()

    def details(self) -> dict[str, str]:
        """The facts of :meth:`provenance` as the text details an expert's provenance records."""
        return {k: str(v) for k, v in self.provenance().items() if k != "told_by"}

    def provenance(self) -> dict[str, Any]:
        """The facts as plain values (a hub spec's ``provenance``; what run manifests record)."""
        out: dict[str, Any] = {}
        if self.env_id is not None:
            out["env_id"] = self.env_id
        if self.env_kwargs:
            out["env_kwargs"] = dict(self.env_kwargs)
        if self.algo is not None:
            out["algo"] = self.algo
        if self.source_return is not None and self.random_return is not None:
            out["source_return"] = self.source_return
            out["random_return"] = self.random_return
        if self.normalization is not None:
            out["observation_normalization"] = self.normalization.file
        if self.told_by:
            out["told_by"] = list(self.told_by)
        return out


def _side_yaml(path: Path) -> dict[str, Any] | None:
    return read_foreign_yaml(path, _MAX_SIDE_FILE_BYTES)


def _zip_data(path: Path) -> dict[str, Any]:
    """The zip's ``data`` JSON (plain values; ``:serialized:`` payloads are left as text, never decoded)."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("data")
            if info.file_size > _MAX_DATA_BYTES:
                return {}
            raw = archive.read("data")
        data = load_json_bytes(raw, f"{path}: member 'data'")
    except (OSError, KeyError, zipfile.BadZipFile, ArchiveError):
        return {}
    return data if isinstance(data, dict) else {}


def _as_int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if 0 < number < 2**31 else None


def _spaces(data: dict[str, Any]) -> tuple[tuple[int, ...] | None, int | None]:
    """The observation shape and the discrete action count recorded in ``data``."""
    shape: tuple[int, ...] | None = None
    obs = data.get("observation_space")
    if isinstance(obs, dict) and isinstance(obs.get("_shape"), list):
        dims = [_as_int(s) for s in obs["_shape"]]
        if dims and all(d is not None for d in dims):
            shape = tuple(int(d) for d in dims if d is not None)
    actions: int | None = None
    space = data.get("action_space")
    if isinstance(space, dict) and "Discrete" in str(space.get(":type:", "")) and "Multi" not in str(space[":type:"]):
        actions = _as_int(space.get("n"))
    return shape, actions


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _hp_rl_folder(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Facts from an hp_rl run folder holding ``path``."""
    folder = path.parent.parent if path.parent.name in ("checkpoints", "eval") else path.parent
    config = _side_yaml(folder / "config.yml")
    if config is None or not isinstance(config.get("env_id"), str) or "hub" not in config:
        return {}, []
    facts: dict[str, Any] = {"env_id": config["env_id"], "algo": config.get("algo")}
    if isinstance(config.get("env_kwargs"), dict):
        facts["env_kwargs"] = config["env_kwargs"]
    if isinstance(config.get("env_preset"), str):
        facts["env_preset"] = config["env_preset"]
    told = [f"{folder / 'config.yml'} (hp_rl run folder)"]
    record = _side_yaml(path.parent / "source_eval.yml")
    if record is not None:
        from hp_rl.core.paths import file_sha256

        source, random = _finite(record.get("return_mean")), _finite(record.get("random_return_mean"))
        if source is not None and random is not None and record.get("model_sha256") == file_sha256(path):
            facts["source_return"], facts["random_return"] = source, random
            told.append(f"{path.parent / 'source_eval.yml'} (source return)")
    return facts, told


def _zoo_folders(path: Path) -> list[Path]:
    """Where rl-baselines3-zoo keeps an agent's ``args.yml``: ``<env>/`` beside ``<env>.zip``, the one sub-folder
    with an ``args.yml`` (for ``best_model.zip`` and checkpoints), or the zip's own folder (a zoo repository)."""
    folder = path.parent
    found = [folder / path.stem] if (folder / path.stem / "args.yml").is_file() else []
    if not found:
        try:
            subfolders = [d for d in folder.iterdir() if d.is_dir() and (d / "args.yml").is_file()]
        except OSError:
            subfolders = []
        found = subfolders if len(subfolders) == 1 else []
    if not found and ((folder / "args.yml").is_file() or (folder / "config.yml").is_file()):
        found = [folder]
    return found


def _zoo_folder(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Facts from an rl-baselines3-zoo run folder or repository holding ``path``."""
    for folder in _zoo_folders(path):
        args = _side_yaml(folder / "args.yml") or {}
        env_id = args.get("env")
        if not isinstance(env_id, str):
            continue
        facts: dict[str, Any] = {"env_id": env_id, "algo": args.get("algo")}
        told = [f"{folder / 'args.yml'} (rl-zoo)"]
        kwargs = _side_yaml(folder / "env_kwargs.yml")
        if kwargs is None and isinstance(args.get("env_kwargs"), dict):
            kwargs = args["env_kwargs"]
        if kwargs:
            facts["env_kwargs"] = kwargs
        config = _side_yaml(folder / "config.yml") or {}
        facts["normalize"] = config.get("normalize", None)
        facts["zoo_folder"] = folder
        return facts, told
    return {}, []


def _normalization(folder: Path, normalize: Any) -> ObservationNormalization | None:
    """The observation statistics in ``folder``'s ``vecnormalize.pkl``, when the agent normalised observations."""
    if normalize is False or (isinstance(normalize, str) and "'norm_obs': False" in normalize):
        return None
    for name in _ZOO_NORMALIZATION_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            saved = read_pickle_numbers(path)
        except PickleReadError:
            return None
        return _statistics(saved, path)
    return None


def _statistics(saved: Any, path: Path) -> ObservationNormalization | None:
    if not isinstance(saved, dict) or not saved.get("norm_obs", True):
        return None
    rms = saved.get("obs_rms")
    if not isinstance(rms, Record | dict):
        return None  # dict observations keep one statistic per key: not an input this hub reads
    mean, var = rms.get("mean"), rms.get("var")
    epsilon, clip = _finite(saved.get("epsilon", 1e-8)), _finite(saved.get("clip_obs", 10.0))
    if not isinstance(mean, np.ndarray) or not isinstance(var, np.ndarray) or mean.shape != var.shape:
        return None
    if epsilon is None or clip is None or not np.all(np.isfinite(mean)) or not np.all(var >= 0):
        return None
    return ObservationNormalization(mean.astype(np.float64), var.astype(np.float64), epsilon, clip, str(path))


def read_agent_origin(path: str | Path) -> AgentOrigin:
    """What the zip ``path`` and the files beside it say about the agent (see the module docstring).

    Never raises for missing or unreadable side files: what cannot be read is simply not known.
    """
    path = Path(path)
    data = _zip_data(path)
    shape, actions = _spaces(data)
    facts: dict[str, Any] = {}
    told: list[str] = []
    for key in ("env_id", "env_name"):
        if isinstance(data.get(key), str):
            facts["env_id"] = data[key]
            told.append(f"{path} (data)")
            break
    for reader in (_hp_rl_folder, _zoo_folder):
        found, said = reader(path)
        if found.get("env_id") is not None:
            facts = {**found, **{k: v for k, v in facts.items() if k != "env_id"}, "env_id": found["env_id"]}
            told += said
            break
    normalization = None
    if "zoo_folder" in facts:
        normalization = _normalization(facts["zoo_folder"], facts.get("normalize"))
    else:
        for folder in (path.parent, path.parent / path.stem):
            normalization = normalization or _normalization(folder, None)
    if normalization is not None:
        told.append(f"{normalization.file} (observation statistics)")
        if shape is not None and tuple(normalization.mean.shape) != shape:
            normalization = None  # statistics of some other observation: not this agent's
    kwargs = facts.get("env_kwargs")
    return AgentOrigin(
        env_id=facts.get("env_id"),
        env_kwargs=dict(kwargs) if isinstance(kwargs, dict) else {},
        env_preset=facts.get("env_preset"),
        algo=str(facts["algo"]) if facts.get("algo") is not None else None,
        told_by=tuple(told),
        observation_shape=shape,
        num_actions=actions,
        source_return=facts.get("source_return"),
        random_return=facts.get("random_return"),
        normalization=normalization,
    )
