"""Environment construction from the presets in ``envs/`` (Atari, classic control, pixels, MinAtar)."""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper, VecFrameStack

from hp_rl.core.errors import HpRlError
from hp_rl.core.paths import ENV_PRESET_DIR, require_dir
from hp_rl.core.yaml_files import check_keys, read_yaml_mapping

__all__ = [
    "EnvPreset",
    "UnknownEnvError",
    "BrokenEnvironmentError",
    "GuardedEnv",
    "NonFiniteObservationError",
    "FiniteObservations",
    "FireAfterLifeLoss",
    "load_presets",
    "preset_for",
    "make_env",
    "register_env_families",
    "MinAtarObservation",
    "PhysicsVariant",
    "env_meanings",
]


class UnknownEnvError(HpRlError, ValueError):
    """An environment id that no installed package registers."""


@dataclass(frozen=True)
class EnvPreset:
    """How one family of environments is built (one YAML file in ``envs/``).

    :param family: family name; also the key of the hyperparameter section in ``configs/<algo>.yml``.
    :param match: glob patterns of environment ids that belong to the family.
    :param wrapper: ``atari``, ``pixels``, ``minatar`` or ``none``.
    :param frame_stack: frames stacked by ``VecFrameStack`` (0 for none).
    :param size: frame size for ``pixels``.
    :param eval_wrapper_kwargs: wrapper arguments that evaluation uses instead of training's.
    :param eval_env_kwargs: ``gym.make`` arguments evaluation adds (Atari: the 108,000-frame episode cap);
        a run's own ``env_kwargs`` take precedence.
    """

    family: str
    match: tuple[str, ...] = ()
    wrapper: str = "none"
    frame_stack: int = 0
    size: int = 84
    eval_wrapper_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_env_kwargs: dict[str, Any] = field(default_factory=dict)


@cache
def load_presets() -> dict[str, EnvPreset]:
    """Every preset in ``envs/``, by family name."""
    presets = {}
    for path in sorted(require_dir(ENV_PRESET_DIR, "environment presets").glob("*.yml")):
        raw = read_yaml_mapping(path, "environment preset")
        check_keys(raw, {f.name for f in fields(EnvPreset)}, str(path))
        raw["match"] = tuple(raw.get("match") or ())
        presets[raw["family"]] = EnvPreset(**raw)
    return presets


def register_env_families() -> None:
    """Make the Atari and MinAtar ids known to gymnasium (each import is optional)."""
    try:
        import ale_py

        gym.register_envs(ale_py)
    except ImportError:
        pass
    try:
        from minatar import gym as minatar_gym

        if "MinAtar/Breakout-v1" not in gym.registry:
            minatar_gym.register_envs()
    except ImportError:
        pass


def _check_env_id(env_id: str) -> None:
    register_env_families()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    extra = ""
    if "NoFrameskip" in env_id or env_id.startswith("ALE/"):
        extra = " Atari games need ale-py: pip install -e '.[atari]'."
    elif env_id.startswith("MinAtar/"):
        extra = " MinAtar games need: pip install minatar."
    raise UnknownEnvError(f"Unknown environment id {env_id!r}.{hint}{extra}")


def preset_for(env_id: str, preset: str | None = None) -> EnvPreset:
    """The preset named ``preset``, or the first whose ``match`` patterns cover ``env_id`` (else ``control``)."""
    presets = load_presets()
    if preset is not None:
        if preset not in presets:
            raise UnknownEnvError(f"Unknown env preset {preset!r}; choose one of {', '.join(sorted(presets))}.")
        return presets[preset]
    for candidate in presets.values():
        if any(fnmatch.fnmatch(env_id, pattern) for pattern in candidate.match):
            return candidate
    return presets["control"]


