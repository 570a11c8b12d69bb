"""Learning curves and their summaries: the curve of the last episodes' mean return against steps, its area,
the final return, and Student-t / Welch 95% intervals over seeds (scipy, the ``bench`` extra)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CURVE_POINTS",
    "CURVE_WINDOW",
    "CurveLine",
    "FINAL_FRACTION",
    "final_return",
    "learning_curve",
    "mean_ci",
    "save_curves",
    "steps_to",
    "welch_ci",
]

# The curve at step t: the mean return of the last CURVE_WINDOW training episodes finished by t, on
# CURVE_POINTS evenly spaced steps; the final return: episodes of the last FINAL_FRACTION of the steps.
CURVE_POINTS = 50
CURVE_WINDOW = 20
FINAL_FRACTION = 0.1


def learning_curve(
    episodes: Sequence[Sequence[float]], steps: int, points: int = CURVE_POINTS, window: int = CURVE_WINDOW
) -> tuple[np.ndarray, np.ndarray]:
    """Mean return of the last ``window`` episodes finished by each of ``points`` evenly spaced steps.

    Before the first episode ends, the curve takes the first episode's return.
    :return: steps ``(points,)`` and curve ``(points,)`` (NaN when no episode finished at all).
    """
    grid = np.linspace(steps / points, steps, points)
    if not episodes:
        return grid, np.full(points, np.nan)
    ends = np.array([e[0] for e in episodes], dtype=float)
    returns = np.array([e[1] for e in episodes], dtype=float)
    curve = np.empty(points)
    for i, t in enumerate(grid):
        n = int(np.searchsorted(ends, t, side="right"))
        curve[i] = returns[max(n - window, 0) : n].mean() if n else returns[0]
    return grid, curve


def final_return(episodes: Sequence[Sequence[float]], steps: int, fraction: float = FINAL_FRACTION) -> float:
    """Mean return of the episodes that finished in the last ``fraction`` of the steps (else the last ones)."""
    if not episodes:
        return float("nan")
    late = [r for t, r in episodes if t > (1 - fraction) * steps]
    return float(np.mean(late if late else [r for _, r in episodes[-CURVE_WINDOW:]]))


def mean_ci(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, half-width of the 95% Student-t interval, and the count (half-width NaN for one value)."""
    from scipy import stats

    data = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if len(data) == 0:
        return float("nan"), float("nan"), 0
    if len(data) == 1:
        return float(data[0]), float("nan"), 1
    half = float(stats.t.ppf(0.975, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data)))
    return float(data.mean()), half, len(data)


def welch_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Difference of means ``mean(a) - mean(b)`` and the half-width of its 95% Welch interval."""
    from scipy import stats

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    diff = float(a_.mean() - b_.mean())
    if len(a_) < 2 or len(b_) < 2:
        return diff, float("nan")
    va, vb = a_.var(ddof=1) / len(a_), b_.var(ddof=1) / len(b_)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, 0.0
    dof = (va + vb) ** 2 / ((va**2 / (len(a_) - 1)) + (vb**2 / (len(b_) - 1)))
    return diff, float(stats.t.ppf(0.975, dof) * se)


def steps_to(grid: np.ndarray, curve: np.ndarray, threshold: float) -> float | None:
    """The first step of ``grid`` at which ``curve`` reaches ``threshold`` (``None``: never)."""
    reached = np.nonzero(curve >= threshold)[0]
    return None if len(reached) == 0 else float(grid[reached[0]])


@dataclass(frozen=True)
class CurveLine:
    """One method's learning curve in a picture.

    :param label: the legend's text.
    :param grid: ``(points,)`` environment steps.
    :param mean: ``(points,)`` the mean curve over seeds.
    :param half: ``(points,)`` half-width of its 95% interval, shaded (``None``: no band).
    :param color: a matplotlib colour (``None``: the next of the cycle).
    :param style: a matplotlib line style.
    """

    label: str
    grid: np.ndarray
    mean: np.ndarray
    half: np.ndarray | None = None
    color: str | None = None
    style: str = "-"


def save_curves(path: Path, title: str, lines: Sequence[CurveLine]) -> Path:
    """A PNG of learning curves against environment steps (matplotlib, the ``bench`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for line in lines:
        drawn = ax.plot(line.grid, line.mean, color=line.color, linestyle=line.style, label=line.label)[0]
        if line.half is not None:
            band = (line.mean - line.half, line.mean + line.half)
            ax.fill_between(line.grid, *band, color=drawn.get_color(), alpha=0.12, linewidth=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"training return (mean of last {CURVE_WINDOW} episodes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
