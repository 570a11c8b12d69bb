"""``hp-rl COMMAND ...`` (or ``python -m hp_rl COMMAND ...``): every command of the package behind one name.

Commands (each is also its own module; ``hp-rl COMMAND --help`` shows its options):

- ``train``: train an agent (``python -m hp_rl.train``);
- ``evaluate``: evaluate a run folder (``python -m hp_rl.evaluate``);
- ``hub``: list, inspect, build, export and score hubs (``python -m hp_rl.hub``);
- ``tune``: hyperparameter search on Optuna (``python -m hp_rl.tune``);
- ``distill``: a trained hub agent as one plain network, a standard SB3 zip (``python -m hp_rl.distill``);
- ``vision``: the supervised companion: ``hp-rl vision train|evaluate|recipe ...``;
- ``bench``: a benchmark: ``hp-rl bench transfer|transfer_report|user_agents ARGS`` from the package
  (:mod:`hp_rl.bench`), and in a source checkout also its other scripts in ``benchmarks/`` (``throughput``, ...).
"""

from __future__ import annotations

import importlib
import runpy
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hp_rl.core.console import configure_logging
from hp_rl.core.paths import IN_CHECKOUT, PROJECT_ROOT

__all__ = ["COMMANDS", "main"]

# command -> (module with main(argv), one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hp_rl.train", "train PPO, A2C or DQN with a hub of pretrained experts"),
    "evaluate": ("hp_rl.evaluate", "evaluate a run folder (and record a video)"),
    "hub": ("hp_rl.hub_cli", "list, inspect, build, export and score hubs"),
    "tune": ("hp_rl.tune", "hyperparameter search on Optuna"),
    "distill": ("hp_rl.distill", "a trained hub agent as one plain network (a standard SB3 zip)"),
    "vision": ("", "supervised transfer from image backbones: vision train|evaluate|recipe"),
    "bench": ("", "benchmarks: bench NAME [ARGS] (transfer, transfer_report, user_agents; more in a checkout)"),
}
VISION = {"train": "hp_rl.vision.train", "evaluate": "hp_rl.vision.evaluate", "recipe": "hp_rl.vision.recipe"}
# The benchmarks that are part of the package (they run from an installed wheel).
BENCH = {
    "compile_probe": "hp_rl.bench.throughput.compiled",
    "throughput": "hp_rl.bench.throughput.cli",
    "transfer": "hp_rl.bench.transfer",
    "transfer_report": "hp_rl.bench.transfer_report",
    "user_agents": "hp_rl.bench.user_agents",
    "vision_transfer": "hp_rl.bench.vision_transfer",
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: hp-rl COMMAND [ARGS]   (hp-rl COMMAND --help for its options)\n\ncommands:\n" + "\n".join(lines)


def _run_module_main(module: str, argv: list[str], program: str) -> int:
    main_function: Callable[[list[str]], int | None] = importlib.import_module(module).main
    saved = sys.argv
    sys.argv = [program, *argv]  # console scripts name themselves after argv[0]
    try:
        status = main_function(argv)
    finally:
        sys.argv = saved
    return int(status or 0)


def _benchmarks() -> dict[str, Path]:
    folder = PROJECT_ROOT / "benchmarks"
    if not IN_CHECKOUT or not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.py")) if not path.name.startswith("_")}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; returns its exit status."""
    configure_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"hp-rl: unknown command {command!r}.\n{_usage()}", file=sys.stderr)
        return 2
    if command == "vision":
        if not rest or rest[0] not in VISION:
            print(f"usage: hp-rl vision {{{','.join(VISION)}}} [ARGS]", file=sys.stderr if rest else sys.stdout)
            return 2 if rest else 0
        return _run_module_main(VISION[rest[0]], rest[1:], f"hp-rl vision {rest[0]}")
    if command == "bench":
        return _bench(rest)
    return _run_module_main(COMMANDS[command][0], rest, f"hp-rl {command}")


def _bench(rest: list[str]) -> int:
    """``hp-rl bench NAME ARGS``: a benchmark of the package, else a script of the checkout's ``benchmarks/``."""
    scripts = {name: path for name, path in _benchmarks().items() if name not in BENCH}
    names = sorted([*BENCH, *scripts])
    if not rest or rest[0] not in names:
        if rest and not scripts:
            print(
                f"hp-rl bench: no benchmark {rest[0]!r} in this installation ({', '.join(names)}); the others are "
                "scripts of a source checkout: clone the repository and install it with pip install -e .",
                file=sys.stderr,
            )
            return 2
        print(f"usage: hp-rl bench {{{','.join(names)}}} [ARGS]", file=sys.stderr if rest else sys.stdout)
        return 2 if rest else 0
    if rest[0] in BENCH:
        return _run_module_main(BENCH[rest[0]], rest[1:], f"hp-rl bench {rest[0]}")
    sys.argv = [str(scripts[rest[0]]), *rest[1:]]
    try:
        runpy.run_path(str(scripts[rest[0]]), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
