"""Locations of the project's data folders (environment presets, configs, bundled hubs)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROJECT_ROOT", "ENV_PRESET_DIR", "CONFIG_DIR", "HUB_CONFIG_DIR", "BUNDLED_HUB_DIR", "require_dir"]

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
ENV_PRESET_DIR = PROJECT_ROOT / "envs"
CONFIG_DIR = PROJECT_ROOT / "configs"
HUB_CONFIG_DIR = CONFIG_DIR / "hubs"
BUNDLED_HUB_DIR = PACKAGE_ROOT / "hub" / "bundled"


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory, else a clear error (the package was installed without its checkout)."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"The {what} folder {path} is missing. hp_rl reads it from its source checkout: install with "
            "`pip install -e .` from a clone of the repository."
        )
    return path
