"""``python -m hp_rl.tune``: hyperparameter search for the hub agent on Optuna, as rl-baselines3-zoo does.

Usage::

    python -m hp_rl.tune --trials 20 --study breakout_hub -- \\
        --algo ppo --env MinAtar/Breakout-v1 --hub configs/hubs/minatar_bundled.yml -n 200000

Everything after ``--`` is a ``python -m hp_rl.train`` command line: each trial builds its model exactly as
that command would, with the trial's values added as ``--set`` / ``--hub-set`` / ``-k`` / coefficient flags.
A trial trains for ``-n`` steps, evaluates every ``--eval-freq`` steps with noise-free routing (the mean
return over ``--eval-episodes`` episodes is reported to Optuna, so an unpromising trial is pruned early),
and scores its last evaluation. Trials write no run folders.

The search space (:data:`SEARCH_SPACE`) holds the method's coefficients (exploration, exploitation), its
routing-noise schedule (``noise_anneal``, ``noise_cap``), the learning rate and learning-rate scales of the
trunks and the generator, and k. ``--params`` picks a subset; options without a hub are left out.

The study lives in an RDB storage (``--storage``): a SQLite file by default, a PostgreSQL or MySQL URL for
many workers on many machines (run the same command on each; they share the study). Runs are resumable by
study name: a second call adds ``--trials`` more trials to it. The best trial is written as a YAML file
with the ``hp_rl.train`` flags that reproduce it.

Exit status: 0 when the trials ran, 2 for bad input (unknown parameter, Optuna missing, bad storage).
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hp_rl.core.console import configure_logging, program_name
from hp_rl.core.errors import HpRlError, error_message

__all__ = ["Parameter", "SEARCH_SPACE", "TuneError", "trial_flags", "main"]


class TuneError(HpRlError, ValueError):
    """A tuning request that cannot run (bad parameter list, storage, Optuna missing)."""


@dataclass(frozen=True)
class Parameter:
    """One searched value and the ``hp_rl.train`` flag that sets it.

    :param kind: ``float`` (log-uniform when ``log``), ``int`` or ``categorical``.
    :param low: lower bound (``float``/``int``).
    :param high: upper bound; for ``k`` capped by the hub's size.
    :param flag: ``--set``, ``--hub-set``, or a flag taking the value itself (``-k``, ``--explore-coef``).
    :param needs_hub: only searched when the command has a hub.
    :param choices: values of a ``categorical`` parameter.
    """

    kind: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    flag: str = "--set"
    needs_hub: bool = True
    choices: tuple[Any, ...] = ()


# The train flags that set an option directly; other extractor options are --hub-set, loss weights --set.
_OPTION_FLAGS = {"k": "-k", "explore_coef": "--explore-coef", "exploit_coef": "--exploit-coef"}


def _option_parameters() -> dict[str, Parameter]:
    """The method's options that carry a search range (:class:`hp_rl.hub.options.SearchRange`), as parameters."""
    from dataclasses import fields

    from hp_rl.core.validation import Int
    from hp_rl.hub.options import LossWeights, PathwayOptions

    parameters = {}
    for cls, flag in ((PathwayOptions, "--hub-set"), (LossWeights, "--set")):
        for item in fields(cls):
            search = item.metadata["search"]
            if search is not None:
                kind = "int" if isinstance(item.metadata["rule"], Int) else "float"
                flag_of = _OPTION_FLAGS.get(item.name, flag)
                parameters[item.name] = Parameter(kind, search.low, search.high, search.log, flag_of)
    return parameters


SEARCH_SPACE: dict[str, Parameter] = {
    "learning_rate": Parameter("float", 1e-5, 3e-3, log=True, needs_hub=False),
    **_option_parameters(),
}


def _sample(trial: Any, name: str, parameter: Parameter, experts: int | None) -> Any:
    if parameter.kind == "categorical":
        return trial.suggest_categorical(name, list(parameter.choices))
    if parameter.kind == "int":
        high = int(parameter.high) if experts is None or name != "k" else min(int(parameter.high), experts)
        return trial.suggest_int(name, int(parameter.low), max(high, int(parameter.low)))
    return trial.suggest_float(name, parameter.low, parameter.high, log=parameter.log)


