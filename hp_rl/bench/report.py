"""The transfer benchmark's report: summaries over seeds, markdown tables, target checks, learning-curve pictures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hp_rl.bench.curves import CurveLine, final_return, learning_curve, mean_ci, save_curves, welch_ci
from hp_rl.bench.suites import METHODS


def load_runs(out: Path) -> list[dict[str, Any]]:
    """Every finished run record under ``out/runs``."""
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*/*/seed*.json"))]


def _per_seed(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in records}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite and target: each method's final return, AUC and compute, mean and 95% interval over seeds.

    ``single`` rows: ``single (best: <expert>)`` chosen in hindsight by mean AUC, and ``single (mean)``, the
    per-seed mean over experts (seeds where every expert finished).
    """
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        groups.setdefault((run["suite"], run["target"]), {}).setdefault(run["method"], []).append(run)
    summary: dict[str, Any] = {}
    for (suite, target), methods in sorted(groups.items()):
        rows: dict[str, dict[str, Any]] = {}
        for method, records in methods.items():
            steps = max(r["steps"] for r in records)
            finals = {r["seed"]: final_return(r["episodes"], r["steps"]) for r in records}
            aucs = {r["seed"]: float(np.nanmean(learning_curve(r["episodes"], r["steps"])[1])) for r in records}
            curves = [learning_curve(r["episodes"], r["steps"]) for r in records]
            rows[method] = {
                "final": finals,
                "auc": aucs,
                "steps": steps,
                "grid": curves[0][0].tolist(),
                "curves": {r["seed"]: c[1].tolist() for r, c in zip(records, curves, strict=True)},
                "cpu_ms_per_step": float(np.mean([r["cpu_ms_per_step"] for r in records])),
                "flops": float(np.mean([r["forward_flops_per_obs"] for r in records])),
                "trainable_parameters": records[0]["trainable_parameters"],
                "episodes": float(np.mean([len(r["episodes"]) for r in records])),
            }
        singles = {m: row for m, row in rows.items() if m.split(":")[0] in _SINGLE_METHODS and ":" in m}
        if singles:
            best = max(singles, key=lambda m: mean_ci(singles[m]["auc"].values())[0])
            # With one expert run (--single-experts) there is no choice to make in hindsight, nor a mean.
            rows["single_best"] = {
                **singles[best],
                "expert": best.split(":", 1)[1],
                "kind": best.split(":")[0],
                "only": len(singles) == 1,
            }
            seeds = set.intersection(*(set(row["final"]) for row in singles.values()))
            if seeds and len(singles) > 1:
                mean_row = dict(next(iter(singles.values())))
                for metric in ("final", "auc"):
                    mean_row[metric] = {s: float(np.mean([row[metric][s] for row in singles.values()])) for s in seeds}
                mean_row["curves"] = {
                    s: np.mean([row["curves"][s] for row in singles.values()], axis=0).tolist() for s in seeds
                }
                mean_row["cpu_ms_per_step"] = float(np.mean([row["cpu_ms_per_step"] for row in singles.values()]))
                rows["single_mean"] = mean_row
        summary.setdefault(suite, {})[target] = rows
    return summary


_SINGLE_METHODS = ("single", "single_agent")  # the candidates of the best / mean single expert
_SINGLE_ROWS = (*_SINGLE_METHODS, "single_agent_warmup")  # single-expert rows of the tables
_ROW_ORDER = (
    "scratch",
    "cli_default",
    "cli_default_transfer",
    "cli_default_paper",
    "user_zips",
    "cli_paper",
    "single_best",
    "single_mean",
    "dense",
    "hub_pathway",
    "no_noise",
    "no_explore",
    "no_exploit",
    "transfer",
    "transfer_prior",
    "transfer_random",
    "transfer_no_kickstart",
    "transfer_no_base",
    "transfer_features",
    "transfer_noise",
    "transfer_critic_warmup",
    "transfer_base_prior",
    "transfer_strong_prior",
    "transfer_weak_prior",
    "transfer_k2",
    "transfer_k1",
    "transfer_uniform_trust",
)


