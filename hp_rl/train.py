"""``python -m hp_rl.train``: train an SB3 agent with (or without) a Hub-Pathway features extractor.

Examples::

    python -m hp_rl.train --algo ppo --env BreakoutNoFrameskip-v4 --hub configs/hubs/atari.yml -k 2
    python -m hp_rl.train --algo a2c --env CartPole-v1 --hub none -n 100000          # plain SB3 baseline
    python -m hp_rl.train --algo ppo --env CartPole-v1 --env-preset control_pixels --hub random:4 -k 1
    python -m hp_rl.train --algo ppo --env CartPole-v1 --set n_steps=64 --set policy_kwargs.net_arch=[64]
    python -m hp_rl.train --resume runs/ppo_CartPole-v1_random4-k1_1          # continue after Ctrl-C

Each run gets a folder ``<tensorboard-log>/<algo>_<env>_<hub tag>_<N>`` with ``config.yml`` (the resolved
hyperparameters), ``command.txt``, ``versions.yml``, ``hub_manifest.yml`` (hub runs), ``checkpoints/``,
``eval/``, ``model.zip`` and the TensorBoard events, so ``tensorboard --logdir runs/`` shows every run.

Exit codes: 0 finished; 2 a usage or input error (the message names the problem and the fix);
128 + signal number (130 for Ctrl-C, 143 for SIGTERM) when a signal stopped training after writing a
checkpoint that ``--resume`` continues from.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import re
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from hp_rl.console import configure_logging, program_name
from hp_rl.errors import HpRlError
from hp_rl.paths import check_path_text, named_hub_spec

__all__ = ["CliError", "build_parser", "main", "resolve_hub", "hub_tag", "run_name"]

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
    "set",
    "hub_set",
    "exploit_coef",
    "explore_coef",
)
# Keys that --set cannot give, and the flag (or reason) to use instead.
_RESERVED_SET = {
    "policy": "the policy class follows the observation space (MlpPolicy for vectors, CnnPolicy for images)",
    "env": "use --env",
    "seed": "use --seed",
    "device": "use --device",
    "verbose": "use -v",
    "tensorboard_log": "use --tensorboard-log",
    "hub": "use --hub",
    "frame_stack": "frame stacking comes from the environment preset (envs/*.yml); choose one with --env-preset",
    "normalize": "observation normalisation is not supported by this command",
    "_init_setup_model": "internal to SB3",
}


class CliError(HpRlError):
    """A problem with the command line or its inputs: reported in one paragraph, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hp_rl.train`` (defaults are ``None`` where a run config decides)."""
    parser = argparse.ArgumentParser(
        prog=program_name("hp_rl.train"),
        description="Train a PPO, A2C or DQN agent whose features come from a hub of pretrained experts "
        "(Hub-Pathway), or the plain SB3 policy with --hub none.",
        epilog="Exit codes: 0 done; 2 bad input; 130/143 stopped by Ctrl-C/SIGTERM after saving a checkpoint "
        "(continue with --resume RUN).",
    )
    parser.add_argument("--algo", metavar="{ppo,a2c,dqn}", help="training algorithm (default: ppo)")
    parser.add_argument("--env", metavar="ENV_ID", help="gymnasium id, e.g. CartPole-v1, BreakoutNoFrameskip-v4")
    parser.add_argument(
        "--hub",
        metavar="HUB",
        help="the experts: a hub spec YAML path, comma-separated checkpoint paths (.zip/.safetensors/.pt, "
        "hf:org/repo), random:N, auto (the bundled hub for the environment's family) or none (plain SB3 "
        "policy, the baseline). Default: auto",
    )
    parser.add_argument("-k", type=int, help="experts per observation (default: 2)")
    parser.add_argument("-n", "--n-timesteps", type=int, help="total environment steps (default: configs/<algo>.yml)")
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--n-envs", type=int, help="parallel environments (default: configs/<algo>.yml)")
    parser.add_argument("--tensorboard-log", metavar="DIR", help="root folder of the run folders (default: runs)")
    parser.add_argument("--eval-freq", type=int, help="evaluate every this many steps; 0: never (default: 25000)")
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
        "--threads", type=int, metavar="N", help="torch threads (default: 0 = one on CPU, torch's default on a GPU)"
    )
    parser.add_argument(
        "--env-preset",
        metavar="PRESET",
        help="force an environment preset from envs/, e.g. control_pixels (default: match by id)",
    )
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
        help="extractor option: noise, noise_std, explore_coef, freeze_experts, features_dim, "
        "dense, balance, expert_lr_scale, noise_seed; repeatable",
    )
    parser.add_argument("--explore-coef", type=float, help="weight of the exploration (load balance) loss")
    parser.add_argument("--exploit-coef", type=float, help="weight of the exploitation loss (ppo, a2c)")
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run folder RUN from its latest checkpoint (its config.yml decides "
        "everything except -n, --device, --keep-checkpoints, --nonfinite-obs, --no-progress "
        "and -v)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: SB3 training logs; -vv: also tracebacks with error messages",
    )
    return parser


# --- hub ---------------------------------------------------------------------------------------------------------
def _absolute_entry(entry: str) -> str:
    if entry.startswith(("hf:", "random:")):
        return entry
    check_path_text(entry, "--hub")
    try:
        return str(Path(entry).expanduser().resolve())
    except (OSError, ValueError, RuntimeError) as error:
        raise CliError(f"--hub: {entry[:80]!r} is not a usable path ({error}).") from error


def resolve_hub(hub: str, env_id: str, family: str) -> str | None:
    """The hub spec string a run records, or ``None`` for the plain SB3 policy.

    ``auto`` asks :func:`hp_rl.hub.defaults.resolve_auto_hub`; file paths become absolute so that a resumed
    or evaluated run finds them from any working directory.

    :param hub: the ``--hub`` argument.
    :param env_id: the environment id (for ``auto``).
    :param family: the environment preset family (for ``auto``).
    :raises CliError: when ``auto`` cannot name a hub.
    """
    text = hub.strip()
    if text.lower() == "none":
        return None
    if text.lower() == "auto":
        try:
            from hp_rl.hub.defaults import resolve_auto_hub
        except ModuleNotFoundError as error:
            if error.name not in ("hp_rl.hub.defaults", "hp_rl.hub"):
                raise
            raise CliError(
                "--hub auto needs hp_rl.hub.defaults (the default hub of each environment family), which this "
                "installation does not have. Give the hub explicitly: --hub configs/hubs/<name>.yml (a hub spec), "
                "--hub a.zip,b.zip (SB3 checkpoints), --hub random:4 (randomly initialised experts), or --hub "
                "none (the plain SB3 policy)."
            ) from error
        try:
            text = resolve_auto_hub(env_id, family)
        except ValueError as error:
            raise CliError(str(error)) from error
    if re.fullmatch(r"random:\d+", text):
        return text
    named = named_hub_spec(text)
    if named is not None and Path(text).exists():  # a local file of that name wins
        named = None
    if named is not None:  # a spec shipped with the package, by name
        return str(named)
    if text.lower().endswith((".yml", ".yaml")) and "," not in text:
        return _absolute_entry(text)
    return ",".join(_absolute_entry(part.strip()) for part in text.split(",") if part.strip())


def hub_tag(hub: str | None, k: int, dense: bool = False) -> str:
    """A short name of the hub for run folder names: ``nohub``, ``random4-k2``, ``atari-k1``, ``3experts-k2``."""
    if hub is None:
        return "nohub"
    text = hub.strip()
    if re.fullmatch(r"random:\d+", text):
        base = text.replace(":", "")
    elif text.lower().endswith((".yml", ".yaml")) and "," not in text:
        path = Path(text)
        base = path.name.split(".")[0]
        if base == "hub":  # hub/bundled/<name>/hub.yaml
            base = path.parent.name
    else:
        entries = [part for part in text.split(",") if part.strip()]
        base = Path(entries[0]).stem if len(entries) == 1 else f"{len(entries)}experts"
    return f"{base}-{'dense' if dense else f'k{k}'}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def run_name(
    algo: str, env_id: str, hub: str | None, k: int, env_preset: str | None = None, dense: bool = False
) -> str:
    """``<algo>_<env slug>_<hub tag>``; the run folder adds ``_<N>``."""
    env = _slug(env_id) + (f"-{_slug(env_preset)}" if env_preset else "")
    return f"{algo}_{env}_{_slug(hub_tag(hub, k, dense))}"


# --- validation --------------------------------------------------------------------------------------------------
def _closest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _init_parameters(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names.update(n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self")
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def _extractor_options() -> set[str]:
    from hp_rl.rl.extractor import HubPathwayExtractor

    return _init_parameters(HubPathwayExtractor) - {"observation_space", "hub", "k"}


def _check_hyperparams(algo: str, params: dict[str, Any], with_hub: bool, overridden: set[str], family: str) -> None:
    """Every hyperparameter is a constructor argument of the algorithm (``overridden``: keys given by --set)."""
    from hp_rl.rl.config import check_hyperparam_values
    from hp_rl.rl.training import algo_class

    cls = algo_class(algo, with_hub)
    allowed = _init_parameters(cls) - set(_RESERVED_SET) - _extractor_options()

    def origin(key: str) -> str:
        return f"--set {key}" if key in overridden else f"configs/{algo}.yml, section {family}, key {key}"

    for key in params:
        where = origin(key)
        if key in _RESERVED_SET:
            raise CliError(f"{where}: {key} cannot be set this way; {_RESERVED_SET[key]}.")
        if key in _extractor_options():
            raise CliError(f"{where}: {key} is an option of the hub extractor; use --hub-set {key}=VALUE.")
        if key not in allowed:
            raise CliError(
                f"{where}: {cls.__name__} has no hyperparameter {key!r}.{_closest(key, sorted(allowed))} "
                f"Valid keys: {', '.join(sorted(allowed))}."
            )
    check_hyperparam_values(params, origin, CliError)


def _check_hub_kwargs(hub_kwargs: dict[str, Any], from_flags: set[str]) -> None:
    """Every ``--hub-set`` key is an extractor option and every value one it accepts (``from_flags``: keys
    that a flag of their own gave, such as ``--explore-coef``)."""
    from hp_rl.hub.options import check_pathway_options

    options = _extractor_options()
    for key in hub_kwargs:
        if key == "k":
            raise CliError("--hub-set k=...: give the number of experts per observation with -k.")
        if key not in options:
            raise CliError(
                f"--hub-set {key}=...: the hub extractor has no option {key!r}.{_closest(key, sorted(options))} "
                f"Valid options: {', '.join(sorted(options))}."
            )
    try:
        check_pathway_options(
            hub_kwargs, lambda key: f"--{key.replace('_', '-')}" if key in from_flags else f"--hub-set {key}"
        )
    except HpRlError as error:
        raise CliError(str(error)) from error


def _apply_preset(
    name: str, algo: str, args: argparse.Namespace, hub_kwargs: dict[str, Any], params: dict[str, Any], k: int
) -> int:
    """Fill in a named preset's options (``--hub-set preset=NAME``) under what the command line gives.

    :return: the number of routed experts: ``-k`` if given, else the preset's.
    """
    from hp_rl.rl.presets import ALGORITHM_KEYS, pathway_preset

    try:
        values = pathway_preset(name)
    except ValueError as error:
        raise CliError(f"--hub-set preset={name}: {error}") from error
    if algo == "dqn" and values.get("aggregation") == "output":
        raise CliError(
            f"--hub-set preset={name} aggregates the experts' policy heads, which needs an actor-critic "
            "algorithm: use --algo ppo or a2c, or --hub-set preset=paper."
        )
    for key, value in values.items():
        if key == "k":
            k = args.k if args.k is not None else int(value)
        elif key in ALGORITHM_KEYS:
            if algo != "dqn" and not (key == "exploit_coef" and args.exploit_coef is not None):
                params.setdefault(key, value)
        else:
            hub_kwargs.setdefault(key, value)
    return k


def _parse_sets(items: list[str], flag: str) -> dict[str, Any]:
    from hp_rl.rl.config import ConfigError, parse_overrides

    try:
        return parse_overrides(items)
    except ConfigError as error:
        raise CliError(str(error).replace("--set", flag)) from error


# --- progress without a terminal ---------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    """``H:MM:SS``, with days in front past 24 hours."""
    days, rest = divmod(int(seconds), 86_400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def _plain_progress(every_s: float = 60.0) -> Any:
    """A callback printing ``step X/N (p%), steps/s, ETA`` lines every ``every_s`` seconds (for log files)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class PlainProgress(BaseCallback):
        def _on_training_start(self) -> None:
            self.start_steps = self.num_timesteps
            self.total = int(self.locals["total_timesteps"])
            self.started = self.last = time.time()

        def _on_step(self) -> bool:
            now = time.time()
            if now - self.last >= every_s:
                self.last = now
                done = self.num_timesteps - self.start_steps
                rate = done / max(now - self.started, 1e-9)
                eta = (self.total - self.num_timesteps) / max(rate, 1e-9)
                print(
                    f"step {self.num_timesteps}/{self.total} ({100 * self.num_timesteps / max(self.total, 1):.0f}%), "
                    f"{rate:.0f} steps/s, ETA {_duration(eta)}",
                    flush=True,
                )
            return True

    return PlainProgress()


