"""Gate usage statistics accumulated over many batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hp_rl.routing.losses import cv_squared
from hp_rl.routing.router import Routes

__all__ = ["GateSummary", "GateStatistics"]


@dataclass(frozen=True)
class GateSummary:
    """Averages over every sample seen since the last reset.

    :param num_samples: samples counted.
    :param usage: ``(m,)`` share of samples routed to each expert (sums to k).
    :param mean_weight: ``(m,)`` mean pathway weight of each expert over all samples (sums to 1).
    :param confidence: ``(m,)`` mean weight of each expert over the samples routed to it (NaN if none).
    :param entropy: mean per-sample entropy of the pathway weights (nats).
    :param balance_cv2: cv^2 of the usage counts (0 = perfectly balanced).
    :param noise_std: mean routing noise std (0 without noise).
    :param coactivation: ``(m, m)`` share of samples routed to both i and j (diagonal = usage).
    :param routed_weights: per expert, ``(n_i,)`` weights it received when routed (capped sample).
    """

    num_samples: int
    usage: Tensor
    mean_weight: Tensor
    confidence: Tensor
    entropy: float
    balance_cv2: float
    noise_std: float
    coactivation: Tensor
    routed_weights: tuple[Tensor, ...]


class GateStatistics:
    """Accumulates routing statistics batch by batch (CPU, no gradient).

    :param num_experts: m.
    :param max_histogram_samples: cap on stored weights per expert for histograms.
    """

    def __init__(self, num_experts: int, max_histogram_samples: int = 20_000) -> None:
        self.num_experts = num_experts
        self.max_histogram_samples = max_histogram_samples
        self.reset()

    def reset(self) -> None:
        """Forget everything seen."""
        m = self.num_experts
        self.num_samples = 0
        self._usage = torch.zeros(m, dtype=torch.float64)
        self._weight = torch.zeros(m, dtype=torch.float64)
        self._coactivation = torch.zeros(m, m, dtype=torch.float64)
        self._entropy = 0.0
        self._noise_std = 0.0
        self._routed: list[list[Tensor]] = [[] for _ in range(m)]
        self._stored = [0] * m

    def update(self, routes: Routes) -> None:
        """Add one batch of routing decisions."""
        weights = routes.weights.detach().to("cpu", torch.float64)  # (B, m)
        routed = (weights > 0).double()
        self.num_samples += weights.shape[0]
        self._usage += routed.sum(0)
        self._weight += weights.sum(0)
        self._coactivation += routed.T @ routed
        safe = weights.clamp_min(1e-12)
        self._entropy += float(-(weights * safe.log()).sum())
        self._noise_std += float(routes.noise_std.detach().double().mean(1).sum())
        for column in range(self.num_experts):
            room = self.max_histogram_samples - self._stored[column]
            if room > 0:
                values = weights[routed[:, column] > 0, column][:room].float()
                self._routed[column].append(values)
                self._stored[column] += values.numel()

    def summary(self) -> GateSummary:
        """Averages since the last reset. Raises ``ValueError`` before the first update."""
        if self.num_samples == 0:
            raise ValueError("No routing decisions were recorded yet.")
        n = float(self.num_samples)
        return GateSummary(
            num_samples=self.num_samples,
            usage=(self._usage / n).float(),
            mean_weight=(self._weight / n).float(),
            confidence=(self._weight / self._usage).float(),
            entropy=self._entropy / n,
            balance_cv2=float(cv_squared(self._usage)),
            noise_std=self._noise_std / n,
            coactivation=(self._coactivation / n).float(),
            routed_weights=tuple(torch.cat(chunks) if chunks else torch.zeros(0) for chunks in self._routed),
        )
