"""``python -m hp_rl.hub``: see :mod:`hp_rl.hub_cli`."""

from __future__ import annotations

import sys

from hp_rl.hub_cli import main

if __name__ == "__main__":
    sys.exit(main())
