"""The model hub: expert sources, hub specs, input adapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hp_rl.core.paths import file_sha256
from hp_rl.hub.adapters import AdapterError, build_input_adapter
from hp_rl.hub.architectures import ARCHITECTURES, TrunkInfo, build_trunk
from hp_rl.hub.defaults import NoFittingHubError, resolve_auto_hub
from hp_rl.hub.expert import ExpertHeads, HubExpert, Provenance
from hp_rl.hub.export import ExportError, ExportItem, export_hub, export_trunk
from hp_rl.hub.hf import HFUnavailableError, resolve_hf_file
from hp_rl.hub.sb3_zip import CheckpointError, read_sb3_expert, read_sb3_trunk
from hp_rl.hub.sources import SOURCES, SourceConfig, load_expert, register_source
from hp_rl.hub.spec import ExpertSpec, HubSpec, HubSpecError, parse_hub

__all__ = [
    "ARCHITECTURES",
    "AdapterError",
    "CheckpointError",
    "ExpertHeads",
    "ExpertSpec",
    "ExportError",
    "ExportItem",
    "HFUnavailableError",
    "HubExpert",
    "HubSpec",
    "HubSpecError",
    "NoFittingHubError",
    "Provenance",
    "SOURCES",
    "SourceConfig",
    "TrunkInfo",
    "build_input_adapter",
    "build_trunk",
    "export_hub",
    "export_trunk",
    "file_sha256",
    "load_expert",
    "load_hub",
    "parse_hub",
    "read_sb3_expert",
    "read_sb3_trunk",
    "register_source",
    "resolve_auto_hub",
    "resolve_hf_file",
]


def load_hub(
    spec: str | Sequence[str] | Mapping[str, Any] | HubSpec, observation_shape: tuple[int, ...] | None = None
) -> dict[str, HubExpert]:
    """Load every expert of a hub.

    :param spec: anything :func:`parse_hub` accepts.
    :param observation_shape: observation shape without batch, used by sources that cannot tell the input
        shape themselves (random initialisation, TorchScript).
    :return: name -> expert, in spec order; each expert maps ``(B, *input_shape)`` to ``(B, features_dim)``.
    """
    hub = parse_hub(spec)
    return {expert.name: load_expert(expert, observation_shape) for expert in hub.experts}
