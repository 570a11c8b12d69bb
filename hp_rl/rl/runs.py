"""RL runs: the resolved run config (``config.yml``) and the RL run folder (SB3 checkpoints, ``model.zip``)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from hp_rl.core.errors import ConfigError, HpRlError
from hp_rl.core.run_folder import RunFolder, checkpoints_in
from hp_rl.core.yaml_files import read_yaml

__all__ = [
    "RunConfig",
    "RunConfigError",
    "AgentRunFolder",
    "NONFINITE_MODES",
    "checkpoints_by_step",
]

_CHECKPOINT = re.compile(r"rl_model_(\d+)_steps\.zip")


@dataclass
class RunConfig:
    """Everything that defines a training run; saved as ``config.yml`` and read back by ``--resume``.

    :param algo: ``ppo``, ``a2c`` or ``dqn``.
    :param env_id: gymnasium id.
    :param hub: hub argument (YAML path, checkpoint list, ``random:N``, ``auto``) or ``None`` for the
        plain SB3 policy.
    :param k: experts per observation.
    :param n_timesteps: total environment steps.
    :param seed: random seed.
    :param n_envs: parallel environments.
    :param env_preset: force an ``envs/`` preset (``control_pixels``), or ``None`` to match by id.
    :param eval_freq: evaluate every this many steps (0: never).
    :param eval_episodes: episodes per evaluation.
    :param save_freq: checkpoint every this many steps (0: only at the end and on interruption).
    :param device: torch device.
    :param hyperparams: algorithm keyword arguments after overrides (plain data).
    :param hub_kwargs: extra extractor keyword arguments (noise, coefficients, ...).
    :param env_kwargs: keyword arguments for ``gym.make`` (physics variants of a control task).
    :param keep_checkpoints: periodic checkpoints kept in ``checkpoints/`` (older ones are deleted; 0 keeps all).
    :param nonfinite_obs: what a NaN or infinite observation does: ``error`` (stop with a message naming the
        step) or ``sanitize`` (replace with 0, counted in TensorBoard as ``env/nonfinite_observations``).
    :param threads: torch threads of the training process; 0: one on CPU, torch's default on a GPU
        (:func:`hp_rl.rl.models.apply_threads`).
    :param vec_env: ``dummy`` (the copies step in turn in this process) or ``subproc`` (one process per copy,
        SB3's ``SubprocVecEnv``: faster where stepping the environment dominates, as on Atari).
    """

    algo: str
    env_id: str
    hub: str | None
    k: int = 2
    n_timesteps: int = 0
    seed: int = 0
    n_envs: int = 1
    env_preset: str | None = None
    eval_freq: int = 0
    eval_episodes: int = 5
    save_freq: int = 0
    device: str = "auto"
    hyperparams: dict[str, Any] = field(default_factory=dict)
    hub_kwargs: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    keep_checkpoints: int = 5
    nonfinite_obs: str = "error"
    threads: int = 0
    vec_env: str = "dummy"

    @classmethod
    def for_task(
        cls,
        algo: str,
        env_id: str,
        *,
        env_preset: str | None = None,
        env_kwargs: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
        n_timesteps: int | None = None,
        n_envs: int | None = None,
        **run: Any,
    ) -> RunConfig:
        """A run of ``algo`` on ``env_id`` with its family's hyperparameters (``configs/<algo>.yml``) and dotted
        ``overrides``: the one place a run's config is made (``hp_rl.train``'s command line, the hub builder,
        distillation's student, the benchmarks); without ``hub`` the plain network, as ``--hub none`` trains it.

        :param n_timesteps: the run's steps (default: the family's ``n_timesteps``; 0 where it has none).
        :param n_envs: environment copies (default: the family's ``n_envs``, else 1).
        :param run: any other field (``hub``, ``k``, ``hub_kwargs``, ``seed``, ``device``, ``save_freq``, ...).
        """
        from hp_rl.rl.envs import preset_for
        from hp_rl.rl.hyperparams import apply_overrides, load_hyperparams

        params = apply_overrides(load_hyperparams(algo, preset_for(env_id, env_preset).family), overrides or {})
        # the run's steps and copies are fields of their own, as hp_rl.train keeps them, not algorithm arguments
        family_steps, family_envs = int(params.pop("n_timesteps", 0)), int(params.pop("n_envs", 1))
        return cls(
            algo=algo,
            env_id=env_id,
            hub=run.pop("hub", None),
            n_timesteps=family_steps if n_timesteps is None else n_timesteps,
            n_envs=family_envs if n_envs is None else n_envs,
            env_preset=env_preset,
            hyperparams=params,
            env_kwargs=dict(env_kwargs or {}),
            **run,
        )

    def to_yaml(self) -> str:
        """The config as YAML."""
        return yaml.safe_dump(asdict(self), sort_keys=False)

    def validate(self, origin: str | None = None) -> RunConfig:
        """Check every field's type and range; returns ``self``.

        :param origin: the file the config was read from (messages then name its keys), or ``None`` for a
            config made from the command line (messages name the flags).
        :raises RunConfigError: naming the key or flag, the value and what is accepted.
        """

        def where(name: str) -> str:
            return f"{origin}: key {name}" if origin else _FLAGS.get(name, name)

        def integer(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            bad_type = isinstance(value, bool) or not isinstance(value, int)
            if bad_type or value < low or (high is not None and value > high):
                limit = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise RunConfigError(f"{where(name)}: {value!r} must be a whole number {limit}.")

        for name in ("algo", "env_id", "device", "nonfinite_obs", "vec_env"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise RunConfigError(f"{where(name)}: {getattr(self, name)!r} must be a non-empty string.")
        for name in ("hub", "env_preset"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise RunConfigError(f"{where(name)}: {getattr(self, name)!r} must be a string.")
        integer("k", 1)
        integer("n_timesteps", 1, MAX_TIMESTEPS)
        integer("seed", 0, MAX_SEED)
        integer("n_envs", 1, MAX_ENVS)
        integer("eval_freq", 0)
        integer("eval_episodes", 1)
        integer("save_freq", 0)
        integer("keep_checkpoints", 0)
        integer("threads", 0, MAX_THREADS)
        if self.nonfinite_obs not in NONFINITE_MODES:
            raise RunConfigError(
                f"{where('nonfinite_obs')}: {self.nonfinite_obs!r}; choose one of {', '.join(NONFINITE_MODES)}."
            )
        if self.vec_env not in VEC_ENVS:
            raise RunConfigError(f"{where('vec_env')}: {self.vec_env!r}; choose one of {', '.join(VEC_ENVS)}.")
        for name in ("hyperparams", "hub_kwargs", "env_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise RunConfigError(f"{where(name)}: must be a mapping, got {getattr(self, name)!r}.")
        return self

    @classmethod
    def from_yaml(cls, path: Path) -> RunConfig:
        """Read and validate a ``config.yml`` written by :meth:`to_yaml`.

        :raises RunConfigError: for a file that is not such a mapping (naming the unknown or missing keys)
            or holds a value out of range.
        """
        try:
            raw = read_yaml(path, "run configuration")
        except ConfigError as error:
            raise RunConfigError(str(error)) from None
        if not isinstance(raw, dict):
            raise RunConfigError(f"{path} does not hold a run configuration (a mapping with algo, env_id, hub, ...).")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(raw) - known)
        missing = sorted(name for name in ("algo", "env_id", "hub") if name not in raw)
        if unknown or missing:
            raise RunConfigError(
                f"{path}: unknown key(s) {unknown}, missing key(s) {missing}; known keys: {sorted(known)}."
            )
        return cls(**raw).validate(str(path))


# The largest --seed: environments are seeded seed + copy index, evaluations seed + 10,000 and seed + 20,000, and
# NumPy takes seeds below 2**32 only.
MAX_SEED = 2**32 - 1 - 100_000


class RunConfigError(HpRlError, ValueError):
    """A run configuration (``config.yml`` or the flags that make one) holds a bad value."""


NONFINITE_MODES = ("error", "sanitize")
MAX_ENVS = 1024
MAX_TIMESTEPS = 10**12  # ~30 years at 1,000 steps/s: a larger -n is a typo, not a plan
MAX_THREADS = 1024
VEC_ENVS = ("dummy", "subproc")
# RunConfig field -> the hp_rl.train flag that sets it, for messages about command-line values.
_FLAGS = {
    "k": "-k",
    "n_timesteps": "-n",
    "seed": "--seed",
    "n_envs": "--n-envs",
    "eval_freq": "--eval-freq",
    "eval_episodes": "--eval-episodes",
    "save_freq": "--save-freq",
    "device": "--device",
    "keep_checkpoints": "--keep-checkpoints",
    "nonfinite_obs": "--nonfinite-obs",
    "vec_env": "--vec-env",
    "threads": "--threads",
    "env_preset": "--env-preset",
    "hub": "--hub",
    "algo": "--algo",
    "env_id": "--env",
}


def checkpoints_by_step(folder: Path) -> list[tuple[Path, int]]:
    """Every checkpoint ``rl_model_<steps>_steps.zip`` in ``folder`` with its step count, newest first."""
    return checkpoints_in(folder, _CHECKPOINT)


@dataclass(frozen=True)
class AgentRunFolder(RunFolder):
    """The folder of one RL run (``python -m hp_rl.train``): SB3 checkpoints ``rl_model_<steps>_steps.zip``,
    ``model.zip``, the run's copy of its hub spec, evaluation results and the best model.

    :param path: the run directory.
    """

    module: ClassVar[str] = "hp_rl.train"
    checkpoint_pattern: ClassVar[re.Pattern[str]] = _CHECKPOINT
    recorded_packages: ClassVar[tuple[str, ...]] = ("stable_baselines3", "gymnasium", "ale_py", "minatar")

    @property
    def final_model(self) -> Path:
        return self.path / "model.zip"

    @property
    def hub_spec(self) -> Path:
        """The run's own copy of its hub spec (absolute paths), so it resumes without the original file."""
        return self.path / "hub.yml"

    @property
    def evaluation(self) -> Path:
        return self.path / "evaluation.yml"

    @property
    def best_model(self) -> Path:
        return self.path / "eval" / "best_model.zip"