class MinAtarObservation(gym.ObservationWrapper):
    """MinAtar's boolean ``(10, 10, C)`` frames as float32 ``(C, 10, 10)`` in [0, 1]."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        height, width, channels = env.observation_space.shape  # type: ignore[misc]
        self.observation_space = gym.spaces.Box(0.0, 1.0, (channels, height, width), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(observation, (2, 0, 1)), dtype=np.float32)


def _cartpole_derived(env: Any) -> None:
    env.total_mass = env.masspole + env.masscart
    env.polemass_length = env.masspole * env.length


# Quantities an environment computes from its physical constants in __init__, recomputed after a change.
_DERIVED: dict[str, Callable[[Any], None]] = {"CartPoleEnv": _cartpole_derived}


class PhysicsVariant(gym.Wrapper):
    """Changes physical constants of a task (pole length, masses, gravity) on its unwrapped environment.

    Given in ``env_kwargs`` under the key ``physics`` (``{physics: {length: 1.0, masspole: 0.3}}`` for CartPole,
    ``{physics: {LINK_MASS_1: 2.0}}`` for Acrobot, ``{physics: {g: 5.0}}`` for Pendulum), so recipes and run
    configs name a variant as they name any other environment argument.

    :param env: the environment.
    :param physics: attribute -> new numeric value; each must already be a numeric attribute of the task.
    :raises ValueError: for an attribute the task does not have or a value that is not a finite number.
    """

    def __init__(self, env: gym.Env, physics: dict[str, float]) -> None:
        super().__init__(env)
        base = env.unwrapped
        for name, value in physics.items():
            current = getattr(base, name, None)
            if isinstance(current, bool) or not isinstance(current, int | float):
                numeric = sorted(k for k, v in vars(base).items() if isinstance(v, float) and not k.startswith("_"))
                numeric += sorted(k for k, v in vars(type(base)).items() if isinstance(v, float) and k.isupper())
                raise UnknownEnvError(
                    f"physics: {type(base).__name__} has no numeric constant {name!r}; "
                    f"it has {', '.join(numeric) or 'none'}."
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise UnknownEnvError(f"physics: {name} must be a finite number, got {value!r}.")
            setattr(base, name, float(value))
        derive = _DERIVED.get(type(base).__name__)
        if derive is not None:
            derive(base)


def _pixel_wrapper(size: int) -> Callable[[gym.Env], gym.Env]:
    def wrap(env: gym.Env) -> gym.Env:
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # render off-screen: no display needed
        env = gym.wrappers.AddRenderObservation(env, render_only=True)
        env = gym.wrappers.ResizeObservation(env, (size, size))
        return gym.wrappers.GrayscaleObservation(env, keep_dim=True)

    return wrap


def _preset_wrapper(
    chosen: EnvPreset, env_id: str, kwargs: dict[str, Any], evaluation: bool
) -> tuple[Callable[..., gym.Env] | None, dict[str, Any] | None]:
    """The wrapper the preset names and its arguments (``kwargs``, the ``gym.make`` arguments, completed in place)."""
    if chosen.wrapper == "atari":
        from stable_baselines3.common.atari_wrappers import AtariWrapper

        if env_id.startswith("ALE/"):  # v5 ids skip 4 frames themselves; AtariWrapper skips (and max-pools) 4 more
            kwargs.setdefault("frameskip", 1)
        if evaluation:
            return _atari_evaluation, dict(chosen.eval_wrapper_kwargs)
        return AtariWrapper, None
    if chosen.wrapper == "pixels":
        kwargs.setdefault("render_mode", "rgb_array")
        return _pixel_wrapper(chosen.size), None
    if chosen.wrapper == "minatar":
        return MinAtarObservation, None
    if chosen.wrapper != "none":
        raise UnknownEnvError(f"Preset {chosen.family!r} names unknown wrapper {chosen.wrapper!r}.")
    return None, None


def _with_physics(
    physics: Any, wrapper: Callable[..., gym.Env] | None, wrapper_kwargs: dict[str, Any] | None
) -> tuple[Callable[..., gym.Env], dict[str, Any] | None]:
    """``wrapper`` applied over the task with its physical constants changed (:class:`PhysicsVariant`)."""
    if not isinstance(physics, dict):
        raise UnknownEnvError(f"env_kwargs 'physics' must be a mapping of constants to values, got {physics!r}.")
    outer, outer_kwargs = wrapper, dict(wrapper_kwargs or {})

    def with_physics(env: gym.Env, **extra: Any) -> gym.Env:
        env = PhysicsVariant(env, physics)
        return outer(env, **extra) if outer is not None else env

    return with_physics, outer_kwargs or None


def make_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = None,
    preset: str | None = None,
    evaluation: bool = False,
    subprocess: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    nonfinite: str | None = "error",
) -> VecEnv:
    """A vectorised environment built as its family's preset says.

    :param env_id: a gymnasium id (Atari ids need ale-py; MinAtar ids need minatar).
    :param n_envs: parallel copies.
    :param seed: base seed (copy i gets ``seed + i``).
    :param preset: force a family preset (``control_pixels`` to learn a control task from pixels).
    :param evaluation: use the preset's evaluation settings (Atari: whole games, unclipped score).
    :param subprocess: one process per copy (``SubprocVecEnv``) instead of stepping them in turn.
    :param env_kwargs: keyword arguments for ``gym.make``; the key ``physics`` instead changes physical
        constants of the task (:class:`PhysicsVariant`).
    :param nonfinite: NaN/inf in float observations: ``error``, ``sanitize`` (:class:`FiniteObservations`) or
        ``None`` (not checked).
    :raises UnknownEnvError: for an id no installed package registers, with the closest ids.
    """
    _check_env_id(env_id)
    chosen = preset_for(env_id, preset)
    kwargs = dict(env_kwargs or {})
    physics = kwargs.pop("physics", None)
    vec_cls = SubprocVecEnv if subprocess and n_envs > 1 else DummyVecEnv
    if evaluation:
        kwargs = {**chosen.eval_env_kwargs, **kwargs}
    wrapper, wrapper_kwargs = _preset_wrapper(chosen, env_id, kwargs, evaluation)
    if physics:
        wrapper, wrapper_kwargs = _with_physics(physics, wrapper, wrapper_kwargs)
    try:
        if vec_cls is SubprocVecEnv:  # a copy failing in its own process shows only as its traceback and a broken pipe
            gym.make(env_id, **kwargs).close()
        env: VecEnv = make_vec_env(
            env_id,
            n_envs=n_envs,
            seed=seed,
            vec_env_cls=vec_cls,
            wrapper_class=wrapper,
            wrapper_kwargs=wrapper_kwargs,
            env_kwargs=kwargs,
        )
    except Exception as error:  # the environment's own code (or its arguments) failed: the user's to fix
        raise BrokenEnvironmentError(
            f"gym.make({env_id!r}, **{kwargs!r}) failed: {type(error).__name__}: {error}. Check the environment's "
            "arguments (--env-kwargs, or env_kwargs in the run's config.yml)."
        ) from error
    env = GuardedEnv(env, env_id)
    if nonfinite is not None and np.issubdtype(env.observation_space.dtype or np.uint8, np.floating):
        env = FiniteObservations(env, nonfinite, env_id)  # integer frames cannot hold NaN: nothing to check
    if chosen.frame_stack:
        env = VecFrameStack(env, n_stack=chosen.frame_stack)
    return env


class FireAfterLifeLoss(gym.Wrapper):
    """Presses FIRE once after each lost life, in games whose ball or round only starts on FIRE.

    Evaluation plays whole games; SB3's ``AtariWrapper`` fires only at reset, so a greedy policy that never
    chose FIRE in training (where a lost life ended the episode) would wait out the frame cap after its
    first lost life. The FIRE step's reward counts; if it ends the game, the episode ends there.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
        self.fire = meanings.index("FIRE") if "FIRE" in meanings else None
        self.lives = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        self.lives = self.env.unwrapped.ale.lives()  # type: ignore[attr-defined]
        return observation, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()  # type: ignore[attr-defined]
        lost, self.lives = lives < self.lives, lives
        if lost and lives > 0 and self.fire is not None and not (terminated or truncated):
            observation, extra, terminated, truncated, info = self.env.step(self.fire)
            reward = float(reward) + float(extra)
            self.lives = self.env.unwrapped.ale.lives()  # type: ignore[attr-defined]
        return observation, reward, terminated, truncated, info


