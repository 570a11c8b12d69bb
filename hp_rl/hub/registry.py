"""The registry of hub sources: each source name a hub spec may give, with the loader that builds its experts.

Hub specs check their ``source`` keys against it; :mod:`hp_rl.hub.sources` registers the built-in sources when
the package is imported, and :func:`register_source` adds more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Loader", "SourceConfig", "SOURCES", "register_source"]

# (expert spec, observation shape or None) -> the expert (typed loosely here: the spec imports this registry)
Loader = Callable[[Any, "tuple[int, ...] | None"], Any]


@dataclass(frozen=True)
class SourceConfig:
    """A registered source.

    :param name: key used in hub specs (``source: <name>``).
    :param description: one line for ``hp_rl.hub list``.
    :param needs_path: whether ``path`` is required.
    :param loader: builds the expert from its spec and the observation shape (``None`` if unknown).
    :param extra: pip extra that provides the source's dependencies, if any.
    """

    name: str
    description: str
    needs_path: bool
    loader: Loader
    extra: str | None = None


SOURCES: dict[str, SourceConfig] = {}


def register_source(config: SourceConfig) -> SourceConfig:
    """Add a source to the registry (a later registration with the same name replaces it)."""
    SOURCES[config.name] = config
    return config
