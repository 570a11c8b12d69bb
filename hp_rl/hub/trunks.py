"""A hub's trunks, loaded (the one pathway builder): a hub spec's experts as trunks with input adapters, training
modes and learning-rate scales; the optimizer's parameter groups of their trunks; the manifest of what was loaded.

Used by both consumers of the routing core, the RL features extractor
(:class:`hp_rl.rl.extractor.HubPathwayExtractor`) and the image classifier
(:class:`hp_rl.vision.classifier.HubPathwayClassifier`), so that an expert's ``frozen`` / ``lr_scale`` in a
spec, ``freeze_experts``, ``expert_lr_scale`` and the input adapters mean the same in both, and both run
folders describe their hub with the same ``hub_manifest.yml`` entries.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from hp_rl.hub.adapters import build_input_adapter
from hp_rl.hub.expert import HubExpert
from hp_rl.hub.sources import load_expert
from hp_rl.hub.spec import ExpertSpec, HubSpec
from hp_rl.routing import ActorCriticTrunk, TrunkExpert

__all__ = ["HubTrunk", "load_hub_trunks", "manifest_entry", "trunk_parameter_groups"]

# Loads one expert for inputs of a shape (None: the expert's own input shape).
ExpertLoader = Callable[[ExpertSpec, "tuple[int, ...] | None", bool], HubExpert]


def _default_loader(spec: ExpertSpec, shape: tuple[int, ...] | None, frozen: bool) -> HubExpert:
    return load_expert(spec, shape)


@dataclass
class HubTrunk:
    """One loaded expert, ready to be wrapped for routing (:class:`~hp_rl.routing.AdaptedExpert` & co.).

    :param spec: the expert's entry in the hub spec.
    :param trunk: the loaded trunk (its ``info`` gives its input shape and width).
    :param adapter: the input adapter from the consumer's inputs to the trunk's (``None``: none needed).
    :param frozen: the trunk starts frozen (the spec's ``frozen``, else ``freeze_experts``).
    :param scheduled: frozen at first, fine-tuned once the trunk schedule (``unfreeze_at``) says so.
    :param lr_scale: learning-rate multiplier of the trunk while it trains (the spec's ``lr_scale`` times
        ``expert_lr_scale``); ``None`` for a trunk that never trains.
    """

    spec: ExpertSpec
    trunk: HubExpert
    adapter: nn.Module | None
    frozen: bool
    scheduled: bool
    lr_scale: float | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def features_dim(self) -> int:
        """The trunk's own output width f (before the adapter to the common width d)."""
        return int(self.trunk.info.features_dim)


def load_hub_trunks(
    spec: HubSpec,
    input_shape: tuple[int, ...] | None,
    freeze_experts: bool,
    expert_lr_scale: float = 1.0,
    unfreeze_at: float | None = None,
    channel_names: Iterable[str] | None = None,
    loader: ExpertLoader | None = None,
) -> tuple[list[HubTrunk], tuple[int, ...]]:
    """Load every expert of ``spec`` for inputs of ``input_shape`` and build its input adapter.

    :param spec: the hub.
    :param input_shape: the consumer's input, ``(C, H, W)`` or ``(D,)``; ``None`` takes the first expert's
        own input shape (the vision classifier without ``image_shape``).
    :param freeze_experts: freeze trunks whose spec entry does not say (``frozen:``) itself.
    :param expert_lr_scale: learning-rate multiplier of fine-tuned trunks, on top of each entry's ``lr_scale``.
    :param unfreeze_at: with a trunk schedule, frozen trunks are *scheduled*: loaded trainable (their own
        copy), frozen at first and fine-tuned later.
    :param channel_names: what the consumer's input channels mean (channel maps by meaning).
    :param loader: loads one expert (``(spec, shape, frozen) -> HubExpert``), e.g. with a cache of shared
        frozen trunks; default :func:`hp_rl.hub.load_expert`.
    :return: the trunks in spec order and the input shape they were built for.
    """
    load = loader or _default_loader
    targets = tuple(channel_names) if channel_names is not None else None
    loaded: list[tuple[ExpertSpec, HubExpert, bool, bool]] = []
    shape = input_shape
    for expert in spec.experts:
        frozen = freeze_experts if expert.frozen is None else expert.frozen
        scheduled = unfreeze_at is not None and frozen
        trunk = load(expert, shape, frozen and not scheduled)
        if shape is None:
            shape = tuple(int(s) for s in trunk.info.input_shape)
        loaded.append((expert, trunk, frozen, scheduled))
    assert shape is not None  # a hub spec holds at least one expert
    trunks = []
    for expert, trunk, frozen, scheduled in loaded:
        # a spec's channel names first; else what the agent's own files say its task's channels mean
        source_channels = expert.channel_names or getattr(trunk, "channel_names", None)
        adapter = build_input_adapter(shape, trunk.info, expert.name, targets, source_channels)
        scale = expert.lr_scale * expert_lr_scale if (not frozen or scheduled) else None
        trunks.append(HubTrunk(expert, trunk, adapter, frozen, scheduled, scale))
    return trunks, shape


def trunk_parameter_groups(
    experts: Mapping[str, nn.Module] | nn.ModuleDict, lr_scales: Mapping[str, float], scheduled: Collection[str] = ()
) -> dict[float, list[nn.Parameter]]:
    """The trainable trunk parameters of the routed experts, grouped by learning-rate scale.

    :param experts: the pathway's experts by name (:class:`~hp_rl.routing.TrunkExpert` for hub experts).
    :param lr_scales: expert -> its trunk's scale (trunks without one are frozen or not hub trunks).
    :param scheduled: experts whose trunks a schedule keeps frozen for now: included, they train later.
    :return: scale -> parameters, in the order of ``lr_scales``.
    """
    groups: dict[float, list[nn.Parameter]] = {}
    for name, scale in lr_scales.items():
        expert = experts[name]
        trunk = expert.trunk if isinstance(expert, TrunkExpert) else expert
        later = name in scheduled
        groups.setdefault(scale, []).extend(p for p in trunk.parameters() if p.requires_grad or later)
    return groups


def manifest_entry(name: str, expert: nn.Module) -> dict[str, Any]:
    """What ``hub_manifest.yml`` records of one routed expert: source, file digest, architecture, input
    shape, width, size, training mode and input adapter."""
    wrapped = isinstance(expert, TrunkExpert)
    trunk = expert.inner_trunk if isinstance(expert, TrunkExpert) else expert
    adapter = expert.input_adapter if isinstance(expert, TrunkExpert) else None
    entry: dict[str, Any] = {
        "name": name,
        "frozen": bool(expert.frozen) if wrapped else None,
        "input_adapter": repr(adapter) if adapter is not None and list(adapter.children()) else None,
        "parameters": sum(p.numel() for p in trunk.parameters()),
    }
    if isinstance(trunk, ActorCriticTrunk):  # an MLP agent's critic network came with its actor trunk
        entry["critic_parameters"] = sum(p.numel() for p in trunk.critic.parameters())
        trunk = trunk.actor
    if isinstance(trunk, HubExpert):
        info, provenance = trunk.info, trunk.provenance
        entry.update(
            {
                "source": provenance.source,
                "location": provenance.location,
                "sha256": provenance.sha256,
                "arch": info.arch,
                "input_shape": list(info.input_shape),
                "features_dim": info.features_dim,
                "details": dict(provenance.details),
            }
        )
    return entry
