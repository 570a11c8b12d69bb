"""Seconds from Ctrl-C (SIGINT) to the exit of a training run, checkpoint written.

    python benchmarks/stop_latency.py --trials 3 --out docs/results/stop_latency.json

PPO on Breakout with a hub of four random NatureCNN experts (``--hub random:4``): each trial starts a run, waits
for SB3's first log table (one rollout and update done), waits a random 0.5-6 s (inside a rollout or an update,
an update takes seconds on a CPU), sends SIGINT and times the exit. On-policy runs leave an update at once and
restore the weights of the rollout's end (hp_rl.rl.training.StopOnSignal).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the trials; writes the seconds of each to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--env", default="BreakoutNoFrameskip-v4")
    parser.add_argument("--out", type=Path, default=Path("bench_out/stop_latency.json"))
    args = parser.parse_args(argv)
    seconds, codes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for trial in range(args.trials):
            command = [
                sys.executable,
                "-m",
                "hp_rl.train",
                "--algo",
                "ppo",
                "--env",
                args.env,
                "--hub",
                "random:4",
                "-n",
                "10000000",
                "--no-progress",
                "-v",
                "--eval-freq",
                "0",
                "--threads",
                "1",
                "--tensorboard-log",
                str(Path(folder) / f"runs{trial}"),
            ]
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            assert process.stdout is not None
            for line in process.stdout:
                if "total_timesteps" in line:  # SB3's first log table: training is running
                    break
            time.sleep(random.Random(trial).uniform(0.5, 6.0))
            began = time.perf_counter()
            process.send_signal(signal.SIGINT)
            process.stdout.read()
            codes.append(process.wait())
            seconds.append(round(time.perf_counter() - began, 2))
    result = {
        "env": args.env,
        "hub": "random:4",
        "seconds_from_sigint_to_exit": seconds,
        "exit_codes": codes,
        "max_seconds": max(seconds),
        "load_average": list(os.getloadavg()),
        "command": "python benchmarks/stop_latency.py " + " ".join(argv or sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0 if all(code == 128 + signal.SIGINT for code in codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
