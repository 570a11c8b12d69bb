"""Run folders: resolved config, command line, versions, hub manifest, checkpoints, resume."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hp_rl.paths import unique_run_dir

__all__ = ["RunConfig", "RunFolder", "package_versions", "latest_checkpoint", "checkpoints_by_step"]

_CHECKPOINT = re.compile(r"rl_model_(\d+)_steps\.zip$")


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

    def to_yaml(self) -> str:
        """The config as YAML."""
        return yaml.safe_dump(asdict(self), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: Path) -> RunConfig:
        """Read a ``config.yml`` written by :meth:`to_yaml`.

        :raises ValueError: for a file that is not such a mapping (naming the unknown or missing keys).
        """
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML ({error}).") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{path} does not hold a run configuration (a mapping with algo, env_id, hub, ...).")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(raw) - known)
        missing = sorted(name for name in ("algo", "env_id", "hub") if name not in raw)
        if unknown or missing:
            raise ValueError(f"{path}: unknown key(s) {unknown}, missing key(s) {missing}; "
                             f"known keys: {sorted(known)}.")  # fmt: skip
        return cls(**raw)


def package_versions() -> dict[str, str]:
    """Versions of Python, the main packages and the source revision."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("hp_rl", "torch", "stable_baselines3", "gymnasium", "ale_py", "numpy", "minatar"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False).stdout.strip()  # fmt: skip
        if commit:
            versions["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


def checkpoints_by_step(folder: Path) -> list[tuple[Path, int]]:
    """Every checkpoint ``rl_model_<steps>_steps.zip`` in ``folder`` with its step count, newest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("rl_model_*_steps.zip") if (m := _CHECKPOINT.search(p.name))]
    return [(path, steps) for steps, path in sorted(found, reverse=True)]


def latest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """The checkpoint with the most steps in ``folder``, and its step count."""
    found = checkpoints_by_step(folder)
    return found[0] if found else None


@dataclass(frozen=True)
class RunFolder:
    """The files of one run.

    :param path: the run directory.
    """

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final_model(self) -> Path:
        return self.path / "model.zip"

    @property
    def hub_manifest(self) -> Path:
        return self.path / "hub_manifest.yml"

    @classmethod
    def create(cls, root: Path, name: str) -> RunFolder:
        """A new folder ``root/name_N`` (N counts up from 1, never reusing a folder)."""
        return cls(unique_run_dir(root, name))

    @property
    def versions(self) -> Path:
        return self.path / "versions.yml"

    @property
    def evaluation(self) -> Path:
        return self.path / "evaluation.yml"

    @property
    def best_model(self) -> Path:
        return self.path / "eval" / "best_model.zip"

    def _append_command(self, argv: list[str], module: str = "hp_rl.train") -> None:
        with open(self.path / "command.txt", "a") as handle:
            handle.write(shlex.join([Path(sys.executable).name, "-m", module, *argv]) + "\n")

    def write_start(self, config: RunConfig, argv: list[str], module: str = "hp_rl.train") -> None:
        """Record the resolved config, the command line (``python -m <module> <argv>``) and the package
        versions."""
        self.config.write_text(config.to_yaml())
        self._append_command(argv, module)
        self.versions.write_text(yaml.safe_dump(package_versions(), sort_keys=False))

    def write_resume(self, config: RunConfig, argv: list[str], steps: int) -> Path | None:
        """Record a resumed start: the (possibly extended) config, the command line, and the package
        versions in ``versions_resume_<steps>.yml`` when they differ from ``versions.yml``.

        :return: the file with the changed versions, or ``None`` when nothing changed.
        """
        self.config.write_text(config.to_yaml())
        self._append_command(argv)
        current = package_versions()
        recorded = yaml.safe_load(self.versions.read_text()) if self.versions.is_file() else None
        if recorded == current:
            return None
        path = self.path / f"versions_resume_{steps}.yml"
        path.write_text(yaml.safe_dump(current, sort_keys=False))
        return path