# --- commands ----------------------------------------------------------------------------------------------------
def config_and_env(args: argparse.Namespace) -> tuple[Any, Any]:
    """The run config of a new run, and its training environment (built before the hub is resolved, so an
    unknown environment id is reported as such)."""
    from hp_rl.rl.config import ConfigError, apply_overrides, load_hyperparams
    from hp_rl.rl.envs import load_presets, preset_for
    from hp_rl.rl.training import algo_class

    if args.env is None:
        raise CliError("No environment given: add --env ENV_ID (for example --env CartPole-v1), or --resume RUN.")
    algo = (args.algo or "ppo").lower()
    algo_class(algo, with_hub=False)  # UnknownAlgoError names the valid ones
    if args.env_preset is not None and args.env_preset not in load_presets():
        presets = sorted(load_presets())
        raise CliError(
            f"Unknown --env-preset {args.env_preset!r}.{_closest(args.env_preset, presets)} "
            f"Presets (envs/*.yml): {', '.join(presets)}."
        )
    family = preset_for(args.env, args.env_preset).family
    overrides = _parse_sets(args.set, "--set")
    try:
        params = apply_overrides(load_hyperparams(algo, family), overrides)
    except ConfigError as error:
        raise CliError(str(error)) from error
    n_envs = int(args.n_envs if args.n_envs is not None else params.get("n_envs", 1))
    n_timesteps = args.n_timesteps if args.n_timesteps is not None else params.get("n_timesteps")
    params.pop("n_envs", None)
    params.pop("n_timesteps", None)
    if n_timesteps is None:
        raise CliError(f"configs/{algo}.yml has no n_timesteps for the {family!r} family: give -n STEPS.")
    for flag, value in (("-n", n_timesteps), ("--n-envs", n_envs)):
        if int(value) < 1:
            raise CliError(f"{flag} {value}: must be at least 1.")

    seed = args.seed if args.seed is not None else 0
    if not 0 <= seed < 2**32:
        raise CliError(f"--seed {seed}: must be a whole number between 0 and {2**32 - 1}.")
    _check_run_flags(args)
    from hp_rl.rl.models import apply_threads

    apply_threads(args.threads or 0, args.device or "auto")  # before the first network or environment exists
    env = _make_env(args.env, n_envs, seed, args.env_preset, args.nonfinite_obs or "error")
    try:
        if algo == "dqn" and not isinstance(env.action_space, gym.spaces.Discrete):
            raise CliError(
                f"DQN needs discrete actions, but {args.env} has {env.action_space}: use --algo ppo or --algo a2c."
            )
        config = _hub_config(args, algo, family, params)
    except BaseException:
        env.close()
        raise
    config.n_timesteps, config.n_envs, config.seed = int(n_timesteps), n_envs, seed
    try:
        config.validate()
    except HpRlError:
        env.close()
        raise
    return config, env


