"""``python -m hp_rl.hub list | inspect SPEC | trust FILE | build RECIPE | export SOURCE | score SPEC``.

- ``list``: the registered sources, the bundled hubs and the example specs in ``configs/hubs/``.
- ``inspect SPEC``: load a hub and describe each expert (source, architecture, parameters, input it expects,
  feature size, sha256, provenance). A TorchScript expert is a program: it is described from its file alone
  (digest, whether it is trusted, the shapes it declares, its code files), never loaded or run.
- ``trust FILE``: record a TorchScript file as trusted, so that run folders naming it may run it
  (:mod:`hp_rl.hub.trusted_code`).
- ``build RECIPE``: pretrain the recipe's source experts (resumable: :func:`hp_rl.rl.pretraining.build_hub`),
  evaluate each finished one on its source task (whole games, unclipped score) beside a random policy, and
  write ``<workdir>/hub.yaml``, a hub spec of the trained checkpoints with their provenance.
- ``export SOURCE``: trunks to fp16 safetensors plus a ``hub.yaml`` manifest, the bundled hubs' format.
  SOURCE is a recipe (exports its built workdir), a built hub folder, or any hub spec.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hp_rl.core.console import configure_logging, program_name
from hp_rl.core.errors import HpRlError, error_message
from hp_rl.core.paths import BUILD_ROOT, BUNDLED_HUB_DIR, HUB_CONFIG_DIR, PROJECT_ROOT, file_sha256, written_by_rename
from hp_rl.core.yaml_files import read_yaml, read_yaml_mapping
from hp_rl.hub.expert import HubExpert
from hp_rl.hub.export import MANIFEST_NAME, ExportItem, export_hub
from hp_rl.hub.sources import SOURCES, load_expert
from hp_rl.hub.spec import ExpertSpec, HubSpecError, parse_hub
from hp_rl.hub.trusted_code import CODE_SOURCES, describe_code_file, trust_code, trust_file
from hp_rl.hub.vision_sources import vision_available

__all__ = ["main", "build_parser", "default_workdir", "describe_expert", "BUNDLED_LIMIT_BYTES"]

# Size budget of every bundled hub together (Atari 13.5 MB, MinAtar 2.4 MB with heads, control 40 KB).
BUNDLED_LIMIT_BYTES = 17 * 1024 * 1024
_RECIPE_SUFFIX = ".recipe.yml"


def _display(path: str | Path) -> str:
    """``path`` relative to the project root when inside it (what manifests record)."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(resolved)


def _hub_name(recipe: Path) -> str:
    name = recipe.name[: -len(_RECIPE_SUFFIX)] if recipe.name.endswith(_RECIPE_SUFFIX) else recipe.stem
    return name[: -len("_bundled")] if name.endswith("_bundled") else name


def default_workdir(recipe: str | Path) -> Path:
    """Where ``build`` trains a recipe by default: ``hub_build/<name>`` in a checkout, the user cache's
    ``hub_build/<name>`` for an installed wheel (``atari_bundled.recipe.yml`` -> ``atari``)."""
    return BUILD_ROOT / _hub_name(Path(recipe))


def _is_recipe(path: Path) -> bool:
    if path.name.endswith(_RECIPE_SUFFIX):
        return True
    if path.is_file() and path.suffix in (".yml", ".yaml"):
        raw = read_yaml(path, "hub spec or recipe")
        return isinstance(raw, dict) and "tasks" in raw
    return False


# ----------------------------------------------------------------------------------------------- list


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cmd_list() -> int:
    """Print the registered sources, the bundled hubs and the example specs."""
    print("Sources (hub spec key 'source'):")
    for config in SOURCES.values():
        available = "" if config.extra is None or vision_available(config.name) else f"  [needs extra '{config.extra}']"
        print(f"  {config.name:<12} {config.description}{available}")
    print(f"\nBundled hubs ({_display(BUNDLED_HUB_DIR)}):")
    total = 0
    manifests = sorted(BUNDLED_HUB_DIR.glob(f"*/{MANIFEST_NAME}")) if BUNDLED_HUB_DIR.is_dir() else []
    for manifest in manifests:
        raw = read_yaml_mapping(manifest, "hub manifest", allow_empty=True)
        size = _dir_size(manifest.parent)
        total += size
        names = ", ".join(str(e.get("name")) for e in raw.get("experts", []))
        print(f"  {manifest.parent.name:<12} {size / 1e6:6.2f} MB  {_display(manifest)}: {names}")
    if not manifests:
        print("  (none exported yet)")
    else:
        print(f"  {'total':<12} {total / 1e6:6.2f} MB (limit {BUNDLED_LIMIT_BYTES / 1e6:.1f} MB)")
    print(f"\nHub specs and recipes ({_display(HUB_CONFIG_DIR)}):")
    for path in sorted(HUB_CONFIG_DIR.glob("*.y*ml")) if HUB_CONFIG_DIR.is_dir() else []:
        kind = "recipe (python -m hp_rl.hub build)" if _is_recipe(path) else "hub spec (--hub)"
        print(f"  {path.name:<36} {kind}")
    return 0


