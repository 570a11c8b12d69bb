"""Hyperparameters per algorithm and environment family, read from ``configs/<algo>.yml``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from hp_rl.core.errors import ConfigError, HpRlError
from hp_rl.core.overrides import parse_overrides
from hp_rl.core.paths import CONFIG_DIR, require_dir
from hp_rl.core.validation import AnyValue, Bool, Float, Int, Rule, Schedule, check_values
from hp_rl.core.yaml_files import read_yaml_mapping
from hp_rl.hub.options import LOSS_WEIGHT_RULES

__all__ = [
    "ConfigError",
    "HYPERPARAMETER_RULES",
    "load_hyperparams",
    "parse_overrides",
    "apply_overrides",
    "resolve_hyperparams",
    "check_hyperparam_values",
]


def _train_freq(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 1
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and value[0] >= 1
        and value[1] in ("step", "episode")
    )


# What each SB3 (and HubPPO/HubA2C) hyperparameter accepts; SB3 checks few of these itself, and a string
# where a number belongs would otherwise fail deep inside training (or, for n_steps, repeat a string).
HYPERPARAMETER_RULES: dict[str, Rule] = {
    "n_steps": Int(1),
    "batch_size": Int(1),
    "n_epochs": Int(1),
    "buffer_size": Int(1),
    "learning_starts": Int(0),
    "gradient_steps": Int(-1),
    "target_update_interval": Int(1),
    "sde_sample_freq": Int(-1),
    "stats_window_size": Int(1),
    "train_freq": AnyValue(_train_freq, "a whole number >= 1 or [N, step|episode]"),
    "gamma": Float(0.0, 1.0),
    "gae_lambda": Float(0.0, 1.0),
    "ent_coef": Float(0.0),
    "vf_coef": Float(0.0),
    "max_grad_norm": Float(0.0, low_open=True),
    "learning_rate": Schedule(),
    "clip_range": Schedule(),
    "clip_range_vf": Schedule(optional=True),
    "target_kl": Float(0.0, low_open=True, optional=True),
    "exploration_fraction": Float(0.0, 1.0),
    "exploration_initial_eps": Float(0.0, 1.0),
    "exploration_final_eps": Float(0.0, 1.0),
    "tau": Float(0.0, 1.0),
    "rms_prop_eps": Float(0.0, low_open=True),
    "normalize_advantage": Bool(),
    "use_sde": Bool(),
    "use_rms_prop": Bool(),
    "optimize_memory_usage": Bool(),
    **LOSS_WEIGHT_RULES,  # HubPPO/HubA2C's loss weights, defined with the method's options
    "policy_kwargs": AnyValue(lambda v: v is None or isinstance(v, dict), "a mapping (policy_kwargs.KEY=VALUE)"),
}


def check_hyperparam_values(
    params: dict[str, Any], where: Callable[[str], str], error: type[HpRlError] = ConfigError
) -> None:
    """Check the value of every hyperparameter in ``params`` that has a rule in :data:`HYPERPARAMETER_RULES`.

    :param params: key -> value (plain data, as in ``configs/<algo>.yml``).
    :param where: key -> how the message names it (``--set n_steps``, ``configs/ppo.yml ...``).
    :param error: the error class raised.
    :raises ConfigError: naming the key, the value and what is accepted.
    """
    check_values(params, HYPERPARAMETER_RULES, where, error)


def load_hyperparams(algo: str, family: str) -> dict[str, Any]:
    """The ``family`` section of ``configs/<algo>.yml`` (a copy; empty if the family has no section)."""
    path = require_dir(CONFIG_DIR, "configs") / f"{algo}.yml"
    if not path.is_file():
        return {}
    raw = read_yaml_mapping(path, "hyperparameter file (family -> hyperparameters)", allow_empty=True)
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
