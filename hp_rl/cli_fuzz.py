"""Fuzzing ``python -m hp_rl.train``'s command line: every line must end in exit 0 (it trained) or exit 2 (a message
that names the problem), never a traceback or a hang.

Lines are drawn from a fixed seed: each takes a few flags with values at and past their edges (zero, negative,
huge, not a number, not text a file system takes, YAML tags and aliases, escape codes), now and then a stray token,
and always a private ``--tensorboard-log`` folder and a small step budget where the line gives none, so a line that
is valid trains for a second. Each runs in this process (``hp_rl.train.main``) under a wall-clock alarm (300 s:
a loaded machine is slow)::

    python benchmarks/cli_fuzz.py --lines 1000 --seed 0      # the report: docs/results/cli_fuzz.json
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["FLAG_VALUES", "FuzzResult", "fuzz_lines", "run_line", "fuzz"]

# Values per flag: valid ones (kept small so a valid line trains briefly) and the edges past them.
_NUMBERS = ["0", "-1", "1e999", "nan", "inf", "x", "", "3.5", "99999999999999999999999", "0x10", " 1"]
# fmt: off
FLAG_VALUES: dict[str, list[str]] = {
    "--algo": ["ppo", "a2c", "dqn", "sac", "PPO", "", "ppo\x1b[31m", "../ppo"],
    "--env": ["CartPole-v1", "MinAtar/Breakout-v1", "Pendulum-v1", "NoSuchEnv-v0", "", "CartPole-v1\x00", "../../x"],
    "-n": ["64", "48", *_NUMBERS],
    "--seed": ["0", "7", "4294967295", "4294967296", *_NUMBERS],
    "--n-envs": ["1", "2", "100000000", *_NUMBERS],
    "--hub": ["none", "auto", "random:2", "random:0", "random:1000000", "hf:", "hf:a/b", "/no/such.zip", "x.pt", "a,b",
              "random:2,random:2", "\x1b]0;title\x07", "🙂", "/dev/zero", "/etc"],
    "-k": ["1", "2", "100", *_NUMBERS],
    "--eval-freq": ["0", "32", "-5", "x", "1e999"],
    "--eval-episodes": ["1", "0", "-1", "x", "1e999"],
    "--save-freq": ["0", "16", "-1", "x"],
    "--keep-checkpoints": ["0", "2", "-1", "x"],
    "--nonfinite-obs": ["error", "sanitize", "x", ""],
    "--device": ["cpu", "auto", "cuda", "tpu", "", "cuda:99"],
    "--threads": ["1", "0", "-1", "100000", "x"],
    "--env-preset": ["control_pixels", "minatar", "control", "atari", "nope", "../x", ""],
    "--env-kwargs": ["max_episode_steps=10", "x=1", "=", "a", "x=!!python/object/apply:os.system [ls]",
                     "x=&a [*a, *a]", "physics={gravity: 20}", "physics=3"],
    "--set": ["n_steps=16", "n_steps=0", "learning_rate=-1", "learning_rate=lin_x", "gamma=2", "batch_size=7",
              "policy_kwargs.net_arch=[8]", "policy_kwargs={a: 1}", "foo=bar", "=", "n_steps",
              "n_steps=!!python/object/apply:os.system [ls]", "n_steps=&a [*a, *a, *a]", "n_steps=1e999",
              "buffer_size=100000000000", "ent_coef=nan"],
    "--hub-set": ["preset=paper", "preset=transfer", "preset=bogus", "features_dim=0", "features_dim=8", "noise=fixed",
                  "noise_cap=-1", "prior=auto", "k_from_prior=2", "aggregation=x", "freeze_experts=maybe",
                  "base_expert=true", "x=1", "prior={a: 2}"],
    "--explore-coef": ["0.01", "-1", "nan", "x"],
    "--exploit-coef": ["0.1", "-1", "inf", "x"],
    "--resume": ["/no/such/run", "", ".", "/etc", "runs"],
    "--vec-env": ["dummy", "subproc", "x", ""],
    "--seeds": ["1", "-1", "x", "4294967296"],
    "--jobs": ["1", "0", "-3", "x"],
    "--wandb-project-name": ["p", "", "../x"],
    "--wandb-tags": ["a", ""],
}
# fmt: on
_STRAY = ["--", "-", "--unknown", "-z", "extra", "--hub-options", "-v", "--no-progress", "-h", "--track"]
_REPEATABLE = {"--set", "--hub-set", "--env-kwargs"}


@dataclass
class FuzzResult:
    """The outcome of one fuzzed command line.

    :param argv: the line (without the private ``--tensorboard-log`` folder).
    :param status: the exit status (``None`` when it raised or hung).
    :param seconds: wall time.
    :param problem: ``traceback``, ``hang``, ``bad status``, ``control characters``, ``long message`` or ``""``.
    :param detail: the exception or the offending output, shortened.
    """

    argv: list[str]
    status: int | None
    seconds: float
    problem: str
    detail: str = ""


def fuzz_lines(count: int, seed: int) -> Iterator[list[str]]:
    """``count`` command lines drawn from ``seed``."""
    rng = random.Random(seed)
    flags = list(FLAG_VALUES)
    for _ in range(count):
        line: list[str] = []
        chosen = rng.sample(flags, rng.randint(1, 6))
        if "--resume" in chosen and rng.random() < 0.7:
            chosen.remove("--resume")  # mostly new runs: a resume of nothing is refused before anything else
        for flag in chosen:
            for _ in range(rng.randint(1, 2) if flag in _REPEATABLE else 1):
                line += [flag, rng.choice(FLAG_VALUES[flag])]
        if rng.random() < 0.15:
            line.insert(rng.randrange(len(line) + 1), rng.choice(_STRAY))
        if "--env" not in line and "--resume" not in line:
            line += ["--env", "CartPole-v1"]
        if "-n" not in line:
            line += ["-n", "48"]
        if not any(item.startswith("n_steps=") for item in line):
            line += ["--set", "n_steps=16"]  # a valid line trains a few rollouts
        yield line


class _HangError(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _HangError


def _problem_in_output(text: str) -> str:
    if any(ord(c) < 32 and c not in "\n\r\t" for c in text):
        return "control characters"
    if any(len(line) > 4000 for line in text.splitlines()):
        return "long message"
    return ""


class _DescriptorOutput:
    """What is written to file descriptors 1 and 2 inside the block (child processes, C code), kept in ``text``."""

    def __init__(self) -> None:
        self.text = ""

    def __enter__(self) -> _DescriptorOutput:
        sys.stdout.flush()
        sys.stderr.flush()
        self._sink = tempfile.TemporaryFile()
        self._saved = os.dup(1), os.dup(2)
        os.dup2(self._sink.fileno(), 1)
        os.dup2(self._sink.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for descriptor, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, descriptor)
            os.close(saved)
        self._sink.seek(0)
        self.text = self._sink.read().decode("utf-8", errors="replace")
        self._sink.close()


def run_line(argv: list[str], folder: Path, timeout_s: int = 300) -> FuzzResult:
    """Run ``hp_rl.train.main(argv)`` in this process with its output captured and a wall-clock alarm."""
    import torch

    from hp_rl import train

    threads = torch.get_num_threads()  # a line's --threads must not carry over to the next line
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout_s)
    status: int | None = None
    problem, detail = "", ""
    descriptors = _DescriptorOutput()  # what child processes (one per environment copy) print goes there
    try:
        with descriptors, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = train.main([*argv, "--tensorboard-log", str(folder), "--no-progress"])
            except SystemExit as exit_:  # argparse's usage errors
                status = exit_.code if isinstance(exit_.code, int) else 1
    except _HangError:
        problem, detail = "hang", f"still running after {timeout_s} s"
    except Exception:  # any exception escaping main is a traceback the user would see
        problem, detail = "traceback", traceback.format_exc(limit=-3)[-1500:]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    if not problem and status not in (0, 2):
        problem, detail = "bad status", err.getvalue()[-1500:]
    for text in (err.getvalue(), descriptors.text):
        if not problem and "Traceback (most recent call last)" in text:
            problem, detail = "traceback", text[-1500:]
    if not problem and (found := _problem_in_output(out.getvalue() + err.getvalue())):
        problem, detail = found, repr(err.getvalue()[-500:])
    return FuzzResult(argv, status, round(seconds, 2), problem, detail)


def fuzz(count: int, seed: int, timeout_s: int = 300) -> dict[str, Any]:
    """Run ``count`` lines from ``seed``; return a summary (counts by status and problem) and every problem."""
    import torch

    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory(prefix="hp_rl_fuzz_") as folder:
        for index, argv in enumerate(fuzz_lines(count, seed)):
            results.append(run_line(argv, Path(folder) / f"line{index}", timeout_s))
    statuses: dict[str, int] = {}
    for result in results:
        statuses[str(result.status)] = statuses.get(str(result.status), 0) + 1
    problems = [asdict(r) for r in results if r.problem]
    return {
        "lines": count,
        "seed": seed,
        "statuses": statuses,
        "problems": len(problems),
        "seconds": round(sum(r.seconds for r in results), 1),
        "slowest": max((r.seconds for r in results), default=0.0),
        "details": problems,
    }
