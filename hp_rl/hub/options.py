"""The Hub-Pathway method's configuration: every option with its type, default, rule and meaning, in one place.

:class:`PathwayOptions` holds the features extractor's options (what
:class:`~hp_rl.rl.extractor.HubPathwayExtractor` builds), :class:`LossWeights` the auxiliary losses' weights
that belong to the algorithm (:class:`~hp_rl.rl.algorithms.HubPPO`, ``HubA2C``). The named presets are their
constructors (``PathwayOptions.preset("transfer")``); :data:`PRESETS` holds what each preset sets. Everything
else is derived from here: the rule tables (:data:`PATHWAY_OPTIONS`, :data:`LOSS_WEIGHT_RULES`), the keyword
arguments split between extractor and algorithm, ``python -m hp_rl.train --hub-options`` and the options table
of the guide (:func:`options_markdown`). A bad value is refused the same way from the command line
(``--hub-set``), a preset, a run's config or a user's own SB3 script.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypeVar, get_args

from hp_rl.core.errors import HpRlError
from hp_rl.core.validation import AnyValue, Bool, Choice, Float, Int, Rule, check_values
from hp_rl.routing import BalanceMode, Execution, NoiseMode, OutputMix

__all__ = [
    "PathwayOptionError",
    "PathwayOptions",
    "LossWeights",
    "SearchRange",
    "Aggregation",
    "TeacherTrust",
    "PRESETS",
    "PATHWAY_OPTIONS",
    "LOSS_WEIGHT_RULES",
    "ALGORITHM_KEYS",
    "MAX_EXPERTS",
    "MAX_FEATURES_DIM",
    "check_pathway_options",
    "pathway_preset",
    "apply_preset",
    "options_markdown",
    "hub_options_table",
]

# Upper bounds checked before anything is built: a hub of more experts, or a wider pathway, is a typo
# (random:100000000) long before it is a model. Both are far above any published hub.
MAX_EXPERTS = 256
MAX_FEATURES_DIM = 65_536

_FRACTION = Float(0.0, 1.0)
_OPTIONAL_FRACTION = Float(0.0, 1.0, optional=True)
_OPEN_FRACTION = Float(0.0, 1.0, low_open=True, optional=True)
_SCALE = Float(0.0)

Aggregation = Literal["features", "output"]
TeacherTrust = Literal["uniform", "prior"]


class PathwayOptionError(HpRlError, ValueError):
    """A Hub-Pathway option has a value of the wrong type or out of range, or is not an option."""


def _names(value: Any) -> bool:
    return value is None or (isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value))


def _prior(value: Any) -> bool:
    return value is None or isinstance(value, str | Mapping)


@dataclass(frozen=True)
class SearchRange:
    """Where ``python -m hp_rl.tune`` searches an option: ``[low, high]``, log-uniform when ``log``."""

    low: float
    high: float
    log: bool = False


def _option(default: Any, rule: Rule, doc: str, search: SearchRange | None = None) -> Any:
    """A field of an options class: its default, the rule its values pass, what it does (one line of prose) and,
    for the options tuning searches, where."""
    return field(default=default, metadata={"rule": rule, "doc": doc, "search": search})


_O = TypeVar("_O", bound="_Options")


class _Options:
    """What both options classes share: checked construction, construction from plain values and presets."""

    def __post_init__(self) -> None:
        check_pathway_options(
            {f.name: getattr(self, f.name) for f in fields(self)},  # type: ignore[arg-type]
            lambda key: f"{type(self).__name__} option {key}",
            rules=rules_of(type(self)),
        )

    @classmethod
    def from_mapping(cls: type[_O], values: Mapping[str, Any], where: str = "") -> _O:
        """The options with ``values`` over the defaults.

        :param where: how messages name the source (default: the class name).
        :raises PathwayOptionError: for a key that is not an option (naming the closest) or a refused value.
        """
        names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        for key in values:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise PathwayOptionError(f"{where or cls.__name__} has no option {key!r}.{hint}")
        check_pathway_options(values, lambda key: f"{where or cls.__name__} option {key}", rules_of(cls))
        return cls(**values)

    @classmethod
    def preset(cls: type[_O], name: str, **changes: Any) -> _O:
        """The named preset's options (:data:`PRESETS`), with ``changes`` over them."""
        own = {key: value for key, value in pathway_preset(name).items() if key in rules_of(cls)}
        return cls.from_mapping({**own, **changes})

    def as_dict(self) -> dict[str, Any]:
        """Every option by name (plain values, as SB3 saves keyword arguments)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def changed(self: _O, **changes: Any) -> _O:
        """A copy with ``changes`` (checked)."""
        return replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class PathwayOptions(_Options):
    """The options of the Hub-Pathway features extractor. The defaults are the paper's configuration."""

    k: int = _option(
        2,
        Int(1, MAX_EXPERTS),
        "routed experts per observation (with `k_from_prior`: at most this many)",
        search=SearchRange(1, 4),
    )
    k_from_prior: float | None = _option(
        None,
        Float(0.0, 1.0, low_open=True, optional=True),
        "the bar of evidence: only experts whose prior reaches it are routed at all (at most `k` per observation); "
        "the others are left out of the policy, and with none above it the base expert acts alone. Head-less "
        "experts score at most 0.2, so only agents that play the target clear 0.5",
    )
    features_dim: int = _option(
        256,
        Int(1, MAX_FEATURES_DIM),
        "common width every expert is adapted to (`n_actions + 1` with `aggregation=output`)",
    )
    freeze_experts: bool = _option(
        True,
        Bool(),
        "freeze the trunks (adapters and generator still train); an expert's own `frozen` in the spec wins",
    )
    expert_lr_scale: float = _option(
        1.0,
        _SCALE,
        "learning-rate multiplier of fine-tuned trunks (HubPPO/HubA2C: one optimizer group per scale)",
        search=SearchRange(0.01, 1.0, log=True),
    )
    noise: NoiseMode = _option("learned", Choice(get_args(NoiseMode)), "routing noise: learned std, fixed std or none")
    noise_std: float = _option(1.0, _SCALE, "the std of `noise=fixed`")
    explore_coef: float = _option(
        0.01, _SCALE, "weight of the exploration (load balance) loss", search=SearchRange(1e-4, 0.1, log=True)
    )
    balance: BalanceMode = _option(
        "cv2", Choice(get_args(BalanceMode)), "the exploration loss: `cv2` (importance and load) or `switch` (f·P)"
    )
    dense: bool = _option(False, Bool(), "every expert on every observation with softmax weights (the dense baseline)")
    execution: Execution = _option(
        "auto",
        Choice(get_args(Execution)),
        "experts of one architecture as one batched call on every observation (`fused`) or each on its routed ones "
        "(`sparse`); `auto` fuses small batches, where per-call overhead dominates. Same outputs either way",
    )
    noise_seed: int = _option(0, Int(0, 2**63 - 1), "seed of the content-keyed routing noise")
    aggregation: Aggregation = _option(
        "features",
        Choice(get_args(Aggregation)),
        "`output`: every expert keeps its agent's policy and value heads, its actions mapped onto the target's by "
        "meaning (heads that cannot map start fresh; an MLP agent's value comes with its own critic network), and the "
        "pathway mixes the routed experts' policies and values (needs HubPPO/HubA2C); `features`: a weighted sum of "
        "adapted trunk features under the policy's own heads",
    )
    output_mix: OutputMix = _option(
        "probs", Choice(get_args(OutputMix)), "with `aggregation=output`: mix the policies' probabilities or logits"
    )
    action_meanings: tuple[str, ...] | list[str] | None = _option(
        None,
        AnyValue(_names, "a list of action names"),
        "what each target action means; HubPPO/HubA2C read it from the environment",
    )
    num_actions: int | None = _option(
        None, Int(1, optional=True), "the target's actions where `action_meanings` is not given (output aggregation)"
    )
    channel_names: tuple[str, ...] | list[str] | None = _option(
        None,
        AnyValue(_names, "a list of channel names"),
        "what each observation channel means (HubPPO/HubA2C read MinAtar's): input adapters map channels by meaning",
    )
    base_expert: bool = _option(
        False,
        Bool(),
        "an expert named `base`, the target's plain network (small-frame CNN, NatureCNN or 64x64 MLP) started as SB3 "
        "starts scratch's, routed for every observation beside the k chosen ones",
    )
    noise_cap: float | None = _option(
        None,
        Float(0.0, low_open=True, optional=True),
        "bound the noise std by this multiple of the spread of the generator's clean logits",
        search=SearchRange(0.1, 10.0, log=True),
    )
    noise_anneal: float | None = _option(
        None,
        _OPEN_FRACTION,
        "the noise decays linearly to 0 by this fraction of training (then it is not drawn)",
        search=SearchRange(0.05, 1.0),
    )
    dense_warmup: float = _option(
        0.0, _FRACTION, "route densely (softmax over all experts) for this first fraction of training"
    )
    explore_decay: float | None = _option(
        None, _OPEN_FRACTION, "the exploration loss weight decays to 0 by this fraction of training"
    )
    unfreeze_at: float | None = _option(
        None,
        _OPTIONAL_FRACTION,
        "load trunks trainable but keep them frozen until this fraction of training, then fine-tune at "
        "`expert_lr_scale`",
    )
    generator_lr_scale: float = _option(
        1.0, _SCALE, "learning-rate multiplier of the pathway generator", search=SearchRange(0.1, 10.0, log=True)
    )
    teachers: bool = _option(
        False, Bool(), "keep frozen copies of the experts' pretrained policies (set by HubPPO/HubA2C for kickstarting)"
    )
    prior: str | Mapping[str, float] | None = _option(
        None,
        AnyValue(_prior, "a score file path, auto, or a mapping of expert names to numbers"),
        "start the generator's logit biases at `prior_scale · prior`: a score file of `python -m hp_rl.hub score`, "
        "a mapping, or `auto` (HubPPO/HubA2C score the hub on the target before training)",
    )
    prior_scale: float = _option(2.0, Float(), "how strongly the prior tilts the first routes")
    base_prior: float = _option(
        0.0,
        Float(0.0, 1.0),
        "with `base_expert`, the base expert's prior: a routed expert starts with more than half of the mixture only "
        "where its prior is higher",
    )
    teacher_trust: TeacherTrust = _option(
        "uniform",
        Choice(get_args(TeacherTrust)),
        "how much kickstarting imitates each routed teacher: `uniform` fully, `prior` in proportion to its prior, so "
        "other games' agents are not imitated",
    )


