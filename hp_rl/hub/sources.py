"""The registry of expert sources: each turns an :class:`ExpertSpec` into a :class:`HubExpert`.

Add a source with :func:`register_source`; the tests are parametrised over :data:`SOURCES`.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hp_rl.core.paths import file_sha256
from hp_rl.hub.adapters import AdapterError
from hp_rl.hub.architectures import ARCHITECTURES, TrunkInfo, build_trunk
from hp_rl.hub.expert import ExpertHeads, HubExpert, Provenance
from hp_rl.hub.files import verify_file
from hp_rl.hub.hf import load_hf_expert
from hp_rl.hub.options import MAX_FEATURES_DIM
from hp_rl.hub.registry import SOURCES, SourceConfig, register_source
from hp_rl.hub.sb3_zip import CheckpointError, read_sb3_expert
from hp_rl.hub.spec import ExpertSpec, HubSpecError
from hp_rl.hub.vision_sources import load_timm_expert, load_torchvision_expert

__all__ = ["SourceConfig", "SOURCES", "register_source", "load_expert", "verify_file", "random_expert_seed"]


def _load_sb3(spec: ExpertSpec, observation_shape: tuple[int, ...] | None) -> HubExpert:
    """A whole agent from an SB3 zip, with what the files beside it say (:mod:`hp_rl.hub.origin`): its task
    and the observation statistics it was trained with."""
    from hp_rl.hub.origin import read_agent_origin

    path = verify_file(spec)
    trunk, info, details, heads = read_sb3_expert(path)
    origin = read_agent_origin(path)
    provenance = Provenance("sb3", str(path), file_sha256(path), {**details, **origin.details()})
    normalizer = origin.input_normalizer(info.input_shape)
    return HubExpert(trunk, info, provenance, heads, origin=origin, normalizer=normalizer)


def _info_from_metadata(
    spec: ExpertSpec, metadata: dict[str, str], observation_shape: tuple[int, ...] | None
) -> TrunkInfo:
    arch = spec.arch or metadata.get("arch")
    if arch is None:
        raise HubSpecError(
            f"Expert {spec.name!r}: {spec.path} does not name its architecture; add 'arch' "
            f"({', '.join(sorted(ARCHITECTURES))}) to the hub spec."
        )
    shape = spec.input_shape or _metadata_shape(metadata, spec) or observation_shape
    if shape is None:
        raise HubSpecError(f"Expert {spec.name!r}: add 'input_shape' to the hub spec; the file does not say.")
    features = spec.features_dim or _metadata_int(metadata, "features_dim", 512 if arch == "nature_cnn" else 64, spec)
    options_value = _metadata_json(metadata, "options", spec) or {}
    if not isinstance(options_value, dict) or not all(
        isinstance(v, str | int | float | bool) for v in options_value.values()
    ):
        raise CheckpointError(f"Expert {spec.name!r}: {spec.path}: metadata 'options' must map names to plain values.")
    options = tuple(sorted((str(k), v) for k, v in options_value.items()))
    kind = "image" if len(shape) == 3 else "vector"  # nature_cnn, small_frame_cnn: (C, H, W)
    return TrunkInfo(arch, kind, tuple(int(s) for s in shape), features, options)  # type: ignore[arg-type]


def _metadata_json(metadata: dict[str, str], key: str, spec: ExpertSpec) -> Any:
    """A JSON value of a safetensors file's metadata (``None`` where absent)."""
    from hp_rl.core.archive import ArchiveError, load_json_bytes

    if key not in metadata:
        return None
    try:
        return load_json_bytes(metadata[key].encode("utf-8"), f"{spec.path}: metadata '{key}'")
    except ArchiveError as error:
        raise CheckpointError(f"Expert {spec.name!r}: {error}") from None


def _metadata_shape(metadata: dict[str, str], spec: ExpertSpec) -> tuple[int, ...] | None:
    shape = _metadata_json(metadata, "input_shape", spec)
    if shape is None:
        return None
    if not isinstance(shape, list) or not shape or not all(isinstance(n, int) and 0 < n < 2**16 for n in shape):
        raise CheckpointError(f"Expert {spec.name!r}: {spec.path}: metadata 'input_shape' must list positive sizes.")
    return tuple(shape)


