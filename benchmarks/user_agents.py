"""The agents of a benchmark hub as the files users have: one bare SB3 zip per agent (:mod:`hp_rl.bench.user_agents`).

python benchmarks/user_agents.py hp_rl/hub/bundled/minatar/hub.yaml bench_out/user_zips
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hp_rl, installed or not
from hp_rl.bench.user_agents import main

if __name__ == "__main__":
    raise SystemExit(main())
