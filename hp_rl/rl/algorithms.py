"""``HubPPO`` and ``HubA2C``: SB3's PPO and A2C plus Hub-Pathway's exploitation loss.

The exploitation loss trains each routed expert on the samples that activate it, with the algorithm's
own loss: expert i's features alone go through the policy and value heads, and the PPO (or A2C) loss is
computed on the samples routed to i with the same advantages, returns and old log-probabilities. The
loss reaches SB3's unmodified ``train()`` through the value output (see
:func:`hp_rl.rl.extractor.attach_loss`), so both algorithms share one thin mixin.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, RolloutBufferSamples
from torch import Tensor, nn

from hp_rl.hub.options import ALGORITHM_KEYS, PATHWAY_OPTIONS, LossWeights, PathwayOptionError
from hp_rl.rl.extractor import HubPathwayExtractor
from hp_rl.rl.pathway_control import set_training_progress
from hp_rl.routing import OutputMix, PathwayOutput, attach_loss, linear_decay, readout_logits

__all__ = [
    "HubPPO",
    "HubA2C",
    "HubActorCriticPolicy",
    "HubActorCriticCnnPolicy",
    "TrackingRolloutBuffer",
    "ActionReadout",
    "ValueReadout",
]

# Every option of the extractor (the one table, hp_rl.hub.options), split off HubPPO/HubA2C's keyword arguments.
_EXTRACTOR_KEYS = tuple(PATHWAY_OPTIONS)


class ActionReadout(nn.Module):
    """The policy "head" under output aggregation: the aggregate already holds the action distribution.

    :param num_actions: n.
    :param mix: how the experts' policies were mixed (``probs``: the aggregate holds probabilities).
    """

    def __init__(self, num_actions: int, mix: OutputMix) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.mix: OutputMix = mix

    def forward(self, latent: Tensor) -> Tensor:
        """:param latent: ``(B, n + 1)`` aggregate. :return: ``(B, n)`` logits."""
        return readout_logits(latent, self.num_actions, self.mix)


class ValueReadout(nn.Module):
    """The value "head" under output aggregation: the last column of the aggregate."""

    def forward(self, latent: Tensor) -> Tensor:
        """:param latent: ``(B, n + 1)`` aggregate. :return: ``(B, 1)`` values."""
        return latent[:, -1:]


class TrackingRolloutBuffer(RolloutBuffer):
    """A rollout buffer that remembers the minibatch it handed out last (for the exploitation loss)."""

    current: RolloutBufferSamples | None = None

    def get(self, batch_size: int | None = None) -> Generator[RolloutBufferSamples, None, None]:
        """Yield minibatches as :class:`RolloutBuffer` does, remembering each in ``current``."""
        for batch in super().get(batch_size):
            self.current = batch
            yield batch
        self.current = None


class _ExploitationPolicyMixin:
    """Adds the exploitation loss, when ``exploitation_hook`` is set, to ``evaluate_actions``'s values.

    Under output aggregation (``aggregation="output"``) the action and value layers are readouts of the
    aggregate, which already holds the experts' mixed policy and value.
    """

    exploitation_hook: Callable[[Tensor], Tensor | None] | None = None

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        extractor = getattr(self, "features_extractor", None)
        if not isinstance(extractor, HubPathwayExtractor) or extractor.aggregation != "output":
            return
        policy: Any = self
        if policy.mlp_extractor.latent_dim_pi != extractor.features_dim:
            raise PathwayOptionError(
                "aggregation='output' needs linear heads: set net_arch=[] (HubPPO/HubA2C's default)."
            )
        assert extractor.num_actions is not None
        policy.action_net = ActionReadout(extractor.num_actions, extractor.output_mix)
        policy.value_net = ValueReadout()
        policy.optimizer = policy.optimizer_class(policy.parameters(), lr=lr_schedule(1), **policy.optimizer_kwargs)

    def evaluate_actions(self, obs: PyTorchObs, actions: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        values, log_prob, entropy = super().evaluate_actions(obs, actions)  # type: ignore[misc]
        if self.exploitation_hook is not None:
            loss = self.exploitation_hook(actions)
            if loss is not None:
                values = attach_loss(values, loss)
        return values, log_prob, entropy


class HubActorCriticPolicy(_ExploitationPolicyMixin, ActorCriticPolicy):
    """SB3's ``MlpPolicy`` for HubPPO/HubA2C (adds the exploitation loss during training)."""


class HubActorCriticCnnPolicy(_ExploitationPolicyMixin, ActorCriticCnnPolicy):
    """SB3's ``CnnPolicy`` for HubPPO/HubA2C (adds the exploitation loss during training)."""


