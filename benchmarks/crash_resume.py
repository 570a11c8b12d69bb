"""Kill a training run with SIGKILL at random moments, resume it each time, and check what survives.

    python benchmarks/crash_resume.py --kills 20 --out bench_out/crash_resume

A2C on CartPole with a checkpoint every rollout (16 steps). After each ``kill -9`` the run is resumed with
``--resume``; the script records the newest checkpoint before the kill and the step the resume started
from. At the end it checks: every resume started, the final model counts ``n`` steps and exactly ``n / 16``
updates (no step counted that was not trained on), and no resume started behind the newest complete
checkpoint (at most one checkpoint interval of steps lost per kill). Results go to ``<out>/result.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from hp_rl.core.archive import read_sb3_archive  # noqa: E402
from hp_rl.rl.runs import checkpoints_by_step  # noqa: E402

ROLLOUT = 16  # n_steps=8 x 2 envs


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    handle = open(log, "ab")  # noqa: SIM115 - the child writes to it until killed
    return subprocess.Popen(
        [sys.executable, "-m", "hp_rl.train", *argv], stdout=handle, stderr=subprocess.STDOUT, env=env
    )


def main(argv: list[str] | None = None) -> int:
    """Run the kill/resume loop; returns 0 when every check holds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_out/crash_resume")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.out / "runs"
    log = args.out / "train.log"
    first = [
        "--algo",
        "a2c",
        "--env",
        "CartPole-v1",
        "--hub",
        "none",
        "--n-envs",
        "2",
        "--set",
        "n_steps=8",
        "-n",
        str(args.steps),
        "--save-freq",
        str(ROLLOUT),
        "--keep-checkpoints",
        "3",
        "--eval-freq",
        "0",
        "--no-progress",
        "--tensorboard-log",
        str(root),
    ]
    process = _start(first, log)
    run: Path | None = None
    kills = []
    for index in range(args.kills):
        time.sleep(rng.uniform(1.0, 4.0))
        if run is None:
            folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
            run = folders[0] if folders else None
        saved = checkpoints_by_step(run / "checkpoints") if run is not None else []
        newest = saved[0][1] if saved else 0
        finished = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        if run is None or finished:
            break
        text_before = log.read_text(errors="replace")
        process = _start(["--resume", str(run), "--no-progress"], log)
        # The resume prints the step it starts from; wait for it (or for the process to end).
        deadline = time.time() + 120
        resumed_from = None
        while time.time() < deadline and resumed_from is None:
            found = re.findall(r"Resuming .* \(step (\d+)\)", log.read_text(errors="replace")[len(text_before) :])
            resumed_from = int(found[0]) if found else None
            if resumed_from is None and process.poll() is not None:
                break
            time.sleep(0.1)
        kills.append({"kill": index + 1, "newest_checkpoint_before_kill": newest, "resumed_from": resumed_from})
    code = process.wait()
    assert run is not None
    final = read_sb3_archive(run / "model.zip", tensors=False).data
    result = {
        "kills": kills,
        "final_exit_code": code,
        "final_steps": final["num_timesteps"],
        "final_updates": final["_n_updates"],
        "expected_updates": final["num_timesteps"] // ROLLOUT,
        "resumes_started": sum(k["resumed_from"] is not None for k in kills),
        "max_steps_behind_newest_checkpoint": max(
            ((k["newest_checkpoint_before_kill"] or 0) - (k["resumed_from"] or 0) for k in kills), default=0
        ),
        "checkpoint_interval": ROLLOUT,
    }
    ok = (
        code == 0
        and len(kills) == args.kills
        and result["resumes_started"] == len(kills)
        and result["final_steps"] == args.steps
        and result["final_updates"] == result["expected_updates"]
        and result["max_steps_behind_newest_checkpoint"] <= ROLLOUT
    )
    result["ok"] = ok
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "kills"}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
