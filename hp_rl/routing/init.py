"""Protection for parameters whose initialisation is deliberate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["KeepInit"]


class KeepInit(nn.Module):
    """Holds a module whose parameters must keep the values they were given.

    ``Module.apply`` does not descend into it. Stable-Baselines3 applies orthogonal initialisation to the
    whole features extractor after it is built (``ortho_init=True``), which would silently overwrite
    pretrained expert trunks and the generator's deliberately small output layer. Moving, saving, loading
    and training are unaffected: those use ``_apply``, ``state_dict`` and ``parameters``.

    :param module: the protected module; called by ``forward``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def apply(self, fn: Callable[[nn.Module], None]) -> KeepInit:
        return self
