"""``HubPPO`` and ``HubA2C``: SB3's PPO and A2C plus Hub-Pathway's exploitation loss.

The exploitation loss trains each routed expert on the samples that activate it, with the algorithm's
own loss: expert i's features alone go through the policy and value heads, and the PPO (or A2C) loss is
computed on the samples routed to i with the same advantages, returns and old log-probabilities. The
loss reaches SB3's unmodified ``train()`` through the value output (see
:func:`hp_rl.rl.extractor.attach_loss`), so both algorithms share one thin mixin.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
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
from torch import Tensor

from hp_rl.rl.extractor import HubPathwayExtractor, attach_loss
from hp_rl.routing import PathwayOutput

__all__ = ["HubPPO", "HubA2C", "HubActorCriticPolicy", "HubActorCriticCnnPolicy", "TrackingRolloutBuffer"]

_EXTRACTOR_KEYS = ("k", "features_dim", "freeze_experts", "expert_lr_scale", "noise", "noise_std", "explore_coef",
                   "balance", "dense", "noise_seed")  # fmt: skip


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
    """Adds the exploitation loss, when ``exploitation_hook`` is set, to ``evaluate_actions``'s values."""

    exploitation_hook: Callable[[Tensor], Tensor | None] | None = None

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
        raise ValueError("Give either hub=... or a features_extractor_class in policy_kwargs, not both.")
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
    exploit_coef: float
    rollout_buffer: RolloutBuffer

    @property
    def _policy(self) -> ActorCriticPolicy:
        policy = getattr(self, "policy")  # noqa: B009 - the algorithm class defines it, not this mixin
        assert isinstance(policy, ActorCriticPolicy)
        return policy

    def _split_hub_kwargs(self, kwargs: dict[str, Any], hub: Any) -> dict[str, Any]:
        extractor_kwargs = {key: kwargs.pop(key) for key in _EXTRACTOR_KEYS if key in kwargs}
        kwargs["policy_kwargs"] = _hub_policy_kwargs(kwargs.get("policy_kwargs"), hub, extractor_kwargs)
        if kwargs.get("rollout_buffer_class") not in (None, TrackingRolloutBuffer):
            raise ValueError("HubPPO/HubA2C need their own rollout buffer; rollout_buffer_class cannot be set.")
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
    def _expert_loss(self, distribution: Distribution, values: Tensor, batch: RolloutBufferSamples,
                     index: Tensor, advantages: Tensor) -> Tensor:  # fmt: skip
        raise NotImplementedError

    def _normalized_advantages(self, batch: RolloutBufferSamples) -> Tensor:
        raise NotImplementedError

    def _log_prob_terms(self, distribution: Distribution, batch: RolloutBufferSamples,
                        index: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
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
        """SB3's ``train()``, with the exploitation loss joined to each minibatch's loss."""
        self._explore_values: list[float] = []
        self._exploit_values: list[float] = []
        policy = self._policy
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


class HubPPO(_HubOnPolicyMixin, PPO):
    """PPO with a Hub-Pathway features extractor and the exploitation loss.

    Takes every :class:`~stable_baselines3.PPO` argument, plus:

    :param hub: the hub (see :class:`~hp_rl.rl.extractor.HubPathwayExtractor`); ``None`` when
        ``policy_kwargs`` already name the extractor (as when SB3 loads a saved model).
    :param exploit_coef: weight of the exploitation loss (0 turns it off: then HubPPO follows PPO exactly).
    :param kwargs: PPO arguments and extractor arguments (``k``, ``features_dim``, ``freeze_experts``,
        ``expert_lr_scale``, ``noise``, ``noise_std``, ``explore_coef``, ``balance``, ``dense``, ``noise_seed``).
    """

    def __init__(self, policy: str | type[ActorCriticPolicy], env: Any, hub: Any = None, exploit_coef: float = 0.1,
                 **kwargs: Any) -> None:  # fmt: skip
        self.exploit_coef = exploit_coef
        super().__init__(policy, env, **self._split_hub_kwargs(kwargs, hub))

    def _normalized_advantages(self, batch: RolloutBufferSamples) -> Tensor:
        advantages = batch.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages

    def _expert_loss(self, distribution: Distribution, values: Tensor, batch: RolloutBufferSamples,
                     index: Tensor, advantages: Tensor) -> Tensor:  # fmt: skip
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

    Takes every :class:`~stable_baselines3.A2C` argument, plus ``hub``, ``exploit_coef`` and the extractor
    arguments, as :class:`HubPPO`.
    """

    def __init__(self, policy: str | type[ActorCriticPolicy], env: Any, hub: Any = None, exploit_coef: float = 0.1,
                 **kwargs: Any) -> None:  # fmt: skip
        self.exploit_coef = exploit_coef
        super().__init__(policy, env, **self._split_hub_kwargs(kwargs, hub))

    def _normalized_advantages(self, batch: RolloutBufferSamples) -> Tensor:
        advantages = batch.advantages
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages

    def _expert_loss(self, distribution: Distribution, values: Tensor, batch: RolloutBufferSamples,
                     index: Tensor, advantages: Tensor) -> Tensor:  # fmt: skip
        log_prob, entropy = self._log_prob_terms(distribution, batch, index)
        policy_loss = -(advantages[index] * log_prob).mean()
        value_loss = F.mse_loss(batch.returns[index], values)
        return policy_loss - self.ent_coef * entropy.mean() + self.vf_coef * value_loss
