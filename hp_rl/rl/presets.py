"""Named configurations of the Hub-Pathway method (``--hub-set preset=NAME``, :func:`pathway_preset`).

- ``paper``: the method as the paper states it: feature-level aggregation of the top-2 experts, learned
  noisy gating without bound or schedule, exploration loss 0.01, exploitation loss 0.1.
- ``transfer``: what uses a hub's whole agents: output-level aggregation with the experts' own policy and
  value heads (a mixture of their policies), trunks fine-tuned, one routed expert per agent that the prior says
  plays the target (at most two; an agent without that evidence is not routed at all, and with none the base
  expert acts alone) beside an always-routed base expert (the target's plain network, so the agent
  can always learn as scratch does), noise bounded by the spread of
  the generator's logits and annealed to 0 by a quarter of training, the exploration loss decaying to 0 by
  half of it, kickstarting towards the routed experts' pretrained policies for the first fifth, each teacher
  imitated in proportion to its prior (``teacher_trust="prior"``: other games' agents, with priors near 0, are
  not imitated), and the generator started from the experts' transferability scores on the target (``prior="auto"``,
  ``prior_scale=4``: the share of its own competence an expert keeps zero-shot where its head maps, a capped
  LogME otherwise; measured before training). This is the benchmark's
  "HP transfer + score prior" (``benchmarks/transfer.py`` method ``transfer_prior``).

Every key of a preset is an argument of :class:`~hp_rl.rl.algorithms.HubPPO` (extractor options and the
algorithm's loss weights); explicit arguments override the preset's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "ALGORITHM_KEYS", "pathway_preset", "apply_preset", "resolve_preset"]

# Keys that belong to HubPPO/HubA2C rather than to the features extractor (in their signatures' order).
ALGORITHM_KEYS = ("exploit_coef", "kickstart_coef", "kickstart_fraction", "critic_warmup")

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "k": 2,
        "aggregation": "features",
        "base_expert": False,
        "noise": "learned",
        "noise_cap": None,
        "noise_anneal": None,
        "dense_warmup": 0.0,
        "explore_coef": 0.01,
        "explore_decay": None,
        "exploit_coef": 0.1,
        "kickstart_coef": 0.0,
    },
    "transfer": {
        # one routed expert per agent with evidence that it plays the target, at most two
        # (docs/results/whole_agents.md; the choice: docs/history/whole_agents_notebook.md, "Two relevant agents")
        "k": 2,
        "k_from_prior": 0.5,
        # whole agents are reincarnated: their trunks train with their heads
        "freeze_experts": False,
        "aggregation": "output",
        "output_mix": "probs",
        "base_expert": True,
        "noise": "learned",
        "noise_cap": 1.0,
        "noise_anneal": 0.25,
        "dense_warmup": 0.0,
        "explore_coef": 0.01,
        "explore_decay": 0.5,
        "exploit_coef": 0.1,
        "kickstart_coef": 0.5,
        "kickstart_fraction": 0.2,
        "prior": "auto",
        # a teacher is imitated as far as it is known to play the target (whole_agents.md, "Ablations")
        "teacher_trust": "prior",
        # the relevant agent's lead must outlast the noise and the exploration loss (notebook, "prior_scale 4")
        "prior_scale": 4.0,
    },
}


def pathway_preset(name: str) -> dict[str, Any]:
    """A copy of the preset's arguments, to pass to HubPPO/HubA2C (``HubPPO(..., **pathway_preset("transfer"))``).

    :raises ValueError: for an unknown name, listing the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}.")
    return dict(PRESETS[name])


def apply_preset(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with its ``preset`` key (if any) expanded; the other keys of ``options`` win."""
    options = dict(options)
    name = options.pop("preset", None)
    if name is None:
        return options
    return {**pathway_preset(str(name)), **options}


def resolve_preset(preset: str | None, hub: Any, env: Any, given: dict[str, Any]) -> dict[str, Any]:
    """HubPPO/HubA2C's arguments: ``given`` over the named preset's; ``"auto"`` chooses one for this hub and target
    (:func:`hp_rl.rl.agent_meanings.choose_preset`). An algorithm weight given as ``None`` takes the preset's; any
    other argument given wins as it is.

    :raises PathwayOptionError: for an unknown name.
    """
    from hp_rl.hub.options import PathwayOptionError

    if preset is None:
        return dict(given)
    if preset == "auto":
        from hp_rl.rl.agent_meanings import choose_preset

        preset = choose_preset(hub, env)[0]
    try:
        values = pathway_preset(preset)
    except ValueError as error:
        raise PathwayOptionError(str(error)) from None
    return {**values, **{k: v for k, v in given.items() if not (k in ALGORITHM_KEYS and v is None)}}
