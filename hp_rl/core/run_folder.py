"""One run folder for every kind of training run (RL agents and vision classifiers).

A run folder holds ``config.yml`` (the resolved config, read back by ``--resume``), ``command.txt`` (one
line per start or resume), ``versions.yml`` (and ``versions_resume_<at>.yml`` when a resume runs other
versions), ``hub_manifest.yml``, ``checkpoints/`` and ``run.lock`` while a process trains into it.
Checkpoints and final models are written by rename (:func:`hp_rl.core.paths.written_by_rename`), so a killed
process never leaves a truncated file for ``--resume``. :class:`RunFolder` is the common part;
:class:`hp_rl.rl.runs.AgentRunFolder` and :class:`hp_rl.vision.train.VisionRun` name their own files.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import yaml

from hp_rl.core.errors import ConfigError, HpRlError
from hp_rl.core.paths import append_text_by_rename, unique_run_dir, write_text_by_rename
from hp_rl.core.yaml_files import read_yaml

__all__ = ["RunFolder", "RunFolderLinkError", "RunLockedError", "acquire_lock", "release_lock", "package_versions"]

_Folder = TypeVar("_Folder", bound="RunFolder")

# Packages whose versions every run records (those not installed are left out).
_COMMON_PACKAGES = ("hp_rl", "torch", "numpy")


class RunLockedError(HpRlError):
    """Another live process trains into the run folder."""


# run.lock path -> the open descriptor that holds its lock (the kernel drops the lock when the process dies).
_HELD_LOCKS: dict[Path, int] = {}


def _holder(fd: int) -> str:
    """The process id a lock file names (for the message), or ``"another process"``."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() and int(text) > 1 else "another process"


