"""Statistics of transfer sweeps with rliable (:mod:`hp_rl.bench.transfer_report`), from a checkout::

    python benchmarks/transfer_report.py bench_out/needle bench_out/noharm \\
        --markdown bench_out/transfer_stats.md --json docs/results/transfer_summary.json --img-dir docs/img
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hp_rl, installed or not
from hp_rl.bench.transfer_report import main

if __name__ == "__main__":
    raise SystemExit(main())