# -------------------------------------------------------------------------------------------- inspect


def describe_expert(name: str, expert: HubExpert, spec: ExpertSpec | None = None) -> dict[str, Any]:
    """Plain description of a loaded expert (what ``inspect`` prints)."""
    info, provenance = expert.info, expert.provenance
    # The spec's provenance (typed, in manifest order) first, then what only the file says.
    details: dict[str, Any] = {str(k): v for k, v in spec.provenance.items()} if spec is not None else {}
    details.update({k: v for k, v in sorted(provenance.details.items()) if k not in details})
    return {
        "name": name,
        "source": provenance.source,
        "location": provenance.location,
        "architecture": info.arch,
        "arch_options": dict(info.options),
        "parameters": expert.num_parameters,
        "input_kind": info.input_kind,
        "input_shape": list(info.input_shape),
        "features_dim": info.features_dim,
        "sha256": provenance.sha256,
        "frozen": None if spec is None else spec.frozen,
        "lr_scale": None if spec is None else spec.lr_scale,
        "provenance": details,
    }


def describe_code_expert(spec: ExpertSpec) -> dict[str, Any]:
    """What ``inspect`` says of a TorchScript expert, from its file alone: nothing in it is run."""
    path = Path(str(spec.path)).expanduser()
    if not path.is_file():
        raise HubSpecError(f"Expert {spec.name!r}: {path} does not exist.")
    found = describe_code_file(path)
    facts = found["facts"]
    trusted = "yes" if found["trusted"] else f"no (python -m hp_rl.hub trust {path})"
    return {
        "name": spec.name,
        "source": spec.source,
        "location": str(path),
        "architecture": "program (TorchScript): runs its own code when loaded; inspect did not load it",
        "arch_options": {},
        "parameters": None,
        "input_kind": None,
        "input_shape": list(spec.input_shape or facts.get("input_shape") or []),
        "features_dim": spec.features_dim or facts.get("features_dim"),
        "sha256": found["sha256"],
        "frozen": spec.frozen,
        "lr_scale": spec.lr_scale,
        "provenance": {"trusted": trusted, "code files": len(found["code_files"]), "bytes": found["bytes"]},
    }


def cmd_inspect(spec_text: str, observation_shape: tuple[int, ...] | None, as_json: bool) -> int:
    """Load every expert of a hub and describe it (TorchScript experts from their files, unloaded)."""
    hub = parse_hub(_spec_argument(spec_text))
    described = [
        describe_code_expert(e)
        if e.source in CODE_SOURCES
        else describe_expert(e.name, load_expert(e, observation_shape), e)
        for e in hub.experts
    ]
    if as_json:
        print(json.dumps({"origin": hub.origin, "experts": described}, indent=2, default=str))
        return 0
    print(f"Hub {hub.origin}: {len(described)} expert(s)")
    for item in described:
        options = ", ".join(f"{k}={v}" for k, v in item["arch_options"].items())
        print(f"\n{item['name']}")
        rows = [
            ("source", f"{item['source']}  {item['location']}"),
            ("architecture", item["architecture"] + (f" ({options})" if options else "")),
            ("parameters", "-" if item["parameters"] is None else f"{item['parameters']:,}"),
            ("input", f"{tuple(item['input_shape'])}" + (f" ({item['input_kind']})" if item["input_kind"] else "")),
            ("features", item["features_dim"]),
            ("sha256", item["sha256"]),
            *item["provenance"].items(),
        ]
        for key, value in rows:
            print(f"  {key:<20} {value}")
    return 0


def cmd_trust(paths: Sequence[str]) -> int:
    """Record TorchScript files as trusted (after looking at them with ``inspect``)."""
    files = [Path(p).expanduser() for p in paths]
    for path in files:
        if not path.is_file():
            raise HubSpecError(f"{path} does not exist; give the TorchScript file a run folder names.")
    for path, digest in zip(files, trust_code(files), strict=True):
        print(f"trusted {path} (sha256 {digest}); recorded in {trust_file()}")
    return 0


