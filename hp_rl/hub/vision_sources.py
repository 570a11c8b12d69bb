"""The ``torchvision`` and ``timm`` sources: ImageNet backbones as hub experts (optional extra ``timm``).

An expert of these sources takes the observations an Atari-style policy sees, ``(B, C, H, W)`` frames in
[0, 1] (by default ``C = 4`` stacked grey frames of 84 x 84), and returns the backbone's pooled features.
Its input adapter (:class:`ImageNetInput`) maps the frame stack to the 3 RGB channels, resizes to the
backbone's resolution and applies the ImageNet mean/std; observation spaces of another shape are bridged
further by the generic adapters (:func:`hp_rl.hub.build_input_adapter`).

Spec keys::

    - name: resnet18
      source: torchvision          # or timm
      arch: resnet18               # torchvision.models name, or timm model name (tag allowed: resnet18.a1_in1k)
      path: weights.pth            # optional local state dict (.pth/.pt with weights only, or .safetensors)
      input_shape: [4, 84, 84]     # optional: frames the expert accepts (default: the observation shape)
      options:
        weights: IMAGENET1K_V1     # torchvision weights tag, DEFAULT, or none (random); timm: pretrained true/false
        size: 112                  # backbone input resolution (default 224 for torchvision, timm's cfg)
        frames: grey               # grey: newest frame to 3 channels; last3: the 3 newest frames as R, G, B

torchvision and timm are imported only when such an expert is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hp_rl.core.paths import file_sha256
from hp_rl.hub.architectures import TrunkInfo
from hp_rl.hub.expert import HubExpert, Provenance
from hp_rl.hub.files import verify_file
from hp_rl.hub.sb3_zip import CheckpointError
from hp_rl.hub.spec import ExpertSpec, HubSpecError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNetInput",
    "VisionBackbone",
    "vision_available",
    "load_torchvision_expert",
    "load_timm_expert",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FRAME_MODES = ("grey", "last3")
_OPTIONS = {"torchvision": {"weights", "size", "frames"}, "timm": {"pretrained", "size", "frames"}}


class ImageNetInput(nn.Module):
    """Frames in [0, 1] to what an ImageNet backbone expects: 3 channels, its resolution, its mean/std.

    :param frames: ``"grey"`` repeats the newest frame (the last channel) over R, G, B; ``"last3"`` uses the
        three newest frames as R, G, B (motion shows as colour; needs at least 3 channels).
    :param size: output resolution (square).
    :param mean: per-channel mean of the backbone's training data.
    :param std: per-channel std.
    """

    def __init__(
        self,
        frames: str = "grey",
        size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if frames not in _FRAME_MODES:
            raise ValueError(f"frames must be one of {_FRAME_MODES}, got {frames!r}.")
        self.frames = frames
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C, H, W)`` in [0, 1]. :return: ``(B, 3, size, size)``, normalised."""
        x = x.float()
        if x.shape[1] == 3 and self.frames == "last3":
            rgb = x
        elif self.frames == "last3":
            if x.shape[1] < 3:
                raise ValueError(f"frames='last3' needs at least 3 channels, got {x.shape[1]}.")
            rgb = x[:, -3:]
        else:
            rgb = x[:, -1:].expand(-1, 3, -1, -1)
        if rgb.shape[-2:] != (self.size, self.size):
            rgb = F.interpolate(
                rgb,
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=rgb.shape[-1] > self.size,
            )
        mean: Tensor = self.mean  # type: ignore[assignment]
        std: Tensor = self.std  # type: ignore[assignment]
        return (rgb - mean) / std

    def extra_repr(self) -> str:
        return f"frames={self.frames}, size={self.size}"


