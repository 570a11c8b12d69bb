"""``python -m hp_rl COMMAND ...``: see :mod:`hp_rl.cli`."""

from __future__ import annotations

import sys

from hp_rl.cli import main

if __name__ == "__main__":
    sys.exit(main())
