"""Schedules over training progress: routing noise, a dense warm-up, the exploration loss, kickstarting.

Progress ``p`` runs from 0 (start of training) to 1 (end). A *decay by fraction f* is ``max(0, 1 - p / f)``:
1 at the start, 0 from ``p = f`` on; ``f = None`` means no decay (constant 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from hp_rl.core.errors import RoutingError

__all__ = ["linear_decay", "PathwaySchedule"]


def linear_decay(progress: float, fraction: float | None) -> float:
    """``max(0, 1 - progress / fraction)``, or 1 when ``fraction`` is ``None``.

    :param progress: training progress in [0, 1].
    :param fraction: where the decay reaches 0, in (0, 1]; ``None`` for none.
    """
    if fraction is None:
        return 1.0
    return max(0.0, 1.0 - progress / fraction)


@dataclass(frozen=True)
class PathwaySchedule:
    """How the pathway's exploration changes over training.

    :param noise_anneal: routing noise std is scaled by ``linear_decay(p, noise_anneal)`` (0 from then on,
        which also skips drawing it); ``None`` keeps it constant.
    :param dense_warmup: for ``p < dense_warmup`` every expert is routed with softmax weights (the generator
        learns from all experts before top-k starts); 0 for none.
    :param explore_decay: the exploration loss weight is scaled by ``linear_decay(p, explore_decay)``.
    """

    noise_anneal: float | None = None
    dense_warmup: float = 0.0
    explore_decay: float | None = None

    def __post_init__(self) -> None:
        for name in ("noise_anneal", "explore_decay"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise RoutingError(f"{name} must be in (0, 1] (a fraction of training) or None, got {value}.")
        if not 0 <= self.dense_warmup < 1:
            raise RoutingError(f"dense_warmup must be in [0, 1) (a fraction of training), got {self.dense_warmup}.")

    def noise_scale(self, progress: float) -> float:
        """Multiplier of the noise std at ``progress``."""
        return linear_decay(progress, self.noise_anneal)

    def dense(self, progress: float) -> bool:
        """Whether the dense warm-up is on at ``progress``."""
        return progress < self.dense_warmup

    def explore_scale(self, progress: float) -> float:
        """Multiplier of the exploration loss weight at ``progress``."""
        return linear_decay(progress, self.explore_decay)
