"""The prior: one number per expert, the evidence that it plays the target, and how it acts on routing.

Scoring (:mod:`hp_rl.rl.scoring`) measures it; here it is read and written (score files, mappings), checked against
a hub's experts (:func:`read_hub_prior`; the pathway builder turns it into the generator's starting logit biases,
:func:`hp_rl.routing.add_starting_preference`), and turned into which experts are routed at all
(:func:`routable_experts`, :func:`routed_by_prior`: the ``k_from_prior`` bar). Pure routing arithmetic: nothing here
plays an environment or builds a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hp_rl.core.errors import ConfigError
from hp_rl.core.yaml_files import read_yaml
from hp_rl.hub.options import PathwayOptionError

__all__ = [
    "HEADLESS_PRIOR_CAP",
    "prior_from_scores",
    "write_scores",
    "read_prior",
    "read_hub_prior",
    "routable_experts",
    "routed_by_prior",
]

# Largest prior of an expert without a policy head that maps onto the target (evidence from LogME only).
HEADLESS_PRIOR_CAP = 0.2


def prior_from_scores(experts: dict[str, dict[str, Any]], random_return: float = 0.0) -> dict[str, float]:
    """The prior of each scored expert: its ``score`` where it played the target; for experts without a head that
    acts there, LogME min-max normalised among them, times :data:`HEADLESS_PRIOR_CAP`."""
    prior = {n: float(e["score"]) for n, e in experts.items() if "score" in e}
    evidence = {n: e["logme"] for n, e in experts.items() if n not in prior and "logme" in e}
    if evidence:
        low, high = min(evidence.values()), max(evidence.values())
        for name, value in evidence.items():
            prior[name] = round(HEADLESS_PRIOR_CAP * (value - low) / (high - low), 4) if high > low else 0.0
    return prior


def write_scores(scores: dict[str, Any], path: str | Path) -> Path:
    """Write a score file (YAML) that ``prior=FILE`` reads."""
    from hp_rl.core.paths import written_by_rename

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_by_rename(path) as partial:  # a reader never sees half a file
        partial.write_text(yaml.safe_dump(scores, sort_keys=False))
    return path


def read_prior(prior: str | Path | dict[str, Any]) -> dict[str, float]:
    """Expert name -> prior from a score file (or its ``prior`` mapping, or a plain name -> value mapping).

    :raises PathwayOptionError: for a file without a ``prior`` mapping or with values that are not finite numbers.
    """
    raw: Any = prior
    if isinstance(prior, str | Path):
        path = Path(prior)
        if not path.is_file():
            raise PathwayOptionError(
                f"prior={prior}: no such file; write one with python -m hp_rl.hub score SPEC --env ENV."
            )
        try:
            raw = read_yaml(path, "score file")
        except ConfigError as error:
            raise PathwayOptionError(f"prior={prior}: {error}") from None
    if isinstance(raw, dict) and isinstance(raw.get("prior"), dict):
        raw = raw["prior"]
    if not isinstance(raw, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in raw.values()
    ):
        raise PathwayOptionError(f"prior={prior!r}: expected a mapping of expert names to finite numbers.")
    return {str(k): float(v) for k, v in raw.items()}


def read_hub_prior(prior: str | Path | Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """Expert name -> prior from a score file or a mapping, checked against the hub's expert names.

    :raises PathwayOptionError: for ``"auto"`` (HubPPO/HubA2C resolve it) or a prior naming experts the hub lacks.
    """
    if prior == "auto":
        raise PathwayOptionError(
            "prior='auto' is resolved by HubPPO/HubA2C, which know the target environment; "
            "with the extractor alone give a score file (python -m hp_rl.hub score)."
        )
    values = read_prior(dict(prior) if isinstance(prior, Mapping) else prior)
    unknown = sorted(set(values) - set(names) - {"base"})
    if unknown:
        raise PathwayOptionError(f"prior names experts {unknown} that the hub does not hold ({', '.join(names)}).")
    return values


def routable_experts(
    prior: Mapping[str, float], names: Sequence[str], threshold: float | None, base_expert: bool
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Which experts the pathway routes at all, and why each other one is not.

    With ``k_from_prior`` (``threshold``) beside a base expert, an expert whose prior is below the bar has no
    evidence that it plays the target and is left out of the policy entirely (none left: the base expert alone);
    otherwise every expert is routable.

    :return: the routable names in hub order, and name -> reason for the others.
    """
    if threshold is None or not base_expert or not prior:
        return tuple(names), {}
    routed = tuple(name for name in names if prior.get(name, 0.0) >= threshold)
    reasons = {name: f"score {prior.get(name, 0.0):.2f} < {threshold:g}" for name in names if name not in routed}
    return routed, reasons


def routed_by_prior(
    prior: Mapping[str, float], names: Sequence[str], k: int, threshold: float, allow_none: bool = False
) -> int:
    """How many experts to route per observation under ``k_from_prior``: those of ``names`` whose prior is at
    least ``threshold``, at most ``k``; at least 1, or 0 where ``allow_none`` (a base expert then acts alone).

    A head-less expert's prior is at most :data:`HEADLESS_PRIOR_CAP`, so a threshold above it counts only agents
    whose own policy plays the target zero-shot. Two such agents then share each observation, and the policy
    loss reaches the weights between them (one routed slot has a constant weight). Without a prior no expert
    has that evidence: 1 (the old rule, where nothing is left out).
    """
    if not prior:
        return 1
    relevant = sum(1 for name in names if prior.get(name, 0.0) >= threshold)
    return max(0 if allow_none else 1, min(k, relevant))
