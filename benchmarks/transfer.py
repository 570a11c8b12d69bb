"""Transfer benchmark: Hub-Pathway against scratch, single-expert fine-tuning and a dense mixture.

The library is :mod:`hp_rl.bench` (suites and methods, hubs, runs and sweeps, the report); this script runs its
command line from a checkout, as ``hp-rl bench transfer`` does from an installed hp_rl::

    nice -n 10 python benchmarks/transfer.py --suite minatar --targets breakout space_invaders \\
        --seeds 0 1 2 --steps 100000 --out bench_out/transfer
    python benchmarks/transfer.py --report-only --out bench_out/transfer --img-dir docs/img
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hp_rl, installed or not
from hp_rl.bench.transfer import main

if __name__ == "__main__":
    raise SystemExit(main())
