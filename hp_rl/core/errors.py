"""The project's error family: every input problem a user can fix is an :class:`HpRlError`.

Commands report an ``HpRlError`` in one paragraph with exit code 2; any other exception is a bug and is
shown with its traceback.
"""

from __future__ import annotations

import re

__all__ = ["HpRlError", "CliError", "ConfigError", "RoutingError", "error_message", "printable", "MAX_MESSAGE_CHARS"]

# A message names a value, where it came from and the fix: a paragraph, never megabytes of a hostile file.
MAX_MESSAGE_CHARS = 2_000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class HpRlError(Exception):
    """A problem with the user's input or files; the message names the value, where it came from and the fix."""


class CliError(HpRlError):
    """A problem with a command line or its inputs: reported in one paragraph, exit code 2."""


class ConfigError(HpRlError, ValueError):
    """A malformed configuration file or override."""


class RoutingError(HpRlError, ValueError):
    """A routing component (generator, router, expert wrapper, schedule) was given a bad setting or input."""


def printable(text: str) -> str:
    """``text`` with its control characters (terminal escapes a hostile path may hold) shown escaped."""
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def error_message(error: BaseException) -> str:
    """``error:`` and the message as a command prints it: control characters (terminal escapes a hostile path may
    hold) shown escaped, and at most :data:`MAX_MESSAGE_CHARS` characters."""
    text = printable(str(error))
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 40] + f" ... ({len(text) - MAX_MESSAGE_CHARS + 40} more characters)"
    return f"error: {text}"
