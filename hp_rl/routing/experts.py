"""An expert as the pathway sees it: input adapter, pretrained trunk, output adapter to a common width."""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hp_rl.core.errors import RoutingError
from hp_rl.routing.init import KeepInit

__all__ = ["TrunkExpert", "AdaptedExpert", "ActorCriticTrunk", "HeadedExpert", "OutputMix", "readout_logits"]


class TrunkExpert(nn.Module):
    """What every pathway expert shares: an input adapter P, a trunk E, and a trunk that may be frozen.

    :param trunk: the network ``(B, *input) -> (B, trunk_dim)``.
    :param input_adapter: maps the pathway input to what the trunk expects, or ``None`` for identity.
    :param frozen: freeze the trunk: no gradient to its parameters, and its normalisation layers stay in
        eval mode whatever ``train()`` is called with.
    :param protect_init: keep the trunk out of SB3's orthogonal re-initialisation (pretrained trunks);
        ``False`` for a base expert that should start as scratch's network does.
    """

    def __init__(self, trunk: nn.Module, input_adapter: nn.Module | None, frozen: bool, protect_init: bool) -> None:
        super().__init__()
        self.input_adapter = input_adapter if input_adapter is not None else nn.Identity()
        self.trunk = KeepInit(trunk) if protect_init and not isinstance(trunk, KeepInit) else trunk
        self.frozen = frozen
        if frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    @property
    def inner_trunk(self) -> nn.Module:
        """The trunk itself, without its :class:`~hp_rl.routing.init.KeepInit` wrapper."""
        return self.trunk.module if isinstance(self.trunk, KeepInit) else self.trunk

    @property
    def trunk_needs_grad(self) -> bool:
        """Whether backpropagation has to go through the trunk (to its weights or to the input adapter)."""
        return not self.frozen or any(p.requires_grad for p in self.input_adapter.parameters())

    def train(self, mode: bool = True) -> TrunkExpert:
        """Set training mode; a frozen trunk stays in eval mode (frozen BatchNorm keeps its statistics)."""
        super().train(mode)
        if self.frozen:
            self.trunk.eval()
        return self

    def forward_trunk(self, x: Tensor) -> Tensor:
        """:param x: ``(B, ...)`` pathway input. :return: ``(B, trunk_dim)`` trunk features."""
        if self.trunk_needs_grad:
            out: Tensor = self.trunk(self.input_adapter(x))
            return out
        # Frozen trunk, nothing to train before it: skip building its autograd graph.
        with torch.no_grad():
            out = self.trunk(self.input_adapter(x))
            return out


class AdaptedExpert(TrunkExpert):
    """``z = A(E(P(x)))``: an expert trunk E between a trainable input adapter P and output adapter A.

    :param trunk: the pretrained network, ``(B, *input) -> (B, trunk_dim)``. Its initialisation is kept
        (see :class:`~hp_rl.routing.init.KeepInit`).
    :param trunk_dim: width of the trunk's output.
    :param features_dim: common width d of every expert's output.
    :param input_adapter: maps the pathway input to what the trunk expects, or ``None`` for identity.
    :param frozen: freeze the trunk: no gradient to its parameters, and its normalisation layers stay in
        eval mode whatever ``train()`` is called with.
    :param output_activation: append a ReLU to the output adapter.
    :param protect_init: keep the trunk out of SB3's orthogonal re-initialisation (pretrained trunks);
        ``False`` for a base expert that should start as scratch's network does.
    :param identity_output: no output adapter (the trunk's width is already ``features_dim``): a base
        expert then gives exactly the plain network's features.
    """

    def __init__(
        self,
        trunk: nn.Module,
        trunk_dim: int,
        features_dim: int,
        input_adapter: nn.Module | None = None,
        frozen: bool = True,
        output_activation: bool = True,
        protect_init: bool = True,
        identity_output: bool = False,
    ) -> None:
        super().__init__(trunk, input_adapter, frozen, protect_init)
        if identity_output:
            if trunk_dim != features_dim:
                raise RoutingError(f"identity_output needs trunk_dim == features_dim ({trunk_dim} != {features_dim}).")
            self.output_adapter: nn.Module = nn.Identity()
        else:
            layers: list[nn.Module] = [nn.Linear(trunk_dim, features_dim)]
            if output_activation:
                layers.append(nn.ReLU())
            self.output_adapter = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, ...)`` pathway input. :return: ``(B, features_dim)`` adapted features."""
        return self.output_adapter(self.forward_trunk(x))


OutputMix = Literal["probs", "logits"]


class ActorCriticTrunk(nn.Module):
    """An agent's actor trunk and its separate critic network side by side on one input.

    :param actor: ``(B, *input) -> (B, actor_dim)``.
    :param critic: ``(B, *input) -> (B, critic_dim)``.
    """

    def __init__(self, actor: nn.Module, critic: nn.Module) -> None:
        super().__init__()
        self.actor = actor
        self.critic = critic

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, *input)``. :return: ``(B, actor_dim + critic_dim)``: actor features, then critic's."""
        return torch.cat([self.actor(x), self.critic(x)], dim=1)


