"""The run configuration ``python -m hp_rl.train`` builds from its flags, checked before anything is trained.

Every flag and ``--set`` / ``--hub-set`` key is checked here against what the algorithm's constructor, the
hub extractor and the option tables accept, and the hub is resolved (``auto``, a shipped spec by name,
paths made absolute), so that a mistake is one :class:`CliError` naming the flag, the value and the fix,
before an environment or a network exists.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym

from hp_rl.core.errors import CliError, HpRlError
from hp_rl.core.paths import check_path_text, named_hub_spec
from hp_rl.rl.runs import MAX_ENVS, MAX_SEED, MAX_THREADS

__all__ = ["CliError", "config_and_env", "check_run_flags", "hub_tag", "resolve_hub", "run_name"]

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
    for name in ("hub.yaml", "hub.yml"):  # a hub folder (an export): its spec
        with contextlib.suppress(OSError, ValueError):  # names no file system takes are reported below
            if "," not in text and (Path(text).expanduser() / name).is_file():
                return _absolute_entry(str(Path(text) / name))
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
    from hp_rl.hub.options import PATHWAY_OPTIONS

    return set(PATHWAY_OPTIONS) - {"k"}  # -k has its own flag


def _check_hyperparams(algo: str, params: dict[str, Any], with_hub: bool, overridden: set[str], family: str) -> None:
    """Every hyperparameter is a constructor argument of the algorithm (``overridden``: keys given by --set)."""
    from hp_rl.rl.hyperparams import check_hyperparam_values
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
    from hp_rl.hub.options import ALGORITHM_KEYS, pathway_preset

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
    from hp_rl.rl.hyperparams import ConfigError, parse_overrides

    try:
        return parse_overrides(items)
    except ConfigError as error:
        raise CliError(str(error).replace("--set", flag)) from error


# --- the run config ----------------------------------------------------------------------------------------------
def default_eval_freq(n_timesteps: int | None) -> int:
    """Evaluate every 25,000 steps, or ten times in a shorter run (``None``: the family's long default)."""
    if n_timesteps is None:
        return 25_000
    return max(1, min(25_000, int(n_timesteps) // 10))


def config_and_env(args: argparse.Namespace) -> tuple[Any, Any]:
    """The run config of a new run, and its training environment (built before the hub is resolved, so an
    unknown environment id is reported as such)."""
    from hp_rl.rl.envs import load_presets, preset_for
    from hp_rl.rl.hyperparams import ConfigError
    from hp_rl.rl.runs import RunConfig
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
        base = RunConfig.for_task(
            algo, args.env, env_preset=args.env_preset, overrides=overrides, n_timesteps=args.n_timesteps
        )
    except ConfigError as error:
        raise CliError(str(error)) from error
    n_envs = int(args.n_envs if args.n_envs is not None else base.n_envs)
    n_timesteps = base.n_timesteps
    if args.n_timesteps is None and n_timesteps == 0:
        raise CliError(f"configs/{algo}.yml has no n_timesteps for the {family!r} family: give -n STEPS.")
    for flag, value in (("-n", n_timesteps), ("--n-envs", n_envs)):
        if int(value) < 1:
            raise CliError(f"{flag} {value}: must be at least 1.")
    if n_envs > MAX_ENVS:  # each copy is built before the config is checked: bounded here
        raise CliError(f"--n-envs {n_envs}: must be between 1 and {MAX_ENVS}.")

    seed = args.seed if args.seed is not None else 0
    if not 0 <= seed <= MAX_SEED:  # environment and evaluation seeds count up from it
        raise CliError(f"--seed {seed}: must be a whole number between 0 and {MAX_SEED}.")
    check_run_flags(args)
    from hp_rl.rl.models import apply_threads

    apply_threads(args.threads or 0, args.device or "auto")  # before the first network or environment exists
    env_kwargs = _parse_sets(args.env_kwargs, "--env-kwargs")
    env = _make_env(args.env, n_envs, seed, args.env_preset, args.nonfinite_obs or "error", env_kwargs, args.vec_env)
    try:
        if algo == "dqn" and not isinstance(env.action_space, gym.spaces.Discrete):
            raise CliError(
                f"DQN needs discrete actions, but {args.env} has {env.action_space}: use --algo ppo or --algo a2c."
            )
        config = _hub_config(args, algo, family, base, env)
    except BaseException:
        env.close()
        raise
    config.n_timesteps, config.n_envs, config.seed = int(n_timesteps), n_envs, seed
    config.env_kwargs = env_kwargs
    try:
        config.validate()
    except HpRlError:
        env.close()
        raise
    return config, env


def check_run_flags(args: argparse.Namespace) -> None:
    """The flags that need no environment: device, log folder, frequencies, counts."""
    from hp_rl.rl.models import check_device

    if args.device is not None:
        check_device(args.device, "--device")
    for flag, value, low, high in (
        ("--eval-freq", args.eval_freq, 0, None),
        ("--save-freq", args.save_freq, 0, None),
        ("--eval-episodes", args.eval_episodes, 1, None),
        ("--keep-checkpoints", args.keep_checkpoints, 0, None),
        ("--threads", args.threads, 0, MAX_THREADS),  # set before the config is checked: bounded here
    ):
        if value is not None and (value < low or (high is not None and value > high)):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise CliError(f"{flag} {value}: must be {bound}.")
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


def _make_env(
    env_id: str,
    n_envs: int,
    seed: int,
    preset: str | None,
    nonfinite: str,
    env_kwargs: dict[str, Any],
    vec_env: str | None = None,
) -> Any:
    from hp_rl.rl.envs import BrokenEnvironmentError, make_env

    try:
        subprocess = vec_env == "subproc"
        return make_env(env_id, n_envs, seed, preset, nonfinite=nonfinite, env_kwargs=env_kwargs, subprocess=subprocess)
    except BrokenEnvironmentError as error:  # gym.make failed: say which of the user's flags caused it
        cause = error.__cause__
        if isinstance(cause, Exception):
            raise _env_flag_error(cause, env_id, preset, env_kwargs) or error from error
        raise
    except HpRlError:  # already says what is wrong (an unknown id names the closest ones)
        raise
    except (TypeError, ValueError, IndexError, gym.error.Error) as error:  # a preset's wrappers after gym.make
        raise _env_flag_error(error, env_id, preset, env_kwargs) or error from error


def _env_flag_error(error: Exception, env_id: str, preset: str | None, env_kwargs: dict[str, Any]) -> CliError | None:
    """The flag that made building ``env_id`` fail with ``error``, as a message; ``None`` where no flag did."""
    if isinstance(error, gym.error.DependencyNotInstalled):
        return CliError(f"{env_id} cannot be built: {error}")
    if not isinstance(error, TypeError | ValueError | IndexError | gym.error.Error):
        return None
    if env_kwargs:
        given = ", ".join(f"{k}={v!r}" for k, v in env_kwargs.items())
        return CliError(
            f"--env-kwargs {given}: {env_id} does not take them ({type(error).__name__}: {error}). "
            "Give only arguments of the environment's constructor (gym.make)."
        )
    if preset is not None:
        return CliError(
            f"--env-preset {preset} does not fit {env_id} ({type(error).__name__}: {error}); drop --env-preset "
            "to use the preset that matches the id, or choose one made for this kind of environment."
        )
    return None


def _auto_preset(hub: str, algo: str, env: Any) -> str:
    """The preset ``--hub-set preset=auto`` (the default) means for this hub on this target, said on the console."""
    from hp_rl.hub import HubSpecError
    from hp_rl.rl.agent_meanings import choose_preset

    if algo == "dqn":
        name, why = "paper", "DQN has no policy heads to aggregate"
    else:
        try:
            name, why = choose_preset(hub, env)
        except HubSpecError as error:
            raise CliError(str(error)) from error
    logging.getLogger("hp_rl.train").info("Configuration: preset=%s (%s).", name, why)
    return name


def _checked_hub(
    args: argparse.Namespace, algo: str, hub: Any, hub_kwargs: dict[str, Any], params: dict[str, Any], k: int
) -> int:
    """Check the hub options against the hub (its experts, k) and the algorithm; returns the experts routed per
    observation (the preset's k is a most under ``k_from_prior``)."""
    from hp_rl.hub import HubSpecError, parse_hub

    _check_hub_kwargs(hub_kwargs, {"explore_coef"} if args.explore_coef is not None else set())
    try:
        spec = parse_hub(hub)
    except HubSpecError as error:
        raise CliError(str(error)) from error
    m = len(spec.experts)
    if hub_kwargs.get("k_from_prior") is not None and args.k is None:
        k = min(k, m)  # a hub of one agent routes at most that one
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
    return k


def _hub_config(args: argparse.Namespace, algo: str, family: str, base: Any, env: Any) -> Any:
    """The run config ``base`` (:meth:`RunConfig.for_task`; step counts and seed filled in by the caller) with the
    hub resolved and checked and the command line's run flags."""
    from hp_rl.hub.options import ALGORITHM_KEYS, PathwayOptions
    from hp_rl.rl.checkpoints import DEFAULT_KEEP_CHECKPOINTS

    params: dict[str, Any] = base.hyperparams

    hub = resolve_hub(args.hub or "auto", args.env, family)
    k = args.k if args.k is not None else PathwayOptions.k
    hub_kwargs = _parse_sets(args.hub_set, "--hub-set")
    if args.explore_coef is not None:
        hub_kwargs["explore_coef"] = args.explore_coef
    preset = hub_kwargs.pop("preset", "auto")
    if preset is not None and hub is not None:
        if preset == "auto":
            # the paper's configuration is the options' defaults: only a different choice is written out
            preset = _auto_preset(hub, algo, env)
            preset = None if preset == "paper" else preset
        if preset is not None:
            k = _apply_preset(str(preset), algo, args, hub_kwargs, params, k)
    if isinstance(hub_kwargs.get("prior"), str) and hub_kwargs["prior"] != "auto":  # keep values, not a path
        from hp_rl.rl.prior import read_prior

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
        k = _checked_hub(args, algo, hub, hub_kwargs, params, k)
    overridden = {key.split(".")[0] for key in _parse_sets(args.set, "--set")}
    _check_hyperparams(
        algo,
        params,
        hub is not None,
        overridden | set(ALGORITHM_KEYS),
        family,
    )
    return replace(
        base,
        hub=hub,
        k=k,
        eval_freq=args.eval_freq if args.eval_freq is not None else default_eval_freq(args.n_timesteps),
        eval_episodes=args.eval_episodes if args.eval_episodes is not None else 5,
        save_freq=args.save_freq if args.save_freq is not None else 100_000,
        device=args.device or "auto",
        hub_kwargs=hub_kwargs,
        keep_checkpoints=args.keep_checkpoints if args.keep_checkpoints is not None else DEFAULT_KEEP_CHECKPOINTS,
        nonfinite_obs=args.nonfinite_obs or "error",
        threads=args.threads if args.threads is not None else 0,
        vec_env=args.vec_env or "dummy",
    )
