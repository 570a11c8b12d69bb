"""rliable aggregates over runs (Agarwal et al. 2021): the interquartile mean, stratified-bootstrap 95%
intervals, the IQM gain over a baseline and the probability of improvement (rliable, the ``bench`` extra)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = ["BOOTSTRAP_REPS", "gain_interval", "iqm", "iqm_interval", "probability_of_improvement"]

BOOTSTRAP_REPS = 2000


@contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block, then restored: rliable's bootstraps draw part of their
    resamples from it whatever ``random_state`` says, which made reports differ run to run."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of ``scores`` ``(runs,)`` or ``(runs, tasks)`` (rliable)."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(scores))


def iqm_interval(scores: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Stratified-bootstrap 95% interval of the IQM (one task: a bootstrap over runs)."""
    from rliable import library as rly

    with _global_seed(seed):
        _, intervals = rly.get_interval_estimates(
            {"m": scores}, lambda x: np.array([iqm(x)]), reps=BOOTSTRAP_REPS, random_state=np.random.RandomState(seed)
        )
    return float(intervals["m"][0][0]), float(intervals["m"][1][0])


def gain_interval(method: np.ndarray, scratch: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """IQM gain over scratch, relative to |scratch IQM|, with a bootstrap 95% interval (independent resampling)."""
    rng = np.random.RandomState(seed)
    base = iqm(scratch)
    scale = abs(base) or 1.0
    draws = []
    for _ in range(BOOTSTRAP_REPS):
        m = method[rng.randint(0, len(method), len(method))]
        s = scratch[rng.randint(0, len(scratch), len(scratch))]
        draws.append((iqm(m) - iqm(s)) / (abs(iqm(s)) or 1.0))
    low, high = np.percentile(draws, [2.5, 97.5])
    return (iqm(method) - base) / scale, float(low), float(high)


def probability_of_improvement(method: np.ndarray, scratch: np.ndarray) -> tuple[float, float, float]:
    """P(a run of ``method`` beats a run of ``scratch``) and its bootstrap 95% interval (rliable)."""
    from rliable import library as rly
    from rliable import metrics

    pair = {"pair": (method[:, None], scratch[:, None])}
    with _global_seed(0):
        point, interval = rly.get_interval_estimates(
            pair, metrics.probability_of_improvement, reps=BOOTSTRAP_REPS, random_state=np.random.RandomState(0)
        )
    bounds = np.asarray(interval["pair"], dtype=float).reshape(-1)
    return float(np.asarray(point["pair"]).reshape(-1)[0]), float(bounds[0]), float(bounds[-1])
