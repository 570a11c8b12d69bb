"""Does ``torch.compile`` pay for a hub's acting forward and its update on a CPU (:mod:`hp_rl.bench.throughput.
compiled`), from a checkout, as ``hp-rl bench compile_probe`` runs it from an installed hp_rl::

    python benchmarks/compile_probe.py --out docs/results/compile_probe.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hp_rl, installed or not
from hp_rl.bench.throughput.compiled import main

if __name__ == "__main__":
    raise SystemExit(main())
