"""How the command-line programs name themselves in their usage and help."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["program_name", "configure_logging"]


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


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` is at the time of each record (not at set-up)."""

    def __init__(self, stream_name: str) -> None:
        self.stream_name = stream_name
        super().__init__()

    @property
    def stream(self) -> object:
        return getattr(sys, self.stream_name)

    @stream.setter
    def stream(self, value: object) -> None:  # StreamHandler.__init__ assigns one; the property decides
        pass


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def configure_logging(verbose: int = 0) -> None:
    """Show the library's log on the console, as the command lines do: progress lines (INFO) on stdout,
    ``warning: ...`` lines on stderr; ``verbose >= 2`` adds DEBUG. Idempotent; a user's own logging
    configuration of the ``hp_rl`` logger is left alone."""
    root = logging.getLogger("hp_rl")
    if getattr(root, "_hp_rl_console", False) or root.handlers:
        return
    info = _ConsoleHandler("stdout")
    info.addFilter(_BelowWarning())
    info.setFormatter(logging.Formatter("%(message)s"))
    warnings = _ConsoleHandler("stderr")
    warnings.setLevel(logging.WARNING)
    warnings.setFormatter(logging.Formatter("warning: %(message)s"))
    root.addHandler(info)
    root.addHandler(warnings)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    root.propagate = False
    root._hp_rl_console = True  # type: ignore[attr-defined]
