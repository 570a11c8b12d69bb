"""``hp_rl.hub build``: pretraining the agents of a hub recipe with the project's own training (resumable)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hp_rl.core.errors import ConfigError, HpRlError
from hp_rl.core.runner import Backend, run_jobs
from hp_rl.core.validation import AnyValue, Int, Rule, check_values
from hp_rl.core.yaml_files import check_keys, read_yaml_mapping
from hp_rl.rl.runs import AgentRunFolder, RunConfig
from hp_rl.rl.training import train

__all__ = ["SourceTask", "Recipe", "load_recipe", "build_hub", "task_meanings", "HubBuildError"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceTask:
    """One expert to pretrain.

    :param name: expert name in the hub.
    :param env_id: source environment.
    :param env_preset: force an ``envs/`` preset, or ``None`` to match by id.
    :param env_kwargs: arguments for ``gym.make`` (physics variants of a control task, MinAtar's
        ``sticky_action_prob`` / ``difficulty_ramping``).
    :param n_timesteps: this task's budget, or ``None`` for the recipe's.
    """

    name: str
    env_id: str
    env_preset: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    n_timesteps: int | None = None


@dataclass(frozen=True)
class Recipe:
    """How a hub is pretrained (a YAML file in ``configs/hubs/``).

    :param path: the recipe file.
    :param algo: training algorithm of every source expert.
    :param n_timesteps: environment steps per expert.
    :param seed: seed of every expert's training.
    :param tasks: the source tasks.
    :param overrides: hyperparameter overrides on top of ``configs/<algo>.yml``.
    :param save_freq: checkpoint interval in steps (the build resumes from the last one).
    :param eval_episodes: episodes of the final evaluation on the source task.
    """

    path: Path
    algo: str
    n_timesteps: int
    seed: int
    tasks: tuple[SourceTask, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    save_freq: int = 50_000
    eval_episodes: int = 10


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


# What a recipe's keys and each task's keys accept.
RECIPE_RULES: dict[str, Rule] = {
    "description": AnyValue(lambda value: isinstance(value, str), "text"),
    "algo": AnyValue(_text, "an algorithm name (ppo, a2c, dqn, ...)"),
    "n_timesteps": Int(1),
    "seed": Int(0, 2**32 - 1),
    "tasks": AnyValue(
        lambda value: isinstance(value, list) and all(isinstance(t, dict) for t in value),
        "a list of tasks (mappings with name and env_id)",
    ),
    "overrides": AnyValue(lambda value: value is None or isinstance(value, dict), "a mapping of hyperparameters"),
    "save_freq": Int(0),  # 0: checkpoints only at the end and on interruption, as RunConfig's
    "eval_episodes": Int(1),
    "export": AnyValue(lambda value: value is None or isinstance(value, dict), "a mapping of export settings"),
}
TASK_RULES: dict[str, Rule] = {
    "name": AnyValue(_text, "an expert name"),
    "env_id": AnyValue(_text, "an environment id"),
    "env_preset": AnyValue(lambda value: value is None or _text(value), "a preset name or null"),
    "env_kwargs": AnyValue(lambda value: isinstance(value, dict), "a mapping of gym.make arguments"),
    "n_timesteps": Int(1, optional=True),
}


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file.

    :raises ConfigError: naming the file, the key and what it accepts.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "hub recipe")
    check_keys(raw, RECIPE_RULES, str(path))
    for key in ("algo", "n_timesteps", "tasks"):
        if key not in raw:
            raise ConfigError(f"{path}: the key {key!r} is required.")
    check_values(raw, RECIPE_RULES, lambda key: f"{path}: {key}", ConfigError)
    tasks = []
    for index, entry in enumerate(raw["tasks"]):
        where = f"{path}: tasks[{index}]"
        check_keys(entry, TASK_RULES, where)
        for key in ("name", "env_id"):
            if key not in entry:
                raise ConfigError(f"{where}: the key {key!r} is required.")
        check_values(entry, TASK_RULES, f"{where}: {{}}".format, ConfigError)
        tasks.append(SourceTask(**entry))
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: task names must be unique, got {names}.")
    return Recipe(
        path,
        raw["algo"],
        int(raw["n_timesteps"]),
        int(raw.get("seed", 0)),
        tuple(tasks),
        dict(raw.get("overrides") or {}),
        int(raw.get("save_freq", 50_000)),
        int(raw.get("eval_episodes", 10)),
    )


def task_meanings(task: SourceTask) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """What the source task's observation channels and actions mean (:func:`hp_rl.rl.envs.env_meanings`),
    recorded in hub specs so that a target can map its channels and actions onto the expert's."""
    from hp_rl.rl.envs import env_meanings, make_env

    env = make_env(task.env_id, 1, 0, task.env_preset, env_kwargs=task.env_kwargs)
    try:
        return env_meanings(env)
    finally:
        env.close()