def _hub_policy_kwargs(
    policy_kwargs: dict[str, Any] | None, hub: Any, extractor_kwargs: dict[str, Any]
) -> dict[str, Any]:
    kwargs = dict(policy_kwargs or {})
    if hub is None:
        return kwargs
    if "features_extractor_class" in kwargs and kwargs["features_extractor_class"] is not HubPathwayExtractor:
        raise PathwayOptionError("Give either hub=... or a features_extractor_class in policy_kwargs, not both.")
    kwargs["features_extractor_class"] = HubPathwayExtractor
    user_kwargs = kwargs.get("features_extractor_kwargs", {})
    kwargs["features_extractor_kwargs"] = {"hub": hub, **extractor_kwargs, **user_kwargs}
    kwargs.setdefault("net_arch", [])
    return kwargs


class _HubOnPolicyMixin:
    """Shared by HubPPO and HubA2C: exploitation loss, loss logging, per-group learning rates."""

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": HubActorCriticPolicy,
        "CnnPolicy": HubActorCriticCnnPolicy,
    }
    # set by _hub_arguments; a model saved before a weight existed loads with its default
    exploit_coef: float = LossWeights.exploit_coef
    kickstart_coef: float = LossWeights.kickstart_coef
    kickstart_fraction: float = LossWeights.kickstart_fraction
    critic_warmup: float = LossWeights.critic_warmup
    rollout_buffer: RolloutBuffer
    # What prior="auto" measured before training (score_hub's result), for the user; not saved with the model.
    prior_scores: dict[str, Any] | None = None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "prior_scores"]  # type: ignore[misc]

    def _hub_arguments(
        self, preset: str | None, hub: Any, env: Any, coefs: tuple[float | None, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The algorithm's own arguments, after taking the auxiliary losses' weights (``coefs``, in
        :data:`~hp_rl.hub.options.ALGORITHM_KEYS` order) and the extractor's options, the preset's under the given."""
        from hp_rl.rl.presets import resolve_preset

        options = resolve_preset(preset, hub, env, {**dict(zip(ALGORITHM_KEYS, coefs, strict=True)), **kwargs})
        given = {key: options.pop(key, None) for key in ALGORITHM_KEYS}
        weights = LossWeights.from_mapping({k: v for k, v in given.items() if v is not None}, type(self).__name__)
        # plain numbers as attributes: SB3 saves a model's attributes, and an object would be saved pickled
        for key in ALGORITHM_KEYS:
            setattr(self, key, float(getattr(weights, key)))
        return self._split_hub_kwargs(options, hub, env)

    # --- value-only warm-up -------------------------------------------------------------------------
    @staticmethod
    def is_critic_parameter(name: str) -> bool:
        """Whether the policy parameter ``name`` belongs to the critic: SB3's value layers (``value_net``,
        ``mlp_extractor.value_net``) or, with output aggregation, an expert's value head (``value_head``)."""
        return any(part in ("value_net", "value_head") for part in name.split("."))

    @contextmanager
    def _critic_only(self) -> Iterator[None]:
        """Every parameter but the critic's held fixed (no gradient) for the block; restored after."""
        held = [
            p for name, p in self._policy.named_parameters() if p.requires_grad and not self.is_critic_parameter(name)
        ]
        for parameter in held:
            parameter.requires_grad_(False)
        try:
            yield
        finally:
            for parameter in held:
                parameter.requires_grad_(True)

    # --- schedules ----------------------------------------------------------------------------------
    def _training_progress(self) -> float:
        return 1.0 - float(getattr(self, "_current_progress_remaining", 1.0))

    def _kickstart_weight(self) -> float:
        """The kickstarting weight now: ``kickstart_coef * max(0, 1 - progress / kickstart_fraction)``."""
        return self.kickstart_coef * linear_decay(self._training_progress(), self.kickstart_fraction)

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        """SB3's ``collect_rollouts``, after applying the pathway schedules at the current progress.

        The schedules change only here, so a rollout and the update that follows it see the same noise
        scale, warm-up and trunk training state.
        """
        set_training_progress(self, self._training_progress())
        result: bool = super().collect_rollouts(*args, **kwargs)  # type: ignore[misc]
        return result

    @property
    def _policy(self) -> ActorCriticPolicy:
        policy = getattr(self, "policy")  # noqa: B009 - the algorithm class defines it, not this mixin
        assert isinstance(policy, ActorCriticPolicy)
        return policy

    def _split_hub_kwargs(self, kwargs: dict[str, Any], hub: Any, env: Any) -> dict[str, Any]:
        extractor_kwargs = {key: kwargs.pop(key) for key in _EXTRACTOR_KEYS if key in kwargs}
        if hub is not None and not isinstance(env, str) and env is not None:
            # What the target's channels and actions mean, so experts map onto them (MinAtar, ALE, variants).
            from hp_rl.rl.envs import env_meanings

            channels, actions = env_meanings(env)
            if channels is not None:
                extractor_kwargs.setdefault("channel_names", list(channels))
            if actions is not None:
                extractor_kwargs.setdefault("action_meanings", list(actions))
        if self.kickstart_coef > 0:
            extractor_kwargs["teachers"] = True
        if extractor_kwargs.get("prior") == "auto":  # scored before training; kept for the user, not saved
            from hp_rl.rl.scoring import score_target

            self.prior_scores = score_target(hub, env)
            extractor_kwargs["prior"] = dict(self.prior_scores["prior"])
        kwargs["policy_kwargs"] = _hub_policy_kwargs(kwargs.get("policy_kwargs"), hub, extractor_kwargs)
        if kwargs.get("rollout_buffer_class") not in (None, TrackingRolloutBuffer):
            raise PathwayOptionError("HubPPO/HubA2C need their own rollout buffer; rollout_buffer_class cannot be set.")
        kwargs["rollout_buffer_class"] = TrackingRolloutBuffer
        return kwargs

    # --- per-group learning rates -------------------------------------------------------------------
    def _hub_extractors(self) -> list[HubPathwayExtractor]:
        seen: dict[int, HubPathwayExtractor] = {}
        for module in self._policy.modules():
            if isinstance(module, HubPathwayExtractor):
                seen.setdefault(id(module), module)
        return list(seen.values())

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        scaled: dict[float, list[torch.nn.Parameter]] = {}
        for extractor in self._hub_extractors():
            for scale, params in extractor.trunk_parameter_groups().items():
                scaled.setdefault(scale, []).extend(params)
        if not scaled:
            return
        in_scaled = {id(p) for params in scaled.values() for p in params}
        base = [p for p in self._policy.parameters() if id(p) not in in_scaled]
        groups = [{"params": base, "lr_scale": 1.0}]
        groups += [{"params": list({id(p): p for p in params}.values()), "lr_scale": s} for s, params in scaled.items()]
        policy = self._policy
        policy.optimizer = policy.optimizer_class(groups, lr=self.lr_schedule(1), **policy.optimizer_kwargs)  # type: ignore[attr-defined,call-arg]

    def _update_learning_rate(self, optimizers: torch.optim.Optimizer | list[torch.optim.Optimizer]) -> None:
        learning_rate = self.lr_schedule(self._current_progress_remaining)  # type: ignore[attr-defined]
        self.logger.record("train/learning_rate", learning_rate)  # type: ignore[attr-defined]
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * group.get("lr_scale", 1.0)

    # --- exploitation loss --------------------------------------------------------------------------
    def _expert_loss(
        self, distribution: Distribution, values: Tensor, batch: RolloutBufferSamples, index: Tensor, advantages: Tensor
    ) -> Tensor:
        raise NotImplementedError

    def _normalized_advantages(self, batch: RolloutBufferSamples) -> Tensor:
        raise NotImplementedError

    def _log_prob_terms(
        self, distribution: Distribution, batch: RolloutBufferSamples, index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Log-probabilities of the rollout's actions on the routed rows, and the entropy (or its estimate)."""
        actions = batch.actions[index]
        if isinstance(getattr(self, "action_space", None), spaces.Discrete):
            actions = actions.long().flatten()  # as SB3's train() does
        log_prob = distribution.log_prob(actions)
        entropy = distribution.entropy()
        return log_prob, (-log_prob if entropy is None else entropy)

    def _exploitation_loss(self, actions: Tensor) -> Tensor | None:
        batch = self.rollout_buffer.current if isinstance(self.rollout_buffer, TrackingRolloutBuffer) else None
        policy = self._policy
        pi_output = self._last_output(policy.pi_features_extractor)
        vf_output = self._last_output(policy.vf_features_extractor)
        if pi_output is None or vf_output is None:
            return None
        self._explore_values.append(float(pi_output.explore_loss.detach()))
        kickstart = self._kickstart_loss(policy, pi_output)
        exploit = self._expert_losses(policy, batch, pi_output, vf_output)
        if kickstart is None:
            return exploit
        return kickstart if exploit is None else exploit + kickstart

    def _kickstart_loss(self, policy: ActorCriticPolicy, pi_output: PathwayOutput) -> Tensor | None:
        """``weight * KL(teacher || agent)`` over rows routed to experts with pretrained policies, each row
        scaled by the extractor's trust in its teacher."""
        extractor = policy.pi_features_extractor
        weight = self._kickstart_weight()
        if weight == 0 or not isinstance(extractor, HubPathwayExtractor) or extractor.last_teacher is None:
            return None
        teacher, mask, trust = extractor.last_teacher
        if not bool(mask.any()):
            return None
        latent_pi = policy.mlp_extractor.forward_actor(pi_output.features)
        student = F.log_softmax(policy.action_net(latent_pi), dim=1)
        teacher = teacher[mask]
        kl_rows = (teacher * (torch.log(teacher.clamp_min(1e-8)) - student[mask])).sum(1)
        kl = (trust[mask] * kl_rows).mean()  # trust 1 everywhere unless the extractor's teacher_trust="prior"
        self._kickstart_values.append(float(kl_rows.detach().mean()))
        return weight * kl

    def _expert_losses(
        self,
        policy: ActorCriticPolicy,
        batch: RolloutBufferSamples | None,
        pi_output: PathwayOutput,
        vf_output: PathwayOutput,
    ) -> Tensor | None:
        """``exploit_coef`` times the algorithm's loss of each routed expert alone, on its routed rows."""
        if self.exploit_coef == 0 or batch is None:
            return None
        advantages = self._normalized_advantages(batch)
        total: Tensor | None = None
        pairs = 0
        for name, pi_batch in pi_output.experts.items():
            vf_batch = vf_output.experts.get(name)
            if vf_batch is None or not torch.equal(vf_batch.sample_index, pi_batch.sample_index):
                continue  # separate actor/critic extractors routed this expert differently
            latent_pi = policy.mlp_extractor.forward_actor(pi_batch.features)
            latent_vf = policy.mlp_extractor.forward_critic(vf_batch.features)
            distribution = policy._get_action_dist_from_latent(latent_pi)
            values = policy.value_net(latent_vf).flatten()
            index = pi_batch.sample_index
            loss = self._expert_loss(distribution, values, batch, index, advantages) * index.numel()
            total = loss if total is None else total + loss
            pairs += index.numel()
        if total is None:
            return None
        exploit = total / pairs  # mean over routed (sample, expert) pairs
        self._exploit_values.append(float(exploit.detach()))
        return self.exploit_coef * exploit

    @staticmethod
    def _last_output(extractor: Any) -> PathwayOutput | None:
        return extractor.last_output if isinstance(extractor, HubPathwayExtractor) else None

    def train(self) -> None:
        """SB3's ``train()``, with the exploitation loss joined to each minibatch's loss; during the value-only
        warm-up (the updates of the first ``critic_warmup`` of training) only the critic learns."""
        warming_up = self.critic_warmup > 0 and self._training_progress() <= self.critic_warmup
        if self.critic_warmup > 0:
            self.logger.record("train/critic_warmup", float(warming_up))  # type: ignore[attr-defined]
        with self._critic_only() if warming_up else nullcontext():
            self._train_with_auxiliary_losses()

    def _train_with_auxiliary_losses(self) -> None:
        self._explore_values: list[float] = []
        self._exploit_values: list[float] = []
        self._kickstart_values: list[float] = []
        policy = self._policy
        weight = self._kickstart_weight()
        for extractor in self._hub_extractors():
            extractor.kickstart_active = weight > 0
        if isinstance(policy, _ExploitationPolicyMixin):
            policy.exploitation_hook = self._exploitation_loss
        try:
            super().train()  # type: ignore[misc]
        finally:
            if isinstance(policy, _ExploitationPolicyMixin):
                policy.exploitation_hook = None
        if self._explore_values:
            self.logger.record("train/explore_loss", float(np.mean(self._explore_values)))  # type: ignore[attr-defined]
        if self._exploit_values:
            self.logger.record("train/exploit_loss", float(np.mean(self._exploit_values)))  # type: ignore[attr-defined]
        if self._kickstart_values:
            self.logger.record("train/kickstart_kl", float(np.mean(self._kickstart_values)))  # type: ignore[attr-defined]
            self.logger.record("train/kickstart_weight", weight)  # type: ignore[attr-defined]
        for extractor in self._hub_extractors():
            extractor.kickstart_active = False


class HubPPO(_HubOnPolicyMixin, PPO):
    """PPO with a Hub-Pathway features extractor and the exploitation loss.

    Takes every :class:`~stable_baselines3.PPO` argument, plus:

    :param hub: the hub (see :class:`~hp_rl.rl.extractor.HubPathwayExtractor`); ``None`` when
        ``policy_kwargs`` already name the extractor (as when SB3 loads a saved model).
    :param exploit_coef: weight of the exploitation loss (0 turns it off: then HubPPO follows PPO exactly).
    :param kickstart_coef: weight of kickstarting, ``KL(teacher || agent)`` where the teacher mixes the
        routed experts' pretrained policies (frozen, as loaded) with the pathway weights; needs
        ``aggregation="output"`` and experts whose heads map onto the target's actions. 0 turns it off.
    :param kickstart_fraction: the kickstarting weight decays linearly from ``kickstart_coef`` at the start
        to 0 at this fraction of training (``kickstart_coef * max(0, 1 - progress / fraction)``).
    :param critic_warmup: value-only warm-up: the updates of the first this fraction of training train only
        the critic (value layers, experts' value heads); policy, trunks and generator stay as loaded, so the
        critic fits the experts' policy before it changes. 0 turns it off.
    :param preset: a named configuration (:data:`~hp_rl.hub.options.PRESETS`: ``paper``, ``transfer``) under the
        arguments given here, or ``"auto"`` (:func:`~hp_rl.rl.agent_meanings.choose_preset`): ``transfer`` for
        discrete actions (each expert scored, routed only on evidence), ``paper`` otherwise. ``None``: the
        arguments alone.
    :param kwargs: PPO arguments and extractor arguments (``k``, ``features_dim``, ``freeze_experts``,
        ``expert_lr_scale``, ``noise``, ``noise_std``, ``explore_coef``, ``balance``, ``dense``, ``noise_seed``,
        and the transfer options of :class:`~hp_rl.rl.extractor.HubPathwayExtractor`). The target's
        channel names and action meanings are read from ``env`` when it says them.
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: Any,
        hub: Any = None,
        exploit_coef: float | None = None,
        kickstart_coef: float | None = None,
        kickstart_fraction: float | None = None,
        critic_warmup: float | None = None,
        preset: str | None = None,
        **kwargs: Any,
    ) -> None:
        coefs = (exploit_coef, kickstart_coef, kickstart_fraction, critic_warmup)
        super().__init__(policy, env, **self._hub_arguments(preset, hub, env, coefs, kwargs))

    def _normalized_advantages(self, batch: RolloutBufferSamples) -> Tensor:
        advantages = batch.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages

    def _expert_loss(
        self, distribution: Distribution, values: Tensor, batch: RolloutBufferSamples, index: Tensor, advantages: Tensor
    ) -> Tensor:
        log_prob, entropy = self._log_prob_terms(distribution, batch, index)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        ratio = torch.exp(log_prob - batch.old_log_prob[index])
        adv = advantages[index]
        policy_loss = -torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()
        if self.clip_range_vf is not None:
            clip_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
            old = batch.old_values[index]
            values = old + torch.clamp(values - old, -clip_vf, clip_vf)
        value_loss = F.mse_loss(batch.returns[index], values)
        return policy_loss - self.ent_coef * entropy.mean() + self.vf_coef * value_loss


class HubA2C(_HubOnPolicyMixin, A2C):
    """A2C with a Hub-Pathway features extractor and the exploitation loss.

    Takes every :class:`~stable_baselines3.A2C` argument, plus ``hub``, ``exploit_coef``, ``kickstart_coef``,
    ``kickstart_fraction``, ``critic_warmup``, ``preset`` and the extractor arguments, as :class:`HubPPO`.
    """

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: Any,
        hub: Any = None,
        exploit_coef: float | None = None,
        kickstart_coef: float | None = None,
        kickstart_fraction: float | None = None,
        critic_warmup: float | None = None,
        preset: str | None = None,
        **kwargs: Any,
    ) -> None:
        coefs = (exploit_coef, kickstart_coef, kickstart_fraction, critic_warmup)
        super().__init__(policy, env, **self._hub_arguments(preset, hub, env, coefs, kwargs))

    def _normalized_advantages(self, batch: RolloutBufferSamples) -> Tensor:
        advantages = batch.advantages
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages

    def _expert_loss(
        self, distribution: Distribution, values: Tensor, batch: RolloutBufferSamples, index: Tensor, advantages: Tensor
    ) -> Tensor:
        log_prob, entropy = self._log_prob_terms(distribution, batch, index)
        policy_loss = -(advantages[index] * log_prob).mean()
        value_loss = F.mse_loss(batch.returns[index], values)
        return policy_loss - self.ent_coef * entropy.mean() + self.vf_coef * value_loss