def _metadata_int(metadata: dict[str, str], key: str, default: int, spec: ExpertSpec) -> int:
    text = metadata.get(key, str(default))
    if not text.isdigit() or not 1 <= int(text) <= MAX_FEATURES_DIM:
        raise CheckpointError(
            f"Expert {spec.name!r}: {spec.path}: metadata '{key}' is not a usable width ({text[:40]!r})."
        )
    return int(text)


def _load_safetensors(spec: ExpertSpec, observation_shape: tuple[int, ...] | None) -> HubExpert:
    from safetensors.torch import load_file

    from hp_rl.core.archive import ArchiveError, check_safetensors_file

    path = verify_file(spec)
    try:
        metadata = check_safetensors_file(path)  # every declared size fits the file before anything is allocated
        state = load_file(str(path))
    except ArchiveError as error:
        raise CheckpointError(f"Expert {spec.name!r}: {error}") from error
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"Expert {spec.name!r}: {path} is not a valid safetensors file ({error}).") from error
    info = _info_from_metadata(spec, metadata, observation_shape)
    trunk = build_trunk(info)
    expected = trunk.state_dict()
    heads = ExpertHeads.from_tensors({k: v for k, v in state.items() if k.startswith("heads.")})
    trunk_state = {k: v for k, v in state.items() if not k.startswith("heads.")}
    try:
        trunk.load_state_dict({k: v.to(expected[k].dtype) if k in expected else v for k, v in trunk_state.items()})
    except RuntimeError as error:
        raise CheckpointError(
            f"Expert {spec.name!r}: {path} does not match architecture {info.arch!r}: {error}"
        ) from error
    details = {k: v for k, v in sorted(metadata.items()) if k not in ("arch", "input_shape", "features_dim", "options")}
    return HubExpert(trunk, info, Provenance("safetensors", str(path), file_sha256(path), details), heads)


def random_expert_seed(spec: ExpertSpec) -> int:
    """The seed of a random expert: ``options.seed`` if given, else derived from torch's seed and the name.

    Deriving it (instead of drawing from the global generator) makes a random expert a pure function of
    the run's seed: every copy built in one run (actor, critic, target network) is the same expert.
    """
    if "seed" in spec.options:
        return int(spec.options["seed"])
    return zlib.crc32(f"{torch.initial_seed()}:{spec.name}".encode())


def _load_random(spec: ExpertSpec, observation_shape: tuple[int, ...] | None) -> HubExpert:
    shape = spec.input_shape or observation_shape
    if shape is None:
        raise HubSpecError(
            f"Expert {spec.name!r}: a random expert needs 'input_shape' when no observation space is known."
        )
    # The architecture that fits the observations: NatureCNN needs frames of at least 36x36.
    small = len(shape) == 3 and min(shape[1], shape[2]) < 36
    arch = spec.arch or ("mlp" if len(shape) != 3 else "small_frame_cnn" if small else "nature_cnn")
    if arch == "nature_cnn" and len(shape) != 3:
        raise AdapterError(
            f"Expert {spec.name!r}: a random nature_cnn needs image inputs (C, H, W), but the input shape is "
            f"{tuple(shape)}. Use 'random:mlp' for state vectors, or give 'input_shape' for an image expert."
        )
    features = spec.features_dim or {"nature_cnn": 512, "small_frame_cnn": 128}.get(arch, 64)
    options = tuple(sorted((str(k), str(v)) for k, v in spec.options.items()))
    info = TrunkInfo(arch, "image" if len(shape) == 3 else "vector", tuple(shape), features, options)
    seed = random_expert_seed(spec)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        trunk = build_trunk(info)
    return HubExpert(trunk, info, Provenance("random", "random", None, {"seed": str(seed)}))


