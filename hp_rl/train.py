"""``python -m hp_rl.train``: train an SB3 agent with (or without) a Hub-Pathway features extractor.

Examples::

    python -m hp_rl.train --algo ppo --env BreakoutNoFrameskip-v4 --hub hp_rl/hub/bundled/atari -k 2
    python -m hp_rl.train --algo a2c --env CartPole-v1 --hub none -n 100000          # plain SB3 baseline
    python -m hp_rl.train --algo ppo --env CartPole-v1 --env-preset control_pixels --hub random:4 -k 1
    python -m hp_rl.train --algo ppo --env CartPole-v1 --set n_steps=64 --set policy_kwargs.net_arch=[64]
    python -m hp_rl.train --resume runs/ppo_CartPole-v1_random4-k1_1          # continue after Ctrl-C
    python -m hp_rl.train --algo ppo --env CartPole-v1 --seeds 0 1 2 --jobs 2    # one run per seed

Each run gets a folder ``<tensorboard-log>/<algo>_<env>_<hub tag>_<N>`` with ``config.yml`` (the resolved
hyperparameters), ``command.txt``, ``versions.yml``, ``hub_manifest.yml`` (hub runs), ``checkpoints/``,
``eval/``, ``model.zip`` and the TensorBoard events, so ``tensorboard --logdir runs/`` shows every run.

Exit codes: 0 finished; 2 a usage or input error (the message names the problem and the fix);
128 + signal number (130 for Ctrl-C, 143 for SIGTERM) when a signal stopped training after writing a
checkpoint that ``--resume`` continues from.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hp_rl.console import configure_logging, program_name
from hp_rl.errors import HpRlError, error_message, printable
from hp_rl.tracking import TrackingError, add_tracking_arguments, tracked, tracking_from
from hp_rl.train_config import CliError, config_and_env, hub_tag, resolve_hub, run_name

__all__ = ["CliError", "build_parser", "build_or_close", "config_and_env", "hub_tag", "main", "resolve_hub", "run_name"]

# Flags a --resume run takes from its config.yml instead (flag -> RunConfig field).
_IGNORED_ON_RESUME = (
    "algo",
    "env",
    "hub",
    "k",
    "seed",
    "n_envs",
    "tensorboard_log",
    "eval_freq",
    "eval_episodes",
    "save_freq",
    "env_preset",
    "env_kwargs",
    "set",
    "hub_set",
    "exploit_coef",
    "explore_coef",
)


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
    parser.add_argument("--explore-coef", type=float, help="weight of the exploration (load balance) loss")
    parser.add_argument("--exploit-coef", type=float, help="weight of the exploitation loss (ppo, a2c)")


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


# --- commands -----------------------------------------------------------------------------------------------------
def build_or_close(config: Any, env: Any, verbose: int) -> Any:
    """The model (errors in the hub's files surface here as hp_rl.hub exceptions)."""
    from hp_rl.rl.training import build_model

    try:
        return build_model(config, env, None, verbose=verbose)
    except BaseException:
        env.close()
        raise


def _routed(model: Any, asked: int) -> int:
    """Routed experts per observation as built (``k_from_prior`` may route fewer than the ``asked`` ``-k``)."""
    from hp_rl.rl.pathway_control import find_hub_extractors

    extractors = find_hub_extractors(model)
    return extractors[0].k if extractors else asked


def _report_prior(model: Any, folder: Path) -> None:
    """What scoring the hub found (``prior="auto"``): one line per expert, and ``prior.yml`` in the run folder."""
    from hp_rl.rl.pathway_control import find_hub_extractors
    from hp_rl.rl.prior_report import prior_table, write_prior_file

    scores = getattr(model, "prior_scores", None)
    extractors = find_hub_extractors(model)
    if not scores or not extractors:
        return
    extractor = extractors[0]
    print(prior_table(scores, extractor.unrouted, extractor.expert_names), flush=True)
    write_prior_file(folder, scores, extractor.unrouted, extractor.expert_names)


def _print_outcome(outcome: Any, folder: Any) -> int:
    import signal

    if outcome.interrupted_by is not None:
        name = signal.Signals(outcome.interrupted_by).name
        print(
            f"{name}: stopped at step {outcome.model.num_timesteps}; checkpoint {outcome.checkpoint}.\n"
            f"Continue with: python -m hp_rl.train --resume {folder.path}",
            flush=True,
        )
        return 128 + int(outcome.interrupted_by)
    rate = outcome.steps / max(outcome.seconds, 1e-9)
    print(
        f"Done: {outcome.model.num_timesteps} steps ({rate:.0f} steps/s).{_last_evaluation(folder.path)} "
        f"Model: {outcome.final_model}\nEvaluate with: python -m hp_rl.evaluate {folder.path}",
        flush=True,
    )
    return 0


def _holds_steps(checkpoint: Path, steps: int) -> bool:
    """Whether ``checkpoint`` reads and holds the step count of its name (a name alone proves nothing)."""
    from hp_rl.archive import ArchiveError, read_sb3_archive

    try:
        return read_sb3_archive(checkpoint, tensors=False).data.get("num_timesteps") == steps
    except ArchiveError:
        return False


def _last_evaluation(folder: Path) -> str:
    """`` Last evaluation (step N): return R ± S.`` from the run's ``eval/evaluations.npz``, or ``""`` without one."""
    import numpy as np

    path = folder / "eval" / "evaluations.npz"
    if not path.is_file():
        return ""
    from hp_rl.archive import check_npz_file

    try:
        check_npz_file(path)
        with np.load(path, allow_pickle=False) as saved:  # numbers only
            steps, results = saved["timesteps"], saved["results"]
    except (OSError, ValueError, KeyError):  # ArchiveError is a ValueError
        return ""
    if not len(steps):
        return ""
    last = np.asarray(results[-1], dtype=float)
    return f" Last evaluation (step {int(steps[-1])}): return {last.mean():.2f} ± {last.std():.2f}."


def _progress(args: argparse.Namespace) -> tuple[bool, list[Any]]:
    if args.no_progress:
        return False, []
    if sys.stdout.isatty():
        return True, []
    from hp_rl.rl.callbacks import PlainProgress

    return False, [PlainProgress()]


def _train_new(args: argparse.Namespace, argv: list[str]) -> int:
    from dataclasses import asdict

    from hp_rl.rl.runs import AgentRunFolder
    from hp_rl.rl.training import run_training

    tracking = tracking_from(args)  # W&B missing is refused before anything is built
    config, env = config_and_env(args)
    sb3_verbose = min(args.verbose, 2)
    model = build_or_close(config, env, sb3_verbose)
    scores = getattr(model, "prior_scores", None)
    if scores is not None and config.hub_kwargs.get("prior") == "auto":
        # the run keeps what was measured: a resume or an evaluation rebuilds the same pathway without re-scoring
        config.hub_kwargs["prior"] = dict(scores["prior"])
    dense = bool(config.hub_kwargs.get("dense"))
    root = Path(args.tensorboard_log or "runs")
    name = run_name(config.algo, config.env_id, config.hub, config.k, config.env_preset, dense)
    try:
        folder = AgentRunFolder.create(root, name)
    except OSError as error:
        env.close()
        raise CliError(f"--tensorboard-log {root}: cannot create a run folder there ({error}).") from error
    try:
        with folder.locked():
            folder.write_start(config.to_yaml(), argv)
            hub_text = "none (plain SB3 policy)"
            if config.hub is not None:
                routed = _routed(model, config.k)
                hub_text = f"{printable(config.hub)} (k={routed})"  # a user's path, as text
                if routed == 0:
                    hub_text += ": no expert routed, the base network learns alone"
                _report_prior(model, folder.path)
            print(
                f"Run folder: {folder.path}\n{config.algo} on {config.env_id} for {config.n_timesteps} steps, "
                f"{config.n_envs} env(s), hub {hub_text}. TensorBoard: tensorboard --logdir {root}",
                flush=True,
            )
            progress_bar, callbacks = _progress(args)
            with tracked(tracking, folder, asdict(config)):
                outcome = run_training(
                    config, folder, progress_bar=progress_bar, verbose=sb3_verbose, model=model, callbacks=callbacks
                )
    except (KeyboardInterrupt, TrackingError):  # stopped before training wrote anything: no folder left behind
        _remove_if_empty(folder.path)
        raise
    return _print_outcome(outcome, folder)


def _remove_if_empty(path: Path) -> None:
    """Delete a run folder that a signal stopped before training wrote anything (no checkpoint, no events)."""
    import shutil

    produced = [
        p
        for p in path.rglob("*")
        if p.is_file() and (p.suffix == ".zip" or "tfevents" in p.name or p.name == "timing.yml")
    ]
    if not produced:
        shutil.rmtree(path, ignore_errors=True)


def _apply_resume_flags(config: Any, args: argparse.Namespace, given: set[str]) -> None:
    """Apply to the run's config the flags a resume may change (the others given are noted as ignored)."""
    from hp_rl.rl.models import check_device

    ignored = sorted(given & set(_IGNORED_ON_RESUME))
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") if len(name) > 1 else "-" + name for name in ignored)
        print(
            f"note: {flags} ignored with --resume: the run's config.yml decides (edit it to change them).",
            file=sys.stderr,
        )
    if args.n_timesteps is not None:
        if args.n_timesteps < 1:
            raise CliError(f"-n {args.n_timesteps}: must be at least 1.")
        config.n_timesteps = args.n_timesteps
    if args.device is not None:
        config.device = check_device(args.device, "--device")
    if args.keep_checkpoints is not None:
        if args.keep_checkpoints < 0:
            raise CliError(f"--keep-checkpoints {args.keep_checkpoints}: must be at least 0 (0 keeps all).")
        config.keep_checkpoints = args.keep_checkpoints
    if args.nonfinite_obs is not None:
        config.nonfinite_obs = args.nonfinite_obs
    if args.vec_env is not None:
        config.vec_env = args.vec_env
    if args.threads is not None:
        config.threads = args.threads


def _resume(args: argparse.Namespace, argv: list[str], given: set[str]) -> int:
    from dataclasses import asdict

    from hp_rl.rl.checkpoints import load_latest
    from hp_rl.rl.models import apply_threads
    from hp_rl.rl.runs import AgentRunFolder, RunConfig
    from hp_rl.rl.training import run_training, training_env

    tracking = tracking_from(args)
    folder = AgentRunFolder(Path(args.resume))
    folder.refuse_links()
    under_runs = Path("runs") / args.resume
    if not folder.config.is_file() and (under_runs / "config.yml").is_file():
        raise CliError(f"--resume {args.resume}: no such run folder here. Did you mean --resume {under_runs}?")
    if not folder.config.is_file():
        raise CliError(
            f"--resume {args.resume}: {folder.config} does not exist, so this is not a run folder. "
            "Give a folder made by python -m hp_rl.train (such as runs/ppo_CartPole-v1_nohub_1)."
        )
    try:
        config = RunConfig.from_yaml(folder.config)
    except HpRlError as error:
        raise CliError(f"--resume {args.resume}: cannot read its config: {error}") from error
    found = folder.latest_checkpoint()
    if found is None:
        raise CliError(
            f"--resume {args.resume}: {folder.checkpoints} holds no checkpoint "
            "(rl_model_<steps>_steps.zip), so there is nothing to continue. Start a new run with "
            "--algo/--env instead."
        )
    _apply_resume_flags(config, args, given)
    config.validate()  # the flags that change a resumed run are held to the same limits as a new run's
    apply_threads(config.threads, config.device)
    if found[1] >= config.n_timesteps and folder.final_model.is_file() and _holds_steps(found[0], found[1]):
        print(
            f"{folder.path} is already trained for {found[1]} steps (n_timesteps={config.n_timesteps}): nothing to "
            "do. Give a larger -n to train it further."
        )
        return 0
    with folder.locked():  # nothing in the folder changes before a checkpoint has loaded
        env = training_env(config)
        try:
            model, path, steps = load_latest(config, folder, env, str(folder.path), verbose=min(args.verbose, 2))
        except BaseException:
            env.close()
            raise
        changed = folder.write_resume(config.to_yaml(), argv, steps)
        if changed is not None:
            print(
                f"note: package versions differ from the run's start; the current ones are in {changed}.",
                file=sys.stderr,
            )
        print(f"Resuming {folder.path} from {path.name} (step {steps}) up to {config.n_timesteps}.", flush=True)
        progress_bar, callbacks = _progress(args)
        with tracked(tracking, folder, asdict(config)):
            outcome = run_training(
                config,
                folder,
                resume=True,
                progress_bar=progress_bar,
                verbose=min(args.verbose, 2),
                model=model,
                callbacks=callbacks,
            )
    return _print_outcome(outcome, folder)


def _given(argv: list[str], parser: argparse.ArgumentParser) -> set[str]:
    """Destinations of the options that appear on the command line."""
    strings = {s: a.dest for a in parser._actions for s in a.option_strings}
    found = set()
    for item in argv:
        flag = item.split("=", 1)[0]
        if flag in strings:
            found.add(strings[flag])
        elif flag.startswith("--"):
            matches = [dest for s, dest in strings.items() if s.startswith(flag)]  # argparse abbreviations
            found.update(matches[:1])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse reports usage errors itself, with code 2
        return int(exit_.code or 0)
    if args.hub_options:
        from hp_rl.hub.options import hub_options_table

        print(hub_options_table())
        return 0
    try:
        if args.seeds:
            if args.resume is not None or args.seed is not None or args.jobs < 1:
                raise CliError("--seeds trains new runs, one per seed: drop --seed and --resume; --jobs is at least 1.")
            from hp_rl.train_seeds import train_seeds

            return train_seeds(argv, args.seeds, args.jobs, main)
        if args.resume is not None:
            return _resume(args, argv, _given(argv, parser))
        return _train_new(args, argv)
    except HpRlError as error:
        if args.verbose >= 2:
            traceback.print_exc()
        print(error_message(error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted before training started (or by a second signal): nothing was saved.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
