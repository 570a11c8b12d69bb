"""Throughput of the Hub-Pathway agent against plain Stable-Baselines3, in one process run.

Three measurements, one command::

    python benchmarks/throughput.py --threads 1 --steps 4096 --out bench_out

(a) **Training throughput.** Environment steps per second of ``model.learn`` (rollouts and updates) on a
    fixed number of steps after a warm-up of one rollout and update, for plain SB3 PPO and for PPO with
    :class:`~hp_rl.rl.extractor.HubPathwayExtractor` in several configurations, each reported as a ratio
    to plain PPO measured in the same run. Plain PPO and the HubPPO row are built as ``python -m
    hp_rl.train`` builds them (a :class:`~hp_rl.rl.runs.RunConfig` through
    :func:`hp_rl.rl.training.build_model`); the other hub rows are SB3's PPO with the extractor, as a
    user's own SB3 script builds it:

    - Breakout (``BreakoutNoFrameskip-v4``, rl-baselines3-zoo preprocessing and PPO settings from
      ``configs/ppo.yml``: 8 envs, n_steps 128, batch 256, 4 epochs). Plain PPO is ``CnnPolicy``
      (NatureCNN); hubs are ``random:N`` hubs of randomly initialised NatureCNN experts at 84x84. A frozen
      random trunk costs exactly what a frozen pretrained trunk of the same architecture costs.
    - MinAtar (``MinAtar/Breakout-v1`` through :func:`hp_rl.rl.envs.make_env`, PPO settings from the
      ``minatar`` section). Plain PPO is ``CnnPolicy`` with :class:`~hp_rl.rl.baselines.SmallFrameCNN` (the
      MinAtar paper's network), and the hub experts are random ``small_frame_cnn`` trunks, the same network
      (the MinAtar transfer hub's architecture). Two extra rows plug Atari-sized experts into MinAtar:
      random NatureCNN trunks taking 36x36 frames (the smallest valid NatureCNN input) and 84x84 frames,
      reached through the hub's nearest-neighbour ``Resize`` input adapter.

    Two more rows per game show what the extras cost: the same hub with
    :class:`~hp_rl.rl.callbacks.GateUsageCallback` attached, and :class:`~hp_rl.rl.algorithms.HubPPO`
    (exploitation loss). Every rate is given per second of wall time and per second of this process's
    CPU time: on a shared machine other processes slow the wall clock unevenly, CPU time far less.
    ``--repeats R`` measures every configuration R times in interleaved rounds and reports the median round
    (the upper median for even R: with 2 rounds, the faster one; a measured round, never an average).
    Rollout share is the fraction of the wall time spent collecting rollouts (environment stepping and
    acting forwards); the rest is the PPO update.

(b) **Extractor alone.** Forward time (eval mode, no gradient: the acting path) and forward+backward
    time (train mode, backward of the features' sum, exploration loss included) of
    ``HubPathwayExtractor`` on a batch of ``--batch`` 4x84x84 frames, against m (experts) and k (active),
    with frozen and with fine-tuned trunks. Routing is ``sparse`` (top-k, only routed experts run),
    ``dense-dispatch`` (the same top-k weights, but every expert runs on every sample:
    ``pathway.sparse = False``) or ``dense-mixture`` (``dense=True``: all m experts with softmax weights,
    the dense baseline). Times are the median of ``--reps`` repetitions after one warm-up.

    Peak memory: each configuration runs again in a fresh subprocess. On CPU the subprocess sets
    ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then returns every freed block larger than 64 KiB to the
    system at once, so the resident set tracks live tensors), runs one warm-up step, resets the
    kernel's peak-RSS mark (``/proc/self/clear_refs``), runs the step and reports ``VmHWM - VmRSS``
    before the step: memory added by activations, autograd buffers and temporaries (parameters and
    gradients already allocated are not counted). Where the reset is not allowed it falls back to
    ``getrusage`` max-RSS deltas. On CUDA it reports ``torch.cuda.max_memory_allocated`` above the
    memory allocated before the step.

(c) **Acting forward, taken apart.** Where the time of one acting forward goes at the rollout batch (one
    observation per environment: 8), for each game: CPU microseconds per call of the plain extractor, of
    the hub extractor with m = 2, 4 and 8 experts at k=2 (with and without routing noise) and of the dense
    mixture, and of the hub's parts on their own (pathway generator; routing = generator and noisy top-k
    router; one expert on the B*k/m observations it gets on average, and on the whole batch). The
    ``experts run`` column is the mean number of distinct experts a forward calls: at small batches
    sparse dispatch still calls nearly every expert, and each call costs about as much on 4 observations
    as on 8.

Outputs in ``--out``: ``throughput.md`` (markdown tables), ``throughput.json`` (every number, the machine
and the settings) and ``extractor_time_vs_m.png``. ``--quick`` shrinks every budget for a smoke test.
Torch threads are pinned with ``--threads``; report the load of other processes on the machine beside
the numbers (the tables record the load average at the start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hp_rl.bench.throughput.acting import measure_acting
from hp_rl.bench.throughput.extractor import measure_extractor, probe
from hp_rl.bench.throughput.report import check_targets, markdown, plot
from hp_rl.bench.throughput.results import (
    ATARI_GAME,
    MINATAR_GAME,
    ActingResult,
    ExtractorResult,
    TrainResult,
    machine_info,
    pin_threads,
)
from hp_rl.bench.throughput.training import measure_training

# Budgets of a full run and of --quick (options given on the command line win over both).
_FULL: dict[str, Any] = {
    "steps": 4096,
    "warmup_steps": 0,
    "repeats": 1,
    "batch": 256,
    "ms": [2, 4, 8, 16],
    "ks": [1, 2, 4],
    "modes": ["frozen", "finetuned"],
    "reps": 5,
}
_QUICK: dict[str, Any] = {
    "steps": 32,
    "warmup_steps": 32,
    "repeats": 1,
    "batch": 8,
    "ms": [2, 4],
    "ks": [1, 2],
    "modes": ["frozen"],
    "reps": 1,
}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The command line of the throughput benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", default="bench_out", help="output folder (default: bench_out)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="tiny budgets for every option not given explicitly (smoke test)"
    )
    training = parser.add_argument_group("(a) training throughput")
    training.add_argument("--steps", type=int, help="measured env steps per configuration and round (default: 4096)")
    training.add_argument("--warmup-steps", type=int, help="warm-up steps (default: one rollout and update)")
    training.add_argument("--repeats", type=int, help="interleaved rounds; the median is reported (default: 1)")
    training.add_argument("--games", default="breakout,minatar", help="breakout, minatar or both (default)")
    training.add_argument("--atari-game", default=ATARI_GAME)
    training.add_argument("--minatar-game", default=MINATAR_GAME)
    training.add_argument("--only", help="regular expression: measure only the matching configurations (plain always)")
    training.add_argument("--skip-training", action="store_true")
    extractor = parser.add_argument_group("(b) extractor alone")
    extractor.add_argument("--batch", type=int, help="frames per batch (default: 256)")
    extractor.add_argument("--ms", type=_ints, help="numbers of experts (default: 2,4,8,16)")
    extractor.add_argument("--ks", type=_ints, help="experts per sample (default: 1,2,4)")
    extractor.add_argument("--modes", type=_names, help="trunk modes: frozen, finetuned (default: both)")
    extractor.add_argument("--reps", type=int, help="timed repetitions, median reported (default: 5)")
    extractor.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    extractor.add_argument("--skip-extractor", action="store_true")
    acting = parser.add_argument_group("(c) acting forward, taken apart")
    acting.add_argument("--skip-acting", action="store_true")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` replaces every budget by a tiny one)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = _QUICK if args.quick else _FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    bad_modes = sorted(set(args.modes) - {"frozen", "finetuned"})
    if bad_modes:
        parser.error(f"unknown --modes {bad_modes}; choose frozen, finetuned")
    bad_games = sorted(set(_names(args.games)) - {"breakout", "minatar"})
    if bad_games:
        parser.error(f"unknown --games {bad_games}; choose breakout, minatar")
    return args


def _memory_method(results: Sequence[ExtractorResult]) -> dict[str, str]:
    """How peak memory was measured, for the report (nothing where it was not)."""
    methods = sorted({r.memory_method for r in results if r.memory_method})
    if not methods:
        return {}
    return {"memory_method": "; ".join(methods) + " (fresh subprocess per configuration, after one warm-up step)"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report; returns the exit status."""
    args = parse_args(argv)
    if args.probe:
        probe(args.probe)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    pin_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, flush=True)

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "machine": machine_info(args.threads, args.device),
        "settings": {k: v for k, v in vars(args).items() if k != "probe"},
        "training": [],
        "extractor": [],
        "extractor_timing": "fresh process",  # each configuration alone (reports before this: all in one process)
    }
    began = time.perf_counter()
    train_results: list[TrainResult] = []
    extractor_results: list[ExtractorResult] = []
    acting_results: list[ActingResult] = []

    def save(complete: bool) -> str:
        """Write what is measured so far (each section as it ends; ``complete`` once all have)."""
        report["acting"] = [asdict(r) for r in acting_results]
        report["training"] = [asdict(r) for r in train_results]
        report["extractor"] = [asdict(r) for r in extractor_results]
        report["targets"] = check_targets(train_results, extractor_results)
        report["wall_seconds"] = round(time.perf_counter() - began, 1)
        report["complete"] = complete
        (out / "throughput.json").write_text(json.dumps(report, indent=2))
        text = markdown(report)
        (out / "throughput.md").write_text(text)
        return text

    if not args.skip_training:
        for game in _names(args.games):
            log(f"(a) training throughput: {game}")
            train_results += measure_training(game, args, log)
            save(False)
    if not args.skip_extractor:
        log(f"(b) extractor alone, batch {args.batch}")
        extractor_results += measure_extractor(args, log)
        report.update(_memory_method(extractor_results))
        save(False)
    if not args.skip_acting:
        for game in _names(args.games):
            log(f"(c) acting forward, taken apart: {game}")
            acting_results += measure_acting(game, args, log)
            save(False)
    text = save(True)
    if extractor_results and plot(extractor_results, out / "extractor_time_vs_m.png"):
        log(f"plot: {out / 'extractor_time_vs_m.png'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