def _load_torchscript(spec: ExpertSpec, observation_shape: tuple[int, ...] | None) -> HubExpert:
    """A TorchScript trunk. Its file is a program: it is never called to learn its shapes; they come from the spec
    or the ``facts.json`` it carries (:mod:`hp_rl.hub.trusted_code`)."""
    from hp_rl.hub.trusted_code import TimeBoundedCode, load_bounded, torchscript_facts

    path = verify_file(spec)
    facts = torchscript_facts(path)
    shape = spec.input_shape or _fact_shape(facts, path) or observation_shape
    if shape is None:
        raise HubSpecError(f"Expert {spec.name!r}: add 'input_shape' for a TorchScript expert.")
    features = spec.features_dim or facts.get("features_dim")
    if not isinstance(features, int | str) or not str(features).isdigit() or not 1 <= int(features) <= MAX_FEATURES_DIM:
        raise HubSpecError(
            f"Expert {spec.name!r}: add 'features_dim' (the width of its output) to the hub spec. A TorchScript "
            "file is a program, so hp_rl does not run it to measure that; files saved with "
            "_extra_files={'facts.json': json.dumps({'features_dim': N, 'input_shape': [...]})} say it themselves."
        )
    try:
        module: nn.Module = load_bounded(
            lambda: torch.jit.load(str(path), map_location="cpu"), f"loading expert {spec.name!r} (TorchScript)"
        )
    except Exception as error:  # TorchScript raises RuntimeError subclasses with long messages
        raise CheckpointError(f"Expert {spec.name!r}: {path} is not a TorchScript file ({error}).") from error
    module.eval()  # a frozen trunk must not update BatchNorm statistics
    kind = "image" if len(shape) == 3 else "vector"
    info = TrunkInfo("torchscript", kind, tuple(shape), int(features))  # type: ignore[arg-type]
    return HubExpert(TimeBoundedCode(module, spec.name), info, Provenance("torchscript", str(path), file_sha256(path)))


def _fact_shape(facts: dict[str, object], path: Path) -> tuple[int, ...] | None:
    shape = facts.get("input_shape")
    if shape is None:
        return None
    if isinstance(shape, str):  # facts written as strings (the vision recipe's) hold JSON
        try:
            shape = json.loads(shape)
        except json.JSONDecodeError:
            shape = None
    if not isinstance(shape, list) or not shape or not all(isinstance(n, int) and 0 < n < 2**16 for n in shape):
        raise HubSpecError(f"{path}: facts.json 'input_shape' must be a list of positive integers, got {shape!r}.")
    return tuple(shape)


register_source(
    SourceConfig("sb3", "Stable-Baselines3 checkpoint zip (PPO, A2C, DQN, QR-DQN; Cnn/MlpPolicy)", True, _load_sb3)
)
register_source(
    SourceConfig("safetensors", "safetensors trunk weights with a named architecture", True, _load_safetensors)
)
register_source(SourceConfig("random", "randomly initialised NatureCNN or MLP trunk", False, _load_random))
register_source(SourceConfig("torchscript", "TorchScript module saved with torch.jit.save", True, _load_torchscript))
register_source(
    SourceConfig(
        "hf",
        "SB3 checkpoint in a Hugging Face repo (hf:sb3/ppo-PongNoFrameskip-v4@REV), local cache first",
        True,
        load_hf_expert,
    )
)
register_source(
    SourceConfig(
        "torchvision",
        "torchvision ImageNet backbone (arch + weights tag, or a local file)",
        False,
        load_torchvision_expert,
        extra="timm",
    )
)
register_source(
    SourceConfig(
        "timm", "timm backbone (model name[.tag], pretrained or a local file)", False, load_timm_expert, extra="timm"
    )
)


def load_expert(spec: ExpertSpec, observation_shape: tuple[int, ...] | None = None) -> HubExpert:
    """Build one expert from its spec.

    :param spec: the expert spec.
    :param observation_shape: the observation shape the hub will see, used where the source cannot tell.
    :raises HubSpecError: unknown source or missing keys. :raises CheckpointError: bad weight files.
    """
    if spec.source not in SOURCES:
        known = ", ".join(sorted(SOURCES))
        raise HubSpecError(f"Expert {spec.name!r}: unknown source {spec.source!r}; known: {known}.")
    return SOURCES[spec.source].loader(spec, observation_shape)
