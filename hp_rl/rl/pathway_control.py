"""The hub extractors of an SB3 model, found and steered together: their schedules' progress and their routing noise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from hp_rl.rl.extractor import HubPathwayExtractor

__all__ = ["set_training_progress", "find_hub_extractors", "routing_noise"]


def set_training_progress(model: Any, progress: float) -> None:
    """Apply the pathway schedules of every hub extractor of ``model`` at ``progress`` in [0, 1]."""
    for extractor in find_hub_extractors(model):
        extractor.set_progress(progress)


def find_hub_extractors(model_or_module: Any) -> list[HubPathwayExtractor]:
    """Every distinct :class:`HubPathwayExtractor` that sees observations in an SB3 model or module.

    Target networks (DQN's ``q_net_target``, SAC's ``critic_target``) are left out: they re-encode
    observations the online network already counted.
    """
    root = getattr(model_or_module, "policy", model_or_module)
    if not isinstance(root, nn.Module):
        return []
    found: list[HubPathwayExtractor] = []
    seen: set[int] = set()
    for name, module in root.named_modules():
        if "target" in name.split(".")[0]:
            continue
        if isinstance(module, HubPathwayExtractor) and id(module) not in seen:
            seen.add(id(module))
            found.append(module)
    return found


@contextmanager
def routing_noise(model_or_module: Any, enabled: bool) -> Iterator[None]:
    """Turn routing noise on or off for every hub extractor of a model (off for deterministic evaluation)."""
    root = getattr(model_or_module, "policy", model_or_module)
    modules = root.modules() if isinstance(root, nn.Module) else []
    extractors = [m for m in modules if isinstance(m, HubPathwayExtractor)]
    previous = [e.pathway.noise.enabled for e in extractors]
    for extractor in extractors:
        extractor.pathway.noise.enabled = enabled and extractor._noise_requested
    try:
        yield
    finally:
        for extractor, state in zip(extractors, previous, strict=True):
            extractor.pathway.noise.enabled = state
