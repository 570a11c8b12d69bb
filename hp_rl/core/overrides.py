"""``key=value`` overrides from the command line, parsed as YAML values (never evaluated as code)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hp_rl.core.errors import ConfigError
from hp_rl.core.yaml_files import load_yaml_text

__all__ = ["ConfigError", "parse_overrides"]


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML scalars or collections (never evaluated as code).

    Dotted keys address nested mappings: ``policy_kwargs.net_arch=[64,64]``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"Override {item!r} is not of the form key=value (for example --set n_steps=256).")
        value = load_yaml_text(text, f"Override {item!r}: the value") if text.strip() else None
        out[key] = _yaml11_float(value)
    return out


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def _yaml11_float(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` (no decimal point) as a string; users mean the number."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value