class VisionBackbone(nn.Module):
    """:class:`ImageNetInput` followed by a headless backbone that returns pooled features.

    :param prepare: the input adapter.
    :param backbone: maps ``(B, 3, size, size)`` to ``(B, features_dim)``.
    """

    def __init__(self, prepare: ImageNetInput, backbone: nn.Module) -> None:
        super().__init__()
        self.prepare = prepare
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C, H, W)`` frames in [0, 1]. :return: ``(B, features_dim)``."""
        out: Tensor = self.backbone(self.prepare(x))
        return out.flatten(1)


def vision_available(package: str) -> bool:
    """Whether ``torchvision`` or ``timm`` imports here (torchvision needs a matching torch build)."""
    try:
        if package == "timm":
            import timm  # noqa: F401
        else:
            import torchvision  # noqa: F401
    except Exception:  # a torchvision beside a mismatched torch fails with RuntimeError, not ImportError
        return False
    return True


def _import(package: str, spec: ExpertSpec) -> Any:
    try:
        if package == "timm":
            import timm

            return timm
        import torchvision

        return torchvision
    except Exception as error:
        raise HubSpecError(
            f"Expert {spec.name!r}: source '{spec.source}' needs {package} ({type(error).__name__}: {error}). "
            "Install the optional extra: pip install -e '.[timm]' (torchvision must match the installed torch)."
        ) from error


def _read_state(spec: ExpertSpec) -> dict[str, Tensor]:
    path = verify_file(spec)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            from hp_rl.core.archive import check_safetensors_file

            check_safetensors_file(path)  # every declared size fits the file before anything is allocated
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt files or pickled objects that weights_only refuses
        raise CheckpointError(f"Expert {spec.name!r}: {path} cannot be read as plain weights ({error}).") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"Expert {spec.name!r}: {path} holds no state dict.")
    return state


def _check_options(spec: ExpertSpec) -> None:
    if not spec.arch:
        raise HubSpecError(
            f"Expert {spec.name!r}: source '{spec.source}' needs 'arch', the model name (e.g. resnet18)."
        )
    unknown = sorted(set(spec.options) - _OPTIONS[spec.source])
    if unknown:
        raise HubSpecError(
            f"Expert {spec.name!r}: unknown option(s) {unknown} for source '{spec.source}'; "
            f"allowed: {', '.join(sorted(_OPTIONS[spec.source]))}."
        )


def _finish(
    spec: ExpertSpec,
    backbone: nn.Module,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    observation_shape: tuple[int, ...] | None,
    weights: str,
) -> HubExpert:
    shape = tuple(spec.input_shape or observation_shape or (4, 84, 84))
    if len(shape) != 3:
        raise HubSpecError(f"Expert {spec.name!r}: an ImageNet backbone takes image frames (C, H, W), not {shape}.")
    frames = str(spec.options.get("frames", "grey"))
    if frames not in _FRAME_MODES:
        raise HubSpecError(f"Expert {spec.name!r}: option 'frames' must be one of {_FRAME_MODES}, got {frames!r}.")
    trunk = VisionBackbone(ImageNetInput(frames, size, mean, std), backbone).eval()
    with torch.no_grad():
        features = int(trunk(torch.zeros(1, *shape)).shape[1])
    options = (("frames", frames), ("size", str(size)), ("weights", weights))
    info = TrunkInfo(f"{spec.source}:{spec.arch}", "image", shape, features, options)
    location = spec.path or f"{spec.source}:{spec.arch}:{weights}"
    digest = file_sha256(spec.path) if spec.path else None
    return HubExpert(trunk, info, Provenance(spec.source, location, digest, {"weights": weights}))


def _strip_last_linear(model: nn.Module) -> nn.Module:
    """Replace the last ``nn.Linear`` (the ImageNet classifier) by an identity."""
    last: str | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        return model
    parent = model
    *parents, leaf = last.split(".")
    for part in parents:
        parent = getattr(parent, part)
    setattr(parent, leaf, nn.Identity())
    return model


def load_torchvision_expert(spec: ExpertSpec, observation_shape: tuple[int, ...] | None = None) -> HubExpert:
    """A torchvision classification model without its classifier.

    :param spec: ``arch`` names the model; ``options.weights`` a weights tag (``DEFAULT``, ``IMAGENET1K_V1``,
        ``none``), downloaded by torchvision unless cached; ``path`` a local state dict instead.
    :param observation_shape: frames the expert will see, ``(C, H, W)``; default ``(4, 84, 84)``.
    """
    _check_options(spec)
    torchvision = _import("torchvision", spec)
    arch = str(spec.arch)
    try:
        builder: Callable[..., nn.Module] = torchvision.models.get_model_builder(arch)
    except ValueError as error:
        raise HubSpecError(f"Expert {spec.name!r}: torchvision has no model {arch!r} ({error}).") from error
    tag = str(spec.options.get("weights", "none" if spec.path else "DEFAULT"))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if spec.path:
        model = builder(weights=None)
        try:
            model.load_state_dict(_read_state(spec))
        except RuntimeError as error:
            raise CheckpointError(
                f"Expert {spec.name!r}: {spec.path} does not fit torchvision {arch}: {error}"
            ) from error
        tag = f"file:{Path(spec.path).name}"
    elif tag.lower() == "none":
        model = builder(weights=None)
    else:
        try:
            enum = torchvision.models.get_model_weights(arch)
            weights = enum.DEFAULT if tag == "DEFAULT" else enum[tag]
            transform = weights.transforms()
            mean, std = tuple(transform.mean), tuple(transform.std)
            model = builder(weights=weights)
        except (KeyError, ValueError) as error:
            raise HubSpecError(f"Expert {spec.name!r}: torchvision {arch} has no weights {tag!r} ({error}).") from error
        except Exception as error:  # the download: URLError, OSError, hash mismatch
            raise CheckpointError(
                f"Expert {spec.name!r}: torchvision could not load {arch} weights {tag} ({error}). Without internet, "
                "put the weight file in the torch hub cache (torch.hub.get_dir()/checkpoints) or give 'path'."
            ) from error
    size = int(spec.options.get("size", 224))
    return _finish(spec, _strip_last_linear(model), size, mean, std, observation_shape, tag)


def load_timm_expert(spec: ExpertSpec, observation_shape: tuple[int, ...] | None = None) -> HubExpert:
    """A timm model with ``num_classes=0`` (pooled features).

    :param spec: ``arch`` names the model (a pretrained tag may follow a dot); ``options.pretrained``
        downloads timm's weights through the Hugging Face cache; ``path`` loads a local state dict instead.
    :param observation_shape: frames the expert will see, ``(C, H, W)``; default ``(4, 84, 84)``.
    """
    _check_options(spec)
    timm = _import("timm", spec)
    arch = str(spec.arch)
    pretrained = bool(spec.options.get("pretrained", not spec.path))
    try:
        model = timm.create_model(arch, pretrained=pretrained and not spec.path)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise HubSpecError(f"Expert {spec.name!r}: timm has no model {arch!r}.") from error
        raise CheckpointError(f"Expert {spec.name!r}: timm could not build {arch} ({error}).") from error
    except Exception as error:  # download failures (offline Hugging Face cache miss)
        raise CheckpointError(
            f"Expert {spec.name!r}: timm could not fetch pretrained {arch} ({error}); "
            "give 'path' to a local state dict."
        ) from error
    weights = "pretrained" if pretrained else "random"
    if spec.path:
        try:
            model.load_state_dict(_read_state(spec))
        except RuntimeError as error:
            raise CheckpointError(f"Expert {spec.name!r}: {spec.path} does not fit timm {arch}: {error}") from error
        weights = f"file:{Path(spec.path).name}"
    model.reset_classifier(0)
    config = model.pretrained_cfg or {}
    size = int(spec.options.get("size", (config.get("input_size") or (3, 224, 224))[-1]))
    mean = tuple(config.get("mean", IMAGENET_MEAN))
    std = tuple(config.get("std", IMAGENET_STD))
    return _finish(spec, model, size, mean, std, observation_shape, weights)