def _check_run_flags(args: argparse.Namespace) -> None:
    """The flags that need no environment: device, log folder, frequencies, counts."""
    from hp_rl.rl.models import check_device

    if args.device is not None:
        check_device(args.device, "--device")
    for flag, value, low in (
        ("--eval-freq", args.eval_freq, 0),
        ("--save-freq", args.save_freq, 0),
        ("--eval-episodes", args.eval_episodes, 1),
        ("--keep-checkpoints", args.keep_checkpoints, 0),
        ("--threads", args.threads, 0),
    ):
        if value is not None and value < low:
            raise CliError(f"{flag} {value}: must be at least {low}.")
    if args.tensorboard_log is not None:
        _check_log_root(Path(args.tensorboard_log))


def _check_log_root(root: Path) -> None:
    """``root`` is a folder, or can become one (nothing in its way is a file)."""
    check_path_text(str(root), "--tensorboard-log")
    for parent in (root, *root.parents):
        try:
            if parent.exists():
                if not parent.is_dir():
                    raise CliError(
                        f"--tensorboard-log {root}: {parent} is a file, not a folder; give a folder "
                        "for the run folders (default: runs)."
                    )
                return
        except OSError as error:
            raise CliError(f"--tensorboard-log {root}: not a usable folder name ({error.strerror}).") from error


