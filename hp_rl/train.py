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

from hp_rl.core.console import configure_logging
from hp_rl.core.errors import HpRlError, error_message, printable
from hp_rl.tracking import TrackingError, tracked, tracking_from
from hp_rl.train_config import CliError, config_and_env, hub_tag, resolve_hub, run_name
from hp_rl.train_flags import build_parser

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
    from hp_rl.core.archive import ArchiveError, read_sb3_archive

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
    from hp_rl.core.archive import check_npz_file

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
