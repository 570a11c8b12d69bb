"""Plain (hub-free) feature extractors that the baselines train with."""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from hp_rl.hub.architectures import MLPTrunk, NatureCNNTrunk, SmallFrameCNNTrunk

__all__ = ["SmallFrameCNN", "base_trunk"]


class SmallFrameCNN(BaseFeaturesExtractor):
    """The MinAtar paper's network for small frames (Young & Tian 2019), as an SB3 features extractor.

    ``Conv2d(C, 16, 3, stride 1) -> ReLU -> Flatten -> Linear(features_dim) -> ReLU``. On MinAtar's
    ``10 x 10 x C`` frames (channels first after ``MinAtarObservation``) the convolution gives
    ``16 x 8 x 8 = 1024`` features. SB3's NatureCNN needs frames of at least 36x36, so this is the
    plain baseline trunk for small frames. Use it with ``net_arch=[]`` for the paper's linear heads.

    Observations are used as given: SB3 only rescales ``uint8`` image spaces, and MinAtar frames are
    already floats in [0, 1].

    :param observation_space: a ``Box`` of shape ``(C, H, W)``, channels first, ``H, W >= 3``.
    :param features_dim: width of the output (128 in the MinAtar paper).
    :param channels: output channels of the convolution (16 in the MinAtar paper).
    """

    def __init__(self, observation_space: spaces.Space, features_dim: int = 128, channels: int = 16) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise TypeError(
                f"SmallFrameCNN needs a Box observation space of shape (C, H, W), got {observation_space}. "
                "Vector observations train with MlpPolicy."
            )
        in_channels, height, width = (int(s) for s in observation_space.shape)
        if height < 3 or width < 3:
            raise ValueError(f"SmallFrameCNN needs frames of at least 3x3, got {height}x{width}.")
        super().__init__(observation_space, features_dim)
        self.cnn = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            n_flatten = int(self.cnn(torch.zeros(1, in_channels, height, width)).shape[1])
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: Tensor) -> Tensor:
        """:param observations: ``(B, C, H, W)``. :return: ``(B, features_dim)``."""
        out: Tensor = self.linear(self.cnn(observations.float()))
        return out


def base_trunk(shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """The target's plain network for observations of ``shape``: what scratch trains, and the base expert.

    :return: the trunk (SmallFrameCNN for frames under 36x36, NatureCNN above, a 64x64 tanh MLP for
        vectors) and its output width.
    """
    if len(shape) == 3:
        channels, height, width = shape
        if min(height, width) < 36:
            return SmallFrameCNNTrunk(channels, height, width, 128), 128
        return NatureCNNTrunk(channels, height, width, 512), 512
    return MLPTrunk(int(torch.Size(shape).numel()), (64, 64), "tanh"), 64