def _label(method: str, row: dict[str, Any]) -> str:
    if method == "single_best":
        if row.get("only"):
            return f"single expert ({row['expert']}, the only one run)"
        return f"single expert, best in hindsight ({row['expert']})"
    if method == "single_mean":
        return "single expert, mean over experts"
    if method.split(":")[0] in _SINGLE_ROWS and ":" in method:
        kind, expert = method.split(":", 1)
        return f"{METHODS[kind].label}: {expert}"
    return METHODS[method].label if method in METHODS else method


def _fmt(mean: float, half: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _flops(value: float) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value / 1e3:.1f} k"


def _ordered(rows: dict[str, Any], with_experts: bool) -> list[str]:
    order = [m for m in _ROW_ORDER if m in rows]
    if with_experts and not rows.get("single_best", {}).get("only"):
        order += sorted(m for m in rows if m.split(":")[0] in _SINGLE_ROWS and ":" in m)
    return order


def markdown_tables(summary: dict[str, Any], with_experts: bool = True) -> str:
    """The result tables and the target checks, as markdown."""
    lines: list[str] = []
    for suite, targets in summary.items():
        for target, rows in targets.items():
            steps = max(row["steps"] for row in rows.values())
            episodes = np.mean([row["episodes"] for row in rows.values()])
            lines += [
                f"#### {suite} / {target} ({steps:,} env steps per run, {episodes:,.0f} episodes per run)",
                "",
                "| method | final return | AUC | seeds | forward FLOPs / obs | CPU ms / env step |",
                "|---|---|---|---|---|---|",
            ]
            for method in _ordered(rows, with_experts):
                row = rows[method]
                final, final_half, n = mean_ci(row["final"].values())
                auc, auc_half, _ = mean_ci(row["auc"].values())
                lines.append(
                    f"| {_label(method, row)} | {_fmt(final, final_half)} | {_fmt(auc, auc_half)} | {n} | "
                    f"{_flops(row['flops'])} | {row['cpu_ms_per_step']:.3f} |"
                )
            lines.append("")
    lines += target_checks(summary)
    lines += overview_table(summary)
    return "\n".join(lines)


def overview_table(summary: dict[str, Any]) -> list[str]:
    """Every method on every target at once: mean AUC relative to scratch, ``(AUC - scratch) / |scratch|``.

    The last columns average it over the targets where the method ran (mean, and the median, which one target
    with a tiny scratch AUC cannot dominate) and count the targets where its mean AUC beats scratch's.
    """
    columns = [
        (suite, target) for suite, targets in summary.items() for target, rows in targets.items() if "scratch" in rows
    ]
    if not columns:
        return []
    lines = [
        "#### All targets at once",
        "",
        "Mean AUC relative to scratch on the same target, (AUC − scratch AUC) / |scratch AUC| "
        "(0 = scratch, +0.10 = 10% more area under the learning curve).",
        "",
        "| method | " + " | ".join(f"{s} / {t}" for s, t in columns) + " | average | median | targets above scratch |",
        "|---|" + "---:|" * (len(columns) + 3),
    ]
    for method in _ROW_ORDER[1:]:
        cells: list[str] = []
        values: list[float] = []
        for suite, target in columns:
            rows = summary[suite][target]
            if method not in rows:
                cells.append("–")
                continue
            scratch = mean_ci(rows["scratch"]["auc"].values())[0]
            value = (mean_ci(rows[method]["auc"].values())[0] - scratch) / (abs(scratch) or 1.0)
            values.append(value)
            cells.append(f"{value:+.2f}")
        if not values:
            continue
        if method == "single_best":
            only = any(summary[s][t]["single_best"].get("only") for s, t in columns if "single_best" in summary[s][t])
            label = "single expert, best of those run" if only else "single expert, best in hindsight"
        else:
            label = _label(method, {})
        above = sum(v > 0 for v in values)
        stats = f"{np.mean(values):+.3f} | {np.median(values):+.3f} | {above} of {len(values)}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {stats} |")
    return [*lines, ""]