def _make_env(env_id: str, n_envs: int, seed: int, preset: str | None, nonfinite: str) -> Any:
    from hp_rl.rl.envs import make_env

    try:
        return make_env(env_id, n_envs, seed, preset, nonfinite=nonfinite)
    except gym.error.DependencyNotInstalled as error:
        raise CliError(f"{env_id} cannot be built: {error}") from error


def _hub_config(args: argparse.Namespace, algo: str, family: str, params: dict[str, Any]) -> Any:
    """The run config (step counts and seed filled in by the caller) with the hub resolved and checked."""
    from hp_rl.hub import HubSpecError, parse_hub
    from hp_rl.rl.checkpoints import DEFAULT_KEEP_CHECKPOINTS
    from hp_rl.rl.runs import RunConfig

    hub = resolve_hub(args.hub or "auto", args.env, family)
    k = args.k if args.k is not None else 2
    hub_kwargs = _parse_sets(args.hub_set, "--hub-set")
    if args.explore_coef is not None:
        hub_kwargs["explore_coef"] = args.explore_coef
    preset = hub_kwargs.pop("preset", None)
    if preset is not None and hub is not None:
        k = _apply_preset(str(preset), algo, args, hub_kwargs, params, k)
    if isinstance(hub_kwargs.get("prior"), str) and hub_kwargs["prior"] != "auto":  # keep values, not a path
        from hp_rl.rl.scoring import read_prior

        try:
            hub_kwargs["prior"] = read_prior(hub_kwargs["prior"])
        except ValueError as error:
            raise CliError(f"--hub-set {error}") from error
    if hub is None:
        if hub_kwargs or args.exploit_coef is not None:
            raise CliError(
                "--hub-set, --explore-coef and --exploit-coef configure a hub, but --hub is none: "
                "give a hub (--hub random:4, --hub spec.yml, ...) or drop those flags."
            )
    else:
        _check_hub_kwargs(hub_kwargs, {"explore_coef"} if args.explore_coef is not None else set())
        try:
            spec = parse_hub(hub)
        except HubSpecError as error:
            raise CliError(str(error)) from error
        m = len(spec.experts)
        if not hub_kwargs.get("dense") and not 1 <= k <= m:
            raise CliError(
                f"-k {k} is out of range: the hub {spec.origin} has {m} expert(s) "
                f"({', '.join(spec.names)}); use -k between 1 and {m} (or --hub-set dense=true)."
            )
        if args.exploit_coef is not None:
            if algo == "dqn":
                raise CliError(
                    "--exploit-coef is a HubPPO/HubA2C option; DQN trains without the exploitation loss. "
                    "Use --algo ppo or a2c, or drop --exploit-coef."
                )
            params["exploit_coef"] = args.exploit_coef
    overridden = {key.split(".")[0] for key in _parse_sets(args.set, "--set")}
    _check_hyperparams(
        algo, params, hub is not None, overridden | {"exploit_coef", "kickstart_coef", "kickstart_fraction"}, family
    )
    return RunConfig(
        algo=algo,
        env_id=args.env,
        hub=hub,
        k=k,
        env_preset=args.env_preset,
        eval_freq=args.eval_freq if args.eval_freq is not None else 25_000,
        eval_episodes=args.eval_episodes if args.eval_episodes is not None else 5,
        save_freq=args.save_freq if args.save_freq is not None else 100_000,
        device=args.device or "auto",
        hyperparams=params,
        hub_kwargs=hub_kwargs,
        keep_checkpoints=args.keep_checkpoints if args.keep_checkpoints is not None else DEFAULT_KEEP_CHECKPOINTS,
        nonfinite_obs=args.nonfinite_obs or "error",
        threads=args.threads if args.threads is not None else 0,
    )


