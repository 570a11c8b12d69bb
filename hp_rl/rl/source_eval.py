"""How well a pretrained source agent plays its own task, beside a random policy (hub builds record both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SOURCE_EVAL_NAME",
    "RandomPolicy",
    "evaluate_source_task",
    "read_source_evaluation",
    "write_source_evaluation",
]

#: The record a hub build writes beside each expert's model: its evaluation and the model file's sha256.
SOURCE_EVAL_NAME = "source_eval.yml"


class RandomPolicy:
    """Uniformly random actions for every copy of a vectorised env (SB3's ``PolicyPredictor`` protocol).

    :param env: the vectorised environment whose action space is sampled.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.env.action_space.seed(0)

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, None]:
        """:param observation: ``(n_envs, ...)``. :return: ``(n_envs, ...)`` random actions, no state."""
        return np.array([self.env.action_space.sample() for _ in range(self.env.num_envs)]), None


def evaluate_source_task(
    model_path: Path,
    env_id: str,
    episodes: int,
    seed: int,
    env_preset: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mean return of a trained agent and of a random policy on the agent's source task.

    Uses the evaluation environment (:func:`hp_rl.rl.envs.make_env` with ``evaluation=True``: whole Atari
    games with the unclipped score). Atari agents act stochastically (as rl-baselines3-zoo evaluates them),
    others deterministically.

    :return: ``return_mean``, ``return_std``, ``random_return_mean``, ``random_return_std``, ``episodes``,
        ``deterministic``, ``eval_seed``.
    """
    from stable_baselines3.common.evaluation import evaluate_policy

    from hp_rl.rl.checkpoints import load_model
    from hp_rl.rl.envs import make_env, preset_for
    from hp_rl.rl.runs import AgentRunFolder, RunConfig

    family = preset_for(env_id, env_preset).family
    deterministic = family != "atari"
    n_envs = max(1, min(episodes, 4))
    # The builder's experts are run folders: rebuilt from their config.yml, weights read without unpickling.
    folder = AgentRunFolder(Path(model_path).parent)
    config = RunConfig.from_yaml(folder.config)
    config.device = "cpu"
    model_env = make_env(config.env_id, config.n_envs, seed, config.env_preset, env_kwargs=config.env_kwargs)
    model = load_model(config, Path(model_path), model_env, folder)
    model_env.close()
    results: dict[str, Any] = {"episodes": episodes, "deterministic": deterministic, "eval_seed": seed}
    for key, make_policy in (("", lambda env: model), ("random_", RandomPolicy)):
        env = make_env(env_id, n_envs, seed, env_preset, evaluation=True, env_kwargs=env_kwargs)
        returns, _ = evaluate_policy(
            make_policy(env),
            env,
            n_eval_episodes=episodes,
            deterministic=deterministic,
            return_episode_rewards=True,
            warn=False,
        )
        env.close()
        results[f"{key}return_mean"] = round(float(np.mean(returns)), 3)
        results[f"{key}return_std"] = round(float(np.std(returns)), 3)
    return results


def read_source_evaluation(model_path: Path, episodes: int | None = None) -> dict[str, Any] | None:
    """The evaluation recorded in ``source_eval.yml`` beside ``model_path``, if it is of this very file.

    The record names the model by its sha256, so a retrained or replaced model never inherits an old
    evaluation.

    :param episodes: also require the record to be of this many episodes.
    :return: the record (``return_mean``, ``random_return_mean``, ... as :func:`evaluate_source_task` gives
        them, plus ``model_sha256``), or ``None`` when there is none for this file.
    """
    from hp_rl.core.paths import file_sha256
    from hp_rl.core.yaml_files import read_yaml_mapping

    record = Path(model_path).parent / SOURCE_EVAL_NAME
    if not record.is_file():
        return None
    saved = read_yaml_mapping(record, "source evaluation record", allow_empty=True)
    if saved.get("model_sha256") != file_sha256(Path(model_path)):
        return None
    if episodes is not None and saved.get("episodes") != episodes:
        return None
    return dict(saved)


def write_source_evaluation(model_path: Path, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Record ``evaluation`` in ``source_eval.yml`` beside ``model_path``, stamped with the model's sha256.

    :return: the record as written (what :func:`read_source_evaluation` gives back for this file).
    """
    import yaml

    from hp_rl.core.paths import file_sha256, write_text_by_rename

    record = {**evaluation, "model_sha256": file_sha256(Path(model_path))}
    write_text_by_rename(Path(model_path).parent / SOURCE_EVAL_NAME, yaml.safe_dump(record, sort_keys=False))
    return record
