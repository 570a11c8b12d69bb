"""How the command-line programs name themselves in their usage and help."""

from __future__ import annotations

import os
import sys

__all__ = ["program_name"]


def program_name(module: str) -> str:
    """``hp-train`` when run through that console script, else ``python -m <module>``.

    :param module: the module that ``python -m`` runs (``hp_rl.train``).
    """
    invoked = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if invoked.startswith("hp-rl "):  # set by the hp-rl dispatcher: "hp-rl train"
        return invoked
    invoked = os.path.basename(invoked)
    if invoked.startswith("hp-"):
        return invoked
    return f"python -m {module}"
