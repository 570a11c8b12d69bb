"""Wall time of one small sweep through the in-process runner and through a local Ray, same result files.

    python benchmarks/sweep_backends.py --runs 8 --steps 8192 --cpus 2 --out bench_out/sweep_backends

The sweep is :mod:`hp_rl.bench`'s control suite on CartPole (scratch and Hub-Pathway, ``runs / 2``
seeds each) with a hub of one tiny pretrained Acrobot expert, built once before either timing. The in-process
runner trains the runs one after another in this process; the Ray runner starts a local Ray with ``--cpus``
CPUs (``ray.init(num_cpus=N)``), runs each run as a task and shuts Ray down: its time includes Ray's start-up
and shut-down. Both must write the same result files (every field but timings). Writes ``sweep_backends.json``
and prints the ratio of the two wall times (target: Ray <= 1.3x the in-process runner).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # this checkout's hp_rl, installed or not

from hp_rl.bench import hubs, suites, sweep  # noqa: E402  (the sweep under test)
from hp_rl.bench import transfer as transfer_cli  # noqa: E402


def _recipe(folder: Path) -> Path:
    recipe = {
        "algo": "ppo",
        "n_timesteps": 2048,
        "seed": 0,
        "save_freq": 0,
        "eval_episodes": 1,
        "tasks": [{"name": "cartpole", "env_id": "CartPole-v1"}, {"name": "acrobot", "env_id": "Acrobot-v1"}],
        "overrides": {"n_envs": 4, "n_steps": 128},
    }
    path = folder / "micro.recipe.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def _records(out: Path) -> dict[str, dict[str, Any]]:
    return {
        str(path.relative_to(out)): sweep.comparable_record(json.loads(path.read_text()))
        for path in sorted(out.glob("runs/**/*.json"))
    }


def main(argv: list[str] | None = None) -> int:
    """Time both runners; returns 0 when the result files agree."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="runs in the sweep (even; default 8)")
    parser.add_argument("--steps", type=int, default=8192, help="environment steps per run (default 8192)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_out" / "sweep_backends")
    args = parser.parse_args(argv)
    seeds = [str(s) for s in range(max(args.runs // 2, 1))]
    recipe = _recipe(args.out)
    common = [
        "--suite",
        "control",
        "--recipe",
        str(recipe),
        "--targets",
        "cartpole",
        "--hub-workdir",
        str(args.out / "hubs"),
        "--methods",
        "scratch",
        "hub_pathway",
        "--seeds",
        *seeds,
        "--steps",
        str(args.steps),
        "--threads",
        "1",
        "--set",
        "n_envs=4",
        "n_steps=128",
        "batch_size=128",
    ]
    # The hub is built before either timing starts.
    hubs.prepare_hub(replace(suites.SUITES["control"], recipe=recipe.resolve()), args.out / "hubs", build=True)
    timings: dict[str, float] = {}
    for name, extra in (("in-process", []), ("ray", ["--ray", "--jobs", str(args.cpus)])):
        out = args.out / name
        if out.exists():
            shutil.rmtree(out)
        began = time.perf_counter()
        status = transfer_cli.main([*common, "--out", str(out), "--no-build", *extra])
        timings[name] = time.perf_counter() - began
        if status != 0:
            raise SystemExit(f"the {name} sweep failed ({status})")
    here, there = _records(args.out / "in-process"), _records(args.out / "ray")
    same = here == there and len(here) == args.runs
    ratio = timings["ray"] / timings["in-process"]
    result = {
        "runs": args.runs,
        "steps_per_run": args.steps,
        "ray_cpus": args.cpus,
        "wall_seconds": {k: round(v, 1) for k, v in timings.items()},
        "ray_over_in_process": round(ratio, 3),
        "target": "ray <= 1.3x in-process",
        "met": ratio <= 1.3,
        "same_result_files": same,
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "command": "python benchmarks/sweep_backends.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (args.out / "sweep_backends.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
