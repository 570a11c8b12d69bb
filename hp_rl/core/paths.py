"""Locations of the project's data folders (environment presets, configs, bundled hubs) and its cache.

``configs/`` and ``envs/`` live at the top of the source checkout; ``hp_rl/data`` links to them, and the
wheel carries copies there (as rl-baselines3-zoo ships its hyperparameters), so an installed package finds
them from any working directory. Whatever hp_rl builds or downloads goes to :data:`CACHE_DIR` when it runs
from an installed wheel, never into the installation; in a checkout, hub builds keep going to
``hub_build/`` beside the sources.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hp_rl.core.errors import HpRlError

__all__ = [
    "file_sha256",
    "PROJECT_ROOT",
    "ENV_PRESET_DIR",
    "CONFIG_DIR",
    "HUB_CONFIG_DIR",
    "BUNDLED_HUB_DIR",
    "CACHE_DIR",
    "IN_CHECKOUT",
    "BUILD_ROOT",
    "cache_dir",
    "require_dir",
    "unique_run_dir",
    "written_by_rename",
    "MAX_PATH_CHARS",
    "PathTextError",
    "check_path_text",
    "named_hub_spec",
    "expand_path_variables",
    "PATH_VARIABLES",
]

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PROJECT_ROOT = PACKAGE_ROOT.parent
_DATA = PACKAGE_ROOT / "data"
# resolve(): in a checkout the links lead to the top-level folders, and messages name those.
ENV_PRESET_DIR = (_DATA / "envs").resolve()
CONFIG_DIR = (_DATA / "configs").resolve()
HUB_CONFIG_DIR = CONFIG_DIR / "hubs"
BUNDLED_HUB_DIR = PACKAGE_ROOT / "hub" / "bundled"
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "hp_rl").resolve() == PACKAGE_ROOT


def cache_dir() -> Path:
    """The user cache: ``$HP_RL_CACHE``, else ``$XDG_CACHE_HOME/hp_rl``, else ``~/.cache/hp_rl`` (read at each call)."""
    explicit = os.environ.get("HP_RL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hp_rl"


CACHE_DIR = cache_dir()
# Where hub builds train by default: beside the sources in a checkout, in the cache for an installed wheel.
BUILD_ROOT = PROJECT_ROOT / "hub_build" if IN_CHECKOUT else CACHE_DIR / "hub_build"


PATH_VARIABLES = {"${HP_RL_BUILD}": BUILD_ROOT, "${HP_RL_BUNDLED}": BUNDLED_HUB_DIR}


def expand_path_variables(text: str) -> str:
    """``text`` with a leading ``${HP_RL_BUILD}`` (:data:`BUILD_ROOT`) or ``${HP_RL_BUNDLED}`` (the bundled
    hubs) replaced: specs and recipes shipped with the package name files this way, so that they are found
    in a checkout and in an installed wheel alike."""
    for variable, folder in PATH_VARIABLES.items():
        if text.startswith(variable):
            return str(folder) + text[len(variable) :]
    return text


def named_hub_spec(name: str) -> Path | None:
    """The hub spec shipped as ``configs/hubs/<name>.yml`` (``--hub control_finetune_example``), or ``None``."""
    if not name or any(c in name for c in "/\\:,.") or name.startswith("~") or len(name) > 200:
        return None
    for suffix in (".yml", ".yaml"):
        path = HUB_CONFIG_DIR / f"{name}{suffix}"
        if path.is_file() and not path.name.endswith(f".recipe{suffix}"):
            return path
    return None


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
            f"The {what} folder {path} is missing from this installation of hp_rl (the wheel carries it as "
            "hp_rl/data). Reinstall hp_rl, or install from a clone of the repository with `pip install -e .`."
        )
    return path


@contextmanager
def written_by_rename(path: Path) -> Iterator[Path]:
    """Yield ``path.partial`` to write to; rename it onto ``path`` once the block completes.

    A process killed while writing leaves no truncated ``path``, and a process that waits for ``path`` to
    exist (another hub build in the same folder, ``--resume``) never reads a half-written one.
    """
    partial = path.with_name(path.name + ".partial")
    if partial.is_symlink() or partial.exists():  # a name left behind (or planted as a link): start a new file
        partial.unlink()
    yield partial
    os.replace(partial, path)  # replaces the directory entry: a link at ``path`` is replaced, never written through


def write_text_by_rename(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`written_by_rename` (a new file, never through a link)."""
    with written_by_rename(path) as partial:
        partial.write_text(text)


def append_text_by_rename(path: Path, text: str) -> None:
    """Append ``text`` to the small record ``path`` by writing the whole new file and renaming it over; a link at
    ``path`` is neither read nor written through (its place gets a regular file)."""
    old = path.read_text() if path.is_file() and not path.is_symlink() else ""
    write_text_by_rename(path, old + text)


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
        raise PathTextError(
            f"{where}: {repr(path)[:80]} is not a usable path (a NUL byte, over {MAX_PATH_CHARS} "
            "characters, or not text)."
        )
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
