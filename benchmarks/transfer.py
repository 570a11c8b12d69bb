"""Transfer benchmark: Hub-Pathway against scratch, single-expert fine-tuning and a dense mixture.

Leave-one-task-out: for each target task, the hub holds experts pretrained on the *other* tasks of a suite
by the project's hub builder (:func:`hp_rl.rl.pretraining.build_hub`, pretrained once, cached in
``<out>/hubs/<suite>`` and reused by every method and seed). Every method trains PPO for the same number
of environment steps on the target, over several seeds::

    nice -n 10 python benchmarks/transfer.py --suite minatar --targets breakout space_invaders \\
        --seeds 0 1 2 --steps 100000 --out bench_out/transfer
    python benchmarks/transfer.py --report-only --out bench_out/transfer --img-dir docs/img

Methods (``--methods``; PPO everywhere, HubPPO for the hub methods, the family's hyperparameters from
``configs/ppo.yml``; experts are fine-tuned, ``freeze_experts=False``, in every method that uses them):

- ``scratch``: plain PPO, the family's plain network (MinAtar: the small-frame CNN with linear heads;
  control: SB3's ``MlpPolicy``; Atari: NatureCNN).
- ``single``: one run per hub expert, a hub of that expert alone (k=1, no noise, no auxiliary losses): the
  expert's trunk fine-tuned behind its input adapter. The report gives the best expert chosen in
  hindsight (highest mean area under the curve) and the mean over experts.
- ``dense``: all experts on every observation, softmax weights (``dense=True``), no auxiliary losses.
- ``hub_pathway``: top-k routing with learned noise, exploration (load balance) and exploitation losses.
- ``no_noise``, ``no_explore``, ``no_exploit``: Hub-Pathway without one of its three parts.

Each run writes ``<out>/runs/<suite>/<target>/<method>/seed<N>.json`` (episode returns against steps, the
returns of ``--eval-points`` noise-free deterministic evaluations, route shares per rollout, CPU and wall time
of training, forward FLOPs per observation, parameter counts, settings, versions) as soon as it
finishes; finished runs are skipped, so an interrupted sweep continues where it stopped and a partial
sweep still gives tables. ``--report-only`` (and the end of every sweep) writes ``<out>/transfer.md``,
``<out>/transfer_summary.json`` and learning-curve PNGs.

Metrics: the learning curve at step t is the mean return of the last ``CURVE_WINDOW`` training episodes
finished by t (episodes of the behaviour policy, as SB3's ``ep_rew_mean``), on ``CURVE_POINTS`` evenly
spaced steps; *AUC* is the mean of that curve (area under it divided by the steps, in return units);
*final* is the mean return of the episodes that finished in the last 10% of the steps. Intervals are 95%
Student-t intervals over seeds. Compute per step: forward FLOPs per observation of the acting policy
(``torch.utils.flop_counter``, routed experts only) and measured CPU milliseconds per environment step
of the whole training loop (environment stepping included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hp_rl.bench.curves import (  # noqa: E402  (after the checkout is on the path)
    CURVE_WINDOW,
    final_return,
    learning_curve,
    mean_ci,
    welch_ci,
)
from hp_rl.bench.recording import episode_recorder, forward_flops, noise_free_evaluator  # noqa: E402

# A source expert: an SB3 run's model.zip (pretrained by the sweep) or an exported hub's manifest entry.
Expert = Path | dict[str, Any]

from hp_rl.rl.presets import ALGORITHM_KEYS, pathway_preset  # noqa: E402  (after the checkout is on the path)
from hp_rl.runner import Backend, BackendError, run_jobs  # noqa: E402  (after the checkout is on the path)

__all__ = [
    "Suite",
    "Method",
    "RunKey",
    "SUITES",
    "METHODS",
    "plan_runs",
    "prepare_hub",
    "run_one",
    "run_sweep",
    "summarise",
    "write_report",
    "main",
]


# --------------------------------------------------------------------------------------------------
# Suites and methods
# --------------------------------------------------------------------------------------------------
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


_MINATAR_BUNDLED = REPO_ROOT / "configs/hubs/minatar_bundled.recipe.yml"
_OTHER_GAMES = {
    "breakout": ("asterix", "freeway", "seaquest", "space_invaders"),
    "space_invaders": ("asterix", "breakout", "freeway", "seaquest"),
}

SUITES: dict[str, Suite] = {
    "minatar": Suite(
        "minatar",
        REPO_ROOT / "configs/hubs/minatar_transfer.recipe.yml",
        ("asterix", "breakout", "freeway", "seaquest", "space_invaders"),
        steps=100_000,
        k=2,
        features_dim=128,
        scratch_policy_kwargs={"net_arch": []},
    ),
    "control": Suite(
        "control",
        REPO_ROOT / "configs/hubs/control_bundled.recipe.yml",
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
        REPO_ROOT / "configs/hubs/control_variants.recipe.yml",
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
        REPO_ROOT / "configs/hubs/atari_needle.recipe.yml",
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
        REPO_ROOT / "configs/hubs/atari_reincarnation.recipe.yml",
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
        REPO_ROOT / "configs/hubs/atari_bundled.recipe.yml",
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


# --------------------------------------------------------------------------------------------------
# Hubs
# --------------------------------------------------------------------------------------------------
def target_env_id(suite: Suite, target: str) -> str:
    """The environment id of a target (a recipe task or one of the suite's extra targets)."""
    from hp_rl.rl.pretraining import load_recipe

    if target in suite.extra_targets:
        return suite.extra_targets[target]
    tasks = {task.name: task.env_id for task in load_recipe(suite.recipe).tasks}
    if target not in tasks:
        raise ValueError(f"Unknown target {target!r} for suite {suite.name!r}; choose one of {sorted(tasks)}.")
    return tasks[target]


def source_tasks(suite: Suite) -> tuple[str, ...]:
    """The suite's source task names, in recipe order."""
    from hp_rl.rl.pretraining import load_recipe

    return tuple(task.name for task in load_recipe(suite.recipe).tasks)


def prepare_hub(suite: Suite, workdir: Path, build: bool = True, accept_checkpoints: bool = False) -> dict[str, Path]:
    """Pretrain (or find cached) every source expert of the suite's recipe.

    :param suite: the suite.
    :param workdir: the hub builder's work folder; finished experts there are reused.
    :param build: train missing experts; else only report the finished ones.
    :param accept_checkpoints: for an unfinished expert, use its newest checkpoint (a time-boxed build).
    :return: task name -> final ``model.zip`` (or checkpoint).
    """
    from hp_rl.rl.pretraining import build_hub
    from hp_rl.rl.runs import AgentRunFolder

    found = build_hub(suite.recipe, workdir) if build else {}
    for name in source_tasks(suite):
        path = workdir / name / "model.zip"
        if name in found:
            continue
        if path.is_file():
            found[name] = path
        elif accept_checkpoints and (newest := AgentRunFolder(workdir / name).latest_checkpoint()) is not None:
            found[name] = newest[0]
    return found


def exported_experts(manifest: Path) -> dict[str, Expert]:
    """The experts of an exported hub (a ``hub.yaml`` manifest, e.g. the bundled MinAtar hub), by name.

    The sweep then reads the experts' trunks and heads from the manifest's safetensors files instead of
    pretraining them: the bundled hubs reproduce the benchmark without hours of expert training.

    :param manifest: a ``hub.yaml`` written by ``python -m hp_rl.hub export`` (or its folder).
    :return: task name -> the manifest's entry (as :func:`hp_rl.hub.parse_hub` reads it: checked, its ``path``
        made absolute).
    """
    from hp_rl.errors import HpRlError
    from hp_rl.hub import parse_hub

    path = manifest / "hub.yaml" if manifest.is_dir() else manifest
    try:
        spec = parse_hub(str(path))
    except HpRlError as error:
        raise SystemExit(
            f"error: --experts-from {path}: not a hub manifest ({error}); "
            "give a hub.yaml written by python -m hp_rl.hub export."
        ) from None
    return {expert.name: expert.as_dict() for expert in spec.experts}


def leave_one_out(experts: dict[str, Expert], target: str) -> dict[str, Expert]:
    """Every expert except the one pretrained on ``target``."""
    return {name: path for name, path in experts.items() if name != target}


def target_hub(suite: Suite, experts: dict[str, Expert], target: str) -> dict[str, Expert]:
    """The experts of ``target``'s hub: the suite's list for it, else every expert but the target's own."""
    if target in suite.hubs:
        return {name: experts[name] for name in suite.hubs[target]}
    return leave_one_out(experts, target)


def _hub_mapping(suite: Suite, experts: dict[str, Expert], random_trunks: bool = False) -> dict[str, Any]:
    """The hub spec of ``experts``, with what each source task's channels and actions mean."""
    from hp_rl.hub import read_sb3_trunk
    from hp_rl.rl.pretraining import load_recipe, task_meanings

    tasks = {task.name: task for task in load_recipe(suite.recipe).tasks}
    entries: list[dict[str, Any]] = []
    for name, expert in experts.items():
        if random_trunks:  # same architecture and input, no knowledge
            if isinstance(expert, dict):
                arch, shape, width = expert["arch"], list(expert["input_shape"]), int(expert["features_dim"])
            else:
                _, info, _ = read_sb3_trunk(expert)
                arch, shape, width = info.arch, list(info.input_shape), info.features_dim
            entries.append(
                {
                    "name": name,
                    "source": "random",
                    "arch": arch,
                    "input_shape": shape,
                    "features_dim": width,
                    "options": {"seed": 1000 + len(entries)},
                }
            )
            continue
        if isinstance(expert, dict):  # an exported hub's entry: its file, meanings and provenance
            entries.append(dict(expert))
            continue
        entry: dict[str, Any] = {"name": name, "source": "sb3", "path": str(expert)}
        provenance = _source_evaluation(Path(expert))
        if provenance:
            entry["provenance"] = provenance
        if name in tasks:
            channels, actions = task_meanings(tasks[name])
            entry.update({k: list(v) for k, v in (("channel_names", channels), ("action_meanings", actions)) if v})
        entries.append(entry)
    return {"experts": entries}


def _source_evaluation(model: Path) -> dict[str, float]:
    """The source return and a random policy's there, from the hub build's ``source_eval.yml`` beside ``model``
    (as ``hp_rl.hub export`` records them in a manifest), if that evaluation is of this very file."""
    from hp_rl.rl.source_eval import read_source_evaluation

    saved = read_source_evaluation(model)
    if saved is None:
        return {}
    return {"source_return": float(saved["return_mean"]), "random_return": float(saved["random_return_mean"])}


def plan_runs(
    suite: Suite,
    targets: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    single_experts: Sequence[str] | None = None,
) -> list[RunKey]:
    """Every run of the sweep, seed-major (a partial sweep has whole seeds), ``single`` expanded per expert.

    :param single_experts: fine-tune only these experts in ``single`` runs (default: every source task).
    """
    sources = source_tasks(suite)
    unknown = sorted(set(single_experts or ()) - set(sources))
    if unknown:
        raise ValueError(f"--single-experts {unknown} are not tasks of the {suite.name} suite; choose from {sources}.")
    chosen = [e for e in sources if single_experts is None or e in single_experts]
    keys = []
    for seed in seeds:
        for target in targets:
            in_hub = suite.hubs.get(target, tuple(e for e in sources if e != target))
            for name in methods:
                if METHODS[name].kind == "single":
                    keys += [RunKey(suite.name, target, f"{name}:{e}", seed) for e in chosen if e in in_hub]
                else:
                    keys.append(RunKey(suite.name, target, name, seed))
    return keys


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------
@dataclass
class RunSettings:
    """Settings shared by every run of a sweep.

    :param steps: environment steps per run.
    :param threads: torch threads per run.
    :param device: torch device.
    :param overrides: hyperparameter overrides from the command line.
    :param out: the sweep's output folder (score files are cached there).
    :param eval_points: noise-free evaluations per run, evenly spaced (0: none).
    :param eval_episodes: deterministic episodes per evaluation.
    """

    steps: int
    threads: int = 1
    device: str = "auto"
    overrides: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    eval_points: int = 10
    eval_episodes: int = 5


def _build_config(suite: Suite, key: RunKey, settings: RunSettings, experts: dict[str, Expert]) -> Any:
    from hp_rl.rl.config import apply_overrides, load_hyperparams
    from hp_rl.rl.envs import preset_for
    from hp_rl.rl.pretraining import load_recipe
    from hp_rl.rl.runs import RunConfig

    env_id = target_env_id(suite, key.target)
    if METHODS[key.base_method].kind == "cli":
        return _cli_config(suite, key, settings, experts)
    family = preset_for(env_id).family
    params = apply_overrides(load_hyperparams("ppo", family), {**suite.overrides, **settings.overrides})
    params.pop("n_timesteps", None)
    method = METHODS[key.base_method]
    hub_experts = target_hub(suite, experts, key.target)
    hub_kwargs: dict[str, Any] = {}
    hub: dict[str, Any] | None = None
    k = suite.k
    if method.kind == "scratch":
        if suite.scratch_policy_kwargs:
            params["policy_kwargs"] = {**suite.scratch_policy_kwargs, **(params.get("policy_kwargs") or {})}
    else:
        if method.kind == "single":
            name = key.method.split(":", 1)[1]
            hub_experts = {name: hub_experts[name]}
        hub = _hub_mapping(suite, hub_experts, method.random_trunks)
        extractor = dict(method.extractor)
        k = int(extractor.pop("k", None) or suite.k)
        k = len(hub_experts) if extractor.get("dense") else min(k, len(hub_experts))
        hub_kwargs = {"features_dim": suite.features_dim, "freeze_experts": False, **extractor}
        params["exploit_coef"] = method.exploit_coef
        params.update(method.algo_kwargs)
        if method.prior:
            hub_kwargs["prior"] = target_prior(suite, key.target, hub, env_id, settings.out)
        params.pop("policy_kwargs", None)  # the hub methods use HubPPO's linear heads on the hub features
    recipe = load_recipe(suite.recipe)
    return RunConfig(
        algo="ppo",
        env_id=env_id,
        hub=hub,  # type: ignore[arg-type]  # a mapping spec: RunConfig's hub also takes one
        k=k,
        n_timesteps=settings.steps,
        seed=key.seed,
        n_envs=int(params.get("n_envs", 1)),
        device=settings.device,
        hyperparams=params,
        hub_kwargs=hub_kwargs,
        env_preset=None,
        env_kwargs=suite.target_env_kwargs.get(key.target)
        or {t.name: t.env_kwargs for t in recipe.tasks}.get(key.target, {}),
    )


def _cli_config(suite: Suite, key: RunKey, settings: RunSettings, experts: dict[str, Expert]) -> Any:
    """The run config ``python -m hp_rl.train`` builds from its command line (its own parser and checks) with
    nothing but the target, the steps, the seed and the target's agents as SB3 zips: bare ones written from an
    exported hub (``benchmarks/user_agents.py``: the same weights as the manifest, no task id, no file beside
    them), or the sweep's own builds (hp_rl run folders); a target's ``gym.make`` arguments as ``--env-kwargs``. The
    path a user takes."""
    import importlib.util

    from hp_rl.train import build_parser
    from hp_rl.train_config import config_and_env

    module_spec = importlib.util.spec_from_file_location("user_agents", Path(__file__).with_name("user_agents.py"))
    assert module_spec is not None and module_spec.loader is not None
    user_agents = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(user_agents)
    folder = (settings.out or REPO_ROOT / "bench_out") / "user_zips"
    zips = []
    hub = {} if key.base_method.startswith("cli_default") else target_hub(suite, experts, key.target)
    for name, expert in hub.items():
        if not isinstance(expert, dict):  # the sweep's own builds: hp_rl run folders, given by their model.zip
            zips.append(expert)
            continue
        path = folder / f"{name}.zip"
        zips.append(path if path.is_file() else user_agents.write_bare_zip(expert, path))
    argv = ["--env", target_env_id(suite, key.target)] + (["--hub", ",".join(str(z) for z in zips)] if zips else [])
    for name, value in (suite.target_env_kwargs.get(key.target) or {}).items():  # a variant: as a user gives it
        argv += ["--env-kwargs", f"{name}={json.dumps(value)}"]
    preset = {"cli_paper": "paper", "cli_default_paper": "paper", "cli_default_transfer": "transfer"}
    if key.base_method in preset:
        argv += ["--hub-set", f"preset={preset[key.base_method]}"]
    argv += ["-n", str(settings.steps), "--seed", str(key.seed), "--device", settings.device]
    config, env = config_and_env(build_parser().parse_args(argv))
    env.close()
    return config


def target_prior(suite: Suite, target: str, hub: dict[str, Any], env_id: str, out: Path | None) -> dict[str, float]:
    """The prior of ``target``'s hub: scored once (zero-shot returns, LogME), cached in ``<out>/scores``, as
    ``prior="auto"`` scores it (the same seed, which no training run uses)."""
    from hp_rl.rl.prior import read_prior, write_scores
    from hp_rl.rl.scoring import AUTO_PRIOR_SEED, score_hub

    path = (out or REPO_ROOT / "bench_out") / "scores" / f"{suite.name}_{target}.yml"
    if not path.is_file():
        env_kwargs = suite.target_env_kwargs.get(target)
        write_scores(
            score_hub(hub, env_id, episodes=10, rollout_steps=2048, seed=AUTO_PRIOR_SEED, env_kwargs=env_kwargs), path
        )
    return read_prior(path)


# Fields of a run record that depend on the machine and the moment, not on what was trained.
TIMING_KEYS = frozenset(
    {"cpu_seconds", "wall_seconds", "cpu_ms_per_step", "wall_ms_per_step", "load_average", "finished"}
)


def comparable_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without its timing fields: two runners that trained the same run give equal ones."""
    return {key: value for key, value in record.items() if key not in TIMING_KEYS}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


def run_one(suite: Suite, key: RunKey, settings: RunSettings, experts: dict[str, Expert], out: Path) -> dict[str, Any]:
    """Train one run and write its JSON; returns the record.

    :param suite: the suite.
    :param key: which run.
    :param settings: shared settings.
    :param experts: every pretrained source expert of the suite (the target's own is left out here).
    :param out: the sweep's output folder.
    """
    import torch

    torch.set_num_threads(settings.threads)
    from hp_rl.hub import file_sha256
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.pathway_control import find_hub_extractors
    from hp_rl.rl.runs import AgentRunFolder
    from hp_rl.rl.training import build_model
    from hp_rl.run_folder import package_versions

    config = _build_config(suite, key, settings, experts)
    env = make_env(config.env_id, config.n_envs, config.seed, config.env_preset, env_kwargs=config.env_kwargs)
    model = build_model(config, env)
    recorder = episode_recorder()
    callbacks = [recorder]
    eval_env = None
    if settings.eval_points > 0:  # the greedy agent with routing noise off, on an environment of its own
        eval_env = make_env(
            config.env_id, 1, config.seed + 10_000, config.env_preset, evaluation=True, env_kwargs=config.env_kwargs
        )
        every = max(settings.steps // settings.eval_points, 1)
        callbacks.append(noise_free_evaluator(eval_env, every, settings.eval_episodes))
    cpu, wall = time.process_time(), time.perf_counter()
    model.learn(settings.steps, callback=callbacks)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    evaluations: list[tuple[int, float]] = []
    if eval_env is not None:
        evaluator = callbacks[-1]
        evaluations = evaluator.evaluations
        cpu, wall = cpu - evaluator.cpu_seconds, wall - evaluator.wall_seconds  # training time alone
        eval_env.close()
    flop_env = make_env(
        config.env_id, config.n_envs, config.seed + 999, config.env_preset, env_kwargs=config.env_kwargs
    )
    flops = forward_flops(model, flop_env)
    flop_env.close()
    env.close()
    policy = model.policy
    entries = (
        [{"name": Path(p).stem, "path": p} for p in config.hub.split(",")]
        if isinstance(config.hub, str)
        else (config.hub or {}).get("experts", [])
    )
    hub_experts = [{**e, "sha256": file_sha256(e["path"]) if "path" in e else None} for e in entries]
    record = {
        "suite": key.suite,
        "target": key.target,
        "env_id": config.env_id,
        "method": key.method,
        "base_method": key.base_method,
        "seed": key.seed,
        "steps": int(model.num_timesteps),
        "episodes": recorder.episodes,
        "route_share": recorder.route_share,
        "route_weight": recorder.route_weight,
        "noise_free_evaluations": evaluations,
        "eval_episodes": settings.eval_episodes if evaluations else 0,
        "cpu_seconds": round(cpu, 2),
        "wall_seconds": round(wall, 2),
        "cpu_ms_per_step": 1000 * cpu / max(model.num_timesteps, 1),
        "wall_ms_per_step": 1000 * wall / max(model.num_timesteps, 1),
        "forward_flops_per_obs": flops,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        # the routed experts per observation, as built (k_from_prior may route fewer than the k asked for)
        "k": find_hub_extractors(model)[0].k if config.hub is not None else None,
        # what prior="auto" measured before training (the preset's scoring), where the run scored its hub
        "prior_scores": getattr(model, "prior_scores", None),
        "hub_kwargs": config.hub_kwargs,
        "exploit_coef": config.hyperparams.get("exploit_coef"),
        "hub_experts": hub_experts,
        "hyperparams": {k: v for k, v in config.hyperparams.items() if k != "exploit_coef"},
        "threads": settings.threads,
        "device": str(model.device),
        "load_average": list(os.getloadavg()),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": package_versions(AgentRunFolder.recorded_packages),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_json(key.path(out), record)
    return record


def _run_in_worker(suite: Suite, key: RunKey, settings: RunSettings, experts: dict[str, Expert], out: Path) -> str:
    record = run_one(suite, key, settings, experts, out)
    return _describe(record)


def _describe(record: dict[str, Any]) -> str:
    returns = [r for _, r in record["episodes"]]
    last = np.mean(returns[-CURVE_WINDOW:]) if returns else float("nan")
    return (
        f"{record['suite']}/{record['target']}/{record['method']}/seed{record['seed']}: "
        f"{record['steps']} steps, last-{CURVE_WINDOW} return {last:.2f}, {record['cpu_seconds']:.0f} CPU s, "
        f"{record['cpu_ms_per_step']:.3f} CPU ms/step"
    )


def run_sweep(
    suite: Suite,
    keys: Sequence[RunKey],
    settings: RunSettings,
    experts: dict[str, Expert],
    out: Path,
    jobs: int = 1,
    budget_cpu_seconds: float | None = None,
    backend: Backend | None = None,
) -> list[RunKey]:
    """Run every key whose JSON does not exist yet; returns the keys run.

    :param jobs: parallel processes (1: in this process, one run after another); ignored with ``backend``.
    :param budget_cpu_seconds: in this process, one run after another: start no new run once this much CPU
        time is spent.
    :param backend: where the runs go (:mod:`hp_rl.runner`: this process, a process pool or Ray tasks);
        every backend writes the same files.
    """
    todo = [key for key in keys if not key.path(out).is_file()]
    print(
        f"[transfer] {suite.name}: {len(keys) - len(todo)} of {len(keys)} runs already done, {len(todo)} to run",
        flush=True,
    )
    backend = backend or Backend("serial" if jobs <= 1 else "processes", jobs=max(jobs, 1))
    done: list[RunKey] = []
    if backend.kind == "serial" and budget_cpu_seconds is not None:
        start = time.process_time()
        for key in todo:
            if time.process_time() - start > budget_cpu_seconds:
                print(f"[transfer] CPU budget of {budget_cpu_seconds:.0f} s spent; stopping (rerun to continue).")
                break
            print(_describe(run_one(suite, key, settings, experts, out)), flush=True)
            done.append(key)
        return done

    def finished(index: int, description: str) -> None:
        print(description, flush=True)
        done.append(todo[index])

    def failed(index: int, error: BaseException) -> None:  # one failed run must not cost the others
        print(f"[transfer] {todo[index]} failed: {type(error).__name__}: {error}", flush=True)

    run_jobs(_run_in_worker, [(suite, key, settings, experts, out) for key in todo], backend, finished, failed)
    return done


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def load_runs(out: Path) -> list[dict[str, Any]]:
    """Every finished run record under ``out/runs``."""
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*/*/seed*.json"))]


def _per_seed(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in records}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per suite and target: each method's final return, AUC and compute, mean and 95% interval over seeds.

    ``single`` rows: ``single (best: <expert>)`` chosen in hindsight by mean AUC, and ``single (mean)``, the
    per-seed mean over experts (seeds where every expert finished).
    """
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        groups.setdefault((run["suite"], run["target"]), {}).setdefault(run["method"], []).append(run)
    summary: dict[str, Any] = {}
    for (suite, target), methods in sorted(groups.items()):
        rows: dict[str, dict[str, Any]] = {}
        for method, records in methods.items():
            steps = max(r["steps"] for r in records)
            finals = {r["seed"]: final_return(r["episodes"], r["steps"]) for r in records}
            aucs = {r["seed"]: float(np.nanmean(learning_curve(r["episodes"], r["steps"])[1])) for r in records}
            curves = [learning_curve(r["episodes"], r["steps"]) for r in records]
            rows[method] = {
                "final": finals,
                "auc": aucs,
                "steps": steps,
                "grid": curves[0][0].tolist(),
                "curves": {r["seed"]: c[1].tolist() for r, c in zip(records, curves, strict=True)},
                "cpu_ms_per_step": float(np.mean([r["cpu_ms_per_step"] for r in records])),
                "flops": float(np.mean([r["forward_flops_per_obs"] for r in records])),
                "trainable_parameters": records[0]["trainable_parameters"],
                "episodes": float(np.mean([len(r["episodes"]) for r in records])),
            }
        singles = {m: row for m, row in rows.items() if m.split(":")[0] in _SINGLE_METHODS and ":" in m}
        if singles:
            best = max(singles, key=lambda m: mean_ci(singles[m]["auc"].values())[0])
            # With one expert run (--single-experts) there is no choice to make in hindsight, nor a mean.
            rows["single_best"] = {
                **singles[best],
                "expert": best.split(":", 1)[1],
                "kind": best.split(":")[0],
                "only": len(singles) == 1,
            }
            seeds = set.intersection(*(set(row["final"]) for row in singles.values()))
            if seeds and len(singles) > 1:
                mean_row = dict(next(iter(singles.values())))
                for metric in ("final", "auc"):
                    mean_row[metric] = {s: float(np.mean([row[metric][s] for row in singles.values()])) for s in seeds}
                mean_row["curves"] = {
                    s: np.mean([row["curves"][s] for row in singles.values()], axis=0).tolist() for s in seeds
                }
                mean_row["cpu_ms_per_step"] = float(np.mean([row["cpu_ms_per_step"] for row in singles.values()]))
                rows["single_mean"] = mean_row
        summary.setdefault(suite, {})[target] = rows
    return summary


_SINGLE_METHODS = ("single", "single_agent")  # the candidates of the best / mean single expert
_SINGLE_ROWS = (*_SINGLE_METHODS, "single_agent_warmup")  # single-expert rows of the tables
_ROW_ORDER = (
    "scratch",
    "cli_default",
    "cli_default_transfer",
    "cli_default_paper",
    "user_zips",
    "cli_paper",
    "single_best",
    "single_mean",
    "dense",
    "hub_pathway",
    "no_noise",
    "no_explore",
    "no_exploit",
    "transfer",
    "transfer_prior",
    "transfer_random",
    "transfer_no_kickstart",
    "transfer_no_base",
    "transfer_features",
    "transfer_noise",
    "transfer_critic_warmup",
    "transfer_base_prior",
    "transfer_strong_prior",
    "transfer_weak_prior",
    "transfer_k2",
    "transfer_k1",
    "transfer_uniform_trust",
)


def _label(method: str, row: dict[str, Any]) -> str:
    if method == "single_best":
        if row.get("only"):
            return f"single expert ({row['expert']}, the only one run)"
        return f"single expert, best in hindsight ({row['expert']})"
    if method == "single_mean":
        return "single expert, mean over experts"
    if method.split(":")[0] in _SINGLE_ROWS and ":" in method:
        kind, expert = method.split(":", 1)
        return f"{METHODS[kind].label}: {expert}"
    return METHODS[method].label if method in METHODS else method


def _fmt(mean: float, half: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _flops(value: float) -> str:
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value / 1e3:.1f} k"


def _ordered(rows: dict[str, Any], with_experts: bool) -> list[str]:
    order = [m for m in _ROW_ORDER if m in rows]
    if with_experts and not rows.get("single_best", {}).get("only"):
        order += sorted(m for m in rows if m.split(":")[0] in _SINGLE_ROWS and ":" in m)
    return order


def markdown_tables(summary: dict[str, Any], with_experts: bool = True) -> str:
    """The result tables and the target checks, as markdown."""
    lines: list[str] = []
    for suite, targets in summary.items():
        for target, rows in targets.items():
            steps = max(row["steps"] for row in rows.values())
            episodes = np.mean([row["episodes"] for row in rows.values()])
            lines += [
                f"#### {suite} / {target} ({steps:,} env steps per run, {episodes:,.0f} episodes per run)",
                "",
                "| method | final return | AUC | seeds | forward FLOPs / obs | CPU ms / env step |",
                "|---|---|---|---|---|---|",
            ]
            for method in _ordered(rows, with_experts):
                row = rows[method]
                final, final_half, n = mean_ci(row["final"].values())
                auc, auc_half, _ = mean_ci(row["auc"].values())
                lines.append(
                    f"| {_label(method, row)} | {_fmt(final, final_half)} | {_fmt(auc, auc_half)} | {n} | "
                    f"{_flops(row['flops'])} | {row['cpu_ms_per_step']:.3f} |"
                )
            lines.append("")
    lines += target_checks(summary)
    lines += overview_table(summary)
    return "\n".join(lines)


def overview_table(summary: dict[str, Any]) -> list[str]:
    """Every method on every target at once: mean AUC relative to scratch, ``(AUC - scratch) / |scratch|``.

    The last columns average it over the targets where the method ran (mean, and the median, which one target
    with a tiny scratch AUC cannot dominate) and count the targets where its mean AUC beats scratch's.
    """
    columns = [
        (suite, target) for suite, targets in summary.items() for target, rows in targets.items() if "scratch" in rows
    ]
    if not columns:
        return []
    lines = [
        "#### All targets at once",
        "",
        "Mean AUC relative to scratch on the same target, (AUC − scratch AUC) / |scratch AUC| "
        "(0 = scratch, +0.10 = 10% more area under the learning curve).",
        "",
        "| method | " + " | ".join(f"{s} / {t}" for s, t in columns) + " | average | median | targets above scratch |",
        "|---|" + "---:|" * (len(columns) + 3),
    ]
    for method in _ROW_ORDER[1:]:
        cells: list[str] = []
        values: list[float] = []
        for suite, target in columns:
            rows = summary[suite][target]
            if method not in rows:
                cells.append("–")
                continue
            scratch = mean_ci(rows["scratch"]["auc"].values())[0]
            value = (mean_ci(rows[method]["auc"].values())[0] - scratch) / (abs(scratch) or 1.0)
            values.append(value)
            cells.append(f"{value:+.2f}")
        if not values:
            continue
        if method == "single_best":
            only = any(summary[s][t]["single_best"].get("only") for s, t in columns if "single_best" in summary[s][t])
            label = "single expert, best of those run" if only else "single expert, best in hindsight"
        else:
            label = _label(method, {})
        above = sum(v > 0 for v in values)
        stats = f"{np.mean(values):+.3f} | {np.median(values):+.3f} | {above} of {len(values)}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {stats} |")
    return [*lines, ""]


def target_checks(summary: dict[str, Any]) -> list[str]:
    """The issue's targets, per target: Hub-Pathway against scratch, the best single expert and dense."""
    lines = [
        "#### Targets",
        "",
        "Differences are Hub-Pathway minus the other method (mean, 95% Welch interval over seeds). "
        "*Normalised* = difference / |scratch mean|.",
        "",
        "| suite / target | HP − scratch, final | HP − scratch, AUC | no negative transfer (AUC) | "
        "HP − best single, AUC | HP − mean single, AUC | FLOPs HP / dense |",
        "|---|---|---|---|---|---|---|",
    ]
    normalised: dict[str, list[float]] = {"scratch": [], "single_best": [], "single_mean": []}
    for suite, targets in summary.items():
        for target, rows in targets.items():
            hp = rows.get("hub_pathway")
            if hp is None or "scratch" not in rows:
                continue
            cells = []
            for other, metric in (
                ("scratch", "final"),
                ("scratch", "auc"),
                ("single_best", "auc"),
                ("single_mean", "auc"),
            ):
                if other not in rows:
                    cells.append("–")
                    continue
                diff, half = welch_ci(list(hp[metric].values()), list(rows[other][metric].values()))
                cells.append(_fmt(diff, half))
                if metric == "auc":
                    scale = abs(mean_ci(rows["scratch"]["auc"].values())[0]) or 1.0
                    normalised[other].append(diff / scale)
            diff, half = welch_ci(list(hp["auc"].values()), list(rows["scratch"]["auc"].values()))
            ok = "yes" if math.isnan(half) or diff + half >= 0 else "**no**"
            ratio = f"{hp['flops'] / rows['dense']['flops']:.2f}" if "dense" in rows else "–"
            lines.append(f"| {suite} / {target} | {cells[0]} | {cells[1]} | {ok} | {cells[2]} | {cells[3]} | {ratio} |")
    lines += [
        "",
        "Average over targets of the normalised AUC difference (HP − other) / |scratch AUC|: "
        + ", ".join(
            f"vs {name.replace('_', ' ')} {np.mean(values):+.3f}" for name, values in normalised.items() if values
        ),
    ]
    return [*lines, ""]


_STYLES = {
    "scratch": ("black", "-"),
    "single_best": ("tab:green", "-"),
    "single_mean": ("tab:olive", ":"),
    "dense": ("tab:purple", "-"),
    "hub_pathway": ("tab:red", "-"),
    "no_noise": ("tab:orange", "--"),
    "no_explore": ("tab:blue", "--"),
    "no_exploit": ("tab:cyan", "--"),
}


def plot_curves(summary: dict[str, Any], img_dir: Path, prefix: str = "transfer") -> list[Path]:
    """One PNG per target, ``<prefix>_<suite>_<target>.png``: mean learning curve of each method over seeds,
    shaded 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suite, targets in summary.items():
        for target, rows in targets.items():
            fig, ax = plt.subplots(figsize=(6.4, 4.0))
            for method in _ordered(rows, with_experts=False):
                row = rows[method]
                curves = np.array(list(row["curves"].values()), dtype=float)
                grid = np.array(row["grid"])
                mean = np.nanmean(curves, axis=0)
                color, style = _STYLES.get(method, ("grey", "-"))
                ax.plot(grid, mean, color=color, linestyle=style, label=f"{_label(method, row)} (n={len(curves)})")
                if len(curves) > 1:
                    spread = np.nanstd(curves, axis=0, ddof=1) / np.sqrt(len(curves))
                    half = stats.t.ppf(0.975, len(curves) - 1) * spread
                    ax.fill_between(grid, mean - half, mean + half, color=color, alpha=0.12, linewidth=0)
            ax.set_xlabel("environment steps")
            ax.set_ylabel(f"training return (mean of last {CURVE_WINDOW} episodes)")
            ax.set_title(f"{suite}: {target} (leave-one-out hub)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            path = img_dir / f"{prefix}_{suite}_{target}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def write_report(out: Path, img_dir: Path | None = None) -> Path:
    """Tables (``transfer.md``), the summary (``transfer_summary.json``) and the PNGs from every finished run.

    The PNGs are named after the output folder (``bench_out/transfer_long`` -> ``transfer_long_<suite>_<target>.png``),
    so sweeps written to different folders can share one picture folder.
    """
    runs = load_runs(out)
    summary = summarise(runs)
    images = plot_curves(summary, img_dir or out, prefix=out.resolve().name)
    text = ["# Transfer results", "", f"{len(runs)} runs from {out}.", "", markdown_tables(summary)]
    text += [f"![{p.stem}]({p.name})" for p in images]
    report = out / "transfer.md"
    report.write_text("\n".join(text) + "\n")
    (out / "transfer_summary.json").write_text(json.dumps(summary, indent=1, default=float))
    print(markdown_tables(summary))
    return report


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="minatar")
    parser.add_argument("--recipe", type=Path, help="use another pretraining recipe for the suite")
    parser.add_argument("--targets", nargs="+", help="target task names (default: the suite's)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--single-experts",
        nargs="+",
        metavar="TASK",
        help="fine-tune only these experts in the single-expert runs (default: all)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="environment steps per run (default: the suite's)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_out/transfer")
    parser.add_argument("--hub-workdir", type=Path, help="hub builder work folder (default: <out>/hubs/<suite>)")
    parser.add_argument("--no-build", action="store_true", help="do not pretrain missing experts")
    parser.add_argument(
        "--experts-from",
        type=Path,
        metavar="HUB_YAML",
        help="read the experts from an exported hub instead of pretraining them "
        "(e.g. hp_rl/hub/bundled/minatar/hub.yaml: the bundled MinAtar hub)",
    )
    parser.add_argument(
        "--accept-checkpoints",
        action="store_true",
        help="use an unfinished expert's newest checkpoint (time-boxed hub builds)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="PPO hyperparameter overrides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--eval-points",
        type=int,
        default=10,
        help="noise-free deterministic evaluations per run, evenly spaced (0: none)",
    )
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per noise-free evaluation")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel (separate processes; with --ray: the local Ray's CPUs)"
    )
    parser.add_argument("--ray", action="store_true", help="run each run as a task of a local Ray (pip install ray)")
    parser.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (implies --ray), e.g. auto")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task asks for (default 0)")
    parser.add_argument("--budget-cpu-minutes", type=float, help="start no new run after this much CPU (jobs=1)")
    parser.add_argument("--report-only", action="store_true", help="only write the report from finished runs")
    parser.add_argument("--img-dir", type=Path, help="where the PNGs go (default: --out)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep (resumably) and write the report."""
    import torch

    from hp_rl.rl.config import parse_overrides

    args = _parse_args(argv)
    torch.set_num_threads(args.threads)  # the hub build too: idle OpenMP threads spin on a busy machine
    out: Path = args.out
    if args.report_only:
        write_report(out, args.img_dir)
        return 0
    suite = SUITES[args.suite]
    if args.recipe is not None:
        suite = replace(suite, recipe=args.recipe.resolve())
    settings = RunSettings(
        steps=args.steps or suite.steps,
        threads=args.threads,
        device=args.device,
        overrides=parse_overrides(args.set),
        out=out,
        eval_points=args.eval_points,
        eval_episodes=args.eval_episodes,
    )
    if args.eval_points < 0 or args.eval_episodes < 1:
        raise SystemExit("error: --eval-points must be >= 0 and --eval-episodes >= 1.")
    targets = tuple(args.targets or suite.targets)
    for target in targets:
        target_env_id(suite, target)  # fail early on a wrong name
    workdir = args.hub_workdir or out / "hubs" / suite.name
    experts: dict[str, Expert]
    uses_sources = any(method_uses_sources(name) for name in args.methods)
    if args.experts_from is not None:
        experts = exported_experts(args.experts_from)
    elif not uses_sources:  # scratch and the headline command's own hub: nothing to pretrain
        experts = {}
    else:
        experts = dict(
            prepare_hub(
                suite, workdir, build=not (args.no_build or args.dry_run), accept_checkpoints=args.accept_checkpoints
            )
        )
    try:
        keys = plan_runs(suite, targets, args.methods, args.seeds, args.single_experts)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if args.dry_run:
        print(
            json.dumps(
                {
                    "suite": asdict(suite),
                    "settings": asdict(settings),
                    "experts": experts,
                    "runs": [k.method + f"/{k.target}/seed{k.seed}" for k in keys],
                },
                indent=1,
                default=str,
            )
        )
        return 0
    needed = {name for target in targets for name in suite.hubs.get(target, source_tasks(suite)) if name != target}
    missing = sorted(needed - set(experts)) if uses_sources else []
    if missing:  # a target's hub must hold every expert it names
        where = args.experts_from or workdir
        fix = "choose a hub that holds them" if args.experts_from else "run again without --no-build"
        raise SystemExit(f"error: experts {missing} are not in {where}; {fix}.")
    budget = args.budget_cpu_minutes * 60 if args.budget_cpu_minutes else None
    if args.ray or args.ray_address:
        backend = Backend(
            "ray", jobs=args.jobs, address=args.ray_address, cpus_per_job=args.threads, gpus_per_job=args.gpus_per_run
        )
    else:
        backend = Backend("serial" if args.jobs <= 1 else "processes", jobs=args.jobs)
    try:
        backend.check()
    except BackendError as error:
        raise SystemExit(f"error: {error}") from None
    run_sweep(suite, keys, settings, experts, out, budget_cpu_seconds=budget, backend=backend)
    write_report(out, args.img_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
