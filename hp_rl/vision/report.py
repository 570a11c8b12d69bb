"""TensorBoard and picture output of the vision companion: gate statistics and confusion matrices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hp_rl.routing import GateSummary

__all__ = ["confusion_figure", "gate_scalars", "log_confusion", "log_gates", "save_confusion_png"]


def gate_scalars(summary: GateSummary, names: Sequence[str], prefix: str = "gates") -> dict[str, float]:
    """The scalar gate statistics under the RL agent's tag names.

    ``<prefix>/usage/<expert>`` (share of images routed to it), ``<prefix>/weight/<expert>`` (mean
    pathway weight), ``<prefix>/confidence/<expert>`` (mean weight when routed), ``<prefix>/entropy``,
    ``<prefix>/balance_cv2`` and ``<prefix>/noise_std``.
    """
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        out[f"{prefix}/usage/{name}"] = float(summary.usage[i])
        out[f"{prefix}/weight/{name}"] = float(summary.mean_weight[i])
        confidence = float(summary.confidence[i])
        if not math.isnan(confidence):
            out[f"{prefix}/confidence/{name}"] = confidence
    out[f"{prefix}/entropy"] = summary.entropy
    out[f"{prefix}/balance_cv2"] = summary.balance_cv2
    out[f"{prefix}/noise_std"] = summary.noise_std
    return out


def log_gates(writer: Any, summary: GateSummary, names: Sequence[str], step: int, prefix: str = "gates") -> None:
    """Write gate scalars, per-expert weight histograms and the co-activation image to a SummaryWriter."""
    for tag, value in gate_scalars(summary, names, prefix).items():
        writer.add_scalar(tag, value, step)
    for i, name in enumerate(names):
        weights = summary.routed_weights[i]
        if weights.numel():
            writer.add_histogram(f"{prefix}/routed_weight/{name}", weights, step)
    from hp_rl.routing import coactivation_picture

    picture = coactivation_picture(summary.coactivation, names)  # labelled, black 0 to white 1 as in the RL runs
    writer.add_image(f"{prefix}/coactivation", picture, step, dataformats="HW")


def confusion_figure(confusion: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix") -> Any:
    """A matplotlib figure of a ``(C, C)`` confusion matrix, rows normalised (recall per true class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(totals > 0, confusion / np.maximum(totals, 1), 0.0)
    size = min(4.0 + 0.35 * len(classes), 14.0)
    figure, axes = plt.subplots(figsize=(size, size * 0.9))
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = np.arange(len(classes))
    labels = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    axes.set_xticks(ticks, labels, rotation=90 if len(classes) > 10 else 0)
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title} (accuracy {np.trace(confusion) / max(confusion.sum(), 1):.3f})")
    if len(classes) <= 20:
        for (row, column), count in np.ndenumerate(confusion):
            if count:
                colour = "white" if normalised[row, column] > 0.5 else "black"
                axes.text(column, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    figure.tight_layout()
    return figure


def save_confusion_png(
    confusion: np.ndarray, classes: Sequence[str], path: Path, title: str = "Confusion matrix"
) -> Path | None:
    """Write the confusion matrix picture; ``None`` (nothing written) when matplotlib is missing."""
    try:
        figure = confusion_figure(confusion, classes, title)
    except ImportError:
        return None
    import matplotlib.pyplot as plt

    from hp_rl.core.paths import written_by_rename

    with written_by_rename(Path(path)) as partial:  # a new file: a link at ``path`` is replaced, not written through
        figure.savefig(partial, dpi=110, format="png")
    plt.close(figure)
    return path


def log_confusion(
    writer: Any, confusion: np.ndarray, classes: Sequence[str], step: int, tag: str = "val/confusion_matrix"
) -> None:
    """Add the confusion matrix to TensorBoard as a figure, or as a plain heat map without matplotlib."""
    try:
        figure = confusion_figure(confusion, classes)
    except ImportError:
        totals = np.maximum(confusion.sum(axis=1, keepdims=True), 1)
        writer.add_image(tag, (confusion / totals).astype(np.float32), step, dataformats="HW")
        return
    writer.add_figure(tag, figure, step, close=True)
