"""hp_rl: Hub-Pathway transfer from a hub of pretrained models into reinforcement learning agents."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "HubPathwayExtractor",
    "GateUsageCallback",
    "PathwayScheduleCallback",
    "HubPPO",
    "HubA2C",
    "pathway_preset",
    "PathwayOptions",
    "LossWeights",
    "routing_noise",
    "find_hub_extractors",
    "__version__",
]

_LAZY = {
    "HubPathwayExtractor": "hp_rl.rl.extractor",
    "GateUsageCallback": "hp_rl.rl.callbacks",
    "PathwayScheduleCallback": "hp_rl.rl.callbacks",
    "HubPPO": "hp_rl.rl.algorithms",
    "HubA2C": "hp_rl.rl.algorithms",
    "pathway_preset": "hp_rl.hub.options",
    "PathwayOptions": "hp_rl.hub.options",
    "LossWeights": "hp_rl.hub.options",
    "routing_noise": "hp_rl.rl.pathway_control",
    "find_hub_extractors": "hp_rl.rl.pathway_control",
}


def __getattr__(name: str) -> Any:
    # Lazy so that the routing core and the vision companion import without Stable-Baselines3.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hp_rl' has no attribute {name!r}")
