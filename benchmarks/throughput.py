"""Throughput of the Hub-Pathway agent against plain Stable-Baselines3 (:mod:`hp_rl.bench.throughput`), from a
checkout, as ``hp-rl bench throughput`` runs it from an installed hp_rl::

    python benchmarks/throughput.py --threads 1 --steps 3072 --repeats 2 --reps 5 --out bench_out/throughput
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hp_rl, installed or not
from hp_rl.bench.throughput.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
