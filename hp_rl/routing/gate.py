"""The gate of a pathway: from an input to its routes. It owns everything routing noise is: its mode, std and cap
(the router), its scale over training (a schedule), and the content-keyed draw that a rollout and the update after
it share (:class:`NoiseSource`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hp_rl.core.errors import RoutingError
from hp_rl.routing.generator import PathwayGenerator
from hp_rl.routing.noise import content_keyed_normal
from hp_rl.routing.router import NoisyTopKRouter, Routes
from hp_rl.routing.schedule import PathwaySchedule

__all__ = ["Gate", "NoiseSource"]


class NoiseSource(nn.Module):
    """Where routing noise comes from.

    ``keyed`` draws noise from each sample's content (see :mod:`hp_rl.routing.noise`), so the same
    observation gets the same noise until ``epoch`` advances; otherwise noise comes from ``torch.randn``.
    Seed and epoch are saved with the model, so a loaded model routes as the saved one did.

    :param enabled: add noise at all (turn off for deterministic evaluation).
    :param keyed: content-keyed instead of random noise.
    :param seed: stream seed for keyed noise.
    """

    state: Tensor  # (2,) int64: seed, epoch

    def __init__(self, enabled: bool = True, keyed: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.enabled = enabled
        self.keyed = keyed
        self.register_buffer("state", torch.tensor([seed, 0], dtype=torch.int64))

    @property
    def seed(self) -> int:
        """Stream seed of keyed noise."""
        return int(self.state[0])

    @seed.setter
    def seed(self, value: int) -> None:
        self.state[0] = value

    @property
    def epoch(self) -> int:
        """Re-draw counter of keyed noise."""
        return int(self.state[1])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.state[1] = value

    def draw(self, x: Tensor, num: int) -> Tensor | None:
        """:param x: ``(B, ...)`` inputs. :return: ``(B, num)`` N(0, 1) noise or ``None`` when disabled."""
        if not self.enabled:
            return None
        if self.keyed:
            seed, epoch = self.state.tolist()
            return content_keyed_normal(x, num, seed, epoch)
        return torch.randn(x.shape[0], num, device=x.device)


class Gate(nn.Module):
    """Generator logits, routing noise and the noisy top-k choice, as one module.

    :param generator: scores the m experts of each input.
    :param router: turns the scores (and noise) into routes (:class:`~hp_rl.routing.router.NoisyTopKRouter`).
    :param noise: where the noise comes from (default: content-keyed, seed 0).
    """

    def __init__(self, generator: PathwayGenerator, router: nn.Module, noise: NoiseSource | None = None) -> None:
        super().__init__()
        self.generator = generator
        self.router = router
        self.noise = noise if noise is not None else NoiseSource()

    @property
    def num_experts(self) -> int:
        """m, forced experts included."""
        return int(self.router.num_experts)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Routes:
        """The routes of a batch. :param x: ``(B, ...)`` inputs."""
        m = self.num_experts
        if getattr(self.router, "num_forced", 0) == m:  # nothing to choose: no generator to run
            routes: Routes = self.router(torch.zeros(x.shape[0], m, device=x.device), None, None)
            return routes
        logits = self.generator(x)
        if not bool(torch.isfinite(logits.clean).all()):
            raise RoutingError(_nonfinite_message(x))
        # No draw (and no content hash) when the router would not use it: noise off, annealed or dense.
        noise = self.noise.draw(x, m) if getattr(self.router, "noise_active", True) else None
        routes = self.router(logits.clean, logits.noise, noise)
        return routes

    def follow(self, schedule: PathwaySchedule, progress: float) -> None:
        """Set the noise scale and the dense warm-up to ``schedule``'s at training progress ``progress``."""
        router = self.router
        assert isinstance(router, NoisyTopKRouter)
        router.noise_scale = schedule.noise_scale(progress)
        router.dense_active = schedule.dense(progress)

    def redraw(self) -> None:
        """New keyed noise for every input from now on (a new rollout)."""
        self.noise.epoch += 1


def _nonfinite_message(x: Tensor) -> str:
    """Why the generator's logits are not finite: NaN/inf in the inputs, or diverged weights."""
    bad_rows = (~torch.isfinite(x.reshape(x.shape[0], -1).float())).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        return (
            f"{len(bad_rows)} of {x.shape[0]} input row(s) hold NaN or inf (first: row {bad_rows[0]}), so they "
            "cannot be routed to any expert. Find where the observations become non-finite (python -m "
            "hp_rl.train stops at that environment step and names it; --nonfinite-obs sanitize replaces such "
            "values with 0 and counts them)."
        )
    return (
        "The pathway generator's logits are NaN or inf although its input is finite: training diverged. Lower "
        "learning_rate or max_grad_norm, or resume from an earlier checkpoint."
    )
