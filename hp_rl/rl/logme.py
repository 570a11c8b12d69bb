"""LogME (You et al. 2021): how well frozen features explain a target, as the evidence of a Bayesian linear
regression from them; the transferability score of experts without a policy head (:mod:`hp_rl.rl.scoring`)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["logme", "discounted_returns"]


def logme(features: np.ndarray, targets: np.ndarray, iterations: int = 50) -> float:
    """LogME evidence per sample of a linear Gaussian model ``targets ~ features`` (You et al. 2021).

    :param features: ``(N, D)``.
    :param targets: ``(N,)``.
    :return: the maximised log evidence divided by N (higher: the features explain the targets better).
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    z2 = (u.T @ y) ** 2
    residual = max(float(y @ y - z2.sum()), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * z2 / (t + sigma) ** 2).sum())
        res2 = float((z2 / (1 + sigma / t) ** 2).sum()) + residual
        new_alpha, new_beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
        converged = abs(new_alpha / new_beta - t) / t < 1e-3
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    t = alpha / beta
    m2 = float((sigma * z2 / (t + sigma) ** 2).sum())
    res2 = float((z2 / (1 + sigma / t) ** 2).sum()) + residual
    evidence = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - 0.5 * float(np.log(alpha + beta * sigma).sum())
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )
    return evidence / n


def discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    """``(T, E)`` returns-to-go within episodes (cut at the end of the rollout)."""
    out = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running * (1.0 - dones[t])
        out[t] = running
    return out