class HeadedExpert(TrunkExpert):
    """An expert that keeps an agent's own heads: ``x -> [policy part (n), value (1)]`` for output aggregation.

    ``P(x)`` (input adapter) -> trunk ``E`` -> the expert's policy and value layers, its policy layer's rows
    reordered onto the target's actions. The pathway then aggregates *outputs*: with ``mix="probs"`` each
    expert emits its action probabilities and the pathway's weighted sum is a mixture of the experts'
    policies; with ``mix="logits"`` the weighted sum of logits (a product of experts). The value is the
    weighted sum of the experts' values in both cases. :func:`readout_logits` turns the aggregate back
    into logits for the action distribution.

    :param trunk: the network ``(B, *input) -> (B, trunk_dim)``; kept out of re-initialisation.
    :param trunk_dim: width of the trunk's output.
    :param num_actions: n, actions of the target task.
    :param input_adapter: maps the pathway input to what the trunk expects, or ``None``.
    :param frozen: freeze the trunk (the heads still train).
    :param action_init: ``((n, trunk_dim), (n,))`` pretrained policy layer already mapped onto the target's
        actions, or ``None`` for a fresh one (orthogonal, gain 0.01, as SB3 starts its action layer).
    :param value_init: ``((1, trunk_dim), (1,))`` pretrained value layer, or ``None`` for a fresh one
        (orthogonal, gain 1, as SB3).
    :param mix: ``"probs"`` or ``"logits"``.
    :param keep_teacher: keep a frozen copy of the pretrained policy (trunk and head as loaded) for
        kickstarting (:meth:`teacher_probs`); only when ``action_init`` is given.
    :param protect_init: keep the trunk out of SB3's orthogonal re-initialisation (pretrained trunks);
        ``False`` for a base expert that should start as scratch's network does.
    :param critic: the agent's own critic network on the trunk's input (SB3's MLP agents keep one beside the
        actor), ``(B, *input) -> (B, critic_dim)``; the value layer ``value_init`` (then required, of shape
        ``((1, critic_dim), (1,))``) reads it instead of the trunk. It is frozen, trained and protected from
        re-initialisation with the trunk.
    """

    def __init__(
        self,
        trunk: nn.Module,
        trunk_dim: int,
        num_actions: int,
        input_adapter: nn.Module | None = None,
        frozen: bool = True,
        action_init: tuple[Tensor, Tensor] | None = None,
        value_init: tuple[Tensor, Tensor] | None = None,
        mix: OutputMix = "probs",
        keep_teacher: bool = False,
        protect_init: bool = True,
        critic: nn.Module | None = None,
    ) -> None:
        if mix not in ("probs", "logits"):
            raise RoutingError(f"mix must be 'probs' or 'logits', got {mix!r}.")
        value_dim = trunk_dim
        if critic is not None:
            if value_init is None:
                raise RoutingError("A critic network needs its value layer (value_init) to read it.")
            trunk, value_dim = ActorCriticTrunk(trunk, critic), int(value_init[0].shape[1])
        super().__init__(trunk, input_adapter, frozen, protect_init)
        self.mix = mix
        self.num_actions = num_actions
        # Width of the trunk's output that the policy reads; the value reads the rest when there is a critic.
        self.policy_dim = trunk_dim if critic is not None else None
        self.pretrained_policy = action_init is not None
        self.pretrained_value = value_init is not None
        self.action_head = KeepInit(_linear_from(trunk_dim, num_actions, action_init, gain=0.01))
        self.value_head = KeepInit(_linear_from(value_dim, 1, value_init, gain=1.0))
        self.teacher: nn.ModuleDict | None = None
        if keep_teacher and action_init is not None:
            teacher_trunk = self.trunk if frozen else copy.deepcopy(self.trunk)
            teacher = nn.ModuleDict(
                {
                    "adapter": copy.deepcopy(self.input_adapter),
                    "trunk": teacher_trunk,
                    "head": copy.deepcopy(self.action_head),
                }
            )
            teacher.requires_grad_(False)
            teacher.eval()
            self.teacher = teacher

    def train(self, mode: bool = True) -> HeadedExpert:
        """Set training mode; a frozen trunk and the teacher stay in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, ...)`` pathway input. :return: ``(B, n + 1)``: probabilities (``mix="probs"``)
        or logits of the target's actions, then the value."""
        actor, critic = self._split(self.forward_trunk(x))
        logits = self.action_head(actor)
        policy = F.softmax(logits, dim=1) if self.mix == "probs" else logits
        return torch.cat([policy, self.value_head(critic)], dim=1)

    def _split(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, trunk output)`` -> what the policy layer reads, what the value layer reads."""
        if self.policy_dim is None:
            return hidden, hidden
        return hidden[:, : self.policy_dim], hidden[:, self.policy_dim :]

    def teacher_probs(self, x: Tensor) -> Tensor | None:
        """:param x: ``(B, ...)``. :return: ``(B, n)`` the pretrained policy's probabilities, or ``None``."""
        if self.teacher is None:
            return None
        teacher = self.teacher
        with torch.no_grad():
            actor, _ = self._split(teacher["trunk"](teacher["adapter"](x)))
            return F.softmax(teacher["head"](actor), dim=1)


def _linear_from(in_features: int, out_features: int, init: tuple[Tensor, Tensor] | None, gain: float) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        if init is None:
            nn.init.orthogonal_(layer.weight, gain=gain)
            layer.bias.zero_()
        else:
            layer.weight.copy_(init[0])
            layer.bias.copy_(init[1])
    return layer


def readout_logits(aggregate: Tensor, num_actions: int, mix: OutputMix) -> Tensor:
    """Logits of the action distribution from an output-level aggregate.

    :param aggregate: ``(B, n + 1)`` weighted sum of :class:`HeadedExpert` outputs.
    :param num_actions: n.
    :param mix: how the experts' policies were mixed.
    :return: ``(B, n)`` logits (log-probabilities for ``mix="probs"``).
    """
    policy = aggregate[:, :num_actions]
    if mix == "probs":
        return torch.log(policy.clamp_min(1e-8))
    return policy
