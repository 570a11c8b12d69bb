"""The table of ``benchmarks/distill_check.sh``: each distilled run's student against its hub agent.

    python benchmarks/distill_summary.py bench_out/distill --json docs/results/distill_summary.json

Reads every ``distill.yml`` under the folder (one per seed and task) and prints a markdown table: the hub agent's
and the student's evaluation returns (deterministic, the same seeded episodes), the student's share of the hub
agent's return, the distillation's steps against the hub agent's training steps, and both acting speeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from hp_rl.core.yaml_files import read_yaml_mapping  # noqa: E402  (after the checkout is on the path)


def rows(folder: Path) -> list[dict[str, Any]]:
    """One row per ``distill.yml`` under ``folder``: task and seed from its path, the numbers from the file."""
    found = []
    for path in sorted(folder.glob("*/seed*/*/distill.yml")):
        record = read_yaml_mapping(path, "distillation record")
        teacher, student = record["evaluation"]["teacher"], record["evaluation"]["student"]
        found.append(
            {
                "task": path.parents[2].name,
                "seed": path.parents[1].name.removeprefix("seed"),
                "teacher": teacher["mean"],
                "student": student["mean"],
                "share": student["mean"] / teacher["mean"] if teacher["mean"] else None,
                "distill_steps": record["distill_steps"],
                "teacher_steps": record["teacher_steps"],
                "teacher_steps_per_second": teacher["steps_per_second"],
                "student_steps_per_second": student["steps_per_second"],
                "episodes": record["evaluation"]["episodes"],
            }
        )
    return found


def markdown(table: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| task | seed | hub agent return | student return | student / hub agent | distillation steps "
        "(share of the hub agent's) | acting steps/s: hub agent, student |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        share = "–" if row["share"] is None else f"{row['share']:.0%}"
        lines.append(
            f"| {row['task']} | {row['seed']} | {row['teacher']:.2f} | {row['student']:.2f} | {share} | "
            f"{row['distill_steps']:,} ({row['distill_steps'] / row['teacher_steps']:.0%}) | "
            f"{row['teacher_steps_per_second']:.0f}, {row['student_steps_per_second']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write the rows as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the --out of distill_check.sh (bench_out/distill)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    table = rows(args.folder)
    print(markdown(table))
    if args.json is not None:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
