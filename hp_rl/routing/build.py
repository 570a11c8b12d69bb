"""The one pathway builder: a hub's experts, a gate that routes among them, and its starting preferences.

The RL features extractor (:class:`~hp_rl.rl.extractor.HubPathwayExtractor`) and the vision classifier
(:class:`~hp_rl.vision.classifier.HubPathwayClassifier`) both build their pathway here, so a routing option
(noise, its cap, forced experts, a starting preference) means the same thing in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hp_rl.routing.fused import Execution
from hp_rl.routing.gate import NoiseSource
from hp_rl.routing.generator import PathwayGenerator, conv_body, mlp_body
from hp_rl.routing.pathway import HubPathway
from hp_rl.routing.router import BalanceMode, NoiseMode, NoisyTopKRouter

__all__ = ["GateConfig", "build_pathway", "add_starting_preference"]


@dataclass(frozen=True)
class GateConfig:
    """How a pathway routes.

    :param k: experts routed per sample, beside the forced ones.
    :param noise: ``"learned"`` (a noise head in the generator), ``"fixed"`` (``noise_std``) or ``"none"``.
    :param noise_std: the std of ``"fixed"`` noise.
    :param noise_cap: bound on the noise std, relative to the spread of each sample's logits (``None``: unbounded).
    :param balance: the exploration loss, ``"cv2"`` (importance and load) or ``"switch"``.
    :param dense: every expert on every sample with softmax weights (the dense-mixture baseline).
    :param num_forced: the last ``num_forced`` experts are routed on every sample (a base network).
    :param execution: how routed experts run: ``"auto"``, ``"fused"`` or ``"sparse"``.
    :param keyed_noise: noise drawn from each sample's content (replayable: RL minibatches re-visit rollouts);
        ``False``: plain ``torch.randn`` noise.
    :param noise_seed: the stream seed of keyed noise.
    :param generator_hidden: width of the generator's body.
    """

    k: int = 2
    noise: NoiseMode = "learned"
    noise_std: float = 1.0
    noise_cap: float | None = None
    balance: BalanceMode = "cv2"
    dense: bool = False
    num_forced: int = 0
    execution: Execution = "auto"
    keyed_noise: bool = True
    noise_seed: int = 0
    generator_hidden: int = 64


def add_starting_preference(
    generator: PathwayGenerator, names: Sequence[str], preference: Mapping[str, float], scale: float
) -> None:
    """Add ``scale * preference[name]`` to the generator's logit bias of each named expert (column i is
    ``names[i]``; unnamed experts: 0), so routing starts towards the experts the preference favours.

    :param generator: the generator whose ``(m,)`` logit biases move.
    :param names: the ``m`` expert names in column order.
    :param preference: expert name -> value (a transferability score in [0, 1], or any number).
    :param scale: logits per unit of preference.
    """
    layer = generator.logits.module
    assert isinstance(layer, nn.Linear)
    with torch.no_grad():
        for column, name in enumerate(names):
            layer.bias[column] += scale * preference.get(name, 0.0)


def build_pathway(
    experts: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    gate: GateConfig,
    preferences: Sequence[Mapping[str, float]] = (),
    preference_scale: float = 0.0,
) -> HubPathway:
    """A :class:`HubPathway` over ``experts``: a generator reading the input (a small CNN for ``(C, H, W)``
    inputs, an MLP otherwise), a noisy top-k router, and the generator's biases moved by each preference in turn.

    :param experts: name -> module mapping ``(B, *input_shape)`` to the common output, in routing order (forced
        experts last).
    :param input_shape: the shape of one input, ``(C, H, W)`` or ``(D,)``.
    :param gate: how it routes.
    :param preferences: starting preferences added to the generator's biases in turn (:func:`add_starting_preference`).
    :param preference_scale: logits per unit of preference.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        body, body_dim = conv_body(shape[0], shape[1], shape[2], hidden=gate.generator_hidden)
    else:
        body, body_dim = mlp_body(int(torch.Size(shape).numel()), hidden=gate.generator_hidden)
    generator = PathwayGenerator(body, body_dim, len(experts), learned_noise=gate.noise == "learned")
    for preference in preferences:
        add_starting_preference(generator, tuple(experts), preference, preference_scale)
    router = NoisyTopKRouter(
        len(experts),
        gate.k,
        gate.noise,
        gate.noise_std,
        gate.balance,
        gate.dense,
        num_forced=gate.num_forced,
        noise_cap=gate.noise_cap,
    )
    noise = NoiseSource(enabled=gate.noise != "none", keyed=gate.keyed_noise, seed=gate.noise_seed)
    return HubPathway(dict(experts), generator, router, execution=gate.execution, noise=noise)
