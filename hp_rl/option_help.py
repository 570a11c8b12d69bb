"""``python -m hp_rl.train --hub-options``: every Hub-Pathway option with what it accepts, its default and what it
does, built from the places that define an option so the help cannot drift from what the extractor does."""

from __future__ import annotations

import inspect
import re
import textwrap

__all__ = ["hub_options_table"]


def _param_docs(cls: type) -> dict[str, str]:
    """``:param name: text`` entries of a class docstring, each joined onto one line."""
    docs: dict[str, str] = {}
    current: str | None = None
    for line in (inspect.getdoc(cls) or "").splitlines():
        match = re.match(r":param (\w+):\s*(.*)", line.strip())
        if match:
            current = match.group(1)
            docs[current] = match.group(2)
        elif current is not None and line.startswith(" ") and line.strip():
            docs[current] += " " + line.strip()
        else:
            current = None

    def plain(text: str) -> str:  # ``code`` -> code; :func:`~hp_rl.rl.prior.routable_experts` -> routable_experts
        text = re.sub(r":\w+:`~?([^`]*)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
        return re.sub(r"``([^`]*)``", r"\1", text)

    return {name: plain(text) for name, text in docs.items()}


def hub_options_table() -> str:
    """Every Hub-Pathway option ``--hub-set`` takes: what it accepts, its default and what it does.

    Built from the three places that define an option (the rule in :data:`hp_rl.hub.options.PATHWAY_OPTIONS`,
    the default in :class:`~hp_rl.rl.extractor.HubPathwayExtractor`'s signature, the text in its docstring),
    so the help cannot drift from what the extractor does.
    """
    from hp_rl.hub.options import PATHWAY_OPTIONS
    from hp_rl.rl.extractor import HubPathwayExtractor

    defaults = inspect.signature(HubPathwayExtractor.__init__).parameters
    docs = _param_docs(HubPathwayExtractor)
    lines = ["Hub-Pathway options (--hub-set KEY=VALUE; -k sets k; --hub-set preset=paper|transfer sets several):"]
    for name, rule in PATHWAY_OPTIONS.items():
        default = defaults[name].default if name in defaults else None
        lines.append(f"\n  {name} = {default!r}   ({rule.describe()})")
        lines += textwrap.wrap(docs.get(name, ""), 110, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)