def _atari_evaluation(env: gym.Env, **kwargs: Any) -> gym.Env:
    """SB3's Atari preprocessing for whole-game evaluation, with FIRE after a lost life."""
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    return FireAfterLifeLoss(AtariWrapper(env, **kwargs))


class BrokenEnvironmentError(HpRlError, ValueError):
    """The environment failed: it raised, or returned what its spaces do not allow (training keeps its last
    checkpoint and stops with exit 2)."""


class NonFiniteObservationError(BrokenEnvironmentError):
    """An environment returned an observation holding NaN or inf."""


class GuardedEnv(VecEnvWrapper):
    """Turns an environment's own failures into :class:`BrokenEnvironmentError`: an exception while it steps or resets,
    an observation its space cannot hold, a NaN or infinite reward (which would make every loss NaN).

    :param venv: the environments.
    :param env_id: the environment's id, for the message.
    """

    def __init__(self, venv: VecEnv, env_id: str) -> None:
        super().__init__(venv)
        self.env_id = env_id
        self.steps = 0

    def _fault(self, what: str) -> BrokenEnvironmentError:
        return BrokenEnvironmentError(
            f"{self.env_id} {what} (step {self.steps} of each copy). This is the environment's error; fix it and "
            "resume: the last checkpoint is kept."
        )

    def reset(self) -> Any:
        """Reset every copy."""
        try:
            return self.venv.reset()
        except Exception as error:  # any error of the environment's own code
            raise self._fault(f"failed at reset: {type(error).__name__}: {error}") from error

    def step_wait(self) -> Any:
        """Step every copy; checks the rewards."""
        self.steps += 1
        try:
            obs, rewards, dones, infos = self.venv.step_wait()
        except Exception as error:  # any error of the environment's own code, or an observation that does not fit
            raise self._fault(f"failed: {type(error).__name__}: {error}") from error
        if not np.isfinite(rewards).all():
            raise self._fault(
                f"returned the reward(s) {rewards[~np.isfinite(rewards)].tolist()}, which no loss can use"
            )
        return obs, rewards, dones, infos


