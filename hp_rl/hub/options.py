"""The Hub-Pathway options and what each accepts: one table, checked wherever a pathway is built.

:class:`~hp_rl.rl.extractor.HubPathwayExtractor` checks its arguments against :data:`PATHWAY_OPTIONS`, so a
bad value is refused the same way from the command line (``--hub-set``), a preset, a run's config or a
user's own SB3 script.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hp_rl.errors import HpRlError
from hp_rl.validation import AnyValue, Bool, Choice, Float, Int, Rule, check_values

__all__ = ["PathwayOptionError", "PATHWAY_OPTIONS", "MAX_EXPERTS", "MAX_FEATURES_DIM", "check_pathway_options"]

# Upper bounds checked before anything is built: a hub of more experts, or a wider pathway, is a typo
# (random:100000000) long before it is a model. Both are far above any published hub.
MAX_EXPERTS = 256
MAX_FEATURES_DIM = 65_536

_FRACTION = Float(0.0, 1.0)
_OPTIONAL_FRACTION = Float(0.0, 1.0, optional=True)
_SCALE = Float(0.0)


def _names(value: Any) -> bool:
    return value is None or (isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value))


def _prior(value: Any) -> bool:
    return value is None or isinstance(value, str | Mapping)


PATHWAY_OPTIONS: dict[str, Rule] = {
    "k": Int(1, MAX_EXPERTS),
    "k_from_prior": Float(0.0, 1.0, low_open=True, optional=True),
    "features_dim": Int(1, MAX_FEATURES_DIM),
    "freeze_experts": Bool(),
    "expert_lr_scale": _SCALE,
    "noise": Choice(("learned", "fixed", "none")),
    "noise_std": _SCALE,
    "explore_coef": _SCALE,
    "balance": Choice(("cv2", "switch")),
    "dense": Bool(),
    "execution": Choice(("auto", "fused", "sparse")),
    "noise_seed": Int(0, 2**63 - 1),
    "aggregation": Choice(("features", "output")),
    "output_mix": Choice(("probs", "logits")),
    "action_meanings": AnyValue(_names, "a list of action names"),
    "num_actions": Int(1, optional=True),
    "channel_names": AnyValue(_names, "a list of channel names"),
    "base_expert": Bool(),
    "noise_cap": Float(0.0, low_open=True, optional=True),
    "noise_anneal": Float(0.0, 1.0, low_open=True, optional=True),
    "dense_warmup": _FRACTION,
    "explore_decay": Float(0.0, 1.0, low_open=True, optional=True),
    "unfreeze_at": _OPTIONAL_FRACTION,
    "generator_lr_scale": _SCALE,
    "teachers": Bool(),
    "prior": AnyValue(_prior, "a score file path, auto, or a mapping of expert names to numbers"),
    "prior_scale": Float(),
    "base_prior": Float(0.0, 1.0),
    "teacher_trust": Choice(("uniform", "prior")),
}


class PathwayOptionError(HpRlError, ValueError):
    """A Hub-Pathway option has a value of the wrong type or out of range."""


def check_pathway_options(values: Mapping[str, Any], where: Callable[[str], str] | None = None) -> None:
    """Check the options in ``values`` that are Hub-Pathway options (other keys are ignored).

    :param values: option -> value.
    :param where: option -> how the message names it (default: ``HubPathwayExtractor option <key>``).
    :raises PathwayOptionError: naming the option, the value and what is accepted.
    """
    check_values(
        values, PATHWAY_OPTIONS, where or (lambda key: f"HubPathwayExtractor option {key}"), PathwayOptionError
    )