@dataclass(frozen=True)
class LossWeights(_Options):
    """The weights of the auxiliary losses, which belong to the algorithm (HubPPO/HubA2C), not the extractor."""

    exploit_coef: float = _option(
        0.1,
        _SCALE,
        "weight of the exploitation loss (each routed expert on its data)",
        search=SearchRange(1e-3, 1.0, log=True),
    )
    kickstart_coef: float = _option(
        0.0,
        _SCALE,
        "weight of `KL(teacher ‖ agent)`, the teacher being the routed experts' pretrained policies mixed with the "
        "pathway weights; it decays as `coef · max(0, 1 − progress / kickstart_fraction)`",
    )
    kickstart_fraction: float = _option(
        0.5, Float(0.0, 1.0, low_open=True), "the fraction of training by which kickstarting ends"
    )
    critic_warmup: float = _option(
        0.0,
        _FRACTION,
        "value-only warm-up: the updates of this first fraction of training train only the critic (`--set`)",
    )


def rules_of(cls: type) -> dict[str, Rule]:
    """Option name -> rule of an options class."""
    return {f.name: f.metadata["rule"] for f in fields(cls)}


PATHWAY_OPTIONS: dict[str, Rule] = rules_of(PathwayOptions)
LOSS_WEIGHT_RULES: dict[str, Rule] = rules_of(LossWeights)
ALGORITHM_KEYS: tuple[str, ...] = tuple(LOSS_WEIGHT_RULES)

