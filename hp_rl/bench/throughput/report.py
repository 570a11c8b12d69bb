"""The throughput report: the speed targets judged, markdown tables, the extractor-time picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hp_rl.bench.throughput.results import ExtractorResult, TrainResult


def _find(results: Sequence[ExtractorResult], mode: str, routing: str, m: int, k: int) -> ExtractorResult | None:
    for result in results:
        if (result.mode, result.routing, result.experts, result.k) == (mode, routing, m, k):
            return result
    return None


# The speed targets: (game, case) -> least steps/s as a ratio to plain PPO in the same run.
TRAINING_TARGETS = {
    ("minatar", "hub m=4 k=2 frozen"): 0.7,
    ("minatar", "hub m=4 k=2 fine-tuned"): 0.6,
    ("breakout", "hub m=4 k=2 frozen"): 0.9,
    ("breakout", "hub m=4 k=2 fine-tuned"): 0.6,
}
SPARSE_OVER_DENSE_MAX = 0.6  # Hub-Pathway at k=2 of 4: at most this share of the dense mixture's CPU per step
SIXTEEN_OVER_TWO_MAX = 1.15  # extractor, batch 256, k=2: 16 experts within this factor of 2


def check_targets(train: Sequence[TrainResult], extractor: Sequence[ExtractorResult]) -> list[dict[str, Any]]:
    """The speed targets, measured on process CPU time (and wall time for the training ratios)."""
    targets = []
    by_case = {(r.game, r.case): r for r in train}
    for (game, case), least in TRAINING_TARGETS.items():
        result = by_case.get((game, case))
        if result is None:
            continue
        name = "Breakout" if game == "breakout" else "MinAtar"
        for clock, ratio in (("cpu", result.cpu_ratio_to_plain), ("wall", result.ratio_to_plain)):
            targets.append(
                {
                    "target": f"{name}: {case} >= {least}x plain PPO steps/s ({clock} time)",
                    "value": ratio,
                    "passed": (ratio or 0.0) >= least,
                }
            )
    for game in sorted({r.game for r in train}):
        sparse, dense = by_case.get((game, "hub m=4 k=2 frozen")), by_case.get((game, "dense mixture m=4 frozen"))
        if sparse and dense and sparse.steps_per_cpu_s:
            # CPU time per step is the inverse of steps per CPU-second.
            share = round(dense.steps_per_cpu_s / sparse.steps_per_cpu_s, 3)
            targets.append(
                {
                    "target": f"{game}: Hub-Pathway k=2 of 4 <= {SPARSE_OVER_DENSE_MAX}x the dense mixture's "
                    "CPU time per training step",
                    "value": share,
                    "passed": share <= SPARSE_OVER_DENSE_MAX,
                }
            )
    for mode in ("frozen", "finetuned"):
        two, sixteen = _find(extractor, mode, "sparse", 2, 2), _find(extractor, mode, "sparse", 16, 2)
        if two and sixteen:
            ratio = round(sixteen.forward_backward_cpu_ms / two.forward_backward_cpu_ms, 3)
            targets.append(
                {
                    "target": f"Extractor, {mode} trunks, batch 256: fwd+bwd m=16 k=2 <= "
                    f"{SIXTEEN_OVER_TWO_MAX}x m=2 k=2 (cpu time)",
                    "value": ratio,
                    "passed": ratio <= SIXTEEN_OVER_TWO_MAX,
                }
            )
    return targets


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    machine = report["machine"]
    lines = [
        "# Throughput: Hub-Pathway against plain SB3",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, torch {machine['torch']}, "
        f"SB3 {machine['stable_baselines3']}, {machine['torch_threads']} torch thread(s), device {machine['device']}, "
        f"load average at start {machine['load_average_at_start']}. Wall time counts every process on the machine; "
        "CPU time counts only this one's (all its threads), so on a shared machine the CPU-time ratios are the "
        "steadier figures.",
        "",
    ]
    sections = (
        (report["training"], _training_table),
        (report["extractor"], _extractor_table),
        (report.get("acting"), _acting_table),
        (report["targets"], _targets_table),
    )
    for rows, table in sections:
        if rows:
            lines += table(report)
    return "\n".join(lines)


def _training_table(report: dict[str, Any]) -> list[str]:
    settings = report["settings"]
    lines = [
        "## Training throughput (env steps/s of `model.learn`, PPO)",
        "",
        f"{settings['steps']} measured steps per configuration after a warm-up; {settings['repeats']} "
        "interleaved round(s), median round reported (upper median: with 2 rounds, the faster). "
        "Hubs are random NatureCNN experts (frozen speed equals "
        "pretrained speed); MinAtar hubs: random SmallFrameCNN experts (the plain network) unless noted. "
        "Rollout share: fraction of the wall time spent collecting rollouts (the rest is the update).",
        "",
        "| game | configuration | steps/s (wall) | ratio to plain | steps/CPU-s | ratio to plain (CPU) "
        "| rollout share |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["training"]:
        lines.append(
            f"| {r['game']} | {r['case']} | {r['steps_per_s']:.1f} | {r['ratio_to_plain']:.2f} | "
            f"{r['steps_per_cpu_s']:.1f} | {r['cpu_ratio_to_plain']:.2f} | {r['rollout_share']:.2f} |"
        )
    lines.append("")
    return lines


def _extractor_timing(report: dict[str, Any]) -> str:
    """How the extractor's times were taken (reports written before each configuration had its own process: all in
    one)."""
    if report.get("extractor_timing") == "fresh process":
        reps = report["settings"].get("reps")
        return f"Each configuration in a fresh process, median of {reps} repetitions after a warm-up"
    return "Median of repetitions"


def _extractor_table(report: dict[str, Any]) -> list[str]:
    lines = [
        f"## Extractor alone (batch {report['settings']['batch']} of 4x84x84 frames)",
        "",
        f"{_extractor_timing(report)}; wall ms with CPU ms in brackets. `sparse`: only routed experts run; "
        "`dense-dispatch`: the same top-k weights with every expert run on every sample; `dense-mixture`: "
        "all experts, softmax weights. Ratio: fwd+bwd CPU time against m=2 with the same trunks, routing and k "
        f"(k=2 for the dense mixture). Peak memory: {report.get('memory_method') or 'not measured'}.",
        "",
        "| trunks | routing | m | k | forward ms | fwd+bwd ms | fwd+bwd / m=2 | peak fwd MiB | "
        "peak fwd+bwd MiB | parameters |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["extractor"]:
        base_k = 2 if r["routing"] == "dense-mixture" else r["k"]
        base = next(
            (
                b
                for b in report["extractor"]
                if (b["mode"], b["routing"], b["experts"], b["k"]) == (r["mode"], r["routing"], 2, base_k)
            ),
            None,
        )
        ratio = r["forward_backward_cpu_ms"] / base["forward_backward_cpu_ms"] if base and r["experts"] else None
        lines.append(
            f"| {r['mode']} | {r['routing']} | {r['experts'] or '-'} | {r['k'] or '-'} | "
            f"{r['forward_ms']:.1f} ({r['forward_cpu_ms']:.1f}) | "
            f"{r['forward_backward_ms']:.1f} ({r['forward_backward_cpu_ms']:.1f}) | {_fmt(ratio, 2)} | "
            f"{_fmt(r['forward_peak_mib'])} | {_fmt(r['forward_backward_peak_mib'])} | {r['parameters']:,} |"
        )
    lines.append("")
    return lines


def _acting_table(report: dict[str, Any]) -> list[str]:
    lines = [
        f"## Acting forward, taken apart (batch {report['acting'][0]['batch']}: one observation per env)",
        "",
        "CPU microseconds per call without gradient (median of repetitions of many calls; wall in brackets). "
        "Ratio: against the plain extractor of the same game. Experts run: mean number of distinct experts "
        "one forward calls.",
        "",
        "| game | what | µs per call | ratio to plain | experts run |",
        "|---|---|---:|---:|---:|",
    ]
    plain_us = {r["game"]: r["cpu_us"] for r in report["acting"] if r["part"].startswith("plain")}
    for r in report["acting"]:
        lines.append(
            f"| {r['game']} | {r['part']} | {r['cpu_us']:.0f} ({r['wall_us']:.0f}) | "
            f"{r['cpu_us'] / plain_us[r['game']]:.2f} | {_fmt(r['experts_run'], 2)} |"
        )
    lines.append("")
    return lines


def _targets_table(report: dict[str, Any]) -> list[str]:
    lines = ["## Targets", "", "| target | measured | result |", "|---|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.2f} | {'pass' if t['passed'] else 'MISSED'} |")
    lines.append("")
    return lines


def plot(extractor: Sequence[ExtractorResult], path: Path) -> bool:
    """Time (and peak memory) against m, one panel per trunk mode; ``False`` if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r.mode for r in extractor if r.experts}, key=["frozen", "finetuned"].index)
    if not modes:
        return False
    has_memory = any(r.forward_backward_peak_mib is not None for r in extractor)
    rows = [("forward_cpu_ms", "forward, CPU ms"), ("forward_backward_cpu_ms", "forward+backward, CPU ms")]
    if has_memory:
        rows.append(("forward_backward_peak_mib", "peak fwd+bwd memory (MiB)"))
    figure, axes = plt.subplots(len(rows), len(modes), figsize=(5.5 * len(modes), 3.6 * len(rows)), squeeze=False)
    reference = next((r for r in extractor if not r.experts), None)
    for column, mode in enumerate(modes):
        series: dict[str, list[ExtractorResult]] = {}
        for r in extractor:
            if r.mode != mode or not r.experts:
                continue
            label = (
                f"sparse k={r.k}"
                if r.routing == "sparse"
                else ("dense-dispatch k=2" if r.routing == "dense-dispatch" else "dense mixture")
            )
            series.setdefault(label, []).append(r)
        for row, (key, title) in enumerate(rows):
            axis = axes[row][column]
            for label, points in series.items():
                points = sorted(points, key=lambda r: r.experts)
                values = [getattr(p, key) for p in points]
                if any(v is None for v in values):
                    continue
                style = "-o" if label.startswith("sparse") else "--s"
                axis.plot([p.experts for p in points], values, style, label=label)
            if reference is not None and getattr(reference, key) is not None:
                axis.axhline(getattr(reference, key), color="grey", linestyle=":", label="NatureCNN (plain)")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("experts in the hub (m)")
            axis.set_ylabel(title)
            axis.set_title(f"{mode} trunks: {title}")
            axis.grid(alpha=0.3)
            if row == 0:
                axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
