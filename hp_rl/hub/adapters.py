"""Per-expert input adapters: make an expert built for one observation space accept another."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hp_rl.hub.architectures import TrunkInfo

__all__ = ["AdapterError", "ChannelMap", "Resize", "build_input_adapter"]


class AdapterError(ValueError):
    """An expert's input cannot be adapted to the observation space."""


class ChannelMap(nn.Module):
    """Trainable 1x1 convolution from ``in_channels`` to ``out_channels``, started as channel averaging.

    Starting from an average (rather than random) keeps a pretrained trunk's input statistics close
    to what it was trained on.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / in_channels)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C_in, H, W)``. :return: ``(B, C_out, H, W)``."""
        return self.conv(x)


class Resize(nn.Module):
    """Bilinear resize of ``(B, C, H, W)`` frames to ``size``."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C, H, W)``. :return: ``(B, C, *size)``."""
        if x.dtype != torch.float32:
            x = x.float()
        if x.shape[-2:] == self.size:
            return x
        # Nearest for upsampling keeps binary frames (MinAtar) binary; bilinear with antialias downsamples.
        upsample = x.shape[-2] <= self.size[0] and x.shape[-1] <= self.size[1]
        if upsample:
            return F.interpolate(x, size=self.size, mode="nearest")
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)

    def extra_repr(self) -> str:
        return f"size={self.size}"


class LinearMap(nn.Module):
    """Trainable linear map between state vectors of different sizes (flattens its input)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, ...)``. :return: ``(B, out_features)``."""
        return self.linear(x.flatten(1))


def build_input_adapter(observation_shape: tuple[int, ...], info: TrunkInfo, name: str) -> nn.Module | None:
    """The adapter that maps observations of ``observation_shape`` to the trunk's input, or ``None``.

    :param observation_shape: the pathway input without batch: ``(C, H, W)`` or ``(D,)``.
    :param info: what the trunk expects.
    :param name: expert name, for error messages.
    :raises AdapterError: when no adapter can bridge the two (for instance images into a state MLP).
    """
    obs_is_image = len(observation_shape) == 3
    expected = tuple(info.input_shape)
    if tuple(observation_shape) == expected:
        return None
    if info.input_kind == "image":
        if not obs_is_image:
            raise AdapterError(
                f"Expert {name!r} ({info.arch}) expects images of shape {expected}, but observations are "
                f"vectors of shape {observation_shape}. Use a vector expert (arch 'mlp'), or train from "
                "pixels (for control tasks: an env preset with 'pixels: true')."
            )
        layers: list[nn.Module] = []
        channels, height, width = observation_shape
        if (height, width) != expected[1:]:
            layers.append(Resize((expected[1], expected[2])))
        if channels != expected[0]:
            layers.append(ChannelMap(channels, expected[0]))
        return nn.Sequential(*layers)
    if obs_is_image:
        raise AdapterError(
            f"Expert {name!r} ({info.arch}) expects state vectors of shape {expected}, but observations are "
            f"images of shape {observation_shape}. Use an image expert (arch 'nature_cnn') for pixel inputs."
        )
    return LinearMap(int(torch.Size(observation_shape).numel()), int(torch.Size(expected).numel()))