PRESETS: dict[str, dict[str, Any]] = {
    # the method as the paper states it: feature-level aggregation of the top-2 experts, learned noisy gating
    # without bound or schedule, exploration loss 0.01, exploitation loss 0.1
    "paper": {
        "k": 2,
        "aggregation": "features",
        "base_expert": False,
        "noise": "learned",
        "noise_cap": None,
        "noise_anneal": None,
        "dense_warmup": 0.0,
        "explore_coef": 0.01,
        "explore_decay": None,
        "exploit_coef": 0.1,
        "kickstart_coef": 0.0,
    },
    # what uses a hub's whole agents (docs/results/whole_agents.md): their heads' outputs mixed, trunks
    # fine-tuned, one routed expert per agent with evidence that it plays the target (at most two) beside the
    # base network, bounded annealed noise, kickstarting towards the trusted teachers, the prior from scores
    "transfer": {
        "k": 2,
        "k_from_prior": 0.5,
        "freeze_experts": False,
        "aggregation": "output",
        "output_mix": "probs",
        "base_expert": True,
        "noise": "learned",
        "noise_cap": 1.0,
        "noise_anneal": 0.25,
        "dense_warmup": 0.0,
        "explore_coef": 0.01,
        "explore_decay": 0.5,
        "exploit_coef": 0.1,
        "kickstart_coef": 0.5,
        "kickstart_fraction": 0.2,
        "prior": "auto",
        "teacher_trust": "prior",
        "prior_scale": 4.0,
    },
}