def _spec_argument(text: str) -> str:
    """A folder holding ``hub.yaml`` stands for that manifest."""
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise HubSpecError(f"{path} holds no {MANIFEST_NAME}; give a hub spec file.")
        return str(path / MANIFEST_NAME)
    return text


# ---------------------------------------------------------------------------------------------- build


def _cached_evaluation(model_path: Path, task: Any, episodes: int, seed: int) -> dict[str, Any]:
    """The evaluation in ``source_eval.yml`` beside the model if it is of this model and episode count, else a
    new one (and that is recorded there)."""
    from hp_rl.rl.source_eval import evaluate_source_task, read_source_evaluation, write_source_evaluation

    saved = read_source_evaluation(model_path, episodes)
    if saved is not None:
        return saved
    print(f"[hub build] evaluating {task.name} on {task.env_id} ({episodes} episodes, and a random policy)", flush=True)
    result = evaluate_source_task(model_path, task.env_id, episodes, seed, task.env_preset, task.env_kwargs)
    return write_source_evaluation(model_path, result)


def _command(recipe: Path, workdir: Path) -> str:
    return shlex.join(["python", "-m", "hp_rl.hub", "build", _display(recipe), "--workdir", _display(workdir)])


def _built_expert(recipe: Any, recipe_path: Path, workdir: Path, task: Any, episodes: int | None) -> ExpertSpec:
    """The hub spec entry of a finished task: its file and digest, where it came from, what its channels and actions
    mean, and (with ``episodes``) how well it plays its own task against a random policy."""
    from hp_rl.hub.sb3_zip import read_sb3_trunk
    from hp_rl.rl.pretraining import task_meanings

    model_path = workdir / task.name / "model.zip"
    _, _, details = read_sb3_trunk(model_path)
    provenance: dict[str, Any] = {
        "recipe": _display(recipe_path),
        "command": _command(recipe_path, workdir),
        "algo": recipe.algo,
        "env_id": task.env_id,
        "steps": int(details.get("num_timesteps", recipe.n_timesteps)),
        "seed": recipe.seed,
    }
    if task.env_kwargs:
        provenance["env_kwargs"] = dict(task.env_kwargs)
    if episodes is not None:
        result = _cached_evaluation(model_path, task, episodes, recipe.seed + 10_000)
        provenance.update(
            {
                "source_return": result["return_mean"],
                "source_return_std": result["return_std"],
                "random_return": result["random_return_mean"],
                "random_return_std": result["random_return_std"],
                "eval_episodes": result["episodes"],
                "eval_deterministic": result["deterministic"],
            }
        )
    channel_names, action_meanings = task_meanings(task)
    return ExpertSpec(
        name=task.name,
        source="sb3",
        path=f"{task.name}/model.zip",
        sha256=file_sha256(model_path),
        provenance=provenance,
        channel_names=channel_names,
        action_meanings=action_meanings,
    )


def cmd_build(
    recipe_text: str,
    workdir_text: str | None,
    only: list[str] | None,
    episodes: int | None,
    evaluate: bool,
    backend: Any = None,
) -> int:
    """Train (or resume) the recipe's experts, evaluate the finished ones, write ``<workdir>/hub.yaml``."""
    from hp_rl.rl.pretraining import build_hub, load_recipe

    recipe_path = Path(recipe_text)
    if not recipe_path.is_file():
        print(f"Recipe {recipe_path} does not exist (recipes live in {_display(HUB_CONFIG_DIR)}).", file=sys.stderr)
        return 2
    raw = read_yaml(recipe_path, "hub recipe")
    if isinstance(raw, dict) and raw.get("kind") == "vision":  # supervised/self-supervised image trunks
        from hp_rl.vision.recipe import build_vision_hub

        built = build_vision_hub(recipe_path, workdir_text, only=only)
        print("\n".join(f"{name}: {_display(path)}" for name, path in built.items()))
        return 0
    recipe = load_recipe(recipe_path)
    workdir = Path(workdir_text) if workdir_text else default_workdir(recipe_path)
    unknown = sorted(set(only or ()) - {task.name for task in recipe.tasks})
    if unknown:
        print(f"--only: unknown task(s) {unknown}; the recipe has {[t.name for t in recipe.tasks]}.", file=sys.stderr)
        return 2
    build_hub(recipe_path, workdir, only, backend=backend)
    n_episodes = episodes if episodes is not None else recipe.eval_episodes
    entries, pending = [], []
    for task in recipe.tasks:
        model_path = workdir / task.name / "model.zip"
        if not model_path.is_file():
            pending.append(task.name)
            continue
        spec = _built_expert(recipe, recipe_path, workdir, task, n_episodes if evaluate else None)
        entries.append(spec.as_dict())
    if entries:
        manifest = {
            "description": str(read_yaml_mapping(recipe_path, "hub recipe").get("description", "")).strip(),
            "recipe": _display(recipe_path),
            "experts": entries,
        }
        # Builds of single experts (--only) may run side by side in one workdir.
        with written_by_rename(workdir / MANIFEST_NAME) as partial:
            partial.write_text(yaml.safe_dump(manifest, sort_keys=False, width=100))
        _print_summary(entries)
        print(f"Hub spec of the trained checkpoints: {_display(workdir / MANIFEST_NAME)}")
    asked_pending = [name for name in pending if not only or name in only]
    if asked_pending:
        print(f"Not finished yet: {', '.join(asked_pending)}. Run the same command again to continue.")
        return 3
    if pending:
        print(f"Not built yet (not asked for with --only): {', '.join(pending)}.")
    return 0


