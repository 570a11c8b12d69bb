"""Noisy top-k router: noise, top-k selection, softmax over the selected experts, balance terms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hp_rl.core.errors import RoutingError
from hp_rl.routing.losses import balance_loss, smooth_load, switch_balance_loss

__all__ = ["NoiseMode", "BalanceMode", "Routes", "NoisyTopKRouter"]

NoiseMode = Literal["learned", "fixed", "none"]
BalanceMode = Literal["cv2", "switch"]


@dataclass(frozen=True)
class Routes:
    """Which experts each sample goes through, and with what weight.

    :param weights: ``(B, m)`` pathway weights; each row sums to 1 with exactly ``k`` non-zeros.
    :param indices: ``(B, k)`` indices of the routed experts, best first.
    :param clean_logits: ``(B, m)`` generator logits.
    :param noisy_logits: ``(B, m)`` logits after noise (equal to ``clean_logits`` without noise).
    :param noise_std: ``(B, m)`` noise standard deviation used (zeros without noise).
    :param importance: ``(m,)`` summed weights per expert.
    :param balance_terms: computes ``(balance_loss, load)`` when first asked for: acting forwards never
        need them, and on a few observations they cost as much as the routing itself.
    """

    weights: Tensor
    indices: Tensor
    clean_logits: Tensor
    noisy_logits: Tensor
    noise_std: Tensor
    importance: Tensor
    balance_terms: Callable[[], tuple[Tensor, Tensor]] = field(repr=False, compare=False)

    @cached_property
    def _balance(self) -> tuple[Tensor, Tensor]:
        return self.balance_terms()

    @property
    def load(self) -> Tensor:
        """``(m,)`` smooth expected number of samples per expert, or the hard count without noise."""
        return self._balance[1]

    @property
    def balance_loss(self) -> Tensor:
        """Scalar exploration (load balance) loss."""
        return self._balance[0]

    @property
    def k(self) -> int:
        """Experts per sample."""
        return int(self.indices.shape[1])


class NoisyTopKRouter(nn.Module):
    """Turns generator logits into sparse pathway weights (Shazeer et al. 2017 noisy top-k gating).

    The router owns noise, top-k and renormalisation; the generator only makes logits. Top-k is taken on
    the noisy logits first and the softmax runs over the k survivors (plus any forced experts), so the
    weights of one sample sum to 1 over exactly ``k + num_forced`` experts.

    Three run-time settings, changed by a training schedule (:class:`hp_rl.routing.schedule.PathwaySchedule`):
    ``noise_scale`` multiplies the noise std (0 skips the noise), ``dense_active`` routes through every
    expert with softmax weights (a dense warm-up before top-k), and the noise cap bounds the std.

    :param num_experts: m, the number of experts (forced ones included).
    :param k: routed experts per sample, ``1 <= k <= m - num_forced``; 0 when every expert is forced (the
        forced experts alone, as when no expert of a hub has the evidence to be routed).
    :param noise: ``"learned"`` (std = softplus of a generator head), ``"fixed"`` (constant
        ``noise_std``) or ``"none"``.
    :param noise_std: the constant std for ``noise="fixed"``.
    :param balance: ``"cv2"`` (importance + load, Shazeer) or ``"switch"`` (GShard f.P form).
    :param dense: route every sample through all experts with softmax weights (the dense mixture
        baseline); ``k`` is then ignored and set to ``m``.
    :param num_forced: the last ``num_forced`` columns are routed for every sample (a base expert), beside
        the k chosen among the others; they get no noise and stay out of the balance loss.
    :param noise_cap: bound the noise std by ``noise_cap`` times the spread of the clean logits (their std
        over the routable experts, per sample, without gradient), so that noise explores around the
        generator's preferences instead of drowning them; ``None`` for no bound.
    """

    def __init__(
        self,
        num_experts: int,
        k: int,
        noise: NoiseMode = "learned",
        noise_std: float = 1.0,
        balance: BalanceMode = "cv2",
        dense: bool = False,
        num_forced: int = 0,
        noise_cap: float | None = None,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise RoutingError(f"A hub needs at least one expert, got {num_experts}.")
        if not 0 <= num_forced <= num_experts or (num_forced == num_experts and k != 0):
            raise RoutingError(
                f"num_forced={num_forced} must leave at least one routable expert of {num_experts} "
                "(or route none: k=0 beside forced experts alone)."
            )
        routable = num_experts - num_forced
        if dense and routable:
            k = routable
        if routable == 0:
            dense = False  # forced experts alone: nothing to choose, nothing to mix densely
        elif not 1 <= k <= routable:
            raise RoutingError(f"k={k} is out of range for a hub of {routable} experts: choose 1 <= k <= {routable}.")
        if noise not in get_args(NoiseMode):
            raise RoutingError(f"noise must be 'learned', 'fixed' or 'none', got {noise!r}.")
        if balance not in get_args(BalanceMode):
            raise RoutingError(f"balance must be 'cv2' or 'switch', got {balance!r}.")
        if noise == "fixed" and not noise_std > 0:
            raise RoutingError(f"noise='fixed' needs noise_std > 0, got {noise_std}.")
        if noise_cap is not None and not noise_cap > 0:
            raise RoutingError(f"noise_cap must be > 0 (or None for no cap), got {noise_cap}.")
        self.num_experts = num_experts
        self.num_forced = num_forced
        self.k = k
        self.noise = noise
        self.noise_std = noise_std
        self.balance = balance
        self.dense = dense
        self.noise_cap = noise_cap
        self.noise_scale = 1.0
        self.dense_active = False

    @property
    def noise_active(self) -> bool:
        """Whether this router adds noise at its current schedule."""
        routable = self.num_experts > self.num_forced
        return routable and self.noise != "none" and self.noise_scale > 0 and not (self.dense or self.dense_active)

    def forward(self, clean_logits: Tensor, noise_logits: Tensor | None, standard_normal: Tensor | None) -> Routes:
        """Route one batch.

        :param clean_logits: ``(B, m)`` generator logits.
        :param noise_logits: ``(B, m)`` pre-softplus noise scale (``noise="learned"`` only), else ``None``.
        :param standard_normal: ``(B, m)`` N(0, 1) draws, or ``None`` for noiseless (deterministic)
            routing, as in evaluation.
        """
        routable = self.num_experts - self.num_forced
        if routable == 0:  # forced experts alone: softmax over them, no noise, no balance loss
            return self._dense_routes(clean_logits, clean_logits)
        use_noise = standard_normal is not None and self.noise_active
        std = self._noise_std(clean_logits, noise_logits) if use_noise else None
        noisy = clean_logits if std is None else clean_logits + standard_normal * std  # type: ignore[operator]
        if self.dense or self.dense_active:
            return self._dense_routes(clean_logits, noisy)
        top_values, top_indices = noisy[:, :routable].topk(self.k, dim=1)
        if self.num_forced:
            forced = torch.arange(routable, self.num_experts, device=noisy.device).expand(noisy.shape[0], -1)
            top_indices = torch.cat([top_indices, forced], dim=1)
            top_values = torch.cat([top_values, noisy[:, routable:]], dim=1)
        top_weights = F.softmax(top_values, dim=1)
        if top_indices.shape[1] == 1 and self.num_experts > 1:
            # A softmax over one expert is constantly 1 and gives the generator no task gradient. Add the
            # full softmax probability of the chosen expert minus itself: the weight stays exactly 1, and
            # its gradient is that of the probability (as in Switch-style gating).
            chosen = F.softmax(noisy, dim=1).gather(1, top_indices)
            top_weights = top_weights + chosen - chosen.detach()
        weights = torch.zeros_like(noisy).scatter(1, top_indices, top_weights)

        def balance_terms() -> tuple[Tensor, Tensor]:
            routable_std = None if std is None else std[:, :routable]
            loss, load = self._balance(
                weights[:, :routable],
                clean_logits[:, :routable],
                noisy[:, :routable],
                routable_std,
                top_indices[:, : self.k],
            )
            if self.num_forced:
                load = torch.cat([load, load.new_full((self.num_forced,), float(noisy.shape[0]))])
            return loss, load

        return Routes(
            weights=weights,
            indices=top_indices,
            clean_logits=clean_logits,
            noisy_logits=noisy,
            noise_std=torch.zeros_like(clean_logits) if std is None else std.expand_as(clean_logits),
            importance=weights.sum(0),
            balance_terms=balance_terms,
        )

    def _balance(
        self, weights: Tensor, clean: Tensor, noisy: Tensor, std: Tensor | None, indices: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Exploration loss and load over the routable experts only."""
        importance = weights.sum(0)
        routable = weights.shape[1]
        if self.balance == "switch":
            routed = torch.zeros_like(importance).index_add_(
                0, indices.reshape(-1), torch.ones_like(indices, dtype=importance.dtype).reshape(-1)
            )
            return switch_balance_loss(routed / indices.numel(), F.softmax(noisy, dim=1).mean(0)), routed
        if std is not None and self.k < routable:
            load = smooth_load(clean, noisy, std, self.k)
            return balance_loss(importance, load), load
        return balance_loss(importance, None), (weights > 0).float().sum(0)

    def _dense_routes(self, clean_logits: Tensor, noisy: Tensor) -> Routes:
        """Every expert on every sample, softmax weights (the dense mixture, the warm-up before top-k, or forced
        experts alone)."""
        weights = F.softmax(noisy, dim=1)
        batch = noisy.shape[0]
        indices = torch.arange(self.num_experts, device=noisy.device).expand(batch, -1)
        routable = self.num_experts - self.num_forced

        def balance_terms() -> tuple[Tensor, Tensor]:
            loss = balance_loss(weights[:, :routable].sum(0), None) if routable else noisy.new_zeros(())
            return loss, noisy.new_full((self.num_experts,), float(batch))

        return Routes(
            weights=weights,
            indices=indices,
            clean_logits=clean_logits,
            noisy_logits=noisy,
            noise_std=torch.zeros_like(clean_logits),
            importance=weights.sum(0),
            balance_terms=balance_terms,
        )

    def _noise_std(self, clean_logits: Tensor, noise_logits: Tensor | None) -> Tensor:
        if self.noise == "fixed":
            std = clean_logits.new_full(clean_logits.shape, self.noise_std)
        elif noise_logits is None:
            raise RoutingError("noise='learned' needs the generator's noise logits.")
        else:
            # The floor keeps the load estimate finite (no division by a zero std).
            std = F.softplus(noise_logits) + 1e-2
        if self.noise_cap is not None:
            routable = self.num_experts - self.num_forced
            spread = clean_logits[:, :routable].detach().std(dim=1, keepdim=True, unbiased=False)
            std = torch.minimum(std, self.noise_cap * spread)
        std = std * self.noise_scale
        if self.num_forced:  # forced experts are always routed: no noise on them
            std = torch.cat(
                [
                    std[:, : self.num_experts - self.num_forced],
                    torch.zeros_like(std[:, self.num_experts - self.num_forced :]),
                ],
                dim=1,
            )
        return std.clamp_min(1e-6)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, k={self.k}, noise={self.noise!r}, balance={self.balance!r}, "
            f"num_forced={self.num_forced}, noise_cap={self.noise_cap}"
        )
