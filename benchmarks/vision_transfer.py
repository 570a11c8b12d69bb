"""Few-label transfer on real digits (:mod:`hp_rl.bench.vision_transfer`), from a checkout::

nice -n 10 python benchmarks/vision_transfer.py --seeds 0 1 2 --write-docs
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hp_rl, installed or not
from hp_rl.bench.vision_transfer import main

if __name__ == "__main__":
    raise SystemExit(main())
