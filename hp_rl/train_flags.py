"""The command line of ``python -m hp_rl.train``: every flag, in four groups, with its help."""

from __future__ import annotations

import argparse

from hp_rl.core.console import program_name
from hp_rl.tracking import add_tracking_arguments

__all__ = ["build_parser"]


def _step_count(text: str) -> int:
    """A whole number of steps, also written as rl-baselines3-zoo does (``1e5``, ``2.5e6``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of steps (100000, 1e5)") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hp_rl.train`` (defaults are ``None`` where a run config decides)."""
    parser = argparse.ArgumentParser(
        prog=program_name("hp_rl.train"),
        description="Train a PPO, A2C or DQN agent whose features come from a hub of pretrained experts "
        "(Hub-Pathway), or the plain SB3 policy with --hub none.",
        epilog="Exit codes: 0 done; 2 bad input; 130/143 stopped by Ctrl-C/SIGTERM after saving a checkpoint "
        "(continue with --resume RUN).",
    )
    _add_task_flags(parser)
    _add_run_flags(parser)
    _add_option_flags(parser)
    _add_session_flags(parser)
    return parser


def _add_task_flags(parser: argparse.ArgumentParser) -> None:
    """What trains on what: the algorithm, the environment, the hub, k, the steps, the seed and copies."""
    parser.add_argument("--algo", metavar="{ppo,a2c,dqn}", help="training algorithm (default: ppo)")
    parser.add_argument("--env", metavar="ENV_ID", help="gymnasium id, e.g. CartPole-v1, BreakoutNoFrameskip-v4")
    parser.add_argument(
        "--hub",
        metavar="HUB",
        help="the experts: a hub spec YAML path, comma-separated checkpoint paths (.zip/.safetensors/.pt, "
        "hf:org/repo), random:N, auto (the bundled hub of the environment's family, without the target's own "
        "agents) or none (plain SB3 policy, the baseline). Default: auto",
    )
    parser.add_argument("-k", type=int, help="experts per observation (default: 2)")
    parser.add_argument(
        "-n",
        "--n-timesteps",
        type=_step_count,
        help="total environment steps, 100000 or 1e5 (default: configs/<algo>.yml)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--n-envs", type=int, help="parallel environments (default: configs/<algo>.yml)")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Where the run goes and how it runs: logs, evaluations, checkpoints, device, environment copies."""
    parser.add_argument("--tensorboard-log", metavar="DIR", help="root folder of the run folders (default: runs)")
    parser.add_argument(
        "--eval-freq",
        type=_step_count,
        help="evaluate every this many steps; 0: never (default: 25000, or a tenth of a shorter run)",
    )
    parser.add_argument("--eval-episodes", type=int, help="episodes per evaluation (default: 5)")
    parser.add_argument(
        "--save-freq",
        type=int,
        help="checkpoint every this many steps; 0: only at the end and on Ctrl-C (default: 100000)",
    )
    parser.add_argument(
        "--keep-checkpoints",
        type=int,
        metavar="N",
        help="periodic checkpoints kept in checkpoints/, older ones deleted; 0 keeps all (default: 5)",
    )
    parser.add_argument(
        "--nonfinite-obs",
        choices=("error", "sanitize"),
        help="a NaN/inf observation stops training with a message naming the step (error, the "
        "default), or is replaced by 0 and counted in TensorBoard (sanitize)",
    )
    parser.add_argument("--device", help="torch device: auto, cpu, cuda, cuda:1 (default: auto)")
    parser.add_argument(
        "--vec-env",
        choices=("dummy", "subproc"),
        help="step the --n-envs copies in turn in this process (dummy, the default) or one process each (subproc)",
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (default: 0 = one on CPU, torch's default on a GPU)"
    )
    parser.add_argument(
        "--env-preset",
        metavar="PRESET",
        help="force an environment preset from envs/, e.g. control_pixels (default: match by id)",
    )
    parser.add_argument(
        "--env-kwargs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a gym.make argument of the environment, YAML value (difficulty=1, mode=4, "
        "sticky_action_prob=0.0); repeatable",
    )


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    """The algorithm's hyperparameters and the method's options (:mod:`hp_rl.hub.options`)."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an algorithm hyperparameter; values are YAML (n_steps=256, "
        "learning_rate=lin_3e-4, policy_kwargs.net_arch=[64,64]); repeatable",
    )
    parser.add_argument(
        "--hub-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hub-Pathway option (features_dim, freeze_experts, noise, noise_cap, aggregation, base_expert, "
        "prior, preset, ...; --hub-options lists them all with what each accepts); repeatable",
    )
    parser.add_argument(
        "--hub-options", action="store_true", help="list every Hub-Pathway option --hub-set takes, and exit"
    )
    parser.add_argument("--explore-coef", type=float, help="weight of the exploration loss (default: 0.01)")
    parser.add_argument("--exploit-coef", type=float, help="weight of the exploitation loss, ppo/a2c (default: 0.1)")


def _add_session_flags(parser: argparse.ArgumentParser) -> None:
    """Resuming, progress, tracking, several seeds and verbosity."""
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run folder RUN from its latest checkpoint (its config.yml decides "
        "everything except -n, --device, --keep-checkpoints, --nonfinite-obs, --vec-env, --no-progress, "
        "--track and -v)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tracking_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S", help="one run per seed, each its own folder")
    parser.add_argument("--jobs", type=int, default=1, help="with --seeds: runs at a time, in processes (default 1)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: SB3 training logs; -vv: also tracebacks with error messages",
    )
