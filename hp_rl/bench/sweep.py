"""The transfer benchmark's runs: each run's config (its own, or hp_rl.train's command line), its record, the sweep."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hp_rl.bench.curves import CURVE_WINDOW
from hp_rl.bench.hubs import hub_mapping, target_env_id, target_hub
from hp_rl.bench.recording import episode_recorder, forward_flops, noise_free_evaluator
from hp_rl.bench.suites import METHODS, RunKey, Suite
from hp_rl.bench.types import Expert
from hp_rl.core.runner import Backend, run_jobs


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
    from hp_rl.rl.pretraining import load_recipe
    from hp_rl.rl.runs import RunConfig

    env_id = target_env_id(suite, key.target)
    if METHODS[key.base_method].kind == "cli":
        return _cli_config(suite, key, settings, experts)
    recipe = load_recipe(suite.recipe)
    config = RunConfig.for_task(
        "ppo",
        env_id,
        overrides={**suite.overrides, **settings.overrides},
        n_timesteps=settings.steps,
        seed=key.seed,
        device=settings.device,
        env_kwargs=suite.target_env_kwargs.get(key.target)
        or {t.name: t.env_kwargs for t in recipe.tasks}.get(key.target, {}),
    )
    params = config.hyperparams
    method = METHODS[key.base_method]
    if method.kind == "scratch":
        if suite.scratch_policy_kwargs:
            params["policy_kwargs"] = {**suite.scratch_policy_kwargs, **(params.get("policy_kwargs") or {})}
        return config
    hub_experts = target_hub(suite, experts, key.target)
    if method.kind == "single":
        name = key.method.split(":", 1)[1]
        hub_experts = {name: hub_experts[name]}
    hub = hub_mapping(suite, hub_experts, method.random_trunks)
    extractor = dict(method.extractor)
    k = int(extractor.pop("k", None) or suite.k)
    k = len(hub_experts) if extractor.get("dense") else min(k, len(hub_experts))
    hub_kwargs = {"features_dim": suite.features_dim, "freeze_experts": False, **extractor}
    params["exploit_coef"] = method.exploit_coef
    params.update(method.algo_kwargs)
    if method.prior:
        hub_kwargs["prior"] = target_prior(suite, key.target, hub, env_id, settings.out)
    params.pop("policy_kwargs", None)  # the hub methods use HubPPO's linear heads on the hub features
    # a mapping spec: RunConfig's hub also takes one
    return replace(config, hub=hub, k=k, hub_kwargs=hub_kwargs)  # type: ignore[arg-type]


def _cli_config(suite: Suite, key: RunKey, settings: RunSettings, experts: dict[str, Expert]) -> Any:
    """The run config ``python -m hp_rl.train`` builds from its command line (its own parser and checks) with
    nothing but the target, the steps, the seed and the target's agents as SB3 zips: bare ones written from an
    exported hub (:mod:`hp_rl.bench.user_agents`: the same weights as the manifest, no task id, no file beside
    them), or the sweep's own builds (hp_rl run folders); a target's ``gym.make`` arguments as ``--env-kwargs``. The
    path a user takes."""
    from hp_rl.bench import user_agents
    from hp_rl.train import build_parser
    from hp_rl.train_config import config_and_env

    folder = (settings.out or Path("bench_out")) / "user_zips"
    zips = []
    method = METHODS[key.base_method]
    hub = {} if method.hub == "auto" else target_hub(suite, experts, key.target)
    for name, expert in hub.items():
        if not isinstance(expert, dict):  # the sweep's own builds: hp_rl run folders, given by their model.zip
            zips.append(expert)
            continue
        path = folder / f"{name}.zip"
        zips.append(path if path.is_file() else user_agents.write_bare_zip(expert, path))
    argv = ["--env", target_env_id(suite, key.target)] + (["--hub", ",".join(str(z) for z in zips)] if zips else [])
    for name, value in (suite.target_env_kwargs.get(key.target) or {}).items():  # a variant: as a user gives it
        argv += ["--env-kwargs", f"{name}={json.dumps(value)}"]
    if method.preset is not None:
        argv += ["--hub-set", f"preset={method.preset}"]
    for item in method.hub_set:
        argv += ["--hub-set", item]
    for item in method.cli_set:
        argv += ["--set", item]
    argv += ["-n", str(settings.steps), "--seed", str(key.seed), "--device", settings.device]
    config, env = config_and_env(build_parser().parse_args(argv))
    env.close()
    return config


def target_prior(suite: Suite, target: str, hub: dict[str, Any], env_id: str, out: Path | None) -> dict[str, float]:
    """The prior of ``target``'s hub: scored once (zero-shot returns, LogME), cached in ``<out>/scores``, as
    ``prior="auto"`` scores it (the same seed, which no training run uses)."""
    from hp_rl.rl.prior import read_prior, write_scores
    from hp_rl.rl.scoring import AUTO_PRIOR_SEED, score_hub

    path = (out or Path("bench_out")) / "scores" / f"{suite.name}_{target}.yml"
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
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.training import build_model

    config = _build_config(suite, key, settings, experts)
    env = make_env(config.env_id, config.n_envs, config.seed, config.env_preset, env_kwargs=config.env_kwargs)
    model = build_model(config, env)
    recorder = episode_recorder()
    evaluations, cpu, wall = _train_timed(model, config, settings, recorder)
    flop_env = make_env(
        config.env_id, config.n_envs, config.seed + 999, config.env_preset, env_kwargs=config.env_kwargs
    )
    flops = forward_flops(model, flop_env)
    flop_env.close()
    env.close()
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
        **_model_facts(model, config),
        "threads": settings.threads,
        "device": str(model.device),
        **_machine_facts(),
    }
    _write_json(key.path(out), record)
    return record


def _train_timed(model: Any, config: Any, settings: RunSettings, recorder: Any) -> tuple[list[Any], float, float]:
    """Train ``settings.steps`` steps; returns the noise-free evaluations (step, return) and the CPU and wall
    seconds of training alone (the evaluations' own time taken out)."""
    from hp_rl.rl.envs import make_env

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
    if eval_env is None:
        return [], cpu, wall
    evaluator = callbacks[-1]
    eval_env.close()
    return evaluator.evaluations, cpu - evaluator.cpu_seconds, wall - evaluator.wall_seconds


def _model_facts(model: Any, config: Any) -> dict[str, Any]:
    """What a run's record says about its model: sizes, routing, the hub's files and the options."""
    from hp_rl.hub import file_sha256
    from hp_rl.rl.pathway_control import find_hub_extractors

    policy = model.policy
    entries = (
        [{"name": Path(p).stem, "path": p} for p in config.hub.split(",")]
        if isinstance(config.hub, str)
        else (config.hub or {}).get("experts", [])
    )
    return {
        "parameters": sum(p.numel() for p in policy.parameters()),
        "trainable_parameters": sum(p.numel() for p in policy.parameters() if p.requires_grad),
        # the routed experts per observation, as built (k_from_prior may route fewer than the k asked for)
        "k": find_hub_extractors(model)[0].k if config.hub is not None else None,
        # what prior="auto" measured before training (the preset's scoring), where the run scored its hub
        "prior_scores": getattr(model, "prior_scores", None),
        "hub_kwargs": config.hub_kwargs,
        "exploit_coef": config.hyperparams.get("exploit_coef"),
        "hub_experts": [{**e, "sha256": file_sha256(e["path"]) if "path" in e else None} for e in entries],
        "hyperparams": {k: v for k, v in config.hyperparams.items() if k != "exploit_coef"},
    }


def _machine_facts() -> dict[str, Any]:
    """The machine, its load and the packages, and when the run finished."""
    from hp_rl.core.run_folder import package_versions
    from hp_rl.rl.runs import AgentRunFolder

    return {
        "load_average": list(os.getloadavg()),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "versions": package_versions(AgentRunFolder.recorded_packages),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


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
    :param backend: where the runs go (:mod:`hp_rl.core.runner`: this process, a process pool or Ray tasks);
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
