"""Typed rules for option values: whole numbers, finite floats in a range, booleans, choices, schedules.

One rule per option, in one table per option family (SB3 hyperparameters in :mod:`hp_rl.rl.hyperparams`, the
Hub-Pathway options in :mod:`hp_rl.hub.options`). A rule either returns the value or raises the family's
:class:`~hp_rl.core.errors.HpRlError` naming where the value came from, the value, and what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hp_rl.core.errors import HpRlError

__all__ = ["Rule", "Int", "Float", "Bool", "Choice", "Schedule", "AnyValue", "check_values"]


class Rule:
    """Checks one value; ``describe()`` says what is accepted."""

    optional: bool = False

    def describe(self) -> str:
        """What the rule accepts, for messages."""
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` passes (``None`` passes an optional rule)."""
        raise NotImplementedError


def _range_text(low: float | None, high: float | None, low_open: bool) -> str:
    if low is None and high is None:
        return "any"
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"<= {high}"
    return f"in {'(' if low_open else '['}{low}, {high}]"


@dataclass(frozen=True)
class Int(Rule):
    """A whole number in ``[low, high]`` (booleans refused)."""

    low: int | None = None
    high: int | None = None
    optional: bool = False

    def describe(self) -> str:
        text = f"a whole number {_range_text(self.low, self.high, False)}".replace(" any", "")
        return text + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Float(Rule):
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN and inf refused."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        text = f"a finite number {_range_text(self.low, self.high, self.low_open)}".replace(" any", "")
        return text + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        low_ok = self.low is None or value > self.low or (value == self.low and not self.low_open)
        return low_ok and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Bool(Rule):
    """``true`` or ``false`` (not ``yes``, ``1`` or ``maybe``)."""

    optional: bool = False

    def describe(self) -> str:
        return "true or false" + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool) or (value is None and self.optional)


@dataclass(frozen=True)
class Choice(Rule):
    """One of fixed strings."""

    choices: tuple[str, ...] = ()
    optional: bool = False

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices) + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        return value in self.choices or (value is None and self.optional)


@dataclass(frozen=True)
class Schedule(Rule):
    """A constant (a :class:`Float` rule) or ``lin_<start>``, a linear decay from a start that rule accepts."""

    constant: Float = Float(0.0, low_open=True)
    optional: bool = False

    def describe(self) -> str:
        text = f"{self.constant.describe()}, or lin_<such a number> for a linear decay (for example lin_2.5e-4)"
        return text + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, str) and value.startswith("lin_"):
            try:
                return self.constant.accepts(float(value[len("lin_") :]))
            except ValueError:
                return False
        return self.constant.accepts(value)


@dataclass(frozen=True)
class AnyValue(Rule):
    """Anything whose check lives elsewhere (a custom predicate, or the consumer's own checks)."""

    predicate: Callable[[Any], bool] | None = None
    text: str = "a value"

    def describe(self) -> str:
        return self.text

    def accepts(self, value: Any) -> bool:
        return self.predicate is None or self.predicate(value)


def check_values(
    values: Mapping[str, Any],
    rules: Mapping[str, Rule],
    where: Callable[[str], str],
    error: type[HpRlError],
    skip: Sequence[str] = (),
) -> None:
    """Check every value that has a rule (keys without one are the caller's to check).

    :param values: key -> value.
    :param rules: key -> rule.
    :param where: key -> how the message names it (``--set n_steps``, ``hub.yml: key lr_scale``).
    :param error: the error class raised.
    :param skip: keys not to check.
    :raises HpRlError: the first value a rule refuses.
    """
    for key, value in values.items():
        rule = rules.get(key)
        if rule is None or key in skip:
            continue
        if not rule.accepts(value):
            raise error(f"{where(key)}: {value!r} is not accepted; give {rule.describe()}.")
