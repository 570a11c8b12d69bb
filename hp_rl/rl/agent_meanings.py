"""What a brought agent's observations and actions mean, and how its policy head maps onto a target's actions.

An agent given as an SB3 zip carries no meanings of its own; its files may name the task it was trained on
(:mod:`hp_rl.hub.origin`). From that task id the meanings are derived exactly as a hub spec records them
(:func:`hp_rl.rl.envs.env_meanings` on the task built once). Where they stay unknown and the agent has as many
actions as the target, its head is mapped one to one: whether that head plays the target is then for the
zero-shot score to say (:mod:`hp_rl.rl.scoring`), so nothing unmeasured is trusted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

import torch
from torch import Tensor

from hp_rl.hub import HubExpert
from hp_rl.hub.expert import ExpertHeads
from hp_rl.hub.meanings import action_index_map

__all__ = [
    "HEAD_MAPPED",
    "HEAD_ONE_TO_ONE",
    "HEAD_FRESH",
    "task_meanings",
    "learn_task_meanings",
    "map_policy_head",
    "choose_preset",
]

logger = logging.getLogger(__name__)

HEAD_MAPPED = "mapped"  # every target action has the agent's action of the same meaning
HEAD_ONE_TO_ONE = "one-to-one"  # meanings unknown, same number of actions: action i is action i
HEAD_FRESH = "fresh"  # no head, or one that cannot act for the target


@cache
def _cached_meanings(
    env_id: str, env_preset: str | None, kwargs_json: str
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    from hp_rl.rl.envs import env_meanings, make_env

    env = make_env(env_id, 1, 0, env_preset, env_kwargs=json.loads(kwargs_json))
    try:
        return env_meanings(env)
    finally:
        env.close()


def task_meanings(
    env_id: str, env_preset: str | None = None, env_kwargs: dict[str, object] | None = None
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """``(channel_names, action_meanings)`` of a task, as a hub spec records them (each ``None`` where the task
    does not say, or cannot be built here: an id this installation does not register).
    """
    try:
        return _cached_meanings(env_id, env_preset, json.dumps(env_kwargs or {}, sort_keys=True, default=str))
    except Exception as error:  # an id of a package not installed here, bad kwargs: the meanings stay unknown
        logger.debug("meanings of %s unknown: %s", env_id, error)
        return None, None


def learn_task_meanings(expert: HubExpert) -> HubExpert:
    """Fill in ``expert.channel_names`` and ``expert.action_meanings`` from the task its files name, if any.

    :return: the same expert.
    """
    origin = expert.origin
    if origin is not None and origin.env_id is not None and expert.action_meanings is None:
        channels, actions = task_meanings(origin.env_id, origin.env_preset, dict(origin.env_kwargs))
        expert.channel_names, expert.action_meanings = channels, actions
    return expert


def map_policy_head(
    heads: ExpertHeads | None,
    target_meanings: Sequence[str] | None,
    source_meanings: Sequence[str] | None,
    num_actions: int,
) -> tuple[str, tuple[Tensor, Tensor] | None]:
    """How an agent's policy head starts on the target: its rows for the target's actions, and which rule gave them.

    :param heads: the agent's heads (``None``: it has none).
    :param target_meanings: what the target's actions mean, if known.
    :param source_meanings: what the agent's actions mean, if known.
    :param num_actions: the target's action count n.
    :return: (:data:`HEAD_MAPPED`, :data:`HEAD_ONE_TO_ONE` or :data:`HEAD_FRESH`; the ``(n, f)`` weight and
        ``(n,)`` bias, or ``None`` for a fresh head).
    """
    if heads is None:
        return HEAD_FRESH, None
    if target_meanings is not None and source_meanings is not None:
        index = action_index_map(target_meanings, source_meanings)
        if index is None or heads.num_actions != len(source_meanings):
            return HEAD_FRESH, None
        rows = torch.tensor(index)
        return HEAD_MAPPED, (heads.action_weight[rows], heads.action_bias[rows])
    if heads.num_actions == num_actions:
        return HEAD_ONE_TO_ONE, (heads.action_weight, heads.action_bias)
    return HEAD_FRESH, None


def choose_preset(hub: Any, env: Any) -> tuple[str, str]:
    """The configuration a hub calls for on a target (``preset="auto"``): ``transfer`` whenever the target's actions
    are discrete, ``paper`` when they are not (no policy head can map onto them).

    Under ``transfer`` every expert is scored on the target before training and routed only on evidence that it
    helps, beside a base network that learns as scratch does: whole agents whose heads play the target are
    reused, and a hub of encoders (image backbones, head-less exports, random trunks) costs little and harms
    nothing. The paper's configuration routes encoders without evidence, and on a hub of other tasks' encoders it
    trained worse than scratch (docs/results/atari100k.md, docs/results/leave_one_out.md); it stays one flag
    away (``--hub-set preset=paper``).

    :param hub: anything :func:`hp_rl.hub.parse_hub` accepts.
    :param env: the target environment (vectorised or not).
    :return: the preset's name and why, in words.
    """
    from gymnasium import spaces

    from hp_rl.hub import load_expert, parse_hub
    from hp_rl.rl.envs import env_meanings

    if not isinstance(env.action_space, spaces.Discrete):
        return "paper", f"the target's actions ({env.action_space}) are not discrete, so no policy head maps"
    spec = parse_hub(hub)
    _, target_meanings = env_meanings(env)
    num_actions = int(env.action_space.n)
    shape = tuple(int(s) for s in env.observation_space.shape)
    reaching, whole = [], []
    for expert_spec in spec.experts:
        expert = learn_task_meanings(load_expert(expert_spec, shape))
        source = expert_spec.action_meanings or expert.action_meanings
        if expert.heads is not None:
            whole.append(expert_spec.name)
        if map_policy_head(expert.heads, target_meanings, source, num_actions)[0] != HEAD_FRESH:
            reaching.append(expert_spec.name)
    if reaching:
        return "transfer", f"{', '.join(reaching)} bring(s) a policy head that reaches the target's actions"
    if whole:
        return "transfer", (
            f"{', '.join(whole)} are whole agents, though no head reaches the target's actions: none will be routed "
            "unless it shows it plays the target"
        )
    return "transfer", (
        "no expert brings a policy head (a hub of encoders): each is scored on the target and routed only where "
        "the score says it helps; otherwise the base network learns alone"
    )
