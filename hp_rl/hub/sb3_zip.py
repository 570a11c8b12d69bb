"""Reading expert trunks out of Stable-Baselines3 checkpoint zips without unpickling anything."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hp_rl.core.errors import HpRlError
from hp_rl.hub.architectures import (
    MLPTrunk,
    NatureCNNTrunk,
    SmallFrameCNNTrunk,
    TrunkInfo,
    nature_cnn_flat_size,
    small_frame_cnn_flat_size,
)
from hp_rl.hub.expert import ExpertHeads

__all__ = ["CheckpointError", "read_sb3_trunk", "read_sb3_expert"]

# Where each SB3 algorithm keeps its CNN features extractor, most specific first. Zips saved before
# SB3 1.7 lack the pi_/vf_ copies; the shared one is always there.
_CNN_PREFIXES = (
    "features_extractor.",
    "pi_features_extractor.",
    "q_net.features_extractor.",
    "quantile_net.features_extractor.",
    "actor.features_extractor.",
)


class CheckpointError(HpRlError, ValueError):
    """A checkpoint file is missing, corrupt, or holds no trunk this project can read."""


def _load_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The policy weights and the plain values of ``data`` (size-capped; nothing is unpickled)."""
    from hp_rl.core.archive import (
        MAX_DATA_BYTES,
        MAX_TENSOR_BYTES,
        ArchiveError,
        load_json_bytes,
        load_tensors,
        read_member,
    )

    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Check the path in the hub spec.")
    try:
        with zipfile.ZipFile(path) as archive:
            if "policy.pth" not in archive.namelist():
                raise CheckpointError(
                    f"{path} has no 'policy.pth': it is not a Stable-Baselines3 checkpoint (saved by model.save())."
                )
            raw_policy = read_member(archive, "policy.pth", path, MAX_TENSOR_BYTES)
            has_data = "data" in archive.namelist()
            raw_data = read_member(archive, "data", path, MAX_DATA_BYTES) if has_data else b"{}"
        # weights_only refuses arbitrary pickled objects: an untrusted file cannot run code here.
        state = load_tensors(raw_policy, f"{path}: policy.pth")
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"{path} is not a valid zip file (truncated or corrupt download?).") from error
    except ArchiveError as error:
        raise CheckpointError(str(error)) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: policy.pth is not a mapping of weights; the file is corrupt.")
    try:
        data = load_json_bytes(raw_data, f"{path}: member 'data'")
    except ArchiveError:  # the weights are what an expert needs; its plain data only adds facts
        data = {}
    return state, data if isinstance(data, dict) else {}


def _square_frame_for(flat_size: int) -> int:
    side = round(math.sqrt(flat_size / 64))
    for size in range(36, 512):
        if nature_cnn_flat_size(size, size) == flat_size:
            return size
    raise CheckpointError(f"No square frame gives a NatureCNN flat size of {flat_size} (side ~{side}).")


def _details(data: dict[str, Any], path: Path) -> dict[str, str]:
    policy = data.get("policy_class", {})
    details = {"file": path.name}
    if isinstance(policy, dict) and "__module__" in policy:
        details["policy_module"] = str(policy["__module__"])
    for key in ("num_timesteps", "seed", "n_envs"):
        if key in data:
            details[key] = str(data[key])
    return details


def _image_shape(data: dict[str, Any], conv_weight: Tensor, linear_weight: Tensor) -> tuple[int, int, int]:
    space = data.get("observation_space", {})
    shape = space.get("_shape") if isinstance(space, dict) else None
    if isinstance(shape, list) and len(shape) == 3:
        channels_first = shape[0] == conv_weight.shape[1]
        c, h, w = shape if channels_first else (shape[2], shape[0], shape[1])
        if nature_cnn_flat_size(h, w) == linear_weight.shape[1]:
            return int(c), int(h), int(w)
    side = _square_frame_for(int(linear_weight.shape[1]))
    return int(conv_weight.shape[1]), side, side


def _small_frame_shape(data: dict[str, Any], conv_weight: Tensor, linear_weight: Tensor) -> tuple[int, int, int]:
    channels, out_channels = int(conv_weight.shape[1]), int(conv_weight.shape[0])
    flat = int(linear_weight.shape[1])
    space = data.get("observation_space", {})
    shape = space.get("_shape") if isinstance(space, dict) else None
    if isinstance(shape, list) and len(shape) == 3:
        c, h, w = shape if shape[0] == channels else (shape[2], shape[0], shape[1])
        if c == channels and small_frame_cnn_flat_size(h, w, out_channels) == flat:
            return int(c), int(h), int(w)
    side = round(math.sqrt(flat / out_channels)) + 2
    if small_frame_cnn_flat_size(side, side, out_channels) != flat:
        raise CheckpointError(f"No square frame gives a small-frame CNN flat size of {flat}.")
    return channels, side, side


