"""An expert as the pathway sees it: input adapter, pretrained trunk, output adapter to a common width."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hp_rl.routing.init import KeepInit

__all__ = ["AdaptedExpert"]


class AdaptedExpert(nn.Module):
    """``z = A(E(P(x)))``: an expert trunk E between a trainable input adapter P and output adapter A.

    :param trunk: the pretrained network, ``(B, *input) -> (B, trunk_dim)``. Its initialisation is kept
        (see :class:`~hp_rl.routing.init.KeepInit`).
    :param trunk_dim: width of the trunk's output.
    :param features_dim: common width d of every expert's output.
    :param input_adapter: maps the pathway input to what the trunk expects, or ``None`` for identity.
    :param frozen: freeze the trunk: no gradient to its parameters, and its normalisation layers stay in
        eval mode whatever ``train()`` is called with.
    :param output_activation: append a ReLU to the output adapter.
    """

    def __init__(
        self,
        trunk: nn.Module,
        trunk_dim: int,
        features_dim: int,
        input_adapter: nn.Module | None = None,
        frozen: bool = True,
        output_activation: bool = True,
    ) -> None:
        super().__init__()
        self.input_adapter = input_adapter if input_adapter is not None else nn.Identity()
        self.trunk = trunk if isinstance(trunk, KeepInit) else KeepInit(trunk)
        layers: list[nn.Module] = [nn.Linear(trunk_dim, features_dim)]
        if output_activation:
            layers.append(nn.ReLU())
        self.output_adapter = nn.Sequential(*layers)
        self.frozen = frozen
        if frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    @property
    def trunk_needs_grad(self) -> bool:
        """Whether backpropagation has to go through the trunk (to its weights or to the input adapter)."""
        return not self.frozen or any(p.requires_grad for p in self.input_adapter.parameters())

    def train(self, mode: bool = True) -> AdaptedExpert:
        """Set training mode; a frozen trunk stays in eval mode (frozen BatchNorm keeps its statistics)."""
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

    def forward_trunk(self, x: Tensor) -> Tensor:
        """:param x: ``(B, ...)`` pathway input. :return: ``(B, trunk_dim)`` trunk features."""
        if self.trunk_needs_grad:
            return self.trunk(self.input_adapter(x))
        # Frozen trunk, nothing to train before it: skip building its autograd graph.
        with torch.no_grad():
            return self.trunk(self.input_adapter(x))

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, ...)`` pathway input. :return: ``(B, features_dim)`` adapted features."""
        return self.output_adapter(self.forward_trunk(x))
