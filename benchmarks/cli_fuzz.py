"""Fuzz ``python -m hp_rl.train``'s command line (:mod:`hp_rl.cli_fuzz`) and write the report::

    nice python benchmarks/cli_fuzz.py --lines 1000 --seed 0 --out docs/results/cli_fuzz.json

Exit 1 when any line ended in a traceback, a hang, a status other than 0 or 2, or raw control characters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hp_rl.cli_fuzz import fuzz  # noqa: E402  (after the checkout is on the path)


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz and write its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=300, help="seconds one line may take before it is a hang")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs/results/cli_fuzz.json")
    args = parser.parse_args(argv)
    report = fuzz(args.lines, args.seed, args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "details"}))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