class FiniteObservations(VecEnvWrapper):
    """Stops at (``mode="error"``) or replaces with 0 (``mode="sanitize"``, counted) NaN and inf in observations.

    A non-finite observation would give the pathway generator NaN logits and route that row to no expert.

    :param venv: the environments.
    :param mode: ``error`` or ``sanitize``.
    :param env_id: the environment's id, for the message.
    """

    def __init__(self, venv: VecEnv, mode: str, env_id: str) -> None:
        if mode not in ("error", "sanitize"):
            raise NonFiniteObservationError(f"nonfinite_obs={mode!r}: choose error or sanitize.")
        super().__init__(venv)
        self.mode = mode
        self.env_id = env_id
        self.steps = 0
        self.sanitized_values = 0

    def _check(self, obs: np.ndarray, when: str) -> np.ndarray:
        finite = np.isfinite(obs)
        if finite.all():
            return obs
        if self.mode == "sanitize":
            self.sanitized_values += int((~finite).sum())
            return np.where(finite, obs, 0).astype(obs.dtype)
        rows = np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(axis=1))
        raise NonFiniteObservationError(
            f"{self.env_id} returned an observation with {int((~finite).sum())} NaN/inf value(s) {when} (env "
            f"copy {int(rows[0])}; {self.steps} steps per copy so far). The pathway cannot route it. Fix the "
            "environment, or train with --nonfinite-obs sanitize to replace such values with 0 (counted in "
            "TensorBoard as env/nonfinite_observations); the last checkpoint is kept for --resume."
        )

    def reset(self) -> np.ndarray:
        """Reset every copy; checks the first observations."""
        return self._check(np.asarray(self.venv.reset()), "at reset")

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step every copy; checks the observations (and each finished episode's terminal one)."""
        obs, rewards, dones, infos = self.venv.step_wait()
        self.steps += 1
        for info in infos:
            terminal = info.get("terminal_observation")
            if isinstance(terminal, np.ndarray):
                info["terminal_observation"] = self._check(terminal[None], f"at step {self.steps}")[0]
        return self._check(np.asarray(obs), f"at step {self.steps}"), rewards, dones, infos


def env_meanings(env: VecEnv | gym.Env) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """What the observation channels and the actions of an environment mean, where it says.

    - MinAtar: channel names from ``game.env.channels`` (ordered by index), and each action of the (minimal
      or full) action set named from MinAtar's full set (``NOOP``, ``LEFT``, ``UP``, ``RIGHT``, ``DOWN``,
      ``FIRE``).
    - ALE: ``get_action_meanings()``; frames are grey stacks with no named channels.
    - Any other discrete action space: ``"<task>#<index>"`` (the id without its version), so that physics
      variants of one task map their actions onto each other and different tasks do not.

    :param env: a vectorised environment (its first copy is asked) or a plain gymnasium environment.
    :return: ``(channel_names, action_meanings)``, each ``None`` where unknown.
    """
    from hp_rl.hub.meanings import MINATAR_FULL_ACTIONS

    if isinstance(env, VecEnv):
        attrs = env.get_attr("unwrapped", [0])
        base: Any = attrs[0]
        action_space = env.action_space
    else:
        base = env.unwrapped
        action_space = env.action_space
    game = getattr(base, "game", None)
    game_env = getattr(game, "env", None)
    channels: tuple[str, ...] | None = None
    if isinstance(getattr(game_env, "channels", None), dict):
        named = sorted(game_env.channels.items(), key=lambda item: item[1])  # type: ignore[union-attr]
        channels = tuple(str(name) for name, _ in named)
    if game_env is not None and hasattr(base, "action_set"):
        return channels, tuple(MINATAR_FULL_ACTIONS[int(a)] for a in base.action_set)
    if hasattr(base, "get_action_meanings"):
        return channels, tuple(str(m) for m in base.get_action_meanings())
    if isinstance(action_space, gym.spaces.Discrete):
        spec = getattr(base, "spec", None)
        task = str(getattr(spec, "id", type(base).__name__)).rsplit("-v", 1)[0]
        return channels, tuple(f"{task}#{i}" for i in range(int(action_space.n)))
    return channels, None
