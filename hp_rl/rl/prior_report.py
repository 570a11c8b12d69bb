"""What the scoring found, said to the user: one line per expert on the console, ``prior.yml`` in the run folder
and the same table as TensorBoard text.

A user must see at a glance which agent plays the target and why the others are not routed: for each expert the
task it came from, how its policy head reached the target's actions (``mapped`` by meaning, ``one-to-one`` where
meanings are unknown and the action counts agree, ``fresh``), its zero-shot return beside a random policy's on the
same episodes, its score, and whether it is routed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["PRIOR_FILE", "prior_rows", "prior_table", "write_prior_file"]

PRIOR_FILE = "prior.yml"


def prior_rows(scores: dict[str, Any], unrouted: dict[str, str], routed: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per scored expert, best score first.

    :param scores: what :func:`hp_rl.rl.scoring.score_hub` returned.
    :param unrouted: expert -> why the pathway leaves it out.
    :param routed: the experts the pathway routes.
    """
    rows = []
    prior = scores.get("prior", {})
    for name, entry in scores.get("experts", {}).items():
        row = {
            "expert": name,
            "task": entry.get("task", "unknown"),
            "head": entry.get("policy_head", "fresh"),
            "zero_shot_return": entry.get("zero_shot_return"),
            "random_return": scores.get("random_return") if "zero_shot_return" in entry else None,
            "score": prior.get(name, 0.0),
            "routed": name in routed,
        }
        if name in unrouted:
            row["why_not"] = unrouted[name]
        elif "zero_shot_return" not in entry:
            row["evidence"] = "LogME of its features (no head that acts for the target)"
        rows.append(row)
    return sorted(rows, key=lambda row: -float(row["score"]))


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def prior_table(scores: dict[str, Any], unrouted: dict[str, str], routed: tuple[str, ...]) -> str:
    """The rows as fixed-width text (console and TensorBoard), with the scoring's cost under them."""
    lines = [f"{'expert':<22} {'task':<26} {'head':<10} {'zero-shot':>9} {'random':>8} {'score':>6}  routed"]
    for row in prior_rows(scores, unrouted, routed):
        routed_text = "yes" if row["routed"] else f"no ({row.get('why_not', 'not routed')})"
        lines.append(
            f"{row['expert'][:22]:<22} {str(row['task'])[:26]:<26} {row['head']:<10} "
            f"{_number(row['zero_shot_return']):>9} {_number(row['random_return']):>8} {row['score']:>6.2f}  "
            f"{routed_text}"
        )
    cost = scores.get("cost")
    if cost:
        lines.append(f"scored in {cost['seconds']} s, {cost['steps']} environment steps ({cost['budget']})")
    return "\n".join(lines)


def write_prior_file(folder: Path, scores: dict[str, Any], unrouted: dict[str, str], routed: tuple[str, ...]) -> Path:
    """Write ``prior.yml`` (the rows, the random policy's return, the cost) into ``folder``."""
    from hp_rl.core.paths import write_text_by_rename

    record = {
        "env_id": scores.get("env_id"),
        "random_return": scores.get("random_return"),
        "experts": prior_rows(scores, unrouted, routed),
        "cost": scores.get("cost"),
    }
    path = Path(folder) / PRIOR_FILE
    write_text_by_rename(path, yaml.safe_dump(record, sort_keys=False))
    return path
