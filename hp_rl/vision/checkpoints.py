"""A vision run's folder and checkpoints: what an epoch saves (model, optimizer, schedule, scaler, random and
data-order state, history), how a resume restores it, and the final model. Every file is written by rename and read
with ``weights_only`` (tensors and plain data, no objects)."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from hp_rl.core.paths import written_by_rename
from hp_rl.core.run_folder import RunFolder
from hp_rl.vision.config import ConfigError

__all__ = ["VisionRun", "read_checkpoint", "latest_readable_checkpoint", "restore_training", "save_epoch", "save_final"]

logger = logging.getLogger("hp_rl.vision.train")


@dataclass(frozen=True)
class VisionRun(RunFolder):
    """The folder of one vision run: ``checkpoints/epoch_NNNN.pt``, ``model.pt``, ``metrics.yml`` and the
    TensorBoard events in ``tb/``.

    :param path: the run directory.
    """

    module: ClassVar[str] = "hp_rl.vision.train"
    checkpoint_pattern: ClassVar[re.Pattern[str]] = re.compile(r"epoch_(\d+)\.pt")
    recorded_packages: ClassVar[tuple[str, ...]] = ("pillow", "scikit-learn", "mlxtend", "timm", "torchvision")

    @property
    def final_model(self) -> Path:
        return self.path / "model.pt"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A vision checkpoint or final model, read with ``weights_only`` (tensors and plain data, no objects).

    :raises ConfigError: the file is missing, damaged, or holds anything but a checkpoint's tensors.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ConfigError(f"{path}: not a readable vision checkpoint ({' '.join(str(error).split())[:200]}).") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError(
            f"{path}: not a vision checkpoint (no model weights); give a checkpoints/epoch_N.pt or model.pt."
        )
    return state


def latest_readable_checkpoint(run: VisionRun) -> tuple[Path, int]:
    """The newest epoch checkpoint that reads (a damaged one is reported and the one before is taken).

    :raises ConfigError: when none reads.
    """
    problems = []
    for path, epoch in run.checkpoints_by_progress():
        try:
            read_checkpoint(path)
            return path, epoch
        except ConfigError as error:
            problems.append(str(error))
            logger.warning(f"[vision] {error} Trying the checkpoint before it.")
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise ConfigError(
        f"{run.checkpoints} holds no checkpoint that can be resumed from{detail}; start a new run instead."
    )


def restore_training(
    run: VisionRun, device: torch.device, model: Any, optimizer: Any, scheduler: Any, scaler: Any, loader: Any
) -> tuple[int, list[dict[str, float]]]:
    """Load the newest readable epoch checkpoint into the training state; returns its epoch and the history."""
    state = read_checkpoint(latest_readable_checkpoint(run)[0], device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    assert loader.generator is not None
    loader.generator.set_state(state["loader_rng"])
    return int(state["epoch"]), list(state.get("history", []))


def save_epoch(
    run: VisionRun,
    epoch: int,
    training: tuple[Any, Any, Any, Any, Any],
    history: list[dict[str, float]],
    classes: Sequence[str],
) -> None:
    """Write ``checkpoints/epoch_NNNN.pt``: everything a resume needs to continue as if never stopped.

    :param training: model, optimizer, scheduler, gradient scaler and training loader.
    """
    model, optimizer, scheduler, scaler, loader = training
    # Written by rename: an interrupted save never leaves a truncated checkpoint for --resume.
    with written_by_rename(run.checkpoints / f"epoch_{epoch:04d}.pt") as partial:
        torch.save(
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "loader_rng": loader.generator.get_state() if loader.generator is not None else torch.get_rng_state(),
                "history": history,
                "classes": list(classes),
            },
            partial,
        )


def save_final(run: VisionRun, model: Any, classes: Sequence[str], shape: Sequence[int], epochs: int) -> None:
    """Write ``model.pt``: the trained weights, the classes and the image shape."""
    with written_by_rename(run.final_model) as partial:
        torch.save(
            {"model": model.state_dict(), "classes": list(classes), "image_shape": list(shape), "epoch": epochs},
            partial,
        )