def _small_frame_trunk(sub: dict[str, Tensor], data: dict[str, Any]) -> tuple[SmallFrameCNNTrunk, TrunkInfo]:
    conv, linear = sub["cnn.0.weight"], sub["linear.0.weight"]
    channels, height, width = _small_frame_shape(data, conv, linear)
    out_channels = int(conv.shape[0])
    info = TrunkInfo(
        "small_frame_cnn", "image", (channels, height, width), int(linear.shape[0]), (("channels", str(out_channels)),)
    )
    trunk = SmallFrameCNNTrunk(channels, height, width, info.features_dim, out_channels)
    trunk.load_state_dict(sub)
    return trunk, info


def _cnn_trunk(
    state: dict[str, Tensor], prefix: str, data: dict[str, Any]
) -> tuple[NatureCNNTrunk | SmallFrameCNNTrunk, TrunkInfo]:
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "cnn.2.weight" not in sub and sub["cnn.0.weight"].shape[-2:] == (3, 3):
        # One 3x3 convolution: the MinAtar small-frame CNN (hp_rl.rl.baselines.SmallFrameCNN).
        return _small_frame_trunk(sub, data)
    channels, height, width = _image_shape(data, sub["cnn.0.weight"], sub["linear.0.weight"])
    info = TrunkInfo("nature_cnn", "image", (channels, height, width), int(sub["linear.0.weight"].shape[0]))
    trunk = NatureCNNTrunk(channels, height, width, info.features_dim)
    trunk.load_state_dict(sub)
    return trunk, info


def _linear_stack(state: dict[str, Tensor], prefixes: tuple[str, ...]) -> list[tuple[Tensor, Tensor]]:
    layers: list[tuple[Tensor, Tensor]] = []
    for prefix in prefixes:
        indices = sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)})
        layers += [(state[f"{prefix}{i}.weight"], state[f"{prefix}{i}.bias"]) for i in indices]
    return layers


def _observation_width(state: dict[str, Tensor], data: dict[str, Any]) -> int | None:
    """The flattened observation width: from ``data``'s observation space, else from the first layer that reads it."""
    space = data.get("observation_space", {})
    shape = space.get("_shape") if isinstance(space, dict) else None
    if isinstance(shape, list) and shape and all(isinstance(s, int) and s > 0 for s in shape):
        return int(math.prod(shape))
    for key in ("action_net.weight", "q_net.q_net.0.weight", "value_net.weight"):
        if key in state and state[key].dim() == 2:
            return int(state[key].shape[1])
    return None


def _mlp_trunk(state: dict[str, Tensor], data: dict[str, Any]) -> tuple[MLPTrunk, TrunkInfo]:
    module = str(data.get("policy_class", {}).get("__module__", ""))
    if any(k.startswith("mlp_extractor.") for k in state) or "action_net.weight" in state:
        layers = _linear_stack(state, ("mlp_extractor.shared_net.", "mlp_extractor.policy_net."))
        default_activation = "tanh"
    elif any(k.startswith("q_net.q_net.") for k in state):
        layers = _linear_stack(state, ("q_net.q_net.",))[:-1]  # the last layer outputs Q-values
        default_activation = "relu"
    elif any(k.startswith("quantile_net.quantile_net.") for k in state):  # sb3-contrib QR-DQN
        layers = _linear_stack(state, ("quantile_net.quantile_net.",))[:-1]  # the last layer outputs quantiles
        default_activation = "relu"
    elif any(k.startswith("actor.latent_pi.") for k in state):
        layers = _linear_stack(state, ("actor.latent_pi.",))
        default_activation = "relu"
    else:
        raise CheckpointError(
            "The checkpoint has neither a NatureCNN features extractor nor an MLP trunk "
            f"(policy module {module or 'unknown'}); supported: PPO, A2C, DQN, QR-DQN, SAC/TD3 Cnn/MlpPolicy."
        )
    kwargs = json.dumps(data.get("policy_kwargs", {}))
    activation = "relu" if "ReLU" in kwargs else "tanh" if "Tanh" in kwargs else default_activation
    hidden = tuple(int(w.shape[0]) for w, _ in layers)
    if layers:
        in_features = int(layers[0][0].shape[1])
        trunk = MLPTrunk.from_layers(layers, activation)
    else:  # net_arch=[]: the heads read the observation itself, which is then the trunk's output
        width = _observation_width(state, data)
        if width is None:
            raise CheckpointError("The checkpoint has no hidden layers and does not say its observation width.")
        in_features = width
        trunk = MLPTrunk(width, (), activation)
    info = TrunkInfo(
        "mlp",
        "vector",
        (in_features,),
        hidden[-1] if hidden else in_features,
        (("hidden", ",".join(map(str, hidden))), ("activation", activation)),
    )
    return trunk, info


