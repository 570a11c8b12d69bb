"""A loaded hub expert: a trunk plus what it expects and where it came from."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor, nn

from hp_rl.hub.architectures import ArchitectureError, MLPTrunk, TrunkInfo
from hp_rl.routing.fused import lower, register_lowering

if TYPE_CHECKING:
    from hp_rl.hub.origin import AgentOrigin

__all__ = ["ExpertHeads", "HubExpert", "Provenance"]


@dataclass(frozen=True)
class Provenance:
    """Where an expert's weights came from.

    :param source: registry name of the source (``sb3``, ``safetensors``, ``hf``, ``random``, ...).
    :param location: file path, repository id or ``"random"``.
    :param sha256: digest of the weight file, when there is one.
    :param details: free-form facts from the file (algorithm, training steps, source return, ...).
    """

    source: str
    location: str
    sha256: str | None = None
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpertHeads:
    """The pretrained policy and value heads of an expert read from a whole agent.

    The policy layer is linear on the trunk's features. The value layer is linear either on the trunk's
    features too (agents whose actor and critic share their trunk: SB3's CNN policies) or on the features of
    the agent's own critic network (SB3's MLP policies keep a separate critic MLP beside the actor's), whose
    hidden layers ``critic_layers`` then holds.

    :param action_weight: ``(n_actions, features_dim)`` logits layer of the policy.
    :param action_bias: ``(n_actions,)``.
    :param value_weight: ``(1, features_dim)`` value layer, ``(1, critic_layers[-1] width)`` when there is a
        critic network, or ``None`` when the value head could not be read.
    :param value_bias: ``(1,)`` or ``None``.
    :param critic_layers: the critic network's linear layers in order, each ``((out, in), (out,))``; the first
        reads the trunk's input, and each is followed by the trunk's activation. Empty: no separate critic.
    """

    action_weight: Tensor
    action_bias: Tensor
    value_weight: Tensor | None = None
    value_bias: Tensor | None = None
    critic_layers: tuple[tuple[Tensor, Tensor], ...] = ()

    @property
    def num_actions(self) -> int:
        """Actions of the expert's own task."""
        return int(self.action_weight.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor form (``heads.action.weight``, ``heads.critic.0.weight``, ...), as the
        safetensors export stores it."""
        out = {"heads.action.weight": self.action_weight, "heads.action.bias": self.action_bias}
        if self.value_weight is not None and self.value_bias is not None:
            out.update({"heads.value.weight": self.value_weight, "heads.value.bias": self.value_bias})
            for index, (weight, bias) in enumerate(self.critic_layers):
                out.update({f"heads.critic.{index}.weight": weight, f"heads.critic.{index}.bias": bias})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> ExpertHeads | None:
        """Inverse of :meth:`tensors` (float32), or ``None`` when the file holds no heads."""
        if "heads.action.weight" not in tensors or "heads.action.bias" not in tensors:
            return None
        value_w, value_b = tensors.get("heads.value.weight"), tensors.get("heads.value.bias")
        indices = sorted({int(key.split(".")[2]) for key in tensors if key.startswith("heads.critic.")})
        critic = tuple(
            (tensors[f"heads.critic.{i}.weight"].float(), tensors[f"heads.critic.{i}.bias"].float()) for i in indices
        )
        return cls(
            tensors["heads.action.weight"].float(),
            tensors["heads.action.bias"].float(),
            None if value_w is None else value_w.float(),
            None if value_b is None else value_b.float(),
            critic,
        )


class HubExpert(nn.Module):
    """An expert trunk: ``forward`` maps preprocessed observations ``(B, *info.input_shape)`` to
    ``(B, info.features_dim)`` features.

    :param trunk: the network.
    :param info: its input and output description.
    :param provenance: where its weights came from.
    :param heads: the agent's own policy and value heads (and critic network), when the source has them.
    :param origin: what the agent's files say about its task (SB3 zips given by path), when known.
    :param normalizer: the observation normalisation the agent was trained with (``VecNormalize``), applied
        before the trunk (and before its critic network).
    """

    def __init__(
        self,
        trunk: nn.Module,
        info: TrunkInfo,
        provenance: Provenance,
        heads: ExpertHeads | None = None,
        origin: AgentOrigin | None = None,
        normalizer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.info = info
        self.provenance = provenance
        self.heads = heads
        self.origin = origin
        self.normalizer = normalizer
        # What the channels and actions of the agent's own task mean, where its files name the task (filled in
        # by whoever can build that task: hp_rl.rl.agent_meanings).
        self.channel_names: tuple[str, ...] | None = None
        self.action_meanings: tuple[str, ...] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, *input_shape)``. :return: ``(B, features_dim)``."""
        if self.normalizer is not None:
            x = self.normalizer(x)
        out: Tensor = self.trunk(x)
        return out

    @property
    def num_parameters(self) -> int:
        """Number of trunk parameters."""
        return sum(p.numel() for p in self.trunk.parameters())

    def critic_network(self) -> nn.Module | None:
        """A fresh copy of the agent's own critic network, ``(B, *input_shape) -> (B, critic width)``, whose
        features the value head reads; ``None`` when the value head sits on the trunk's features.

        The critic's layers use the trunk's activation, as SB3 builds both of an MLP policy's networks.
        """
        if self.heads is None or not self.heads.critic_layers:
            return None
        layers = self.heads.critic_layers
        in_features = int(layers[0][0].shape[1])
        if in_features != math.prod(self.info.input_shape):
            raise ArchitectureError(
                f"The critic network reads {in_features} inputs but the trunk {math.prod(self.info.input_shape)}; "
                "the checkpoint is inconsistent."
            )
        critic = MLPTrunk.from_layers(layers, self.info.option("activation", "tanh"))
        if self.normalizer is None:
            return critic
        return nn.Sequential(copy.deepcopy(self.normalizer), critic)  # the critic saw normalised inputs too


# An expert with its own input normalisation runs on sparse dispatch (the fused operations do not normalise).
register_lowering(HubExpert, lambda m: lower(m.trunk) if m.normalizer is None else None)
