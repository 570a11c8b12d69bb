"""``HubPathwayExtractor``: Hub-Pathway as a Stable-Baselines3 features extractor."""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from hp_rl.hub import HubExpert, HubSpec, load_expert, parse_hub
from hp_rl.hub.options import Aggregation, PathwayOptionError, PathwayOptions, TeacherTrust
from hp_rl.hub.sources import random_expert_seed
from hp_rl.hub.spec import ExpertSpec
from hp_rl.hub.trunks import load_hub_trunks, trunk_parameter_groups
from hp_rl.rl.agent_meanings import learn_task_meanings, map_policy_head
from hp_rl.rl.baselines import base_trunk
from hp_rl.rl.prior import read_hub_prior, routable_experts, routed_by_prior
from hp_rl.routing import (
    AdaptedExpert,
    GateConfig,
    HeadedExpert,
    OutputMix,
    PathwayOutput,
    PathwaySchedule,
    Routes,
    TrunkExpert,
    attach_loss,
    build_pathway,
)

__all__ = [
    "HubPathwayExtractor",
    "BASE_EXPERT",
    "Aggregation",
]

BASE_EXPERT = "base"

# Frozen trunks never change, so every extractor in the process that names the same weights shares one
# copy: actor and critic, a DQN target network, a model loaded beside the one that saved it.
_FROZEN_TRUNKS: weakref.WeakValueDictionary[str, HubExpert] = weakref.WeakValueDictionary()


def _output_width(num_actions: int | None) -> int:
    """The aggregate's width under output aggregation: the mixed policy over the target's actions and one value.

    :raises PathwayOptionError: without the target's actions.
    """
    if num_actions is None or num_actions < 1:
        raise PathwayOptionError(
            "aggregation='output' needs the target's actions: give action_meanings (HubPPO/HubA2C fill it from the "
            "env) or num_actions."
        )
    return num_actions + 1