def _q_head(state: dict[str, Tensor], features_dim: int) -> ExpertHeads | None:
    """A DQN agent's Q-value layer as a policy head (its Q-values read as logits: a Boltzmann policy); DQN
    keeps no state-value layer, so the value head starts fresh."""
    layers = _linear_stack(state, ("q_net.q_net.",))
    if not layers or int(layers[-1][0].shape[1]) != features_dim:
        return None
    weight, bias = layers[-1]
    return ExpertHeads(weight.float(), bias.float())


def _heads(state: dict[str, Tensor], features_dim: int, cnn: bool) -> ExpertHeads | None:
    """The agent's action and value layers, where the action layer sits on the trunk's features (linear
    heads); an MLP agent's value layer reads its separate critic network, which comes with it. A DQN agent's
    Q-value layer is its policy head."""
    if "action_net.weight" not in state and any(k.startswith("q_net.q_net.") for k in state):
        return _q_head(state, features_dim)
    weight, bias = state.get("action_net.weight"), state.get("action_net.bias")
    if weight is None or bias is None or weight.dim() != 2 or int(weight.shape[1]) != features_dim:
        return None
    if cnn and any(k.startswith("mlp_extractor.") for k in state):
        return None  # hidden layers between the trunk and the heads (net_arch != [])
    value_w, value_b = state.get("value_net.weight"), state.get("value_net.bias")
    critic: tuple[tuple[Tensor, Tensor], ...] = ()
    mlp_agent = not cnn and any(k.startswith("mlp_extractor.") for k in state)
    if mlp_agent:
        # SB3's MLP policies: the value layer reads the critic's own hidden layers (shared ones first, SB3 < 1.8).
        critic = tuple(
            (w.float(), b.float())
            for w, b in _linear_stack(state, ("mlp_extractor.shared_net.", "mlp_extractor.value_net."))
        )
    value_in = int(critic[-1][0].shape[0]) if critic else features_dim
    # A critic without hidden layers reads the raw observation, which no head of the trunk can; a CNN agent
    # with a critic extractor of its own (share_features_extractor=False) has a value layer on other features.
    separate_cnn_critic = cnn and any(
        k.startswith("vf_features_extractor.")
        and not torch.equal(v, state.get("pi_features_extractor." + k.split(".", 1)[1], v))
        for k, v in state.items()
    )
    if (
        value_w is None
        or value_b is None
        or value_w.dim() != 2
        or int(value_w.shape[1]) != value_in
        or (mlp_agent and not critic)
        or separate_cnn_critic
    ):
        value_w = value_b = None
        critic = ()
    return ExpertHeads(
        weight.float(),
        bias.float(),
        None if value_w is None else value_w.float(),
        None if value_b is None else value_b.float(),
        critic,
    )


def read_sb3_expert(path: str | Path) -> tuple[torch.nn.Module, TrunkInfo, dict[str, str], ExpertHeads | None]:
    """:func:`read_sb3_trunk` plus the agent's own policy and value heads (PPO/A2C agents), when the policy
    layer is linear on the trunk's features; with an MLP agent's value layer comes its critic network.

    :return: trunk, its description, facts from the zip, and the heads or ``None``.
    """
    path = Path(path)
    state, data = _load_state(path)
    for prefix in _CNN_PREFIXES:
        if f"{prefix}cnn.0.weight" in state:
            trunk, info = _cnn_trunk(state, prefix, data)
            return trunk, info, _details(data, path), _heads(state, info.features_dim, cnn=True)
    mlp, mlp_info = _mlp_trunk(state, data)
    return mlp, mlp_info, _details(data, path), _heads(state, mlp_info.features_dim, cnn=False)


def read_sb3_trunk(path: str | Path) -> tuple[torch.nn.Module, TrunkInfo, dict[str, str]]:
    """The features trunk of a Stable-Baselines3 checkpoint.

    CNN policies give their features extractor (NatureCNN, or the small-frame CNN that MinAtar agents
    train with), the same features SB3's loaded policy computes; MLP policies give the actor's hidden
    layers.

    :param path: a ``.zip`` written by ``model.save()`` (SB3 1.x or 2.x; PPO, A2C, DQN, QR-DQN, SAC, TD3).
    :return: the trunk with the checkpoint's weights, its description, and facts from the zip.
    :raises CheckpointError: missing, corrupt or unsupported file.
    """
    trunk, info, details, _ = read_sb3_expert(path)
    return trunk, info, details
