"""Pathway generator: a small network on the input that scores every expert."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hp_rl.routing.init import KeepInit

__all__ = ["GeneratorLogits", "PathwayGenerator", "conv_body", "mlp_body"]


@dataclass(frozen=True)
class GeneratorLogits:
    """Generator output.

    :param clean: ``(B, m)`` expert scores.
    :param noise: ``(B, m)`` pre-softplus noise scale, or ``None`` when noise is not learned.
    """

    clean: Tensor
    noise: Tensor | None


class PathwayGenerator(nn.Module):
    """Scores the m experts of a hub for each sample.

    The output layers start small and random: zero logits would tie and, through ``topk``'s tie
    breaking, always pick the same experts.

    :param body: network mapping ``(B, ...)`` inputs to ``(B, body_dim)`` features.
    :param body_dim: width of the body's output.
    :param num_experts: m.
    :param learned_noise: add a second head whose softplus is the noise std.
    :param init_std: standard deviation of the output layers' initial weights.
    """

    def __init__(
        self, body: nn.Module, body_dim: int, num_experts: int, learned_noise: bool = True, init_std: float = 1e-2
    ) -> None:
        super().__init__()
        self.body = body
        self.logits = KeepInit(self._small_linear(body_dim, num_experts, init_std, bias=0.0))
        # A negative bias starts the learned std near softplus(-1) ~ 0.3: exploration without drowning the logits.
        self.noise_logits = (
            KeepInit(self._small_linear(body_dim, num_experts, init_std, bias=-1.0)) if learned_noise else None
        )

    @staticmethod
    def _small_linear(in_features: int, out_features: int, std: float, bias: float) -> nn.Linear:
        layer = nn.Linear(in_features, out_features)
        nn.init.normal_(layer.weight, std=std)
        nn.init.constant_(layer.bias, bias)
        return layer

    def forward(self, x: Tensor) -> GeneratorLogits:
        """:param x: ``(B, ...)`` preprocessed observations. :return: logits of shape ``(B, m)``."""
        hidden = self.body(x)
        noise = self.noise_logits(hidden) if self.noise_logits is not None else None
        return GeneratorLogits(clean=self.logits(hidden), noise=noise)


def conv_body(in_channels: int, height: int, width: int, hidden: int = 64) -> tuple[nn.Module, int]:
    """A cheap convolutional body for image inputs ``(B, C, H, W)`` (a fraction of a NatureCNN's cost).

    :return: the body and its output width.
    """
    if min(height, width) >= 36:
        convs: list[nn.Module] = [
            nn.Conv2d(in_channels, 16, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2),
            nn.ReLU(),
        ]
    else:  # small frames (MinAtar 10x10, digits 8x8): a stride-1 layer, pooled so the linear layer stays small
        out_h, out_w = min(height, 5), min(width, 5)
        # Where the sizes divide, a plain average pool computes the same windows as the adaptive one at
        # ~60% of its CPU time; neither holds parameters, so saved generators load into either.
        pool: nn.Module = (
            nn.AvgPool2d((height // out_h, width // out_w))
            if height % out_h == 0 and width % out_w == 0
            else nn.AdaptiveAvgPool2d((out_h, out_w))
        )
        convs = [nn.Conv2d(in_channels, 16, 3, stride=1, padding=1), nn.ReLU(), pool]
    features = nn.Sequential(*convs, nn.Flatten())
    with torch.no_grad():
        flat = int(features(torch.zeros(1, in_channels, height, width)).shape[1])
    return nn.Sequential(features, nn.Linear(flat, hidden), nn.ReLU()), hidden


def mlp_body(in_features: int, hidden: int = 64) -> tuple[nn.Module, int]:
    """A small MLP body for flat inputs ``(B, D)``; higher-rank inputs are flattened.

    :return: the body and its output width.
    """
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.Tanh()), hidden
