"""Choosing a named configuration of the Hub-Pathway method for a hub and a target (``preset="auto"``).

What each preset sets lives with the options (:data:`hp_rl.hub.options.PRESETS`, documented in
:class:`~hp_rl.hub.options.PathwayOptions`): ``paper`` is the method as the paper states it, ``transfer`` what
uses a hub's whole agents (their heads' outputs mixed, one routed agent per agent that the prior says plays the
target beside the target's plain network, kickstarting, the prior from scores). Every key of a preset is an
argument of :class:`~hp_rl.rl.algorithms.HubPPO` (extractor options and the algorithm's loss weights); explicit
arguments override the preset's.
"""

from __future__ import annotations

from typing import Any

from hp_rl.hub.options import ALGORITHM_KEYS, pathway_preset

__all__ = ["resolve_preset"]


def resolve_preset(preset: str | None, hub: Any, env: Any, given: dict[str, Any]) -> dict[str, Any]:
    """HubPPO/HubA2C's arguments: ``given`` over the named preset's; ``"auto"`` chooses one for this hub and target
    (:func:`hp_rl.rl.agent_meanings.choose_preset`). An algorithm weight given as ``None`` takes the preset's; any
    other argument given wins as it is.

    :raises PathwayOptionError: for an unknown name.
    """
    if preset is None:
        return dict(given)
    if preset == "auto":
        from hp_rl.rl.agent_meanings import choose_preset

        preset = choose_preset(hub, env)[0]
    values = pathway_preset(preset)
    return {**values, **{k: v for k, v in given.items() if not (k in ALGORITHM_KEYS and v is None)}}
