"""The project's error family: every input problem a user can fix is an :class:`HpRlError`.

Commands report an ``HpRlError`` in one paragraph with exit code 2; any other exception is a bug and is
shown with its traceback.
"""

from __future__ import annotations

__all__ = ["HpRlError", "RoutingError"]


class HpRlError(Exception):
    """A problem with the user's input or files; the message names the value, where it came from and the fix."""


class RoutingError(HpRlError, ValueError):
    """A routing component (generator, router, expert wrapper, schedule) was given a bad setting or input."""
