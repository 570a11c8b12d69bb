"""The transfer benchmark's hubs: the suites' source agents (pretrained or reused), each target's hub, the plan."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hp_rl.bench.suites import METHODS, RunKey, Suite
from hp_rl.bench.types import Expert


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
    from hp_rl.core.errors import HpRlError
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


def hub_mapping(suite: Suite, experts: dict[str, Expert], random_trunks: bool = False) -> dict[str, Any]:
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