def target_checks(summary: dict[str, Any]) -> list[str]:
    """The issue's targets, per target: Hub-Pathway against scratch, the best single expert and dense."""
    lines = [
        "#### Targets",
        "",
        "Differences are Hub-Pathway minus the other method (mean, 95% Welch interval over seeds). "
        "*Normalised* = difference / |scratch mean|.",
        "",
        "| suite / target | HP − scratch, final | HP − scratch, AUC | no negative transfer (AUC) | "
        "HP − best single, AUC | HP − mean single, AUC | FLOPs HP / dense |",
        "|---|---|---|---|---|---|---|",
    ]
    normalised: dict[str, list[float]] = {"scratch": [], "single_best": [], "single_mean": []}
    for suite, targets in summary.items():
        for target, rows in targets.items():
            hp = rows.get("hub_pathway")
            if hp is None or "scratch" not in rows:
                continue
            cells = []
            for other, metric in (
                ("scratch", "final"),
                ("scratch", "auc"),
                ("single_best", "auc"),
                ("single_mean", "auc"),
            ):
                if other not in rows:
                    cells.append("–")
                    continue
                diff, half = welch_ci(list(hp[metric].values()), list(rows[other][metric].values()))
                cells.append(_fmt(diff, half))
                if metric == "auc":
                    scale = abs(mean_ci(rows["scratch"]["auc"].values())[0]) or 1.0
                    normalised[other].append(diff / scale)
            diff, half = welch_ci(list(hp["auc"].values()), list(rows["scratch"]["auc"].values()))
            ok = "yes" if math.isnan(half) or diff + half >= 0 else "**no**"
            ratio = f"{hp['flops'] / rows['dense']['flops']:.2f}" if "dense" in rows else "–"
            lines.append(f"| {suite} / {target} | {cells[0]} | {cells[1]} | {ok} | {cells[2]} | {cells[3]} | {ratio} |")
    lines += [
        "",
        "Average over targets of the normalised AUC difference (HP − other) / |scratch AUC|: "
        + ", ".join(
            f"vs {name.replace('_', ' ')} {np.mean(values):+.3f}" for name, values in normalised.items() if values
        ),
    ]
    return [*lines, ""]


_STYLES = {
    "scratch": ("black", "-"),
    "single_best": ("tab:green", "-"),
    "single_mean": ("tab:olive", ":"),
    "dense": ("tab:purple", "-"),
    "hub_pathway": ("tab:red", "-"),
    "no_noise": ("tab:orange", "--"),
    "no_explore": ("tab:blue", "--"),
    "no_exploit": ("tab:cyan", "--"),
}


def plot_curves(summary: dict[str, Any], img_dir: Path, prefix: str = "transfer") -> list[Path]:
    """One PNG per target, ``<prefix>_<suite>_<target>.png``: mean learning curve of each method over seeds,
    shaded 95% interval."""
    from scipy import stats

    written = []
    for suite, targets in summary.items():
        for target, rows in targets.items():
            lines = []
            for method in _ordered(rows, with_experts=False):
                row = rows[method]
                curves = np.array(list(row["curves"].values()), dtype=float)
                mean = np.nanmean(curves, axis=0)
                half = None
                if len(curves) > 1:
                    spread = np.nanstd(curves, axis=0, ddof=1) / np.sqrt(len(curves))
                    half = stats.t.ppf(0.975, len(curves) - 1) * spread
                color, style = _STYLES.get(method, ("grey", "-"))
                label = f"{_label(method, row)} (n={len(curves)})"
                lines.append(CurveLine(label, np.array(row["grid"]), mean, half, color, style))
            path = img_dir / f"{prefix}_{suite}_{target}.png"
            written.append(save_curves(path, f"{suite}: {target} (leave-one-out hub)", lines))
    return written


def write_report(out: Path, img_dir: Path | None = None) -> Path:
    """Tables (``transfer.md``), the summary (``transfer_summary.json``) and the PNGs from every finished run.

    The PNGs are named after the output folder (``bench_out/transfer_long`` -> ``transfer_long_<suite>_<target>.png``),
    so sweeps written to different folders can share one picture folder.
    """
    runs = load_runs(out)
    summary = summarise(runs)
    images = plot_curves(summary, img_dir or out, prefix=out.resolve().name)
    text = ["# Transfer results", "", f"{len(runs)} runs from {out}.", "", markdown_tables(summary)]
    text += [f"![{p.stem}]({p.name})" for p in images]
    report = out / "transfer.md"
    report.write_text("\n".join(text) + "\n")
    (out / "transfer_summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(markdown_tables(summary))
    return report