def build_or_close(config: Any, env: Any, verbose: int) -> Any:
    """The model (errors in the hub's files surface here as hp_rl.hub exceptions)."""
    from hp_rl.rl.training import build_model

    try:
        return build_model(config, env, None, verbose=verbose)
    except BaseException:
        env.close()
        raise


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
        f"Done: {outcome.model.num_timesteps} steps ({rate:.0f} steps/s). Model: {outcome.final_model}\n"
        f"Evaluate with: python -m hp_rl.evaluate {folder.path}",
        flush=True,
    )
    return 0


def _progress(args: argparse.Namespace) -> tuple[bool, list[Any]]:
    if args.no_progress:
        return False, []
    if sys.stdout.isatty():
        return True, []
    return False, [_plain_progress()]


def _train_new(args: argparse.Namespace, argv: list[str]) -> int:
    from hp_rl.rl.runs import RunFolder
    from hp_rl.rl.training import run_training

    config, env = config_and_env(args)
    sb3_verbose = min(args.verbose, 2)
    model = build_or_close(config, env, sb3_verbose)
    dense = bool(config.hub_kwargs.get("dense"))
    root = Path(args.tensorboard_log or "runs")
    name = run_name(config.algo, config.env_id, config.hub, config.k, config.env_preset, dense)
    try:
        folder = RunFolder.create(root, name)
    except OSError as error:
        env.close()
        raise CliError(f"--tensorboard-log {root}: cannot create a run folder there ({error}).") from error
    try:
        with folder.locked():
            folder.write_start(config, argv)
            hub_text = "none (plain SB3 policy)" if config.hub is None else f"{config.hub} (k={config.k})"
            print(
                f"Run folder: {folder.path}\n{config.algo} on {config.env_id} for {config.n_timesteps} steps, "
                f"{config.n_envs} env(s), hub {hub_text}. TensorBoard: tensorboard --logdir {root}",
                flush=True,
            )
            progress_bar, callbacks = _progress(args)
            outcome = run_training(
                config, folder, progress_bar=progress_bar, verbose=sb3_verbose, model=model, callbacks=callbacks
            )
    except KeyboardInterrupt:
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


