"""Exploration losses that keep pathways from collapsing onto a few experts, and how an auxiliary loss joins the
loss an algorithm backpropagates (:func:`attach_loss`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["cv_squared", "smooth_load", "balance_loss", "switch_balance_loss", "attach_loss"]


def cv_squared(values: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation ``var / mean^2`` of a 1-D tensor.

    :param values: shape ``(m,)``.
    :return: scalar; 0 for a single value, where the ratio is undefined.
    """
    if values.numel() <= 1:
        return values.new_zeros(())
    values = values.float()
    return values.var(unbiased=False) / (values.mean() ** 2 + eps)


def smooth_load(clean_logits: Tensor, noisy_logits: Tensor, noise_std: Tensor, k: int) -> Tensor:
    """Differentiable estimate of how many samples each expert receives (Shazeer et al. 2017).

    For sample x and expert i, P(i in top-k) is the probability that a fresh noise draw for i alone
    would still put it above the k-th best of the other noisy logits.

    :param clean_logits: ``(B, m)`` logits before noise.
    :param noisy_logits: ``(B, m)`` logits after noise (the ones that were routed).
    :param noise_std: ``(B, m)`` noise standard deviation, > 0.
    :param k: experts per sample.
    :return: ``(m,)`` expected number of samples routed to each expert.
    """
    num_experts = clean_logits.shape[1]
    if k >= num_experts:
        return clean_logits.new_full((num_experts,), float(clean_logits.shape[0]))
    top_values, _ = noisy_logits.topk(k + 1, dim=1)
    threshold_if_in = top_values[:, k : k + 1]  # (B, 1): k+1-th largest
    threshold_if_out = top_values[:, k - 1 : k]  # (B, 1): k-th largest
    is_in = noisy_logits >= threshold_if_out
    threshold = torch.where(is_in, threshold_if_in, threshold_if_out)
    z = (clean_logits - threshold) / noise_std
    prob = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    return prob.sum(0)


def balance_loss(importance: Tensor, load: Tensor | None) -> Tensor:
    """``cv^2(importance) + cv^2(load)``: ~0 when every expert gets the same share.

    :param importance: ``(m,)`` summed pathway weights per expert.
    :param load: ``(m,)`` smooth load, or ``None`` when no noise makes it differentiable.
    """
    loss = cv_squared(importance)
    if load is not None:
        loss = loss + cv_squared(load)
    return loss


def switch_balance_loss(routed_fraction: Tensor, mean_probability: Tensor) -> Tensor:
    """GShard / Switch auxiliary loss ``m * sum_i f_i * P_i`` (equals 1 for uniform routing).

    :param routed_fraction: ``(m,)`` fraction of routed slots that went to each expert (no gradient).
    :param mean_probability: ``(m,)`` mean softmax probability of each expert over the batch.
    """
    num_experts = routed_fraction.shape[0]
    return num_experts * (routed_fraction.detach() * mean_probability).sum()


class _AttachLoss(torch.autograd.Function):
    """Identity on ``features`` whose backward also sends gradient 1 into ``loss``.

    SB3's ``train()`` has no hook for extra loss terms. Whatever loss the algorithm backpropagates through
    the features then behaves as if ``loss`` had been added to it.
    """

    @staticmethod
    def forward(ctx: Any, features: Tensor, loss: Tensor) -> Tensor:
        ctx.loss_shape = loss.shape
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad_features: Tensor) -> tuple[Tensor, Tensor]:
        return grad_features, grad_features.new_ones(ctx.loss_shape)


def attach_loss(features: Tensor, loss: Tensor) -> Tensor:
    """``features`` unchanged; backpropagating any loss through them also backpropagates ``loss``.

    :param features: ``(B, d)`` tensor that the algorithm's loss depends on.
    :param loss: scalar auxiliary loss (already scaled by its coefficient).
    """
    if not (torch.is_grad_enabled() and loss.requires_grad):
        return features
    out: Tensor = _AttachLoss.apply(features, loss)
    return out
