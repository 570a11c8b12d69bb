"""A loaded hub expert: a trunk plus what it expects and where it came from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from hp_rl.hub.architectures import TrunkInfo

__all__ = ["HubExpert", "Provenance", "file_sha256"]


@dataclass(frozen=True)
class Provenance:
    """Where an expert's weights came from.

    :param source: registry name of the source (``sb3``, ``safetensors``, ``hf``, ``random``, ...).
    :param location: file path, repository id or ``"random"``.
    :param sha256: digest of the weight file, when there is one.
    :param details: free-form facts from the file (algorithm, training steps, source return, ...).
    """

    source: str
    location: str
    sha256: str | None = None
    details: dict[str, str] = field(default_factory=dict)


class HubExpert(nn.Module):
    """An expert trunk: ``forward`` maps preprocessed observations ``(B, *info.input_shape)`` to
    ``(B, info.features_dim)`` features.

    :param trunk: the network.
    :param info: its input and output description.
    :param provenance: where its weights came from.
    """

    def __init__(self, trunk: nn.Module, info: TrunkInfo, provenance: Provenance) -> None:
        super().__init__()
        self.trunk = trunk
        self.info = info
        self.provenance = provenance

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, *input_shape)``. :return: ``(B, features_dim)``."""
        out: Tensor = self.trunk(x)
        return out

    @property
    def num_parameters(self) -> int:
        """Number of trunk parameters."""
        return sum(p.numel() for p in self.trunk.parameters())


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
