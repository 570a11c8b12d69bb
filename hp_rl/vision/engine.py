"""Training and evaluation loops shared by the CLI, the evaluator and the transfer benchmark.

They take any ``nn.Module`` that maps ``(B, C, H, W)`` images either to a :class:`ClassifierOutput`
(Hub-Pathway: its own losses are used) or to plain ``(B, num_classes)`` logits (baselines: cross-entropy).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hp_rl.core.errors import ConfigError
from hp_rl.routing import GateStatistics, GateSummary
from hp_rl.vision.classifier import ClassifierOutput, HubPathwayClassifier
from hp_rl.vision.config import TrainConfig

__all__ = [
    "AmpMode",
    "EpochMetrics",
    "EvalResult",
    "autocast",
    "evaluate_model",
    "make_scaler",
    "resolve_amp",
    "train_one_epoch",
    "build_optimizer",
    "build_scheduler",
]

AmpMode = Literal["auto", "off", "fp16", "bf16"]


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``: ``auto`` is float16 on CUDA and off on the CPU.

    :raises ValueError: an unknown mode, or float16 asked for on the CPU.
    """
    if amp not in ("auto", "off", "fp16", "bf16"):
        raise ConfigError(f"amp must be 'auto', 'off', 'fp16' or 'bf16', got {amp!r}.")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise ConfigError("amp='fp16' needs a CUDA device; on the CPU use amp='bf16' or 'off'.")
    return torch.float16


@contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device`` with ``dtype``, or nothing when ``dtype`` is ``None``."""
    context: Any = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    with context:
        yield


def make_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for float16 autocast (bfloat16 needs none)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


@dataclass(frozen=True)
class EpochMetrics:
    """Means over one training epoch.

    :param loss: total loss.
    :param task_loss: cross-entropy of the aggregated logits.
    :param explore_loss: exploration loss (0 for plain models).
    :param exploit_loss: exploitation loss (0 for plain models).
    :param accuracy: training accuracy (with routing noise and augmentation).
    :param images: images seen.
    :param seconds: wall time.
    """

    loss: float
    task_loss: float
    explore_loss: float
    exploit_loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        """Training throughput."""
        return self.images / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class EvalResult:
    """Evaluation of a model on a data set (deterministic routing).

    :param accuracy: top-1 accuracy.
    :param loss: mean cross-entropy.
    :param confusion: ``(C, C)`` counts, rows true class, columns predicted.
    :param images: images evaluated.
    :param seconds: wall time.
    :param gates: routing statistics (Hub-Pathway models only).
    """

    accuracy: float
    loss: float
    confusion: np.ndarray
    images: int
    seconds: float
    gates: GateSummary | None = None

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """``(C,)`` recall of each class (NaN for classes absent from the data)."""
        totals = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / totals


def _logits(output: Tensor | ClassifierOutput) -> Tensor:
    return output.logits if isinstance(output, ClassifierOutput) else output


def _losses(model: nn.Module, output: Any, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The total loss and its parts (task, exploration, exploitation; 0 for a plain network's output)."""
    if isinstance(output, ClassifierOutput):
        assert isinstance(model, HubPathwayClassifier)
        parts = model.losses(output, labels)
        return parts.total, parts.task, parts.explore, parts.exploit
    loss = F.cross_entropy(output.float(), labels)
    return loss, loss, loss.new_zeros(()), loss.new_zeros(())


def _step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> None:
    """One optimizer step on ``loss`` (through the gradient scaler where it is on), the norm clipped."""
    optimizer.zero_grad(set_to_none=True)
    scaled = scaler is not None and scaler.is_enabled()
    if scaled:
        assert scaler is not None
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaled:
        assert scaler is not None
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    gate_stats: GateStatistics | None = None,
    grad_clip: float | None = None,
    progress: bool = False,
    desc: str = "train",
) -> EpochMetrics:
    """One pass over ``batches`` of ``((B, C, H, W) images, (B,) labels)``.

    :param gate_stats: accumulates the routing of every training image (Hub-Pathway models).
    :param grad_clip: clip the gradient norm to this value.
    :param progress: show a progress bar.
    """
    from tqdm.auto import tqdm

    model.train()
    sums = {"loss": 0.0, "task": 0.0, "explore": 0.0, "exploit": 0.0, "correct": 0.0}
    seen = 0
    started = time.perf_counter()
    bar = tqdm(batches, desc=desc, leave=False, disable=not progress, dynamic_ncols=True)
    for images, labels in bar:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            output = model(images)
            loss, task, explore, exploit = _losses(model, output, labels)
        _step(model, optimizer, loss, scaler, grad_clip)
        if gate_stats is not None and isinstance(output, ClassifierOutput):
            gate_stats.update(output.routes)
        batch = int(labels.shape[0])
        seen += batch
        for key, value in (("loss", loss), ("task", task), ("explore", explore), ("exploit", exploit)):
            sums[key] += float(value.detach()) * batch
        sums["correct"] += float((_logits(output).argmax(1) == labels).sum())
        bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", acc=f"{sums['correct'] / seen:.3f}")
    bar.close()
    n = max(seen, 1)
    return EpochMetrics(
        sums["loss"] / n,
        sums["task"] / n,
        sums["explore"] / n,
        sums["exploit"] / n,
        sums["correct"] / n,
        seen,
        time.perf_counter() - started,
    )


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Accuracy, loss, confusion matrix and (Hub-Pathway) routing statistics, in eval mode (no noise)."""
    was_training = model.training
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    stats = GateStatistics(model.num_experts) if isinstance(model, HubPathwayClassifier) else None
    loss_sum = 0.0
    seen = 0
    started = time.perf_counter()
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            output = model(images)
        logits = _logits(output).float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        predicted = logits.argmax(1)
        np.add.at(confusion, (labels.cpu().numpy(), predicted.cpu().numpy()), 1)
        if stats is not None and isinstance(output, ClassifierOutput):
            stats.update(output.routes)
        seen += int(labels.shape[0])
    model.train(was_training)
    accuracy = float(np.trace(confusion)) / max(seen, 1)
    summary = stats.summary() if stats is not None and seen else None
    return EvalResult(accuracy, loss_sum / max(seen, 1), confusion, seen, time.perf_counter() - started, summary)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the model's parameter groups (fine-tuned trunks at their scaled rate)."""
    if isinstance(model, HubPathwayClassifier):
        groups: list[dict[str, Any]] = model.parameter_groups(config.lr, config.weight_decay)
    else:
        groups = [
            {
                "params": [p for p in model.parameters() if p.requires_grad],
                "lr": config.lr,
                "weight_decay": config.weight_decay,
            }
        ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule, in closed form of the epoch.

    Closed form (rather than PyTorch's recursive ``CosineAnnealingLR``) so that a resumed run whose
    ``--epochs`` grew follows the schedule of the new length from where it stopped.
    """
    epochs, step_size, gamma = config.epochs, config.step_size, config.gamma
    if config.schedule == "cosine":

        def factor(epoch: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))

    elif config.schedule == "step":

        def factor(epoch: int) -> float:
            return float(gamma ** (epoch // step_size))

    else:

        def factor(epoch: int) -> float:
            return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