def _print_summary(entries: Sequence[dict[str, Any]]) -> None:
    print(f"{'expert':<16} {'env':<28} {'steps':>9} {'return':>10} {'random':>10} {'size':>9}")
    for entry in entries:
        p = entry.get("provenance", {})
        size = p.get("size_bytes")
        print(
            f"{entry['name']:<16} {p.get('env_id', '?'):<28} {p.get('steps', '?'):>9} "
            f"{p.get('source_return', '-')!s:>10} {p.get('random_return', '-')!s:>10} "
            f"{(f'{size / 1e6:.2f} MB' if size else '-'):>9}"
        )


# --------------------------------------------------------------------------------------------- export


def cmd_export(source_text: str, out_text: str | None, workdir_text: str | None, dtype: str) -> int:
    """Export a built hub (recipe, hub folder or spec) to safetensors plus ``hub.yaml``."""
    source = Path(source_text)
    out: Path | None = Path(out_text) if out_text else None
    if _is_recipe(source):
        workdir = Path(workdir_text) if workdir_text else default_workdir(source)
        spec_path = workdir / MANIFEST_NAME
        if not spec_path.is_file():
            print(
                f"{spec_path} does not exist: build the hub first (python -m hp_rl.hub build {source_text}).",
                file=sys.stderr,
            )
            return 2
        if out is None and source.name.endswith("_bundled" + _RECIPE_SUFFIX):
            out = BUNDLED_HUB_DIR / _hub_name(source)
    else:
        spec_path = Path(_spec_argument(source_text))
    if out is None:
        print("Give --out DIR (only bundled recipes, *_bundled.recipe.yml, have a default).", file=sys.stderr)
        return 2
    is_yaml = spec_path.is_file() and spec_path.suffix.lower() in (".yml", ".yaml")
    raw = read_yaml(spec_path, "hub spec") if is_yaml else {}
    hub = parse_hub(str(spec_path) if is_yaml else source_text)
    items = []
    for expert in hub.experts:
        loaded = load_expert(expert)
        provenance = dict(expert.provenance)
        if loaded.provenance.sha256:
            provenance.setdefault("source_sha256", loaded.provenance.sha256)
        items.append(ExportItem(expert.name, loaded, provenance, expert.channel_names, expert.action_meanings))
    manifest = export_hub(
        items,
        out,
        str(raw.get("description", "") if isinstance(raw, dict) else ""),
        raw.get("recipe") if isinstance(raw, dict) else None,
        dtype,
    )
    entries = read_yaml_mapping(manifest, "hub manifest")["experts"]
    _print_summary(entries)
    print(f"Manifest: {_display(manifest)} ({_dir_size(manifest.parent) / 1e6:.2f} MB in {_display(manifest.parent)})")
    if BUNDLED_HUB_DIR.is_dir():
        total = _dir_size(BUNDLED_HUB_DIR)
        if total > BUNDLED_LIMIT_BYTES:
            print(
                f"WARNING: the bundled hubs take {total / 1e6:.2f} MB, "
                f"over the {BUNDLED_LIMIT_BYTES / 1e6:.1f} MB limit."
            )
    return 0


# ---------------------------------------------------------------------------------------------- score


