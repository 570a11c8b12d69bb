"""Statistics of transfer sweeps with rliable: IQM of the area under the learning curve, stratified-bootstrap 95%
intervals, probability of improvement over scratch, steps to reach scratch's final return, route shares.

Reads the run records that the transfer benchmark (:mod:`hp_rl.bench.transfer`) writes (one or more sweep
folders), and writes a markdown report, learning-curve pictures and a machine-readable summary::

    python benchmarks/transfer_report.py bench_out/needle bench_out/noharm \\
        --markdown bench_out/transfer_stats.md --json docs/results/transfer_summary.json --img-dir docs/img
    hp-rl bench transfer_report OUT ...     # the same, from an installed hp_rl

Per suite, target and method the summary holds: seeds, IQM AUC and its 95% interval, the IQM AUC gain over
scratch relative to |scratch IQM AUC| (with its interval, from the bootstrap of the difference), the probability
that a run of the method has a higher AUC than a run of scratch (with interval), mean final return, the steps
at which the mean learning curve first reaches scratch's mean final return (and that as a fraction of scratch's
run length; ``null`` when never), the mean over seeds of the last noise-free deterministic evaluation's return
(runs that recorded evaluations), and, for hub methods, the share of acting observations routed through each
expert and each expert's mean pathway weight at the middle of training (mean over seeds; the weights only for
runs that recorded them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hp_rl.bench.aggregates import gain_interval, iqm, iqm_interval, probability_of_improvement
from hp_rl.bench.curves import CurveLine, final_return, learning_curve, save_curves, steps_to
from hp_rl.bench.report import load_runs
from hp_rl.bench.suites import METHODS

__all__ = ["summarise_runs", "markdown", "main"]


def _mid_route_share(records: list[dict[str, Any]], field: str = "route_share") -> dict[str, float] | None:
    """Mean over seeds of the per-rollout ``field`` (``route_share`` or ``route_weight``) nearest mid-training."""
    shares = []
    for record in records:
        rows = record.get(field) or []
        if not rows:
            continue
        middle = record["steps"] / 2
        shares.append(min(rows, key=lambda row: abs(row[0] - middle))[1])
    if not shares:
        return None
    return {name: round(float(np.mean([s[name] for s in shares])), 4) for name in shares[0]}


def _noise_free_final(records: list[dict[str, Any]]) -> float | None:
    """Mean over seeds of the last noise-free evaluation's return (``None`` where the runs recorded none)."""
    finals = [r["noise_free_evaluations"][-1][1] for r in records if r.get("noise_free_evaluations")]
    return float(np.mean(finals)) if len(finals) == len(records) else None


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite, target and method: the rliable statistics (see the module docstring)."""
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        groups.setdefault((run["suite"], run["target"]), {}).setdefault(run["method"], []).append(run)
    summary: dict[str, Any] = {}
    for (suite, target), methods in sorted(groups.items()):
        rows: dict[str, Any] = {}
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        aucs: dict[str, np.ndarray] = {}
        for method, records in sorted(methods.items()):
            records = sorted(records, key=lambda r: r["seed"])
            grid = learning_curve(records[0]["episodes"], records[0]["steps"])[0]
            per_seed = np.array([learning_curve(r["episodes"], r["steps"])[1] for r in records], dtype=float)
            aucs[method] = np.nanmean(per_seed, axis=1)
            curves[method] = (grid, np.nanmean(per_seed, axis=0))
            low, high = iqm_interval(aucs[method][:, None])
            rows[method] = {
                "seeds": [r["seed"] for r in records],
                "steps": int(records[0]["steps"]),
                "iqm_auc": iqm(aucs[method][:, None]),
                "iqm_auc_ci": [low, high],
                "final_mean": float(np.mean([final_return(r["episodes"], r["steps"]) for r in records])),
                "cpu_ms_per_step": float(np.mean([r["cpu_ms_per_step"] for r in records])),
                "route_share_mid": _mid_route_share(records),
                "route_weight_mid": _mid_route_share(records, "route_weight"),
                "noise_free_final": _noise_free_final(records),
            }
        if "scratch" in rows:
            threshold = rows["scratch"]["final_mean"]
            scratch_steps = rows["scratch"]["steps"]  # scratch reaches its final return by the end of its run
            for method, row in rows.items():
                reached = steps_to(*curves[method], threshold)
                row["steps_to_scratch_final"] = reached
                row["steps_to_scratch_final_ratio"] = None if reached is None else reached / scratch_steps
                if method == "scratch":
                    continue
                gain, g_low, g_high = gain_interval(aucs[method][:, None], aucs["scratch"][:, None])
                row["iqm_auc_gain"], row["iqm_auc_gain_ci"] = gain, [g_low, g_high]
                if len(aucs[method]) > 1 and len(aucs["scratch"]) > 1:
                    p, p_low, p_high = probability_of_improvement(aucs[method], aucs["scratch"])
                    row["probability_of_improvement"], row["probability_of_improvement_ci"] = p, [p_low, p_high]
        mean_curves = {m: [c[0].tolist(), c[1].tolist()] for m, c in curves.items()}
        summary.setdefault(suite, {})[target] = {"methods": rows, "curves": mean_curves}
    return summary


def _label(method: str) -> str:
    if ":" in method:
        kind, expert = method.split(":", 1)
        return f"{METHODS[kind].label if kind in METHODS else kind}: {expert}"
    return METHODS[method].label if method in METHODS else method


def _ci(value: float, interval: Sequence[float], digits: int = 2) -> str:
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _per_expert(rows: dict[str, Any], field: str, title: str) -> list[str]:
    """A titled list, one line per method that has ``field`` (expert -> value), or nothing."""
    values = {m: r[field] for m, r in rows.items() if r.get(field)}
    if not values:
        return []
    lines = ["", f"{title} (mean over seeds):", ""]
    for method, per_expert in values.items():
        cells = ", ".join(f"{name} {value:.2f}" for name, value in per_expert.items())
        lines.append(f"- {_label(method)}: {cells}")
    return lines


def markdown(summary: dict[str, Any]) -> str:
    """One table per suite and target."""
    lines: list[str] = []
    for suite, targets in summary.items():
        for target, entry in targets.items():
            rows = entry["methods"]
            steps = max(row["steps"] for row in rows.values())
            lines += [
                f"#### {suite} / {target} ({steps:,} env steps per run)",
                "",
                "| method | seeds | IQM AUC [95% CI] | IQM AUC gain over scratch [95% CI] | "
                "P(better than scratch) | mean final return | noise-free final | steps to scratch's final "
                "(share of scratch's) | CPU ms / step |",
                "|---|---:|---|---|---|---:|---:|---|---:|",
            ]
            for method, row in sorted(rows.items(), key=lambda item: (item[0] != "scratch", item[0])):
                gain = _ci(row["iqm_auc_gain"], row["iqm_auc_gain_ci"]) if "iqm_auc_gain" in row else "–"
                prob = (
                    _ci(row["probability_of_improvement"], row["probability_of_improvement_ci"])
                    if "probability_of_improvement" in row
                    else "–"
                )
                reached = row.get("steps_to_scratch_final")
                ratio = row.get("steps_to_scratch_final_ratio")
                to = "never" if reached is None else f"{reached:,.0f} ({ratio:.2f})"
                iqm_text = _ci(row["iqm_auc"], row["iqm_auc_ci"])
                greedy = "–" if row.get("noise_free_final") is None else f"{row['noise_free_final']:.2f}"
                lines.append(
                    f"| {_label(method)} | {len(row['seeds'])} | {iqm_text} | {gain} | {prob} | "
                    f"{row['final_mean']:.2f} | {greedy} | {to} | {row['cpu_ms_per_step']:.3f} |"
                )
            lines += _per_expert(
                rows, "route_share_mid", "Share of acting observations routed through each expert at mid-training"
            )
            # with more than one expert per observation, the weights (not the routes) say which expert plays
            lines += _per_expert(rows, "route_weight_mid", "Mean pathway weight of each expert at mid-training")
            lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], img_dir: Path, prefix: str) -> list[Path]:
    """One PNG per suite and target with every method's mean learning curve."""
    written = []
    for suite, targets in summary.items():
        for target, entry in targets.items():
            lines = [
                CurveLine(
                    f"{_label(method)} (n={len(entry['methods'][method]['seeds'])})",
                    np.asarray(grid),
                    np.asarray(curve),
                    style="-" if ":" not in method else "--",
                )
                for method, (grid, curve) in sorted(entry["curves"].items())
            ]
            written.append(save_curves(img_dir / f"{prefix}_{suite}_{target}.png", f"{suite}: {target}", lines))
    return written


def build_parser() -> argparse.ArgumentParser:
    """The command line of the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outs", nargs="+", type=Path, help="sweep output folders (hp-rl bench transfer --out)")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --json: keep the suites and targets the file holds that these sweeps do not (sweeps that "
        "spanned sessions), replacing only those computed now",
    )
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--img-dir", type=Path, help="write learning-curve PNGs here")
    parser.add_argument("--prefix", default="stats", help="PNG name prefix")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Summarise the sweeps named on the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    runs = [run for out in args.outs for run in load_runs(out)]
    if not runs:
        print(f"No finished runs under {', '.join(map(str, args.outs))}.", file=sys.stderr)
        return 2
    summary = summarise_runs(runs)
    text = markdown(summary)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    if args.json:
        written = summary
        if args.update and args.json.is_file():
            written = json.loads(args.json.read_text())
            for suite, targets in summary.items():
                written.setdefault(suite, {}).update(targets)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(written, indent=1))
    if args.img_dir:
        plot(summary, args.img_dir, args.prefix)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