def _frozen_key(spec: ExpertSpec, observation_shape: tuple[int, ...] | None) -> str:
    seed = random_expert_seed(spec) if spec.source == "random" else None
    shape = None if observation_shape is None else list(observation_shape)
    return json.dumps([spec.as_dict(), shape, seed], sort_keys=True, default=str)


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
    :param options: the method's options, each a field of :class:`~hp_rl.hub.options.PathwayOptions` (its type,
        default, accepted values and meaning; ``python -m hp_rl.train --hub-options`` lists them), given by name as
        SB3 passes ``features_extractor_kwargs``: ``k``, ``freeze_experts``, ``aggregation``, ``base_expert``,
        ``prior``, ... Unknown names and refused values raise :class:`~hp_rl.hub.options.PathwayOptionError`.
    """

    updated_since_rollout: Tensor

    def __init__(
        self, observation_space: spaces.Space, hub: str | Sequence[str] | Mapping[str, Any], **options: Any
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(
                f"HubPathwayExtractor needs a Box observation space (images or vectors), got {observation_space}. "
                "Flatten dict or discrete observations with a gymnasium wrapper first."
            )
        opts = PathwayOptions.from_mapping(options, "HubPathwayExtractor")
        self.options = opts
        meanings = tuple(opts.action_meanings) if opts.action_meanings is not None else None
        self.num_actions = len(meanings) if meanings is not None else opts.num_actions
        features_dim = opts.features_dim
        if opts.aggregation == "output":  # the aggregate is the mixed policy and value: a column per action, a value
            features_dim = _output_width(self.num_actions)
        super().__init__(observation_space, features_dim)
        self.hub_spec: HubSpec = parse_hub(hub)
        shape = tuple(int(s) for s in observation_space.shape)
        self.explore_coef = opts.explore_coef
        self.aggregation: Aggregation = opts.aggregation
        self.output_mix: OutputMix = opts.output_mix
        self.schedule = PathwaySchedule(opts.noise_anneal, opts.dense_warmup, opts.explore_decay)
        self.unfreeze_at = opts.unfreeze_at
        self.generator_lr_scale = opts.generator_lr_scale
        self.teacher_trust: TeacherTrust = opts.teacher_trust
        k, routed = self._plan_routes(opts)
        experts = self._build_experts(routed, shape, features_dim, opts, meanings)
        if opts.base_expert:
            experts[BASE_EXPERT] = self._base(shape, features_dim)
        routed_prior = {n: v for n, v in self.prior_values.items() if n in experts}
        # beside the experts' prior, base_prior: the fresh network is the reference an expert must beat
        preferences = [routed_prior] + ([{BASE_EXPERT: opts.base_prior}] if opts.base_prior else [])
        gate = GateConfig(
            k,
            opts.noise,
            opts.noise_std,
            opts.noise_cap,
            opts.balance,
            opts.dense,
            int(opts.base_expert),
            opts.execution,
            noise_seed=opts.noise_seed,
        )
        self.pathway = build_pathway(experts, shape, gate, preferences, opts.prior_scale)
        self._noise_requested = opts.noise != "none"
        self._start_runtime_state()

    def _plan_routes(self, opts: PathwayOptions) -> tuple[int, tuple[str, ...]]:
        """Experts routed per observation and the experts routed at all, after checking what the options ask of the
        hub; keeps the prior read (``prior_values``) and why each expert left out is (``unrouted``)."""
        spec = self.hub_spec
        if opts.base_expert and BASE_EXPERT in spec.names:
            raise PathwayOptionError(
                f"The hub already has an expert named {BASE_EXPERT!r}; rename it to use base_expert."
            )
        m = len(spec.experts)
        # with k_from_prior, k is a most: a hub of one agent routes at most it
        k = min(opts.k, m) if opts.k_from_prior is not None else opts.k
        if not 1 <= k <= m and not opts.dense:
            raise PathwayOptionError(
                f"k={k} is out of range for a hub of {m} experts ({', '.join(spec.names)}): choose 1 <= k <= {m}."
            )
        if opts.teacher_trust == "prior" and opts.prior is None:
            raise PathwayOptionError("teacher_trust='prior' needs a prior (a score file, a mapping, or auto).")
        if opts.base_prior and not opts.base_expert:  # the base expert's prior needs the base expert
            raise PathwayOptionError(f"base_prior={opts.base_prior} needs base_expert=True (there is no base expert).")
        self.prior_values: dict[str, float] = {} if opts.prior is None else read_hub_prior(opts.prior, spec.names)
        # one without evidence that it plays the target is not mixed into the policy at all
        routed, self.unrouted = routable_experts(self.prior_values, spec.names, opts.k_from_prior, opts.base_expert)
        if opts.k_from_prior is not None:
            k = routed_by_prior(self.prior_values, spec.names, k, opts.k_from_prior, allow_none=opts.base_expert)
        return k, routed

    def _build_experts(
        self,
        routed: tuple[str, ...],
        shape: tuple[int, ...],
        features_dim: int,
        opts: PathwayOptions,
        meanings: tuple[str, ...] | None,
    ) -> dict[str, nn.Module]:
        """The routed experts' modules, in hub order: trunks behind their input adapters, with their agents' heads
        under output aggregation; records each one's learning-rate scale, schedule and head."""
        self.lr_scales: dict[str, float] = {}
        self.scheduled_trunks: list[str] = []  # experts whose trunks unfreeze_at keeps frozen at first
        self.head_sources: dict[str, str] = {}  # expert -> its policy head: mapped, one-to-one or fresh (output mode)
        routed_spec = replace(self.hub_spec, experts=tuple(e for e in self.hub_spec.experts if e.name in routed))
        trunks, _ = load_hub_trunks(
            routed_spec,
            shape,
            opts.freeze_experts,
            opts.expert_lr_scale,
            self.unfreeze_at,
            opts.channel_names,
            loader=self._load_trunk,
        )
        experts: dict[str, nn.Module] = {}
        for item in trunks:
            if self.aggregation == "output":
                experts[item.name] = self._headed(
                    item.spec, item.trunk, item.adapter, item.frozen, meanings, opts.teachers
                )
            else:
                experts[item.name] = AdaptedExpert(
                    item.trunk, item.features_dim, features_dim, item.adapter, item.frozen
                )
            if item.lr_scale is not None:
                self.lr_scales[item.name] = item.lr_scale
            if item.scheduled:
                self.scheduled_trunks.append(item.name)
        return experts

    def _start_runtime_state(self) -> None:
        """What the extractor tracks while it runs: the schedules' scales, the latest outputs and acting routes."""
        self.explore_scale = 1.0
        self.kickstart_active = False
        self.last_output: PathwayOutput | None = None
        self.last_teacher: tuple[Tensor, Tensor, Tensor] | None = None
        # Routing of the latest forward made to act (not to update), and how many there were: gate usage
        # statistics count each acting observation exactly once.
        self.last_acting_routes: Routes | None = None
        self.acting_forwards = 0
        # Saved with the model (a buffer), so a loaded model re-draws its noise exactly when the saved one would.
        self.register_buffer("updated_since_rollout", torch.zeros((), dtype=torch.bool))
        self.set_progress(0.0)  # the schedules' start (dense warm-up on, trunks held frozen) until told otherwise

    def _headed(
        self,
        spec: ExpertSpec,
        trunk: HubExpert,
        adapter: nn.Module | None,
        frozen: bool,
        meanings: tuple[str, ...] | None,
        teachers: bool,
    ) -> HeadedExpert:
        """An expert with its agent's heads, mapped onto the target's actions where their meanings allow."""
        assert self.num_actions is not None
        heads, value_init = trunk.heads, None
        source_meanings = spec.action_meanings or trunk.action_meanings
        self.head_sources[spec.name], action_init = map_policy_head(heads, meanings, source_meanings, self.num_actions)
        if heads is not None and heads.value_weight is not None and heads.value_bias is not None:
            value_init = (heads.value_weight, heads.value_bias)
        critic = trunk.critic_network() if value_init is not None else None
        return HeadedExpert(
            trunk,
            trunk.info.features_dim,
            self.num_actions,
            adapter,
            frozen,
            action_init,
            value_init,
            self.output_mix,
            keep_teacher=teachers,
            critic=critic,
        )

    def _base(self, shape: tuple[int, ...], features_dim: int) -> nn.Module:
        """The always-routed base expert: the target's plain network, left to SB3's initialisation."""
        trunk, trunk_dim = base_trunk(shape)
        self.lr_scales[BASE_EXPERT] = 1.0
        if self.aggregation == "output":
            assert self.num_actions is not None
            self.head_sources[BASE_EXPERT] = "fresh"
            return HeadedExpert(
                trunk, trunk_dim, self.num_actions, None, frozen=False, mix=self.output_mix, protect_init=False
            )
        return AdaptedExpert(
            trunk,
            trunk_dim,
            features_dim,
            None,
            frozen=False,
            protect_init=False,
            identity_output=trunk_dim == features_dim,
        )

    def _set_scheduled_trunks_frozen(self, frozen: bool) -> None:
        for name in self.scheduled_trunks:
            expert = self.pathway.experts[name]
            assert isinstance(expert, TrunkExpert)
            expert.frozen = frozen
            expert.trunk.requires_grad_(not frozen)
            expert.train(self.training)

    def set_progress(self, progress: float) -> None:
        """Apply the schedules at training progress ``progress`` in [0, 1] (called when a rollout starts).

        Sets the routing noise scale and the dense warm-up, the exploration loss weight and, with
        ``unfreeze_at``, whether the trunks train.
        """
        self.pathway.gate.follow(self.schedule, progress)
        self.explore_scale = self.schedule.explore_scale(progress)
        if self.unfreeze_at is not None:
            self._set_scheduled_trunks_frozen(progress < self.unfreeze_at)

    @staticmethod
    def _load_trunk(spec: ExpertSpec, shape: tuple[int, ...] | None, frozen: bool) -> HubExpert:
        if not frozen:  # (what its task's channels and actions mean is learnt where its files name the task)
            return learn_task_meanings(load_expert(spec, shape))
        key = _frozen_key(spec, shape)
        trunk = _FROZEN_TRUNKS.get(key)
        if trunk is None:
            trunk = learn_task_meanings(load_expert(spec, shape))
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
        self.pathway.gate.redraw()

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
        self.last_teacher = self._teacher_policy(observations, output) if self.kickstart_active else None
        coef = self.explore_coef * self.explore_scale
        if coef and torch.is_grad_enabled():
            return attach_loss(output.features, coef * output.explore_loss)
        return output.features

    def _teacher_policy(self, observations: Tensor, output: PathwayOutput) -> tuple[Tensor, Tensor, Tensor] | None:
        """The routed experts' pretrained policies mixed with the (detached) pathway weights.

        :return: ``(B, n)`` teacher probabilities, a ``(B,)`` mask of rows routed to any teacher and the ``(B,)``
            trust in each row's teacher (1 with ``teacher_trust="uniform"``; the teachers' priors mixed with
            the same weights with ``"prior"``), or ``None``.
        """
        mixed: Tensor | None = None
        total = observations.new_zeros(observations.shape[0])
        trusted = observations.new_zeros(observations.shape[0])
        for name, batch in output.experts.items():
            expert = self.pathway.experts[name]
            if not isinstance(expert, HeadedExpert) or expert.teacher is None:
                continue
            probs = expert.teacher_probs(observations.index_select(0, batch.sample_index))
            assert probs is not None
            weight = batch.weight.detach()
            if mixed is None:
                mixed = probs.new_zeros(observations.shape[0], probs.shape[1])
            mixed = mixed.index_add(0, batch.sample_index, weight[:, None] * probs)
            total = total.index_add(0, batch.sample_index, weight)
            trust = 1.0 if self.teacher_trust == "uniform" else self.prior_values.get(name, 0.0)
            trusted = trusted.index_add(0, batch.sample_index, trust * weight)
        if mixed is None:
            return None
        mask = total > 0
        return mixed / total.clamp_min(1e-12)[:, None], mask, trusted / total.clamp_min(1e-12)

    def trunk_parameter_groups(self) -> dict[float, list[nn.Parameter]]:
        """Trainable trunk (and generator) parameters grouped by learning-rate scale (scale 1 left out).

        Trunks that ``unfreeze_at`` keeps frozen for now are included: they join training later.
        """
        scaled = {name: scale for name, scale in self.lr_scales.items() if scale != 1.0}
        groups = trunk_parameter_groups(self.pathway.experts, scaled, self.scheduled_trunks)
        if self.generator_lr_scale != 1.0:
            groups.setdefault(self.generator_lr_scale, []).extend(self.pathway.generator.parameters())
        return groups
