"""Hyperparameters per algorithm and environment family, read from ``configs/<algo>.yml``."""

from __future__ import annotations

import copy
from typing import Any

from hp_rl.overrides import ConfigError, parse_overrides
from hp_rl.paths import CONFIG_DIR, require_dir

__all__ = ["ConfigError", "load_hyperparams", "parse_overrides", "apply_overrides", "resolve_hyperparams"]


def load_hyperparams(algo: str, family: str) -> dict[str, Any]:
    """The ``family`` section of ``configs/<algo>.yml`` (a copy; empty if the family has no section)."""
    import yaml

    path = require_dir(CONFIG_DIR, "configs") / f"{algo}.yml"
    if not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of family -> hyperparameters.")
    return copy.deepcopy(raw.get(family) or {})


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with dotted-key ``overrides`` applied."""
    result = copy.deepcopy(params)
    for dotted, value in overrides.items():
        target = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"Override {dotted!r}: '{part}' is not a mapping.")
            target = child
        target[leaf] = value
    return result


def _schedule(value: Any, key: str) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        try:
            start = float(value[len("lin_") :])
        except ValueError as error:
            raise ConfigError(f"{key}: {value!r} is not a schedule; use lin_<number>, e.g. lin_2.5e-4.") from error
        from stable_baselines3.common.utils import LinearSchedule

        return LinearSchedule(start, 0.0, 1.0)
    return value


_OPTIMIZERS = {
    "Adam": ("torch.optim", "Adam"),
    "AdamW": ("torch.optim", "AdamW"),
    "RMSprop": ("torch.optim", "RMSprop"),
    "SGD": ("torch.optim", "SGD"),
    "RMSpropTFLike": ("stable_baselines3.common.sb2_compat.rmsprop_tf_like", "RMSpropTFLike"),
}


def resolve_hyperparams(params: dict[str, Any]) -> dict[str, Any]:
    """Turn config values into the objects SB3 takes: schedules, optimizer classes.

    The input stays plain data (it is what the run folder records); the output goes to the constructor.
    """
    import importlib

    resolved = copy.deepcopy(params)
    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        if key in resolved:
            resolved[key] = _schedule(resolved[key], key)
    policy_kwargs = resolved.get("policy_kwargs") or {}
    name = policy_kwargs.get("optimizer_class")
    if isinstance(name, str):
        if name not in _OPTIMIZERS:
            raise ConfigError(
                f"policy_kwargs.optimizer_class: unknown optimizer {name!r}; known: {sorted(_OPTIMIZERS)}."
            )
        module, attr = _OPTIMIZERS[name]
        policy_kwargs["optimizer_class"] = getattr(importlib.import_module(module), attr)
    if policy_kwargs:
        resolved["policy_kwargs"] = policy_kwargs
    return resolved
