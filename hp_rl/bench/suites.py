"""The transfer benchmark's suites (task families with a pretraining recipe) and methods (what trains on a target)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hp_rl.core.errors import ConfigError
from hp_rl.core.overrides import parse_overrides
from hp_rl.core.paths import HUB_CONFIG_DIR
from hp_rl.core.yaml_files import read_yaml_mapping
from hp_rl.hub.options import ALGORITHM_KEYS, LossWeights, PathwayOptions, pathway_preset

# the suites and methods, as data
_DATA = Path(__file__).resolve().parent / "data"


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


def _load_suites() -> dict[str, Suite]:
    """The suites of ``hp_rl/bench/data/suites.yml``."""
    suites = {}
    for name, entry in read_yaml_mapping(_DATA / "suites.yml", "suites.yml").items():
        suites[name] = Suite(
            name,
            HUB_CONFIG_DIR / entry.pop("recipe"),
            tuple(entry.pop("targets")),
            hubs={target: tuple(names) for target, names in entry.pop("hubs", {}).items()},
            **entry,
        )
    return suites


SUITES: dict[str, Suite] = _load_suites()


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
    :param preset: ``cli`` methods: the ``--hub-set preset`` given (``None``: the command's default).
    :param hub: ``cli`` methods: ``auto`` runs the command's own bundled hub instead of the suite's agents.
    :param hub_set: ``cli`` methods: further ``--hub-set KEY=VALUE`` given after the preset (an ablation of the
        defaults on the user's path).
    :param cli_set: ``cli`` methods: ``--set KEY=VALUE`` given (hyperparameters, loss weights).
    """

    name: str
    label: str
    kind: str
    extractor: dict[str, Any] = field(default_factory=dict)
    exploit_coef: float = 0.0
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    random_trunks: bool = False
    prior: bool = False
    preset: str | None = None
    hub: str | None = None
    hub_set: tuple[str, ...] = ()
    cli_set: tuple[str, ...] = ()


def _method(name: str, entry: dict[str, Any]) -> Method:
    """One method of ``methods.yml``; ``preset: transfer`` on a hub method is the shipped preset with the entry's
    changes, read from the options so that the benchmark measures what users get."""
    entry = dict(entry)
    extractor = dict(entry.pop("extractor", {}))
    algo = dict(entry.pop("algo", {}))
    PathwayOptions.from_mapping(extractor, f"methods.yml: {name}")  # names and values checked as any options
    hub_set = tuple(str(item) for item in entry.pop("hub_set", ()))
    cli_set = tuple(str(item) for item in entry.pop("set", ()))
    PathwayOptions.from_mapping(parse_overrides(hub_set), f"methods.yml: {name}, hub_set")
    weights = {k: v for k, v in parse_overrides(cli_set).items() if k in ALGORITHM_KEYS}
    LossWeights.from_mapping(weights, f"methods.yml: {name}, set")
    if (hub_set or cli_set) and entry.get("kind", "hub") != "cli":  # other kinds build their runs without flags
        raise ConfigError(f"methods.yml: {name}: hub_set and set are flags of the command line (kind: cli) only.")
    if entry.get("kind", "hub") == "hub" and entry.get("preset") == "transfer":
        entry.pop("preset")
        preset = pathway_preset("transfer")
        own = {key: value for key, value in preset.items() if key not in ALGORITHM_KEYS and key != "prior"}
        kickstart = {key: preset[key] for key in ("kickstart_coef", "kickstart_fraction")}
        extractor = {**own, **extractor}
        algo = {**(kickstart if entry.pop("kickstart", True) else {}), **algo}
        entry.setdefault("exploit_coef", preset["exploit_coef"])
        entry.setdefault("prior", True)
    return Method(
        name,
        entry.pop("label"),
        entry.pop("kind", "hub"),
        extractor,
        algo_kwargs=algo,
        hub_set=hub_set,
        cli_set=cli_set,
        **entry,
    )


METHODS: dict[str, Method] = {
    name: _method(name, entry) for name, entry in read_yaml_mapping(_DATA / "methods.yml", "methods.yml").items()
}


def method_uses_sources(name: str) -> bool:
    """Whether runs of method ``name`` need the suite's pretrained source agents (scratch and the headline
    command with its bundled hub do not)."""
    method = METHODS[name]
    return method.kind != "scratch" and method.hub != "auto"


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
