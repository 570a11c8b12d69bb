"""Trunk architectures that hub experts are built from, with the layouts SB3 uses for its weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from hp_rl.core.errors import HpRlError
from hp_rl.routing.fused import Op, lower_all, register_lowering

__all__ = [
    "ArchitectureError",
    "TrunkInfo",
    "NatureCNNTrunk",
    "MLPTrunk",
    "SmallFrameCNNTrunk",
    "ARCHITECTURES",
    "build_trunk",
    "nature_cnn_flat_size",
]

InputKind = Literal["image", "vector"]


class ArchitectureError(HpRlError, ValueError):
    """An architecture name, activation or input size that no trunk of the hub can take."""


@dataclass(frozen=True)
class TrunkInfo:
    """What a trunk expects and gives.

    :param arch: architecture name in :data:`ARCHITECTURES`.
    :param input_kind: ``"image"`` for ``(C, H, W)`` inputs, ``"vector"`` for ``(D,)``.
    :param input_shape: the input shape without the batch dimension.
    :param features_dim: width of the output features.
    :param options: extra architecture options (for instance the MLP's hidden sizes and activation).
    """

    arch: str
    input_kind: InputKind
    input_shape: tuple[int, ...]
    features_dim: int
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str, default: str) -> str:
        """Value of an architecture option, as a string."""
        return dict(self.options).get(key, default)


def nature_cnn_flat_size(height: int, width: int) -> int:
    """Flattened size after the NatureCNN convolutions for an ``height x width`` frame."""

    def out(size: int) -> int:
        return ((size - 8) // 4 + 1 - 4) // 2 + 1 - 3 + 1

    if out(height) < 1 or out(width) < 1:
        raise ArchitectureError(f"NatureCNN needs frames of at least 36x36, got {height}x{width}.")
    return 64 * out(height) * out(width)


class NatureCNNTrunk(nn.Module):
    """The DQN/SB3 NatureCNN: three convolutions and a linear layer, parameter names as in SB3.

    :param in_channels: input channels (4 stacked grey frames for Atari).
    :param height: frame height.
    :param width: frame width.
    :param features_dim: output width (512 in SB3).
    """

    def __init__(self, in_channels: int = 4, height: int = 84, width: int = 84, features_dim: int = 512) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.linear = nn.Sequential(nn.Linear(nature_cnn_flat_size(height, width), features_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: ``(B, C, H, W)`` in [0, 1]. :return: ``(B, features_dim)``."""
        return self.linear(self.cnn(x))


class SmallFrameCNNTrunk(nn.Module):
    """The MinAtar paper's network for small frames: ``Conv2d(C, channels, 3) -> ReLU -> Linear -> ReLU``.

    Parameter names match :class:`hp_rl.rl.baselines.SmallFrameCNN` (``cnn.0.*``, ``linear.0.*``), the
    plain trunk that MinAtar agents train with, so its SB3 checkpoints load into this trunk as they are.

    :param in_channels: input channels (MinAtar: 4 to 10 object channels).
    :param height: frame height (at least 3).
    :param width: frame width (at least 3).
    :param features_dim: output width (128 in the MinAtar paper).
    :param channels: output channels of the convolution (16 in the MinAtar paper).
    """

    def __init__(
        self, in_channels: int, height: int = 10, width: int = 10, features_dim: int = 128, channels: int = 16
    ) -> None:
        super().__init__()
        if height < 3 or width < 3:
            raise ArchitectureError(f"small_frame_cnn needs frames of at least 3x3, got {height}x{width}.")
        self.cnn = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=3, stride=1), nn.ReLU(), nn.Flatten())
        flat = small_frame_cnn_flat_size(height, width, channels)
        self.linear = nn.Sequential(nn.Linear(flat, features_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: ``(B, C, H, W)`` in [0, 1]. :return: ``(B, features_dim)``."""
        return self.linear(self.cnn(x.float()))


def small_frame_cnn_flat_size(height: int, width: int, channels: int = 16) -> int:
    """Flattened size after the small-frame convolution (3x3, stride 1, no padding)."""
    return channels * (height - 2) * (width - 2)


_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


class MLPTrunk(nn.Module):
    """Fully connected trunk ``Linear -> act -> ... -> Linear -> act`` (SB3's policy_net layout).

    :param in_features: input width D (inputs of higher rank are flattened).
    :param hidden: widths of the layers; the last is the feature width.
    :param activation: ``"tanh"`` (SB3 PPO/A2C default) or ``"relu"`` (DQN default).
    """

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (64, 64), activation: str = "tanh") -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ArchitectureError(f"Unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}.")
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
            width = size
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: ``(B, D)`` or ``(B, ...)``. :return: ``(B, hidden[-1])``."""
        return self.net(x.flatten(1))

    @classmethod
    def from_layers(cls, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], activation: str) -> MLPTrunk:
        """The MLP holding these weights (a checkpoint's linear layers, in order).

        :param layers: ``((out, in), (out,))`` weight and bias of each layer; at least one.
        :param activation: after every layer, as in :class:`MLPTrunk`.
        """
        if not layers:
            raise ArchitectureError("An MLP needs at least one layer.")
        trunk = cls(int(layers[0][0].shape[1]), tuple(int(weight.shape[0]) for weight, _ in layers), activation)
        linears = [m for m in trunk.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for linear, (weight, bias) in zip(linears, layers, strict=True):
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)
        return trunk


def _build_nature_cnn(info: TrunkInfo) -> nn.Module:
    channels, height, width = info.input_shape
    return NatureCNNTrunk(channels, height, width, info.features_dim)


def _build_small_frame_cnn(info: TrunkInfo) -> nn.Module:
    channels, height, width = info.input_shape
    return SmallFrameCNNTrunk(channels, height, width, info.features_dim, int(info.option("channels", "16")))


def _build_mlp(info: TrunkInfo) -> nn.Module:
    text = info.option("hidden", str(info.features_dim))
    hidden = tuple(int(h) for h in text.split(",")) if text else ()  # "": no hidden layer (net_arch=[])
    return MLPTrunk(int(torch.Size(info.input_shape).numel()), hidden, info.option("activation", "tanh"))


ARCHITECTURES: dict[str, Callable[[TrunkInfo], nn.Module]] = {
    "nature_cnn": _build_nature_cnn,
    "mlp": _build_mlp,
    "small_frame_cnn": _build_small_frame_cnn,
}


def build_trunk(info: TrunkInfo) -> nn.Module:
    """A freshly initialised trunk of the described architecture."""
    if info.arch not in ARCHITECTURES:
        raise ArchitectureError(f"Unknown architecture {info.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}.")
    return ARCHITECTURES[info.arch](info)


# Fused execution (hp_rl.routing.fused) runs experts of one architecture as one call; it needs each
# trunk's forward spelt out as primitive operations.
register_lowering(NatureCNNTrunk, lambda m: lower_all([m.cnn, m.linear]))  # type: ignore[list-item]
register_lowering(SmallFrameCNNTrunk, lambda m: _with_float(lower_all([m.cnn, m.linear])))  # type: ignore[list-item]
register_lowering(MLPTrunk, lambda m: _with_flatten(lower_all([m.net])))  # type: ignore[list-item]


def _with_float(ops: list[Op] | None) -> list[Op] | None:
    return None if ops is None else [Op("float", key=("float",)), *ops]


def _with_flatten(ops: list[Op] | None) -> list[Op] | None:
    return None if ops is None else [Op("flatten", key=("flatten",)), *ops]
