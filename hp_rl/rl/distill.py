"""A one-network student of a trained hub agent: the target's plain SB3 network taught to act as the hub does.

The hub agent (the teacher) runs every routed expert on every step; its student is the network a plain run of
the same algorithm trains (``--hub none``: SmallFrameCNN on MinAtar, NatureCNN on Atari, SB3's MlpPolicy on
vectors), so it acts at plain speed and loads with plain ``PPO.load``.

Training is DAgger (Ross et al., 2011): the student collects the observations it is to learn on by acting itself,
with the teacher's actions mixed in at a rate that halves every round (all teacher in the first round). Every
observation is labelled with the teacher's action distribution and value, routing noise off; the student
minimises ``KL(teacher || student) + value_coef * (V_student - V_teacher)^2`` over everything gathered so far
(a bounded buffer), with its own optimizer. The budget is counted in environment steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv
from torch.distributions import Categorical, Distribution, Normal, kl_divergence

__all__ = ["DistillSettings", "DistillResult", "distill_policy", "evaluate_both", "save_standalone"]


@dataclass(frozen=True)
class DistillSettings:
    """How a student is taught.

    :param steps: environment steps the student's rollouts may take in all.
    :param rounds: DAgger rounds (each: a rollout of ``steps / rounds`` steps, then training).
    :param epochs: passes over the gathered observations after each round.
    :param batch_size: observations per gradient step.
    :param learning_rate: Adam's step size.
    :param value_coef: weight of the value loss beside the KL.
    :param buffer_bytes: cap on the gathered observations (oldest dropped first).
    :param seed: environment and sampling seed.
    """

    steps: int = 50_000
    rounds: int = 10
    epochs: int = 4
    batch_size: int = 256
    learning_rate: float = 1e-3
    value_coef: float = 0.5
    buffer_bytes: int = 2**30
    seed: int = 0


@dataclass
class DistillResult:
    """What distilling gave.

    :param steps: environment steps the rollouts took.
    :param seconds: wall time of the distillation.
    :param final_kl: mean KL(teacher || student) over the last round's observations (before its training).
    :param history: per round: steps so far, teacher share of the actions, mean KL before training.
    """

    steps: int
    seconds: float
    final_kl: float
    history: list[dict[str, float]] = field(default_factory=list)


def _labels(policy: Any, obs: Any) -> tuple[Any, torch.Tensor]:
    distribution = policy.get_distribution(obs)
    return distribution, policy.predict_values(obs).flatten()


def _as_tensor(model: BaseAlgorithm, obs: np.ndarray) -> Any:
    """Observations as the policy takes them (SB3's preprocessing: image transposes, device)."""
    return model.policy.obs_to_tensor(obs)[0]


def _kl(teacher: Distribution, student: Distribution) -> torch.Tensor:
    """``KL(teacher || student)`` per row (summed over the independent dimensions of a Gaussian)."""
    value = kl_divergence(teacher, student)
    return value.sum(-1) if value.dim() > 1 else value


def distill_policy(
    teacher: BaseAlgorithm,
    student: BaseAlgorithm,
    env: VecEnv,
    settings: DistillSettings,
    report: Callable[[dict[str, float]], None] | None = None,
) -> DistillResult:
    """Teach ``student``'s policy to act as ``teacher``'s on the observations the student meets.

    :param teacher: the trained hub agent (PPO or A2C; its routing noise is off while it labels).
    :param student: a fresh plain agent of the same observation and action spaces.
    :param env: the environments both act in (``n_envs`` copies).
    :param settings: the budget and the optimisation.
    :param report: called after every round with its history entry.
    """
    from hp_rl.rl.pathway_control import routing_noise

    started = time.time()
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    device = student.device
    optimizer = torch.optim.Adam(student.policy.parameters(), lr=settings.learning_rate)
    per_round = max(settings.steps // settings.rounds, env.num_envs)
    stored: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # observations, teacher probabilities, values
    stored_bytes = 0
    steps = 0
    history: list[dict[str, float]] = []
    obs = env.reset()
    teacher.policy.set_training_mode(False)
    with routing_noise(teacher, enabled=False):
        for round_index in range(settings.rounds):
            teacher_share = 0.5**round_index
            gathered: list[np.ndarray] = []
            for _ in range(per_round // env.num_envs):
                obs = np.asarray(obs)
                gathered.append(obs.copy())
                use_teacher = rng.random(env.num_envs) < teacher_share
                actions = student.predict(obs, deterministic=False)[0]
                if use_teacher.any():
                    teacher_actions = teacher.predict(obs, deterministic=False)[0]
                    chosen = use_teacher.reshape(-1, *([1] * (np.ndim(actions) - 1)))
                    actions = np.where(chosen, teacher_actions, actions)
                obs, _, _, _ = env.step(actions)
                steps += env.num_envs
            labelled = _label_batch(teacher, np.concatenate(gathered))
            stored.append(labelled)
            stored_bytes += labelled[0].nbytes
            while stored_bytes > settings.buffer_bytes and len(stored) > 1:
                stored_bytes -= stored.pop(0)[0].nbytes
            kl_before = _mean_kl(student, *labelled[:2])
            _train(student, optimizer, stored, settings, device, rng)
            entry = {"round": float(round_index + 1), "steps": float(steps), "teacher_share": teacher_share}
            entry["kl_before"] = kl_before
            history.append(entry)
            if report is not None:
                report(entry)
    return DistillResult(steps, round(time.time() - started, 2), history[-1]["kl_before"], history)


def _label_batch(teacher: BaseAlgorithm, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The observations with the teacher's distribution parameters (logits or means) and values."""
    with torch.no_grad():
        tensor = _as_tensor(teacher, obs)
        distribution, values = _labels(teacher.policy, tensor)
        torch_distribution = distribution.distribution
        if isinstance(torch_distribution, Categorical):
            params = torch_distribution.logits
        else:  # a Gaussian: its means and log stds (the student's log std is learnt through the KL)
            params = torch.cat([torch_distribution.loc, torch_distribution.scale.log()], dim=-1)
    return obs, params.cpu().numpy(), values.cpu().numpy()


def _stored_distribution(params: torch.Tensor, discrete: bool) -> Distribution:
    """The teacher's distribution from its stored parameters: logits, or Gaussian means and log stds."""
    if discrete:
        return Categorical(logits=params)
    half = params.shape[-1] // 2
    return Normal(params[:, :half], params[:, half:].exp())


def _mean_kl(student: BaseAlgorithm, obs: np.ndarray, params: np.ndarray) -> float:
    """Mean KL(teacher || student) on ``obs``, the teacher's distribution from the labels already computed."""
    with torch.no_grad():
        teacher = _stored_distribution(torch.as_tensor(params, device=student.device), _discrete(student))
        student_distribution = _labels(student.policy, _as_tensor(student, obs))[0].distribution
        return float(_kl(teacher, student_distribution).mean())


def _discrete(model: BaseAlgorithm) -> bool:
    return isinstance(model.action_space, spaces.Discrete)


def _train(
    student: BaseAlgorithm,
    optimizer: torch.optim.Optimizer,
    stored: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    settings: DistillSettings,
    device: torch.device,
    rng: np.random.Generator,
) -> None:
    obs = np.concatenate([s[0] for s in stored])
    params = torch.as_tensor(np.concatenate([s[1] for s in stored]), device=device)
    values = torch.as_tensor(np.concatenate([s[2] for s in stored]), device=device)
    discrete = _discrete(student)
    student.policy.set_training_mode(True)
    for _ in range(settings.epochs):
        order = rng.permutation(len(obs))
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            tensor = _as_tensor(student, obs[index])
            distribution, predicted = _labels(student.policy, tensor)
            teacher = _stored_distribution(params[index], discrete)
            kl = _kl(teacher, distribution.distribution).mean()
            loss = kl + settings.value_coef * (predicted - values[index]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.policy.parameters(), 0.5)
            optimizer.step()
    student.policy.set_training_mode(False)


def evaluate_both(
    teacher: BaseAlgorithm, student: BaseAlgorithm, make: Callable[[], VecEnv], episodes: int
) -> dict[str, Any]:
    """Deterministic returns of teacher and student on the same seeded episodes, and their acting speed.

    :param make: builds a fresh evaluation environment (the same seed each call).
    :return: ``{"teacher": {...}, "student": {...}}`` with ``returns``, ``mean``, ``std``, ``steps_per_second``.
    """
    from hp_rl.rl.pathway_control import routing_noise

    result = {}
    for name, model in (("teacher", teacher), ("student", student)):
        env = make()
        started = time.perf_counter()
        try:
            with routing_noise(model, enabled=False):
                returns, lengths = evaluate_policy(
                    model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True
                )
        finally:
            env.close()
        seconds = time.perf_counter() - started
        played, steps = np.atleast_1d(np.asarray(returns, float)), np.atleast_1d(np.asarray(lengths, float))
        result[name] = {
            "returns": [float(r) for r in played],
            "mean": float(played.mean()),
            "std": float(played.std()),
            "steps_per_second": round(float(steps.sum()) / max(seconds, 1e-9), 1),
        }
    return result


def save_standalone(student: BaseAlgorithm, path: Any) -> None:
    """``student.save(path)`` such that plain SB3 loads it without hp_rl: the plain network classes hp_rl gives
    SB3 (SmallFrameCNN for small frames) are stored by value in the zip, not as a reference to this package."""
    import cloudpickle

    from hp_rl.rl import baselines

    cloudpickle.register_pickle_by_value(baselines)
    try:
        student.save(path)
    finally:
        cloudpickle.unregister_pickle_by_value(baselines)
