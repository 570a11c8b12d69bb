"""``HubPathwayExtractor``: Hub-Pathway as a Stable-Baselines3 features extractor."""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from hp_rl.hub import HubExpert, HubSpec, load_expert, parse_hub
from hp_rl.hub.options import PATHWAY_OPTIONS, PathwayOptionError, check_pathway_options
from hp_rl.hub.sources import random_expert_seed
from hp_rl.hub.spec import ExpertSpec
from hp_rl.hub.trunks import load_hub_trunks, trunk_parameter_groups
from hp_rl.rl.agent_meanings import learn_task_meanings, map_policy_head
from hp_rl.rl.baselines import base_trunk
from hp_rl.rl.prior import read_hub_prior, routable_experts, routed_by_prior
from hp_rl.routing import (
    AdaptedExpert,
    BalanceMode,
    Execution,
    GateConfig,
    HeadedExpert,
    NoiseMode,
    NoisyTopKRouter,
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
Aggregation = Literal["features", "output"]
TeacherTrust = Literal["uniform", "prior"]

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
    :param k: experts per observation (with ``k_from_prior``: at most this many).
    :param k_from_prior: the bar of evidence that an expert plays the target: only experts whose prior reaches it
        are routed (at most ``k`` per observation; beside a base expert, none: the base acts alone; the others
        are listed in ``unrouted``, :func:`~hp_rl.rl.prior.routable_experts`); ``None``: every expert, ``k``.
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
    :param aggregation: ``"features"`` (weighted sum of adapted trunk features; the policy's own heads act
        on it) or ``"output"`` (each expert keeps its agent's policy and value heads, mapped onto the
        target's actions by meaning, and the pathway aggregates their outputs; needs HubPPO/HubA2C, whose
        policy reads the aggregate directly). ``features_dim`` is then ``n_actions + 1``.
    :param output_mix: with ``aggregation="output"``: ``"probs"`` (a mixture of the experts' policies) or
        ``"logits"`` (weighted sum of logits).
    :param action_meanings: what each target action means (HubPPO/HubA2C fill it from the env); heads of
        experts whose actions cover the target's are reused, the others start fresh.
    :param num_actions: target actions, where ``action_meanings`` is not given (output aggregation).
    :param channel_names: what each observation channel means (HubPPO/HubA2C fill it from MinAtar envs):
        experts that name theirs get a channel map by meaning instead of an average.
    :param base_expert: add an expert named ``base``, the target's plain network (small-frame CNN for
        frames under 36x36, NatureCNN above, a 64x64 tanh MLP for vectors) trained from scratch's start
        and routed for every observation beside the k chosen experts.
    :param noise_cap: bound the noise std by this multiple of the clean logits' spread (``None``: no bound).
    :param noise_anneal: fraction of training by which the noise decays linearly to 0 (``None``: constant).
    :param dense_warmup: fraction of training routed densely (softmax over all experts) before top-k.
    :param explore_decay: fraction of training by which the exploration loss weight decays to 0.
    :param unfreeze_at: load the trunks trainable but keep them frozen until this fraction of training,
        then fine-tune them at ``expert_lr_scale`` (``None``: ``freeze_experts`` decides for good).
    :param generator_lr_scale: learning-rate multiplier of the pathway generator (HubPPO/HubA2C).
    :param teachers: keep frozen copies of the experts' pretrained policies for kickstarting
        (HubPPO/HubA2C ``kickstart_coef``).
    :param teacher_trust: how much kickstarting imitates each routed teacher: ``"uniform"`` (fully) or
        ``"prior"`` (in proportion to its prior, the evidence that it plays the target; experts the prior does
        not name: 0), so that a hub without a relevant agent does not pull the agent towards other games' play.
    :param prior: a transferability score file (``python -m hp_rl.hub score``) or a mapping expert name ->
        prior; the generator's logit biases start at ``prior_scale * prior`` (experts not named: 0).
        HubPPO/HubA2C also take ``"auto"``: they score the hub on the target before training.
    :param prior_scale: how strongly the prior tilts the first routes.
    :param base_prior: with ``base_expert``, the base expert's prior: its logit bias starts at
        ``prior_scale * base_prior``, so a routed expert starts with more than half of the mixture only where
        its prior exceeds this (0: an expert with no evidence starts level with the fresh network).
    :param execution: ``"auto"`` (default), ``"fused"`` or ``"sparse"``: whether experts of one architecture
        run as one batched call on every observation or each on its routed observations
        (:mod:`hp_rl.routing.fused`); ``auto`` fuses small batches (acting), where per-call overhead
        dominates. Same outputs and gradients either way.
    """

    updated_since_rollout: Tensor

    def __init__(
        self,
        observation_space: spaces.Space,
        hub: str | Sequence[str] | Mapping[str, Any],
        k: int = 2,
        k_from_prior: float | None = None,
        features_dim: int = 256,
        freeze_experts: bool = True,
        expert_lr_scale: float = 1.0,
        noise: NoiseMode = "learned",
        noise_std: float = 1.0,
        explore_coef: float = 0.01,
        balance: BalanceMode = "cv2",
        dense: bool = False,
        noise_seed: int = 0,
        aggregation: Aggregation = "features",
        output_mix: OutputMix = "probs",
        action_meanings: Sequence[str] | None = None,
        num_actions: int | None = None,
        channel_names: Sequence[str] | None = None,
        base_expert: bool = False,
        noise_cap: float | None = None,
        noise_anneal: float | None = None,
        dense_warmup: float = 0.0,
        explore_decay: float | None = None,
        unfreeze_at: float | None = None,
        generator_lr_scale: float = 1.0,
        teachers: bool = False,
        prior: str | Mapping[str, float] | None = None,
        prior_scale: float = 2.0,
        base_prior: float = 0.0,
        teacher_trust: TeacherTrust = "uniform",
        execution: Execution = "auto",
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(
                f"HubPathwayExtractor needs a Box observation space (images or vectors), got {observation_space}. "
                "Flatten dict or discrete observations with a gymnasium wrapper first."
            )
        check_pathway_options({name: value for name, value in locals().items() if name in PATHWAY_OPTIONS})
        meanings = tuple(action_meanings) if action_meanings is not None else None
        self.num_actions = len(meanings) if meanings is not None else num_actions
        if aggregation == "output":  # the aggregate is the mixed policy and value: one column per action, one value
            features_dim = _output_width(self.num_actions)
        super().__init__(observation_space, features_dim)
        self.hub_spec: HubSpec = parse_hub(hub)
        shape = tuple(int(s) for s in observation_space.shape)
        self.explore_coef = explore_coef
        self.aggregation: Aggregation = aggregation
        self.output_mix: OutputMix = output_mix
        self.schedule = PathwaySchedule(noise_anneal, dense_warmup, explore_decay)
        self.unfreeze_at = unfreeze_at
        self.generator_lr_scale = generator_lr_scale
        self.teacher_trust: TeacherTrust = teacher_trust
        k, routed = self._plan_routes(k, k_from_prior, dense, base_expert, prior, base_prior)
        experts = self._build_experts(
            routed, shape, features_dim, freeze_experts, expert_lr_scale, channel_names, meanings, teachers
        )
        if base_expert:
            experts[BASE_EXPERT] = self._base(shape, features_dim)
        routed_prior = {n: v for n, v in self.prior_values.items() if n in experts}
        # beside the experts' prior, base_prior: the fresh network is the reference an expert must beat
        preferences = [routed_prior] + ([{BASE_EXPERT: base_prior}] if base_prior else [])
        gate = GateConfig(
            k, noise, noise_std, noise_cap, balance, dense, int(base_expert), execution, noise_seed=noise_seed
        )
        self.pathway = build_pathway(experts, shape, gate, preferences, prior_scale)
        self._noise_requested = noise != "none"
        self._start_runtime_state()

    def _plan_routes(
        self,
        k: int,
        k_from_prior: float | None,
        dense: bool,
        base_expert: bool,
        prior: str | Mapping[str, float] | None,
        base_prior: float,
    ) -> tuple[int, tuple[str, ...]]:
        """Experts routed per observation and the experts routed at all, after checking what the options ask of the
        hub; keeps the prior read (``prior_values``) and why each expert left out is (``unrouted``)."""
        spec = self.hub_spec
        if base_expert and BASE_EXPERT in spec.names:
            raise PathwayOptionError(
                f"The hub already has an expert named {BASE_EXPERT!r}; rename it to use base_expert."
            )
        m = len(spec.experts)
        k = min(k, m) if k_from_prior is not None else k  # then k is a most: a hub of one agent routes at most it
        if not 1 <= k <= m and not dense:
            raise PathwayOptionError(
                f"k={k} is out of range for a hub of {m} experts ({', '.join(spec.names)}): choose 1 <= k <= {m}."
            )
        if self.teacher_trust == "prior" and prior is None:
            raise PathwayOptionError("teacher_trust='prior' needs a prior (a score file, a mapping, or auto).")
        if base_prior and not base_expert:  # the base expert's prior needs the base expert
            raise PathwayOptionError(f"base_prior={base_prior} needs base_expert=True (there is no base expert).")
        self.prior_values: dict[str, float] = {} if prior is None else read_hub_prior(prior, spec.names)
        # one without evidence that it plays the target is not mixed into the policy at all
        routed, self.unrouted = routable_experts(self.prior_values, spec.names, k_from_prior, base_expert)
        if k_from_prior is not None:
            k = routed_by_prior(self.prior_values, spec.names, k, k_from_prior, allow_none=base_expert)
        return k, routed

    def _build_experts(
        self,
        routed: tuple[str, ...],
        shape: tuple[int, ...],
        features_dim: int,
        freeze_experts: bool,
        expert_lr_scale: float,
        channel_names: Sequence[str] | None,
        meanings: tuple[str, ...] | None,
        teachers: bool,
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
            freeze_experts,
            expert_lr_scale,
            self.unfreeze_at,
            channel_names,
            loader=self._load_trunk,
        )
        experts: dict[str, nn.Module] = {}
        for item in trunks:
            if self.aggregation == "output":
                experts[item.name] = self._headed(item.spec, item.trunk, item.adapter, item.frozen, meanings, teachers)
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
        router = self.pathway.router
        assert isinstance(router, NoisyTopKRouter)
        router.noise_scale = self.schedule.noise_scale(progress)
        router.dense_active = self.schedule.dense(progress)
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