def cmd_score(spec_text: str, env_id: str, episodes: int, rollout_steps: int, seed: int, out: str | None) -> int:
    """Score every expert on the target (zero-shot return, LogME) and print / write the prior."""
    from hp_rl.hub.options import pathway_preset
    from hp_rl.rl.prior import write_scores
    from hp_rl.rl.prior_report import prior_table
    from hp_rl.rl.scoring import score_hub

    if episodes < 1 or rollout_steps < 16:
        print("--episodes must be >= 1 and --rollout-steps >= 16.", file=sys.stderr)
        return 2
    scores = score_hub(_spec_argument(spec_text), env_id, episodes, rollout_steps, seed)
    bar = float(pathway_preset("transfer")["k_from_prior"])
    routed = tuple(name for name, value in scores["prior"].items() if value >= bar)
    unrouted = {name: f"score {value:.2f} < {bar:g}" for name, value in scores["prior"].items() if value < bar}
    print(f"Target {env_id}; 'routed' as preset=transfer would route (score >= {bar:g}):")
    print(prior_table(scores, unrouted, routed))
    if out:
        print(f"Scores: {write_scores(scores, out)} (use it with --hub-set prior={out})")
    return 0


# ----------------------------------------------------------------------------------------------- main


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 4,84,84") from error
    if not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 4,84,84")
    return shape


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hp_rl.hub``."""
    parser = argparse.ArgumentParser(prog=program_name("hp_rl.hub"), description="Hub-Pathway model hub tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered sources, bundled hubs, example specs")
    inspect = sub.add_parser("inspect", help="describe each expert of a hub spec")
    inspect.add_argument("spec", help="hub spec: YAML file, hub folder, checkpoint list, hf:org/repo@rev, random:N")
    inspect.add_argument(
        "--obs-shape",
        type=_shape,
        default=None,
        help="observation shape (e.g. 4,84,84) for sources that cannot tell their input",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON")
    trust = sub.add_parser("trust", help="let run folders run these TorchScript files (they are programs)")
    trust.add_argument("files", nargs="+", help="TorchScript files (.pt) you have looked at and trust")
    build = sub.add_parser("build", help="pretrain a recipe's source experts (resumable), evaluate, write hub.yaml")
    build.add_argument("recipe", help="recipe YAML (configs/hubs/*.recipe.yml)")
    build.add_argument("--workdir", default=None, help=f"training folder (default {BUILD_ROOT}/<name>)")
    build.add_argument("--only", default=None, help="comma-separated task names")
    build.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default: recipe)")
    build.add_argument("--no-eval", action="store_true", help="skip the source-task evaluation")
    build.add_argument("--jobs", type=int, default=1, help="experts trained at once (separate processes, or Ray CPUs)")
    build.add_argument("--ray", action="store_true", help="train each expert as a task of a local Ray")
    build.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (implies --ray)")
    export = sub.add_parser("export", help="trunks to fp16 safetensors plus a hub.yaml manifest")
    export.add_argument("source", help="a recipe (exports its workdir), a built hub folder, or a hub spec")
    export.add_argument(
        "--out", default=None, help="output folder (default for *_bundled recipes: hp_rl/hub/bundled/<name>)"
    )
    export.add_argument("--workdir", default=None, help=f"the recipe's training folder (default {BUILD_ROOT}/<name>)")
    export.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    score = sub.add_parser("score", help="transferability of each expert to a target task (prior for the generator)")
    score.add_argument("spec", help="hub spec: YAML file, hub folder, checkpoint list")
    score.add_argument("--env", required=True, help="target environment id")
    score.add_argument("--episodes", type=int, default=10, help="episodes per zero-shot evaluation")
    score.add_argument("--rollout-steps", type=int, default=2048, help="random-policy steps that LogME reads")
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--out", default=None, help="score file to write (default: print only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hp_rl.hub``; returns the exit status."""
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "inspect":
            return cmd_inspect(args.spec, args.obs_shape, args.json)
        if args.command == "trust":
            return cmd_trust(args.files)
        if args.command == "build":
            only = [part.strip() for part in args.only.split(",") if part.strip()] if args.only else None
            from hp_rl.core.runner import Backend

            if args.ray or args.ray_address:
                backend = Backend("ray", jobs=args.jobs, address=args.ray_address).check()
            else:
                backend = Backend("serial" if args.jobs <= 1 else "processes", jobs=args.jobs).check()
            return cmd_build(args.recipe, args.workdir, only, args.eval_episodes, not args.no_eval, backend)
        if args.command == "score":
            return cmd_score(args.spec, args.env, args.episodes, args.rollout_steps, args.seed, args.out)
        return cmd_export(args.source, args.out, args.workdir, args.dtype)
    except HpRlError as error:  # the user's to fix; anything else is a bug and keeps its traceback
        print(error_message(error), file=sys.stderr)
        return 2
