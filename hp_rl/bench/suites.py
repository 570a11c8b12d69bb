"""The transfer benchmark's suites (task families with a pretraining recipe) and methods (what trains on a target)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hp_rl.core.paths import HUB_CONFIG_DIR
from hp_rl.hub.options import ALGORITHM_KEYS, pathway_preset


@dataclass(frozen=True)
class Suite:
    """A family of tasks with one pretraining recipe.

    :param name: suite name (folder names, tables).
    :param recipe: hub-builder recipe whose tasks are the sources (``configs/hubs/*.recipe.yml``).
    :param targets: default target task names.
    :param extra_targets: target name -> environment id, for targets that are not a recipe task (their
        hub is then every recipe task).
    :param steps: default environment steps per run.
    :param k: experts per observation for the top-k methods (clamped to the hub size).
    :param features_dim: common width d of the hub methods (the plain network's feature width).
    :param scratch_policy_kwargs: ``policy_kwargs`` of the scratch baseline.
    :param overrides: hyperparameter overrides for every target run (on top of ``configs/ppo.yml``).
    :param hubs: target -> the recipe tasks its hub holds, where that is not "every task but the target"
        (the needle suites: a target's variant expert among other games' experts).
    :param target_env_kwargs: ``gym.make`` arguments of extra targets (a game mode or difficulty).
    """

    name: str
    recipe: Path
    targets: tuple[str, ...]
    extra_targets: dict[str, str] = field(default_factory=dict)
    steps: int = 100_000
    k: int = 2
    features_dim: int = 128
    scratch_policy_kwargs: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    hubs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    target_env_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)


_MINATAR_BUNDLED = HUB_CONFIG_DIR / "minatar_bundled.recipe.yml"
_OTHER_GAMES = {
    "breakout": ("asterix", "freeway", "seaquest", "space_invaders"),
    "space_invaders": ("asterix", "breakout", "freeway", "seaquest"),
}

SUITES: dict[str, Suite] = {
    "minatar": Suite(
        "minatar",
        HUB_CONFIG_DIR / "minatar_transfer.recipe.yml",
        ("asterix", "breakout", "freeway", "seaquest", "space_invaders"),
        steps=100_000,
        k=2,
        features_dim=128,
        scratch_policy_kwargs={"net_arch": []},
    ),
    "control": Suite(
        "control",
        HUB_CONFIG_DIR / "control_bundled.recipe.yml",
        ("cartpole", "acrobot"),
        steps=30_000,
        k=2,
        features_dim=64,
    ),
    # Needle: the target game in its default setting; the hub holds one variant expert of that game (trained
    # without sticky actions, or without difficulty ramping) among the other games' experts (2M steps each).
    "needle": Suite(
        "needle",
        _MINATAR_BUNDLED,
        ("breakout", "space_invaders"),
        steps=500_000,
        k=2,
        features_dim=128,
        scratch_policy_kwargs={"net_arch": []},
        hubs={
            "breakout": ("breakout_nosticky", *_OTHER_GAMES["breakout"]),
            "space_invaders": ("space_invaders_noramp", *_OTHER_GAMES["space_invaders"]),
        },
    ),
    # Two complementary relevant experts: both variants of the target game among the other games' experts.
    "needle2": Suite(
        "needle2",
        _MINATAR_BUNDLED,
        ("breakout", "space_invaders"),
        steps=500_000,
        k=2,
        features_dim=128,
        scratch_policy_kwargs={"net_arch": []},
        hubs={
            "breakout": ("breakout_nosticky", "breakout_sticky30", *_OTHER_GAMES["breakout"]),
            "space_invaders": ("space_invaders_noramp", "space_invaders_nosticky", *_OTHER_GAMES["space_invaders"]),
        },
    ),
    # Do no harm with strong experts: the cross-game leave-one-out suite over the 2M-step experts.
    "minatar_strong": Suite(
        "minatar_strong",
        _MINATAR_BUNDLED,
        ("asterix", "breakout", "freeway", "seaquest", "space_invaders"),
        steps=300_000,
        k=2,
        features_dim=128,
        scratch_policy_kwargs={"net_arch": []},
        hubs={
            game: tuple(g for g in ("asterix", "breakout", "freeway", "seaquest", "space_invaders") if g != game)
            for game in ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
        },
    ),
    # Control physics variants: each task in its default physics, its variant among other tasks' variants.
    "control_needle": Suite(
        "control_needle",
        HUB_CONFIG_DIR / "control_variants.recipe.yml",
        ("cartpole", "acrobot"),
        extra_targets={"cartpole": "CartPole-v1", "acrobot": "Acrobot-v1"},
        steps=100_000,
        k=2,
        features_dim=64,
        hubs={
            "cartpole": ("cartpole_long", "acrobot_heavy", "pendulum_low_g"),
            "acrobot": ("acrobot_heavy", "cartpole_heavy", "pendulum_low_g"),
        },
    ),
    # Atari needle (benchmarks/transfer_atari_gpu.sh): Breakout at difficulty 1 (smaller paddle) as the target,
    # the default-mode Breakout agent among four other games' agents.
    "atari_needle": Suite(
        "atari_needle",
        HUB_CONFIG_DIR / "atari_needle.recipe.yml",
        ("breakout_hard",),
        extra_targets={"breakout_hard": "BreakoutNoFrameskip-v4"},
        steps=100_000,
        k=2,
        features_dim=512,
        hubs={"breakout_hard": ("breakout", "spaceinvaders", "qbert", "seaquest", "roadrunner")},
        target_env_kwargs={"breakout_hard": {"difficulty": 1}},
    ),
    # Atari reincarnation at the Atari-100k budget: a PPO Breakout agent (1M steps) and two other games' agents,
    # targets the Breakout agent never saw: the v5 rules (sticky actions 0.25) and the smaller paddle (difficulty 1)
    "atari_reincarnation": Suite(
        "atari_reincarnation",
        HUB_CONFIG_DIR / "atari_reincarnation.recipe.yml",
        ("breakout_v5", "breakout_hard"),
        extra_targets={"breakout_v5": "ALE/Breakout-v5", "breakout_hard": "BreakoutNoFrameskip-v4"},
        steps=100_000,
        k=2,
        features_dim=512,
        hubs={target: ("breakout", "pong", "spaceinvaders") for target in ("breakout_v5", "breakout_hard")},
        target_env_kwargs={"breakout_hard": {"difficulty": 1}},
    ),
    "atari": Suite(
        "atari",
        HUB_CONFIG_DIR / "atari_bundled.recipe.yml",
        ("breakout",),
        extra_targets={"breakout": "BreakoutNoFrameskip-v4"},
        steps=200_000,
        k=2,
        features_dim=512,
    ),
}


@dataclass(frozen=True)
class Method:
    """One transfer method.

    :param name: method name (folder names, ``--methods``).
    :param label: name in tables and plots.
    :param kind: ``scratch`` (plain PPO), ``single`` (one run per expert), ``hub`` (all experts) or ``cli``
        (``hp_rl.train``'s command line with its defaults, the agents as bare SB3 zips).
    :param extractor: :class:`~hp_rl.rl.extractor.HubPathwayExtractor` arguments (``k=None``: the suite's).
    :param exploit_coef: weight of HubPPO's exploitation loss.
    :param algo_kwargs: further HubPPO arguments (kickstarting).
    :param random_trunks: replace every expert by a random trunk of the same architecture (capacity control).
    :param prior: start the generator from the transferability scores of the target's hub
        (:func:`hp_rl.rl.scoring.score_hub`, measured once per target before any run, cached in
        ``<out>/scores``).
    """

    name: str
    label: str
    kind: str
    extractor: dict[str, Any] = field(default_factory=dict)
    exploit_coef: float = 0.0
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    random_trunks: bool = False
    prior: bool = False


_NO_AUX = {"noise": "none", "explore_coef": 0.0}
_HUB_PATHWAY = {"noise": "learned", "explore_coef": 0.01}
# The transfer configuration is the shipped preset (hp_rl.rl.presets "transfer"), read from there so that the
# benchmark measures what users get: its extractor options, its algorithm options (kickstarting), and its prior
# (Method.prior: the scores of the target's hub, cached per sweep, as prior="auto" computes them).
_PRESET = pathway_preset("transfer")
_TRANSFER = {key: value for key, value in _PRESET.items() if key not in ALGORITHM_KEYS and key != "prior"}
_KICKSTART = {key: _PRESET[key] for key in ("kickstart_coef", "kickstart_fraction")}


def _preset_variant(
    name: str,
    label: str,
    changes: dict[str, Any] | None = None,
    *,
    kickstart: bool = True,
    algo: dict[str, Any] | None = None,
    prior: bool = True,
    random_trunks: bool = False,
) -> Method:
    """The shipped transfer preset with ``changes`` to its extractor options (and ``algo`` added to its
    algorithm options; ``kickstart=False`` drops kickstarting, ``prior=False`` the score prior)."""
    return Method(
        name,
        label,
        "hub",
        {**_TRANSFER, **(changes or {})},
        exploit_coef=_PRESET["exploit_coef"],
        algo_kwargs={**(_KICKSTART if kickstart else {}), **(algo or {})},
        random_trunks=random_trunks,
        prior=prior,
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("scratch", "scratch", "scratch"),
        # the user's path: hp_rl.train's command line with its defaults, the agents given as bare SB3 zips
        Method("user_zips", "hp_rl.train defaults, agents as SB3 zips", "cli"),
        # the headline command as it is: hp_rl.train's defaults, --hub auto (the bundled hub of the family)
        Method("cli_default", "hp_rl.train defaults (--hub auto)", "cli"),
        # the user's path with the paper's configuration: the same zips, --hub-set preset=paper
        Method("cli_paper", "hp_rl.train, agents as SB3 zips, preset=paper", "cli"),
        # the headline command with the transfer preset on its bundled hub (--hub auto --hub-set preset=transfer):
        # encoders are scored, and without evidence the base network acts alone
        Method("cli_default_transfer", "hp_rl.train --hub auto, preset=transfer", "cli"),
        # the headline command with the paper's configuration on its bundled hub (--hub auto --hub-set preset=paper)
        Method("cli_default_paper", "hp_rl.train --hub auto, preset=paper", "cli"),
        Method("single", "single expert", "single", {"k": 1, **_NO_AUX}),
        Method("dense", "dense mixture", "hub", {"dense": True, **_NO_AUX}),
        Method("hub_pathway", "Hub-Pathway", "hub", dict(_HUB_PATHWAY), exploit_coef=0.1),
        Method("no_noise", "HP w/o noise", "hub", {**_HUB_PATHWAY, "noise": "none"}, exploit_coef=0.1),
        Method("no_explore", "HP w/o explore loss", "hub", {**_HUB_PATHWAY, "explore_coef": 0.0}, exploit_coef=0.1),
        Method("no_exploit", "HP w/o exploit loss", "hub", dict(_HUB_PATHWAY), exploit_coef=0.0),
        Method("single_agent", "single agent (heads kept)", "single", {"k": 1, **_NO_AUX, "aggregation": "output"}),
        Method(  # the single agent with its critic fitted first (not a candidate of the oracle single expert)
            "single_agent_warmup",
            "single agent (heads kept) + value-only warm-up (5%)",
            "single",
            {"k": 1, **_NO_AUX, "aggregation": "output"},
            algo_kwargs={"critic_warmup": 0.05},
        ),
        # without a prior no teacher can be trusted by it: every teacher is trusted fully
        _preset_variant("transfer", "HP transfer", {"teacher_trust": "uniform"}, prior=False),
        _preset_variant("transfer_prior", "HP transfer + score prior"),
        _preset_variant(  # random trunks have no pretrained policy to imitate
            "transfer_random",
            "HP transfer, random trunks",
            {"teacher_trust": "uniform"},
            prior=False,
            random_trunks=True,
        ),
        # Ablations of the shipped configuration (preset=transfer = transfer_prior): one part removed each;
        # "transfer" above is the one without the score prior.
        _preset_variant("transfer_no_kickstart", "preset transfer w/o kickstart", kickstart=False),
        _preset_variant("transfer_no_base", "preset transfer w/o base expert", {"base_expert": False}),
        _preset_variant("transfer_features", "preset transfer, feature aggregation", {"aggregation": "features"}),
        # options the preset leaves off, added on top of it
        _preset_variant(
            "transfer_critic_warmup", "preset transfer + value-only warm-up (5%)", algo={"critic_warmup": 0.05}
        ),
        _preset_variant("transfer_base_prior", "preset transfer + base prior 0.5", {"base_prior": 0.5}),
        # the prior's scale: 4 is the preset's since the fresh-seed check; 2 was its value before (every
        # transfer_prior record older than that ran with 2); transfer_strong_prior keeps its diagnosis reproducible
        _preset_variant("transfer_strong_prior", "preset transfer, prior_scale 4", {"prior_scale": 4.0}),
        _preset_variant("transfer_weak_prior", "preset transfer, prior_scale 2", {"prior_scale": 2.0}),
        # two routed experts beside the base on every hub, whatever the prior says (the preset routes two only
        # where two agents have evidence that they play the target: k_from_prior)
        _preset_variant("transfer_k2", "preset transfer, k=2", {"k": 2, "k_from_prior": None}),
        # one routed expert beside the base on every hub: the preset before k_from_prior
        _preset_variant("transfer_k1", "preset transfer, k=1", {"k": 1, "k_from_prior": None}),
        _preset_variant(
            "transfer_uniform_trust", "preset transfer, every teacher trusted fully", {"teacher_trust": "uniform"}
        ),
        _preset_variant(
            "transfer_noise", "preset transfer, unbounded constant noise", {"noise_cap": None, "noise_anneal": None}
        ),
    )
}


def method_uses_sources(name: str) -> bool:
    """Whether runs of method ``name`` need the suite's pretrained source agents (scratch and the headline
    command with its bundled hub do not)."""
    return METHODS[name].kind != "scratch" and not name.startswith("cli_default")


@dataclass(frozen=True)
class RunKey:
    """One training run of the sweep.

    :param suite: suite name.
    :param target: target task name.
    :param method: method name; ``single:<expert>`` for a single-expert run.
    :param seed: seed.
    """

    suite: str
    target: str
    method: str
    seed: int

    @property
    def base_method(self) -> str:
        """The method without the expert (``single`` for ``single:<expert>``)."""
        return self.method.split(":")[0]

    def path(self, out: Path) -> Path:
        """Where the run's JSON goes."""
        return out / "runs" / self.suite / self.target / self.method.replace(":", "-") / f"seed{self.seed}.json"
