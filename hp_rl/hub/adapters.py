"""Per-expert input adapters: make an expert built for one observation space accept another."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hp_rl.core.errors import HpRlError
from hp_rl.hub.architectures import TrunkInfo
from hp_rl.hub.meanings import channel_map_weight
from hp_rl.routing.fused import Op, lower_all, register_lowering
from hp_rl.routing.init import KeepInit

__all__ = ["AdapterError", "ChannelMap", "LinearMap", "Resize", "build_input_adapter"]


class AdapterError(HpRlError, ValueError):
    """An expert's input cannot be adapted to the observation space."""


class ChannelMap(nn.Module):
    """Trainable 1x1 convolution from ``in_channels`` to ``out_channels`` with a deliberate start.

    The start is a map by meaning when one is given (:func:`hp_rl.hub.meanings.channel_map_weight`: each
    expert channel reads the target channel that means the same), else channel averaging. Either keeps a
    pretrained trunk's input statistics close to what it was trained on, unlike a random start. The
    convolution sits in :class:`~hp_rl.routing.init.KeepInit`, so SB3's orthogonal initialisation keeps it.

    :param in_channels: channels of the observation.
    :param out_channels: channels the expert expects.
    :param weight: ``(out_channels, in_channels)`` start, or ``None`` for averaging.
    """

    def __init__(self, in_channels: int, out_channels: int, weight: Tensor | None = None) -> None:
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        with torch.no_grad():
            if weight is None:
                conv.weight.fill_(1.0 / in_channels)
            else:
                if tuple(weight.shape) != (out_channels, in_channels):
                    expected = (out_channels, in_channels)
                    raise ValueError(f"ChannelMap weight must be {expected}, got {tuple(weight.shape)}.")
                conv.weight.copy_(weight[:, :, None, None])
        self.conv = KeepInit(conv)

    @property
    def weight(self) -> Tensor:
        """``(out_channels, in_channels, 1, 1)`` the convolution's weight."""
        conv = self.conv.module
        assert isinstance(conv, nn.Conv2d)
        return conv.weight

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C_in, H, W)``. :return: ``(B, C_out, H, W)``."""
        out: Tensor = self.conv(x.float())
        return out


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
    """Trainable linear map between state vectors of different sizes (flattens its input).

    Starts as the identity on the leading ``min(in, out)`` coordinates and zero elsewhere (no bias), so
    the expert first sees the target's state as it is, not a random projection of it. The layer sits in
    :class:`~hp_rl.routing.init.KeepInit`, so SB3's orthogonal initialisation keeps that start.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        linear = nn.Linear(in_features, out_features)
        with torch.no_grad():
            linear.weight.zero_()
            linear.bias.zero_()
            overlap = min(in_features, out_features)
            linear.weight[:overlap, :overlap] = torch.eye(overlap)
        self.linear = KeepInit(linear)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, ...)``. :return: ``(B, out_features)``."""
        out: Tensor = self.linear(x.flatten(1))
        return out


def build_input_adapter(
    observation_shape: tuple[int, ...],
    info: TrunkInfo,
    name: str,
    target_channels: tuple[str, ...] | None = None,
    source_channels: tuple[str, ...] | None = None,
) -> nn.Module | None:
    """The adapter that maps observations of ``observation_shape`` to the trunk's input, or ``None``.

    :param observation_shape: the pathway input without batch: ``(C, H, W)`` or ``(D,)``.
    :param info: what the trunk expects.
    :param name: expert name, for error messages.
    :param target_channels: names of the observation's channels, where the environment says.
    :param source_channels: names of the expert's input channels, where its spec says. With both, channels
        are mapped by meaning, also between frames of equal channel counts whose channels differ.
    :raises AdapterError: when no adapter can bridge the two (for instance images into a state MLP).
    """
    obs_is_image = len(observation_shape) == 3
    expected = tuple(info.input_shape)
    named = (
        obs_is_image
        and target_channels is not None
        and source_channels is not None
        and len(target_channels) == observation_shape[0]
        and len(source_channels) == expected[0]
    )
    meaning_weight = channel_map_weight(target_channels, source_channels) if named else None  # type: ignore[arg-type]
    same_meaning = named and tuple(target_channels or ()) == tuple(source_channels or ())
    if tuple(observation_shape) == expected and (meaning_weight is None or same_meaning):
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
        if channels != expected[0] or (meaning_weight is not None and not same_meaning):
            layers.append(ChannelMap(channels, expected[0], meaning_weight))
        return nn.Sequential(*layers)
    if obs_is_image:
        raise AdapterError(
            f"Expert {name!r} ({info.arch}) expects state vectors of shape {expected}, but observations are "
            f"images of shape {observation_shape}. Use an image expert (arch 'nature_cnn') for pixel inputs."
        )
    return LinearMap(int(torch.Size(observation_shape).numel()), int(torch.Size(expected).numel()))


def _lower_channel_map(module: nn.Module) -> list[Op] | None:
    assert isinstance(module, ChannelMap)
    ops = lower_all([module.conv])
    return None if ops is None else [Op("float", key=("float",)), *ops]


def _lower_linear_map(module: nn.Module) -> list[Op] | None:
    assert isinstance(module, LinearMap)
    ops = lower_all([module.linear])
    return None if ops is None else [Op("flatten", key=("flatten",)), *ops]


# The adapters as primitive operations, for fused expert execution (hp_rl.routing.fused).
register_lowering(ChannelMap, _lower_channel_map)
register_lowering(LinearMap, _lower_linear_map)
register_lowering(Resize, lambda m: [Op("resize", m, ("resize", m.size))])
