"""``HubPathwayExtractor``: Hub-Pathway as a Stable-Baselines3 features extractor."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from hp_rl.hub import HubExpert, HubSpec, build_input_adapter, load_expert, parse_hub
from hp_rl.hub.sources import random_expert_seed
from hp_rl.hub.spec import ExpertSpec
from hp_rl.routing import (
    AdaptedExpert,
    BalanceMode,
    HubPathway,
    NoiseMode,
    NoisyTopKRouter,
    PathwayGenerator,
    PathwayOutput,
    Routes,
    conv_body,
    mlp_body,
)

__all__ = ["HubPathwayExtractor", "find_hub_extractors", "routing_noise"]

# Frozen trunks never change, so every extractor in the process that names the same weights shares one
# copy: actor and critic, a DQN target network, a model loaded beside the one that saved it.
_FROZEN_TRUNKS: weakref.WeakValueDictionary[str, HubExpert] = weakref.WeakValueDictionary()


class _AttachLoss(torch.autograd.Function):
    """Identity on ``features`` whose backward also sends gradient 1 into ``loss``.

    SB3's ``train()`` has no hook for extra loss terms. Whatever loss the algorithm backpropagates through
    the features then behaves as if ``loss`` had been added to it.
    """

    @staticmethod
    def forward(ctx: Any, features: Tensor, loss: Tensor) -> Tensor:
        ctx.loss_shape = loss.shape
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad_features: Tensor) -> tuple[Tensor, Tensor]:
        return grad_features, grad_features.new_ones(ctx.loss_shape)


def attach_loss(features: Tensor, loss: Tensor) -> Tensor:
    """``features`` unchanged; backpropagating any loss through them also backpropagates ``loss``.

    :param features: ``(B, d)`` tensor that the algorithm's loss depends on.
    :param loss: scalar auxiliary loss (already scaled by its coefficient).
    """
    if not (torch.is_grad_enabled() and loss.requires_grad):
        return features
    out: Tensor = _AttachLoss.apply(features, loss)
    return out


def _frozen_key(spec: ExpertSpec, observation_shape: tuple[int, ...]) -> str:
    seed = random_expert_seed(spec) if spec.source == "random" else None
    return json.dumps([spec.as_dict(), list(observation_shape), seed], sort_keys=True, default=str)


class HubPathwayExtractor(BaseFeaturesExtractor):
    """Routes each observation through the top-k experts of a hub and aggregates their features.

    Works with any SB3 algorithm (``features_extractor_class=HubPathwayExtractor``). Use ``net_arch=[]``
    so that the action and value heads are linear on the aggregated features, as in the method.

    The exploration (load balance) loss joins whatever loss the algorithm backpropagates through the
    features, scaled by ``explore_coef``; :class:`~hp_rl.rl.algorithms.HubPPO` and ``HubA2C`` add the
    exploitation loss. Routing noise is keyed by observation content, so a rollout and the update that
    follows it route each observation identically; it is re-drawn when a new rollout starts.

    :param observation_space: images ``(C, H, W)`` (SB3 has already transposed and scaled them) or
        vectors ``(D,)``.
    :param hub: the experts: a YAML spec path, a comma-separated string or list of checkpoint paths,
        ``"random:N"``, or a mapping ``{"experts": [...]}``. Plain values only, so SB3 can save them.
    :param k: experts per observation.
    :param features_dim: common width d that every expert is adapted to.
    :param freeze_experts: freeze the trunks (adapters and generator still train); an expert's own
        ``frozen`` in the spec takes precedence.
    :param expert_lr_scale: learning-rate multiplier of fine-tuned trunks (applied by HubPPO/HubA2C,
        which build one optimizer group per scale; other algorithms train every parameter at their rate).
    :param noise: ``"learned"``, ``"fixed"`` or ``"none"``.
    :param noise_std: std for ``noise="fixed"``.
    :param explore_coef: weight of the exploration loss.
    :param balance: ``"cv2"`` (importance + load) or ``"switch"``.
    :param dense: run every expert on every observation with softmax weights (the dense baseline).
    :param noise_seed: seed of the content-keyed noise stream.
    """

    updated_since_rollout: Tensor

    def __init__(
        self,
        observation_space: spaces.Space,
        hub: str | Sequence[str] | Mapping[str, Any],
        k: int = 2,
        features_dim: int = 256,
        freeze_experts: bool = True,
        expert_lr_scale: float = 1.0,
        noise: NoiseMode = "learned",
        noise_std: float = 1.0,
        explore_coef: float = 0.01,
        balance: BalanceMode = "cv2",
        dense: bool = False,
        noise_seed: int = 0,
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(
                f"HubPathwayExtractor needs a Box observation space (images or vectors), got {observation_space}. "
                "Flatten dict or discrete observations with a gymnasium wrapper first."
            )
        super().__init__(observation_space, features_dim)
        spec: HubSpec = parse_hub(hub)
        if not 1 <= k <= len(spec.experts) and not dense:
            raise ValueError(
                f"k={k} is out of range for a hub of {len(spec.experts)} experts "
                f"({', '.join(spec.names)}): choose 1 <= k <= {len(spec.experts)}."
            )
        shape = tuple(int(s) for s in observation_space.shape)
        self.hub_spec = spec
        self.explore_coef = explore_coef
        self.lr_scales: dict[str, float] = {}
        experts: dict[str, AdaptedExpert] = {}
        for expert_spec in spec.experts:
            frozen = freeze_experts if expert_spec.frozen is None else expert_spec.frozen
            trunk = self._load_trunk(expert_spec, shape, frozen)
            adapter = build_input_adapter(shape, trunk.info, expert_spec.name)
            experts[expert_spec.name] = AdaptedExpert(trunk, trunk.info.features_dim, features_dim, adapter, frozen)
            if not frozen:
                self.lr_scales[expert_spec.name] = expert_spec.lr_scale * expert_lr_scale
        if len(shape) == 3:
            body, body_dim = conv_body(shape[0], shape[1], shape[2])
        else:
            body, body_dim = mlp_body(int(torch.Size(shape).numel()))
        generator = PathwayGenerator(body, body_dim, len(experts), learned_noise=noise == "learned")
        router = NoisyTopKRouter(len(experts), k, noise=noise, noise_std=noise_std, balance=balance, dense=dense)
        self.pathway = HubPathway(experts, generator, router)
        self.pathway.noise.seed = noise_seed
        self.pathway.noise.enabled = noise != "none"
        self._noise_requested = noise != "none"
        self.last_output: PathwayOutput | None = None
        # Routing of the latest forward made to act (not to update), and how many there were: gate usage
        # statistics count each acting observation exactly once.
        self.last_acting_routes: Routes | None = None
        self.acting_forwards = 0
        # Saved with the model (a buffer), so a loaded model re-draws its noise exactly when the saved one would.
        self.register_buffer("updated_since_rollout", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _load_trunk(spec: ExpertSpec, shape: tuple[int, ...], frozen: bool) -> HubExpert:
        if not frozen:
            return load_expert(spec, shape)
        key = _frozen_key(spec, shape)
        trunk = _FROZEN_TRUNKS.get(key)
        if trunk is None:
            trunk = load_expert(spec, shape)
            _FROZEN_TRUNKS[key] = trunk
        return trunk

    @property
    def expert_names(self) -> tuple[str, ...]:
        """Expert names in routing column order."""
        return self.pathway.expert_names

    @property
    def num_experts(self) -> int:
        """m."""
        return len(self.pathway.experts)

    @property
    def k(self) -> int:
        """Experts per observation."""
        return int(self.pathway.router.k)  # type: ignore[arg-type]

    def advance_noise(self) -> None:
        """Re-draw the routing noise (called when a new rollout starts)."""
        self.pathway.noise.epoch += 1

    def forward(self, observations: Tensor) -> Tensor:
        """:param observations: ``(B, C, H, W)`` or ``(B, D)``, preprocessed by SB3.
        :return: ``(B, features_dim)`` aggregated features (carrying the exploration loss's gradient)."""
        # A forward outside training mode after one in training mode is the first of a new rollout:
        # SB3 collects rollouts in eval mode and updates in train mode, for every algorithm.
        if self.training:
            self.updated_since_rollout.fill_(True)
        elif bool(self.updated_since_rollout):
            self.advance_noise()
            self.updated_since_rollout.fill_(False)
        output = self.pathway(observations)
        self.last_output = output
        if not self.training:
            self.last_acting_routes = output.routes
            self.acting_forwards += 1
        if self.explore_coef:
            return attach_loss(output.features, self.explore_coef * output.explore_loss)
        return output.features

    def trunk_parameter_groups(self) -> dict[float, list[nn.Parameter]]:
        """Trainable trunk parameters grouped by learning-rate scale (scale 1 groups left out)."""
        groups: dict[float, list[nn.Parameter]] = {}
        for name, scale in self.lr_scales.items():
            if scale == 1.0:
                continue
            expert = self.pathway.experts[name]
            assert isinstance(expert, AdaptedExpert)
            groups.setdefault(scale, []).extend(p for p in expert.trunk.parameters() if p.requires_grad)
        return groups


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
