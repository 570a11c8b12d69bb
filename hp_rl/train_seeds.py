"""``python -m hp_rl.train ... --seeds 0 1 2 [--jobs N]``: the same run once per seed, each in a run folder of its
own, one after another or in ``N`` processes at a time (:mod:`hp_rl.core.runner`), as rl-baselines3-zoo and
CleanRL users run a few seeds of one configuration."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hp_rl.core.runner import Backend, run_jobs

__all__ = ["seed_commands", "train_seeds"]

_OWN_FLAGS = ("--seeds", "--jobs")


def seed_commands(argv: Sequence[str], seeds: Sequence[int], parallel: bool) -> list[list[str]]:
    """One ``hp_rl.train`` command line per seed: ``argv`` without ``--seeds``/``--jobs``, with ``--seed S`` (and
    ``--no-progress`` when the runs share a terminal)."""
    rest: list[str] = []
    in_values = False  # the values after --seeds or --jobs (whole numbers; hp_rl.train takes no positionals)
    for item in argv:
        if item in _OWN_FLAGS:
            in_values = True
        elif item.startswith(tuple(f"{flag}=" for flag in _OWN_FLAGS)):
            in_values = False
        elif not (in_values and item.isdigit()):
            in_values = False
            rest.append(item)
    extra = ["--no-progress"] if parallel and "--no-progress" not in rest else []
    return [[*rest, *extra, "--seed", str(seed)] for seed in seeds]


def train_seeds(argv: Sequence[str], seeds: Sequence[int], jobs: int, train: Callable[[list[str]], int]) -> int:
    """Train the command ``argv`` once per seed; returns 0 when every run finished, else the first failure's status.

    :param argv: the command line as given (with ``--seeds`` and ``--jobs``).
    :param seeds: the seeds, each run's ``--seed``.
    :param jobs: runs at a time (1: one after another in this process; more: spawned processes).
    :param train: trains one command line and returns its exit status (a module-level function: the processes
        backend pickles it).
    """
    commands = seed_commands(argv, seeds, parallel=jobs > 1)
    statuses: dict[int, int] = {}

    def failed(index: int, error: BaseException) -> None:
        print(f"seed {seeds[index]}: {type(error).__name__}: {error}", flush=True)
        statuses[index] = 1

    backend = Backend("serial" if jobs <= 1 else "processes", jobs=jobs)
    run_jobs(train, [(command,) for command in commands], backend, statuses.__setitem__, failed)
    print("Seeds: " + ", ".join(f"{seed} exit {statuses.get(i, 1)}" for i, seed in enumerate(seeds)), flush=True)
    return next((statuses.get(i, 1) for i in range(len(seeds)) if statuses.get(i, 1) != 0), 0)