def trial_flags(values: dict[str, Any]) -> list[str]:
    """The ``hp_rl.train`` flags that set ``values`` (names of :data:`SEARCH_SPACE`)."""
    flags: list[str] = []
    for name, value in values.items():
        parameter = SEARCH_SPACE[name]
        text = repr(value) if isinstance(value, float) else str(value)
        if parameter.flag in ("--set", "--hub-set"):
            flags += [parameter.flag, f"{name}={text}"]
        else:
            flags += [parameter.flag, text]
    return flags


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m hp_rl.tune``."""
    parser = argparse.ArgumentParser(
        prog=program_name("hp_rl.tune"),
        description=__doc__.split("\n\n")[0],
        epilog="After --, a python -m hp_rl.train command line (without --resume).",
    )
    parser.add_argument("--trials", type=int, default=10, help="trials to run in this call (default: 10)")
    parser.add_argument("--study", help="study name (default: <algo>_<env>); an existing study is continued")
    parser.add_argument("--storage", help="Optuna RDB URL (default: sqlite:///runs/tune/optuna.db)")
    parser.add_argument("--params", help=f"comma-separated subset of: {', '.join(SEARCH_SPACE)} (default: all)")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    parser.add_argument("--pruner", choices=("median", "halving", "none"), default="median")
    parser.add_argument("--startup-trials", type=int, default=5, help="trials before sampling and pruning adapt")
    parser.add_argument("--eval-freq", type=int, default=10_000, help="steps between evaluations (default: 10000)")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (the trials' seed is the command's)")
    parser.add_argument("--out", type=Path, help="best-trial YAML (default: runs/tune/<study>.best.yml)")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the hp_rl.train flags")
    return parser


def _space(params: str | None, with_hub: bool) -> dict[str, Parameter]:
    names = [p.strip() for p in params.split(",") if p.strip()] if params else list(SEARCH_SPACE)
    unknown = sorted(set(names) - set(SEARCH_SPACE))
    if unknown:
        raise TuneError(f"--params: unknown {unknown}; choose from {', '.join(SEARCH_SPACE)}.")
    hubless = [n for n in names if SEARCH_SPACE[n].needs_hub and not with_hub]
    if hubless and params:
        raise TuneError(
            f"--params {', '.join(hubless)}: options of the hub agent, but the command has no hub (add --hub SPEC)."
        )
    space = {n: SEARCH_SPACE[n] for n in names if with_hub or not SEARCH_SPACE[n].needs_hub}
    if not space:
        raise TuneError("Nothing to search: give --params with at least one parameter.")
    return space


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as error:
        raise TuneError('Optuna is not installed: pip install "hp_rl[sweep]" (or pip install optuna).') from error
    return optuna


def _storage_url(storage: str | None) -> str:
    if storage:
        return storage
    folder = Path("runs") / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


class _Objective:
    """One trial: build the model as ``hp_rl.train`` would, train with evaluations, score the last one."""

    def __init__(
        self,
        train_args: list[str],
        space: dict[str, Parameter],
        experts: int | None,
        eval_freq: int,
        eval_episodes: int,
    ) -> None:
        self.train_args = train_args
        self.space = space
        self.experts = experts
        self.eval_freq = eval_freq
        self.eval_episodes = eval_episodes

    def __call__(self, trial: Any) -> float:
        optuna = _optuna()
        from hp_rl import train as train_cli

        values = {name: _sample(trial, name, parameter, self.experts) for name, parameter in self.space.items()}
        argv = [*self.train_args, *trial_flags(values)]
        trial.set_user_attr("train_flags", trial_flags(values))
        args = train_cli.build_parser().parse_args(argv)
        config, env = train_cli.config_and_env(args)
        model = train_cli.build_or_close(config, env, 0)
        evaluation = _ReportingEval(trial, config, self.eval_freq, self.eval_episodes)
        try:
            model.learn(config.n_timesteps, callback=evaluation.callback)
        finally:
            evaluation.close()
            env.close()
        if evaluation.pruned:
            raise optuna.TrialPruned(f"pruned at step {evaluation.last_step} (mean return {evaluation.last_mean})")
        if evaluation.last_mean is None or not math.isfinite(evaluation.last_mean):
            evaluation.evaluate_now(model)
        assert evaluation.last_mean is not None
        return float(evaluation.last_mean)


class _ReportingEval:
    """Holds an SB3 callback (``callback``) that evaluates every ``eval_freq`` steps, reports the mean return
    to the trial and stops training when Optuna prunes it."""

    def __init__(self, trial: Any, config: Any, eval_freq: int, eval_episodes: int) -> None:
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
        from stable_baselines3.common.vec_env import VecEnv, VecTransposeImage

        from hp_rl.rl.envs import make_env

        self.trial = trial
        env: VecEnv = make_env(
            config.env_id, 1, config.seed + 10_000, config.env_preset, evaluation=True, env_kwargs=config.env_kwargs
        )
        space = env.observation_space
        if is_image_space(space) and not is_image_space_channels_first(space):  # type: ignore[arg-type]
            env = VecTransposeImage(env)  # as SB3 wraps the training env
        self.eval_env = env
        self.eval_episodes = eval_episodes
        self.every = max(eval_freq // max(config.n_envs, 1), 1)
        self.last_mean: float | None = None
        self.last_step = 0
        self.pruned = False
        outer = self

        class _Callback(BaseCallback):
            def _on_step(self) -> bool:
                if self.n_calls % outer.every:
                    return True
                outer.evaluate_now(self.model)
                outer.trial.report(outer.last_mean, self.num_timesteps)
                if outer.trial.should_prune():
                    outer.pruned = True
                    return False
                return True

        self.callback = _Callback()

    def evaluate_now(self, model: Any) -> None:
        """Noise-free evaluation of ``model``; sets ``last_mean``."""
        from stable_baselines3.common.evaluation import evaluate_policy

        from hp_rl.rl.pathway_control import routing_noise

        with routing_noise(model, enabled=False):
            mean, _ = evaluate_policy(model, self.eval_env, n_eval_episodes=self.eval_episodes, deterministic=True)
        self.last_mean = float(mean)  # type: ignore[arg-type]
        self.last_step = int(model.num_timesteps)

    def close(self) -> None:
        self.eval_env.close()


def _check_command(train_args: list[str]) -> tuple[Any, int | None]:
    """The train command's run config (built once, so a bad command is refused before any trial) and the
    number of experts of its hub (``None`` without a hub)."""
    from hp_rl import train as train_cli

    try:
        args = train_cli.build_parser().parse_args(train_args)
    except SystemExit as exit_:  # argparse has printed the problem
        raise TuneError(f"The training command after -- is not valid: {' '.join(train_args)}") from exit_
    if args.resume is not None:
        raise TuneError("--resume cannot be tuned: give the command that starts a run.")
    config, env = train_cli.config_and_env(args)
    env.close()
    if config.hub is None:
        return config, None
    from hp_rl.hub import parse_hub

    return config, len(parse_hub(config.hub).experts)


def run(args: argparse.Namespace) -> int:
    """Run the study; returns the exit status."""
    optuna = _optuna()
    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    if not train_args:
        raise TuneError("No training command: add -- and the python -m hp_rl.train flags (--algo, --env, --hub, -n).")
    for flag, value, low in (
        ("--trials", args.trials, 1),
        ("--eval-freq", args.eval_freq, 1),
        ("--eval-episodes", args.eval_episodes, 1),
        ("--startup-trials", args.startup_trials, 0),
    ):
        if value < low:
            raise TuneError(f"{flag} {value}: must be at least {low}.")
    config, experts = _check_command(train_args)
    space = _space(args.params, experts is not None)
    study_name = args.study or f"{config.algo}_{config.env_id}".replace("/", "_")
    sampler = (
        optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=args.startup_trials)
        if args.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=args.seed)
    )
    if args.pruner == "median":
        pruner: Any = optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials)
    elif args.pruner == "halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner()
    else:
        pruner = optuna.pruners.NopPruner()
    url = _storage_url(args.storage)
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=url,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    except (ImportError, ValueError, RuntimeError, optuna.exceptions.OptunaError) as error:
        raise TuneError(f"--storage {url}: cannot open the study there ({error}).") from error
    except Exception as error:  # SQLAlchemy's own errors (bad URL, unreachable server)
        raise TuneError(f"--storage {url}: cannot open the study there ({type(error).__name__}: {error}).") from error
    objective = _Objective(train_args, space, experts, args.eval_freq, args.eval_episodes)
    # A trial whose configuration is refused (HpRlError) is recorded as failed; the study goes on.
    study.optimize(objective, n_trials=args.trials, catch=(HpRlError,), gc_after_trial=True)
    return _report(study, train_args, args.out or Path("runs") / "tune" / f"{study_name}.best.yml", url)


def _report(study: Any, train_args: list[str], out: Path, url: str) -> int:
    import optuna

    states = [t.state for t in study.trials]
    counts = {state.name.lower(): states.count(state) for state in optuna.trial.TrialState if states.count(state)}
    print(f"Study {study.study_name} in {url}: {len(study.trials)} trial(s) {counts}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        print("No trial completed yet.")
        return 0
    best = study.best_trial
    flags = trial_flags(best.params)
    result = {
        "study": study.study_name,
        "storage": url,
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "command": " ".join(["python -m hp_rl.train", *train_args, *flags]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(result, sort_keys=False), encoding="utf-8")
    print(f"Best: trial {best.number}, mean return {best.value:.2f}, {best.params}\nWritten: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    configure_logging()
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return run(args)
    except HpRlError as error:
        if "-v" in args.train_args:
            traceback.print_exc()
        print(error_message(error), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
