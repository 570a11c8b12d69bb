"""What observation channels and actions *mean*, so that experts of one task can be mapped onto another.

MinAtar games name their frame channels (``env.unwrapped.game.env.channels``: Breakout's paddle, ball,
trail, brick) and share one full action set (no-op, left, up, right, down, fire) of which each game uses a
minimal subset; ALE games name their actions (``get_action_meanings()``). An expert trained on one game
reads another's frames best when each of its input channels is fed the target channel that means the
same thing (the same name, else the same role: the player, enemies, projectiles, trails, collectables),
and its policy head applies where every target action has a counterpart among its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["MINATAR_FULL_ACTIONS", "CHANNEL_ROLES", "channel_map_weight", "action_index_map"]

MINATAR_FULL_ACTIONS = ("NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE")

# Role of each named MinAtar channel. A channel absent here only matches a channel of the same name.
CHANNEL_ROLES: dict[str, str] = {
    # the agent itself
    "paddle": "agent",
    "cannon": "agent",
    "player": "agent",
    "chicken": "agent",
    "sub_front": "agent",
    "sub_back": "agent",
    # things that hurt or must be avoided
    "enemy": "enemy",
    "car": "enemy",
    "alien": "enemy",
    "alien_left": "enemy",
    "alien_right": "enemy",
    "enemy_fish": "enemy",
    "enemy_sub": "enemy",
    # moving projectiles
    "ball": "projectile",
    "friendly_bullet": "projectile",
    "enemy_bullet": "projectile",
    # motion trails
    "trail": "trail",
    # things to collect or hit for reward
    "brick": "reward",
    "gold": "reward",
    "diver": "reward",
}


def channel_map_weight(target_channels: Sequence[str], source_channels: Sequence[str]) -> Tensor | None:
    """Start of a 1x1 convolution from the target's channels to an expert's, mapping by meaning.

    Each expert (source) channel reads the target channels of the same name; failing that, those of the
    same role (averaged); failing that, nothing (zero: the object is absent, as it would be in a frame of
    the expert's own game without it).

    :param target_channels: names of the observation's channels, in order (``C_in``).
    :param source_channels: names of the expert's input channels, in order (``C_out``).
    :return: ``(C_out, C_in)`` weights, or ``None`` when no channel matches at all (then averaging is the
        better start).
    """
    weight = torch.zeros(len(source_channels), len(target_channels))
    for row, name in enumerate(source_channels):
        same = [col for col, other in enumerate(target_channels) if other == name]
        if not same and name in CHANNEL_ROLES:
            role = CHANNEL_ROLES[name]
            same = [col for col, other in enumerate(target_channels) if CHANNEL_ROLES.get(other) == role]
        for col in same:
            weight[row, col] = 1.0 / len(same)
    if not bool(weight.any()):
        return None
    return weight


def action_index_map(target_actions: Sequence[str], source_actions: Sequence[str]) -> list[int] | None:
    """For each target action, the index of the expert's action of the same meaning.

    :param target_actions: meanings of the target's actions, in action-index order.
    :param source_actions: meanings of the expert's actions.
    :return: ``len(target_actions)`` indices into the expert's actions, or ``None`` when some target
        action has no counterpart (the expert's policy head cannot act for the target then).
    """
    index: list[int] = []
    for meaning in target_actions:
        if meaning not in source_actions:
            return None
        index.append(list(source_actions).index(meaning))
    return index