def acquire_lock(path: Path) -> None:
    """Hold ``path`` with an exclusive ``flock`` and write this process's id into it.

    The kernel's lock, not the id in the file, says who holds it: a lock file left by a dead process (or
    planted with any id) is taken at once, two processes never both take it, and one that dies releases it.
    The file is opened without following a link, so a planted link is never written through.

    :raises RunLockedError: naming the live process that holds it.
    """
    path = Path(path)
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            stop = f" (kill {holder.split()[1]})" if holder != "another process" else ""
            raise RunLockedError(
                f"{path.parent} is being trained by {holder} (it holds {path.name}). Wait for it to finish or stop "
                f"it{stop} before resuming; two processes would write the same checkpoints and TensorBoard steps."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and removed between our open and our lock: lock the file that is there now
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _HELD_LOCKS[path] = fd
        return
    raise RunLockedError(f"{path} keeps changing: another process is taking the lock of {path.parent}; retry.")


def release_lock(path: Path) -> None:
    """Remove ``path`` and drop its lock if this process holds it."""
    fd = _HELD_LOCKS.pop(Path(path), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):  # before the lock is dropped: a process after us finds a new file
        os.unlink(path)
    os.close(fd)


def package_versions(packages: Sequence[str] = ()) -> dict[str, str]:
    """Versions of Python, hp_rl, torch, numpy and ``packages`` (those installed), and the source revision."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in dict.fromkeys((*_COMMON_PACKAGES, *packages)):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        if commit:
            versions["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


class RunFolderLinkError(HpRlError, ValueError):
    """A run folder holds a symbolic link."""


@dataclass(frozen=True)
class RunFolder:
    """The files of one run; subclasses say which module trains it and how its checkpoints are named.

    :param path: the run directory.
    """

    path: Path

    #: ``python -m <module>`` that trains into this kind of folder (``command.txt``).
    module: ClassVar[str] = "hp_rl"
    #: checkpoint file names; group 1 is the progress (environment steps, epochs) the file was saved at.
    checkpoint_pattern: ClassVar[re.Pattern[str]] = re.compile(r"checkpoint_(\d+)$")
    #: further packages whose versions the run records.
    recorded_packages: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def create(cls: type[_Folder], root: Path, name: str) -> _Folder:
        """A new folder ``root/name_N`` with ``checkpoints/`` (N counts up from 1, never reusing a folder)."""
        return cls(unique_run_dir(root, name))

    @property
    def config(self) -> Path:
        return self.path / "config.yml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def hub_manifest(self) -> Path:
        return self.path / "hub_manifest.yml"

    @property
    def versions(self) -> Path:
        return self.path / "versions.yml"

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``run.lock`` (:func:`acquire_lock`) while training into the folder.

        :raises RunLockedError: when a live process holds it; a lock file no live process holds is taken.
        """
        acquire_lock(self.lock_file)
        try:
            yield
        finally:
            release_lock(self.lock_file)

    def checkpoints_by_progress(self) -> list[tuple[Path, int]]:
        """Every checkpoint in ``checkpoints/`` with the progress it was saved at, newest first."""
        return checkpoints_in(self.checkpoints, self.checkpoint_pattern)

    def latest_checkpoint(self) -> tuple[Path, int] | None:
        """The newest checkpoint and its progress, or ``None``."""
        found = self.checkpoints_by_progress()
        return found[0] if found else None

    def append_command(self, argv: Sequence[str], module: str | None = None) -> None:
        """Add ``python -m <module> <argv>`` to ``command.txt`` (one line per start or resume).

        :param module: the command's module (default: the folder kind's, :attr:`module`).
        """
        line = shlex.join([Path(sys.executable).name, "-m", module or self.module, *argv]) + "\n"
        append_text_by_rename(self.path / "command.txt", line)

    def write_start(self, config_yaml: str, argv: Sequence[str], module: str | None = None) -> None:
        """Record the resolved config (YAML text), the command line and the package versions of a new run."""
        write_text_by_rename(self.config, config_yaml)
        self.append_command(argv, module)
        write_text_by_rename(self.versions, yaml.safe_dump(package_versions(self.recorded_packages), sort_keys=False))

    def write_resume(self, config_yaml: str, argv: Sequence[str], at: int) -> Path | None:
        """Record a resumed start: the (possibly extended) config, the command line, and the package
        versions in ``versions_resume_<at>.yml`` when they differ from ``versions.yml``.

        :param at: the progress the run resumes from (steps, epochs), naming the versions file.
        :return: the file with the changed versions, or ``None`` when nothing changed.
        """
        write_text_by_rename(self.config, config_yaml)  # a failed write leaves the old config whole
        self.append_command(argv)
        current = package_versions(self.recorded_packages)
        try:
            recorded = read_yaml(self.versions, "versions record") if self.versions.is_file() else None
        except ConfigError:  # a damaged record: the new versions are written beside it
            recorded = None
        if recorded == current:
            return None
        path = self.path / f"versions_resume_{at}.yml"
        write_text_by_rename(path, yaml.safe_dump(current, sort_keys=False))
        return path

    def refuse_links(self) -> None:
        """Refuse a folder that holds symbolic links: a run writes only regular files of its own, and a link
        planted in a folder received from elsewhere would have them written through to its target.

        :raises RunFolderLinkError: naming the first link found and the fix.
        """
        for entry in sorted(self.path.rglob("*")):
            if entry.is_symlink():
                raise RunFolderLinkError(
                    f"{entry} is a symbolic link; a run folder holds only its own regular files, and writing this "
                    "run would write through the link. Remove it (or copy the folder without links) and try again."
                )


def checkpoints_in(folder: Path, pattern: re.Pattern[str]) -> list[tuple[Path, int]]:
    """Files in ``folder`` whose names match ``pattern``, with the number its group 1 holds, newest first."""
    found = [
        (int(m.group(1)), p)
        for p in folder.glob("*")
        if (m := pattern.fullmatch(p.name)) and p.is_file() and not p.is_symlink()  # regular files only
    ]
    return [(path, progress) for progress, path in sorted(found, reverse=True)]
