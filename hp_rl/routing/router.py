"""Noisy top-k router: noise, top-k selection, softmax over the selected experts, balance terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    :param load: ``(m,)`` smooth expected number of samples per expert, or the hard count without noise.
    :param balance_loss: scalar exploration loss.
    """

    weights: Tensor
    indices: Tensor
    clean_logits: Tensor
    noisy_logits: Tensor
    noise_std: Tensor
    importance: Tensor
    load: Tensor
    balance_loss: Tensor

    @property
    def k(self) -> int:
        """Experts per sample."""
        return int(self.indices.shape[1])


class NoisyTopKRouter(nn.Module):
    """Turns generator logits into sparse pathway weights (Shazeer et al. 2017 noisy top-k gating).

    The router owns noise, top-k and renormalisation; the generator only makes logits. Top-k is taken on
    the noisy logits first and the softmax runs over the k survivors, so the weights of one sample sum to 1
    over exactly k experts.

    :param num_experts: m, the number of experts.
    :param k: experts per sample, ``1 <= k <= m``.
    :param noise: ``"learned"`` (std = softplus of a generator head), ``"fixed"`` (constant
        ``noise_std``) or ``"none"``.
    :param noise_std: the constant std for ``noise="fixed"``.
    :param balance: ``"cv2"`` (importance + load, Shazeer) or ``"switch"`` (GShard f.P form).
    :param dense: route every sample through all experts with softmax weights (the dense mixture
        baseline); ``k`` is then ignored and set to ``m``.
    """

    def __init__(
        self,
        num_experts: int,
        k: int,
        noise: NoiseMode = "learned",
        noise_std: float = 1.0,
        balance: BalanceMode = "cv2",
        dense: bool = False,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"A hub needs at least one expert, got {num_experts}.")
        if dense:
            k = num_experts
        if not 1 <= k <= num_experts:
            raise ValueError(
                f"k={k} is out of range for a hub of {num_experts} experts: choose 1 <= k <= {num_experts}."
            )
        if noise not in ("learned", "fixed", "none"):
            raise ValueError(f"noise must be 'learned', 'fixed' or 'none', got {noise!r}.")
        if balance not in ("cv2", "switch"):
            raise ValueError(f"balance must be 'cv2' or 'switch', got {balance!r}.")
        if noise == "fixed" and noise_std <= 0:
            raise ValueError(f"noise='fixed' needs noise_std > 0, got {noise_std}.")
        self.num_experts = num_experts
        self.k = k
        self.noise = noise
        self.noise_std = noise_std
        self.balance = balance
        self.dense = dense

    def forward(self, clean_logits: Tensor, noise_logits: Tensor | None, standard_normal: Tensor | None) -> Routes:
        """Route one batch.

        :param clean_logits: ``(B, m)`` generator logits.
        :param noise_logits: ``(B, m)`` pre-softplus noise scale (``noise="learned"`` only), else ``None``.
        :param standard_normal: ``(B, m)`` N(0, 1) draws, or ``None`` for noiseless (deterministic)
            routing, as in evaluation.
        """
        std = self._noise_std(clean_logits, noise_logits) if standard_normal is not None else None
        noisy = clean_logits if std is None else clean_logits + standard_normal * std  # type: ignore[operator]
        top_values, top_indices = noisy.topk(self.k, dim=1)
        top_weights = F.softmax(top_values, dim=1)
        if self.k == 1 and self.num_experts > 1:
            # A softmax over one expert is constantly 1 and gives the generator no task gradient. Add the
            # full softmax probability of the chosen expert minus itself: the weight stays exactly 1, and
            # its gradient is that of the probability (as in Switch-style gating).
            chosen = F.softmax(noisy, dim=1).gather(1, top_indices)
            top_weights = top_weights + chosen - chosen.detach()
        weights = torch.zeros_like(noisy).scatter(1, top_indices, top_weights)
        importance = weights.sum(0)
        if self.balance == "switch":
            routed = torch.zeros_like(importance).index_add_(
                0, top_indices.reshape(-1), torch.ones_like(top_values).reshape(-1)
            )
            loss = switch_balance_loss(routed / top_indices.numel(), F.softmax(noisy, dim=1).mean(0))
            load = routed
        elif std is not None and self.k < self.num_experts:
            load = smooth_load(clean_logits, noisy, std, self.k)
            loss = balance_loss(importance, load)
        else:
            load = (weights > 0).float().sum(0)
            loss = balance_loss(importance, None)
        return Routes(
            weights=weights,
            indices=top_indices,
            clean_logits=clean_logits,
            noisy_logits=noisy,
            noise_std=torch.zeros_like(clean_logits) if std is None else std.expand_as(clean_logits),
            importance=importance,
            load=load,
            balance_loss=loss,
        )

    def _noise_std(self, clean_logits: Tensor, noise_logits: Tensor | None) -> Tensor | None:
        if self.noise == "none":
            return None
        if self.noise == "fixed":
            return clean_logits.new_full(clean_logits.shape, self.noise_std)
        if noise_logits is None:
            raise ValueError("noise='learned' needs the generator's noise logits.")
        # The floor keeps the load estimate finite (no division by a zero std).
        return F.softplus(noise_logits) + 1e-2

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, k={self.k}, noise={self.noise!r}, balance={self.balance!r}"