def pathway_preset(name: str) -> dict[str, Any]:
    """A copy of what the preset sets, to pass to HubPPO/HubA2C (``HubPPO(..., **pathway_preset("transfer"))``).

    :raises PathwayOptionError: for an unknown name, listing the known ones.
    """
    if name not in PRESETS:
        raise PathwayOptionError(f"Unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}.")
    return dict(PRESETS[name])


def apply_preset(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with its ``preset`` key (if any) expanded; the other keys of ``options`` win."""
    options = dict(options)
    name = options.pop("preset", None)
    if name is None:
        return options
    return {**pathway_preset(str(name)), **options}


def check_pathway_options(
    values: Mapping[str, Any], where: Callable[[str], str] | None = None, rules: Mapping[str, Rule] | None = None
) -> None:
    """Check the values in ``values`` that are options (other keys are ignored).

    :param values: option -> value.
    :param where: option -> how the message names it (default: ``HubPathwayExtractor option <key>``).
    :param rules: the rule table (default: :data:`PATHWAY_OPTIONS`).
    :raises PathwayOptionError: naming the option, the value and what is accepted.
    """
    check_values(
        values,
        PATHWAY_OPTIONS if rules is None else rules,
        where or (lambda key: f"HubPathwayExtractor option {key}"),
        PathwayOptionError,
    )


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`" if isinstance(value, str) else str(value)


def options_markdown() -> str:
    """The options table of the guide: every option, its default (the paper's configuration), the ``transfer``
    preset's value and what it does (``python -m hp_rl.hub.options`` prints it)."""
    transfer = PRESETS["transfer"]
    lines = [
        "| option | default (= `paper` preset) | `transfer` preset | accepts | what it does |",
        "|---|---|---|---|---|",
    ]
    for cls in (PathwayOptions, LossWeights):
        for item in fields(cls):
            default = item.default
            preset = _shown(transfer[item.name]) if item.name in transfer else _shown(default)
            rule = item.metadata["rule"].describe()
            lines.append(f"| `{item.name}` | {_shown(default)} | {preset} | {rule} | {item.metadata['doc']} |")
    return "\n".join(lines)


def hub_options_table() -> str:
    """``python -m hp_rl.train --hub-options``: every option ``--hub-set`` (and ``--set``, for the loss weights)
    takes, with what it accepts, its default and what it does."""
    lines = ["Hub-Pathway options (--hub-set KEY=VALUE; -k sets k; --hub-set preset=paper|transfer sets several):"]
    for cls in (PathwayOptions, LossWeights):
        if cls is LossWeights:
            lines.append("\nLoss weights of HubPPO/HubA2C (--set KEY=VALUE; also set by the presets):")
        for item in fields(cls):
            lines.append(f"\n  {item.name} = {item.default!r}   ({item.metadata['rule'].describe()})")
            text = item.metadata["doc"].replace("`", "")
            lines += textwrap.wrap(text, 110, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


if __name__ == "__main__":
    print(options_markdown())