def _resume(args: argparse.Namespace, argv: list[str], given: set[str]) -> int:
    from hp_rl.rl.checkpoints import load_latest
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.models import apply_threads, check_device
    from hp_rl.rl.runs import RunConfig, RunFolder, latest_checkpoint
    from hp_rl.rl.training import run_training

    folder = RunFolder(Path(args.resume))
    if not folder.config.is_file():
        raise CliError(
            f"--resume {args.resume}: {folder.config} does not exist, so this is not a run folder. "
            "Give a folder made by python -m hp_rl.train (such as runs/ppo_CartPole-v1_nohub_1)."
        )
    try:
        config = RunConfig.from_yaml(folder.config)
    except HpRlError as error:
        raise CliError(f"--resume {args.resume}: cannot read its config: {error}") from error
    found = latest_checkpoint(folder.checkpoints)
    if found is None:
        raise CliError(
            f"--resume {args.resume}: {folder.checkpoints} holds no checkpoint "
            "(rl_model_<steps>_steps.zip), so there is nothing to continue. Start a new run with "
            "--algo/--env instead."
        )
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
    if args.threads is not None:
        config.threads = args.threads
    apply_threads(config.threads, config.device)
    if found[1] >= config.n_timesteps and folder.final_model.is_file():
        print(
            f"{folder.path} is already trained for {found[1]} steps (n_timesteps={config.n_timesteps}): nothing to "
            "do. Give a larger -n to train it further."
        )
        return 0
    with folder.locked():  # nothing in the folder changes before a checkpoint has loaded
        env = make_env(
            config.env_id,
            config.n_envs,
            config.seed,
            config.env_preset,
            env_kwargs=config.env_kwargs,
            nonfinite=config.nonfinite_obs,
        )
        try:
            model, path, steps = load_latest(config, folder, env, str(folder.path), verbose=min(args.verbose, 2))
        except BaseException:
            env.close()
            raise
        changed = folder.write_resume(config, argv, steps)
        if changed is not None:
            print(
                f"note: package versions differ from the run's start; the current ones are in {changed}.",
                file=sys.stderr,
            )
        print(f"Resuming {folder.path} from {path.name} (step {steps}) up to {config.n_timesteps}.", flush=True)
        progress_bar, callbacks = _progress(args)
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
    try:
        if args.resume is not None:
            return _resume(args, argv, _given(argv, parser))
        return _train_new(args, argv)
    except HpRlError as error:
        if args.verbose >= 2:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted before training started (or by a second signal): nothing was saved.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
