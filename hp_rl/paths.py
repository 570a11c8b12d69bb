"""Locations of the project's data folders (environment presets, configs, bundled hubs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hp_rl.errors import HpRlError

__all__ = ["PROJECT_ROOT", "ENV_PRESET_DIR", "CONFIG_DIR", "HUB_CONFIG_DIR", "BUNDLED_HUB_DIR", "require_dir",
           "unique_run_dir", "written_by_rename", "MAX_PATH_CHARS", "PathTextError", "check_path_text"]  # fmt: skip

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
ENV_PRESET_DIR = PROJECT_ROOT / "envs"
CONFIG_DIR = PROJECT_ROOT / "configs"
HUB_CONFIG_DIR = CONFIG_DIR / "hubs"
BUNDLED_HUB_DIR = PACKAGE_ROOT / "hub" / "bundled"


def unique_run_dir(root: Path, name: str) -> Path:
    """A new folder ``root/name_N`` with a ``checkpoints`` subfolder (N counts up from 1, never reusing one)."""
    root.mkdir(parents=True, exist_ok=True)
    index = 1
    while True:
        path = root / f"{name}_{index}"
        try:
            path.mkdir()
        except FileExistsError:  # taken, possibly by a run starting at the same moment
            index += 1
            continue
        (path / "checkpoints").mkdir()
        return path


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a clear error (the package was installed without its checkout)."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"The {what} folder {path} is missing. hp_rl reads it from its source checkout: install with "
            "`pip install -e .` from a clone of the repository."
        )
    return path


@contextmanager
def written_by_rename(path: Path) -> Iterator[Path]:
    """Yield ``path.partial`` to write to; rename it onto ``path`` once the block completes.

    A process killed while writing leaves no truncated ``path``, and a process that waits for ``path`` to
    exist (another hub build in the same folder, ``--resume``) never reads a half-written one.
    """
    partial = path.with_name(path.name + ".partial")
    yield partial
    os.replace(partial, path)


MAX_PATH_CHARS = 4096


class PathTextError(HpRlError, ValueError):
    """A path given as text that no file system takes: not text, a NUL byte, or too long."""


def check_path_text(path: Any, where: str) -> str:
    """``path`` if it is text without NUL bytes and at most :data:`MAX_PATH_CHARS` characters.

    :param path: the value given as a path.
    :param where: the flag or key, for the message.
    :raises PathTextError: naming ``where`` and the start of the value.
    """
    if not isinstance(path, str) or "\0" in path or len(path) > MAX_PATH_CHARS:
        raise PathTextError(f"{where}: {repr(path)[:80]} is not a usable path (a NUL byte, over {MAX_PATH_CHARS} "
                            "characters, or not text).")  # fmt: skip
    return path