def _task_config(recipe: Recipe, task: SourceTask) -> RunConfig:
    return RunConfig.for_task(
        recipe.algo,
        task.env_id,
        env_preset=task.env_preset,
        env_kwargs=dict(task.env_kwargs),
        overrides=recipe.overrides,
        n_timesteps=recipe.n_timesteps if task.n_timesteps is None else task.n_timesteps,
        seed=recipe.seed,
        save_freq=recipe.save_freq,
    )


def build_hub(
    recipe_path: str | Path,
    workdir: str | Path,
    only: list[str] | None = None,
    progress_bar: bool = False,
    backend: Backend | None = None,
) -> dict[str, Path]:
    """Train every source task of a recipe that is not finished yet; resumable.

    Each task trains in ``workdir/<task name>``; a task whose ``model.zip`` exists is skipped, one with
    checkpoints continues from the latest.

    :param backend: where the tasks train (:mod:`hp_rl.core.runner`); one after another in this process by
        default, else each task as a job of a process pool or a Ray task (no progress bars there).
    :return: task name -> final model path.
    """
    recipe = load_recipe(recipe_path)
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    finished: dict[str, Path] = {}
    todo: list[str] = []
    for task in recipe.tasks:
        if only and task.name not in only:
            continue
        folder = AgentRunFolder(root / task.name)
        if folder.final_model.is_file():
            finished[task.name] = folder.final_model
        else:
            todo.append(task.name)
    if backend is None or backend.kind == "serial":
        for name in todo:
            if not _train_task(str(recipe_path), str(workdir), name, progress_bar):
                break  # interrupted: the checkpoint is written
            finished[name] = AgentRunFolder(root / name).final_model
        return finished
    failures: list[str] = []

    def done(index: int, complete: bool) -> None:
        if complete:
            finished[todo[index]] = AgentRunFolder(root / todo[index]).final_model

    def failed(index: int, error: BaseException) -> None:
        failures.append(f"{todo[index]}: {type(error).__name__}: {error}")

    run_jobs(_train_task, [(str(recipe_path), str(workdir), name, False) for name in todo], backend, done, failed)
    if failures:
        raise HubBuildError("Some experts did not train (the others are kept; rerun to retry): " + "; ".join(failures))
    return {task.name: finished[task.name] for task in recipe.tasks if task.name in finished}


class HubBuildError(HpRlError, RuntimeError):
    """One or more source experts failed to train."""


def _train_task(recipe_path: str, workdir: str, name: str, progress_bar: bool) -> bool:
    """Train (or resume) one source task; ``True`` when it reached its budget. Runs in any process."""
    recipe = load_recipe(recipe_path)
    (task,) = [t for t in recipe.tasks if t.name == name]
    folder = AgentRunFolder(Path(workdir) / name)
    config = _task_config(recipe, task)
    resume = folder.checkpoints.is_dir() and any(folder.checkpoints.glob("rl_model_*_steps.zip"))
    if not resume:
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        folder.write_start(config.to_yaml(), ["build", recipe_path, "--workdir", workdir], module="hp_rl.hub")
    logger.info(
        f"[hub build] {task.name}: {config.algo} on {task.env_id} for {config.n_timesteps} steps"
        + (" (resuming)" if resume else "")
    )
    model = train(config, folder, resume=resume, progress_bar=progress_bar)
    return bool(model.num_timesteps >= config.n_timesteps)
