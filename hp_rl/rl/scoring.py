"""Transferability scores: how promising each hub expert is for a target task, measured before training.

Every expert whose policy head reaches the target's actions (mapped by meaning, or one to one where meanings are
unknown: :mod:`hp_rl.rl.agent_meanings`) plays the target zero-shot, and a random policy plays the same seeded
episodes; both within a budget of episodes and steps (``python -m hp_rl.hub score SPEC --env ENV_ID``, and
``prior="auto"`` before training). An expert's **score** is the evidence that it plays the target: how far above
the random policy its returns lie, in pooled standard deviations (Cohen's d), divided by :data:`EVIDENCE_EFFECT`
and clipped to [0, 1], so that an agent of the target's own task scores about 1 and one of another task about 0
with no record of where either came from. Where the agent's return on its own task is known it refines the score,
never replaces the measurement: the score is lowered to the share of its own competence the agent keeps,
``(zero-shot - random) / (source return - source random)``. That return is recorded (``hp_rl.hub export``, the hub
builder's ``source_eval.yml``) or, where the agent's files name a task other than the target, measured there with
the same budget (an other game's agent that plays the target a little better than random keeps little of what it
does at home).

Experts without such a head are scored by **LogME** (You et al. 2021): the log marginal evidence, per sample, of a
Bayesian linear regression from their frozen features to the discounted returns of a random-policy rollout, min-max
normalised among them and capped at :data:`~hp_rl.rl.prior.HEADLESS_PRIOR_CAP` (features that predict a random
policy's returns are weaker evidence than a policy that plays the target).

What a prior is, and how it acts on routing, is :mod:`hp_rl.rl.prior`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hp_rl.hub import HubSpec, parse_hub
from hp_rl.rl.agent_meanings import HEAD_FRESH, HEAD_MAPPED
from hp_rl.rl.logme import discounted_returns, logme
from hp_rl.rl.prior import prior_from_scores

__all__ = [
    "score_target",
    "logme",
    "Play",
    "play_policy",
    "effect_size",
    "score_from_play",
    "score_hub",
    "AUTO_PRIOR_SEED",
    "EVIDENCE_EFFECT",
    "SCORE_MAX_STEPS",
]

# Seed of the scoring environments for prior="auto" (and the benchmark's scores): no training run uses it.
AUTO_PRIOR_SEED = 12_345
# The effect size (zero-shot mean above a random policy's, in pooled standard deviations of the returns) at which
# an expert's evidence that it plays the target is full: 3 separates an agent that plays from chance with 10
# episodes a side (a policy no better than random passes 1.5, the bar of 0.5, about once in 2,000 scorings).
EVIDENCE_EFFECT = 3.0
# Environment steps per policy at most when scoring (all copies together).
SCORE_MAX_STEPS = 5_000

logger = logging.getLogger(__name__)


class _SingleExpert:
    """One expert of a hub acting alone through its own heads: the pathway HubPPO builds for a hub of that one
    expert (k=1, output aggregation, no noise), fed observations as SB3 feeds its policy, without an algorithm
    around it (scoring runs while HubPPO itself is being built).

    :param spec: the hub.
    :param name: the expert.
    :param env: a vectorised copy of the environment it plays (its spaces and meanings).
    """

    def __init__(self, spec: HubSpec, name: str, env: Any) -> None:
        from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
        from stable_baselines3.common.vec_env import VecTransposeImage

        from hp_rl.rl.envs import env_meanings
        from hp_rl.rl.extractor import HubPathwayExtractor

        space = env.observation_space
        self.transpose = is_image_space(space) and not is_image_space_channels_first(space)
        if self.transpose:  # as SB3 wraps a training environment of channels-last frames
            space = VecTransposeImage.transpose_space(space)
        self.observation_space = space
        channels, actions = env_meanings(env)
        self.extractor = HubPathwayExtractor(
            space,
            hub={"experts": [e.as_dict() for e in spec.experts if e.name == name]},
            k=1,
            aggregation="output",
            noise="none",
            explore_coef=0.0,
            num_actions=int(env.action_space.n),
            channel_names=None if channels is None else list(channels),
            action_meanings=None if actions is None else list(actions),
        ).eval()

    def _frames(self, obs: np.ndarray) -> torch.Tensor:
        from stable_baselines3.common.preprocessing import preprocess_obs

        array = np.transpose(obs, (0, 3, 1, 2)) if self.transpose else obs
        frames = preprocess_obs(torch.as_tensor(np.asarray(array)), self.observation_space)
        assert isinstance(frames, torch.Tensor)  # a Box space: one tensor
        return frames.float()

    def sample(self, obs: np.ndarray) -> np.ndarray:
        """Actions drawn from the expert's policy on a ``(B, ...)`` batch of observations."""
        from hp_rl.routing import readout_logits

        with torch.no_grad():
            aggregate = self.extractor(self._frames(obs))
            assert self.extractor.num_actions is not None
            logits = readout_logits(aggregate, self.extractor.num_actions, self.extractor.output_mix)
            return torch.distributions.Categorical(logits=logits).sample().numpy()


@dataclass(frozen=True)
class Play:
    """Returns of one policy on the target within a budget.

    :param returns: one per episode: those that finished within the budget, and, where fewer than two finished,
        the return so far of each unfinished one (a lower bound, the same for every policy under one budget).
    :param steps: environment steps taken (all copies together).
    :param seconds: wall time.
    """

    returns: tuple[float, ...]
    steps: int
    seconds: float

    @property
    def mean(self) -> float:
        """Mean return."""
        return float(np.mean(self.returns)) if self.returns else 0.0

    @property
    def std(self) -> float:
        """Standard deviation of the returns."""
        return float(np.std(self.returns)) if self.returns else 0.0


def play_policy(act: Callable[[np.ndarray], np.ndarray], env: Any, episodes: int, max_steps: int) -> Play:
    """Play ``act`` on the vectorised ``env`` (seeded by whoever built it) for ``episodes`` episodes or
    ``max_steps`` environment steps, whichever comes first.

    :param act: ``(n_envs, *obs) -> (n_envs,)`` actions.
    """
    started = time.perf_counter()
    obs = env.reset()
    running = np.zeros(env.num_envs)
    finished: list[float] = []
    steps = 0
    while len(finished) < episodes and steps < max_steps:
        obs, rewards, dones, infos = env.step(act(obs))
        steps += env.num_envs
        running += np.asarray(rewards, dtype=np.float64)
        for index in np.flatnonzero(dones):
            episode = infos[index].get("episode")
            finished.append(float(episode["r"]) if isinstance(episode, dict) else float(running[index]))
            running[index] = 0.0
    returns = finished[:episodes]
    if len(returns) < min(2, episodes):
        returns += [float(r) for r in running]  # the budget ran out first: each unfinished episode so far
    return Play(tuple(returns), steps, time.perf_counter() - started)


def effect_size(expert: Play, random: Play) -> float:
    """How far above a random policy the expert plays, in pooled standard deviations of the returns (Cohen's d;
    ``inf`` when neither varies and the expert is above)."""
    gain = expert.mean - random.mean
    pooled = math.sqrt((expert.std**2 + random.std**2) / 2)
    floor = 1e-9 * max(1.0, abs(expert.mean), abs(random.mean))
    if pooled <= floor:
        return math.inf if gain > floor else 0.0
    return gain / pooled


def score_from_play(effect: float, retention: float | None) -> float:
    """An expert's score in [0, 1]: evidence that it plays the target (``effect / EVIDENCE_EFFECT``, clipped),
    lowered to the share of its own competence it keeps where a recorded source return gives that share."""
    evidence = min(1.0, max(0.0, effect / EVIDENCE_EFFECT)) if math.isfinite(effect) else 1.0
    if retention is not None:
        evidence = min(evidence, max(0.0, retention))
    return round(evidence, 4)


def score_hub(
    hub: Any,
    env_id: str,
    episodes: int = 10,
    rollout_steps: int = 2048,
    seed: int = 0,
    gamma: float = 0.99,
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int = SCORE_MAX_STEPS,
    env_preset: str | None = None,
) -> dict[str, Any]:
    """Zero-shot play of every expert whose policy head maps onto ``env_id``'s actions, a random policy on the
    same seeded episodes, and LogME for the experts without such a head; the prior they give.

    :param hub: anything :func:`hp_rl.hub.parse_hub` accepts.
    :param env_id: the target task.
    :param episodes: episodes per policy (the expert's and the random one).
    :param rollout_steps: environment steps of the random rollout that LogME reads (head-less experts only).
    :param seed: seed of the environments.
    :param gamma: discount of the returns LogME predicts.
    :param env_kwargs: ``gym.make`` arguments of the target.
    :param max_steps: environment steps per policy at most (the budget; an episode cut by it counts as far as it got
        where fewer than two finished).
    :param env_preset: the target's environment preset.
    :return: ``{"env_id", "random_return", "experts": {name: {...}}, "prior": {name: value}, "cost": {...}}``.
    """
    # The zero-shot returns sample actions with torch (and fresh heads draw torch weights): seeded here, so the
    # scores depend on ``seed`` alone, not on whatever the caller (a training run, a parallel job) did before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _score_hub(hub, env_id, episodes, rollout_steps, seed, gamma, env_kwargs, max_steps, env_preset)


def _score_hub(
    hub: Any,
    env_id: str,
    episodes: int,
    rollout_steps: int,
    seed: int,
    gamma: float,
    env_kwargs: dict[str, Any] | None,
    max_steps: int,
    env_preset: str | None,
) -> dict[str, Any]:
    from hp_rl.rl.envs import make_env

    started = time.perf_counter()
    spec = parse_hub(hub)
    n_envs = max(1, min(episodes, 4))

    def target(offset: int = 1, evaluation: bool = True) -> Any:
        # whole games with the unclipped score (Atari), the same seeds for every policy
        return make_env(env_id, n_envs, seed + offset, env_preset, evaluation=evaluation, env_kwargs=env_kwargs)

    budget = f"{episodes} episodes or {max_steps} steps per policy"
    task = env_id + (f" {env_kwargs}" if env_kwargs else "")
    logger.info("Scoring %d expert(s) on %s: %s, against a random policy.", len(spec.experts), task, budget)
    env = target()
    random_play = play_policy(_random_actions(env.action_space, seed), env, episodes, max_steps)
    env.close()
    logger.info(
        "  random policy: %.2f ± %.2f (%d episodes, %d steps, %.1f s)",
        random_play.mean,
        random_play.std,
        len(random_play.returns),
        random_play.steps,
        random_play.seconds,
    )
    where = _Target(env_id, env_kwargs, episodes, max_steps, seed, target)
    experts, features_of, played = _play_experts(spec, random_play, where)
    steps = random_play.steps + played
    if features_of:  # head-less experts: how well their features explain a random policy's returns
        steps += _add_logme(experts, features_of, target(0, evaluation=False), rollout_steps, seed, gamma)
    seconds = time.perf_counter() - started
    logger.info("Scored in %.1f s (%d environment steps).", seconds, steps)
    return {
        "env_id": env_id,
        "episodes": episodes,
        "max_steps": max_steps,
        "rollout_steps": rollout_steps,
        "random_return": round(random_play.mean, 4),
        "random_std": round(random_play.std, 4),
        "experts": experts,
        "prior": prior_from_scores(experts, random_play.mean),
        "cost": {"seconds": round(seconds, 1), "steps": steps, "budget": budget},
    }


def _play_experts(
    spec: HubSpec, random_play: Play, where: _Target
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], int]:
    """Each expert whose head acts for the target played zero-shot; the others set aside for LogME.

    :return: expert -> its score entry so far, the head-less experts' modules, and the environment steps played.
    """
    from hp_rl.routing import HeadedExpert

    references = _source_references(spec)
    experts: dict[str, dict[str, Any]] = {}
    features_of: dict[str, Any] = {}
    steps = 0
    model_env = where.make(0, evaluation=False)
    for position, name in enumerate(spec.names, 1):
        model = _SingleExpert(spec, name, model_env)
        expert = model.extractor.pathway.experts[name]
        assert isinstance(expert, HeadedExpert)
        head = model.extractor.head_sources[name]
        origin = getattr(expert.inner_trunk, "origin", None)
        entry: dict[str, Any] = {"policy_head": head, "task": getattr(origin, "env_id", None) or "unknown"}
        counter = f"[{position}/{len(spec.names)}] {name}"
        if head != HEAD_FRESH:
            found, play_steps = _zero_shot(spec, name, model, origin, head, random_play, references.get(name), where)
            entry.update(found)
            steps += play_steps
            logger.info(
                "  %s (%s head): %.2f ± %.2f, score %.2f (%d steps)",
                counter,
                head,
                entry["zero_shot_return"],
                entry["zero_shot_std"],
                entry["score"],
                play_steps,
            )
        else:
            features_of[name] = expert
            logger.info("  %s: no head that acts for the target (LogME of its features)", counter)
        experts[name] = entry
    model_env.close()
    return experts, features_of, steps


@dataclass(frozen=True)
class _Target:
    """Where and how long an expert is played: the target task, the budget per policy, the seed, and a factory of
    seeded copies of the target (``offset`` shifts the seed; ``evaluation`` plays whole games)."""

    env_id: str
    env_kwargs: dict[str, Any] | None
    episodes: int
    max_steps: int
    seed: int
    make: Callable[..., Any]


def _zero_shot(
    spec: HubSpec,
    name: str,
    model: _SingleExpert,
    origin: Any,
    head: str,
    random_play: Play,
    reference: tuple[float, float] | None,
    where: _Target,
) -> tuple[dict[str, Any], int]:
    """Play an expert whose head acts for the target, beside the random policy's play; its score entry and the
    environment steps it took (measuring it at home too where its files name another task and nothing records it).
    """
    env = where.make()
    torch.manual_seed(where.seed)  # every expert samples its actions from the same stream: equal agents score equal
    play = play_policy(_sampled_actions(model), env, where.episodes, where.max_steps)
    env.close()
    steps = play.steps
    effect = effect_size(play, random_play)
    entry: dict[str, Any] = {}
    source, source_random = reference if reference is not None else (math.nan, math.nan)
    if reference is None and head == HEAD_MAPPED and _other_task(origin, where.env_id, where.env_kwargs):
        # no record of what it does at home, but its files name its task: measure it there
        at_home = _play_at_home(spec, name, origin, where.episodes, where.max_steps, where.seed)
        source, source_random = at_home[0].mean, at_home[1].mean
        steps += at_home[0].steps + at_home[1].steps
        entry.update({"source_return": round(source, 4), "source_random_return": round(source_random, 4)})
    retention = None
    if source > source_random:  # the share of its own competence the expert keeps on the target
        retention = round((play.mean - random_play.mean) / (source - source_random), 4)
        entry["retention"] = retention
    entry.update(
        {
            "zero_shot_return": round(play.mean, 4),
            "zero_shot_std": round(play.std, 4),
            "episodes": len(play.returns),
            "effect_size": round(effect, 3) if math.isfinite(effect) else "inf",
            "score": score_from_play(effect, retention),
        }
    )
    return entry, steps


def _other_task(origin: Any, env_id: str, env_kwargs: dict[str, Any] | None) -> bool:
    """Whether an agent's files name a task other than the target (its own task's agent needs no reference)."""
    task = getattr(origin, "env_id", None)
    if task is None:
        return False
    return bool(task != env_id or dict(getattr(origin, "env_kwargs", {}) or {}) != dict(env_kwargs or {}))


def _play_at_home(spec: HubSpec, name: str, origin: Any, episodes: int, max_steps: int, seed: int) -> tuple[Play, Play]:
    """The agent and a random policy on the agent's own task (as its files name it), same budget and seeds: how
    well it plays where it was trained, the reference for the share of that it keeps on the target."""
    from hp_rl.rl.envs import make_env

    def home(offset: int, evaluation: bool) -> Any:
        return make_env(
            origin.env_id,
            4,
            seed + offset,
            origin.env_preset,
            evaluation=evaluation,
            env_kwargs=dict(origin.env_kwargs),
        )

    model_env = home(0, False)
    model = _SingleExpert(spec, name, model_env)
    env = home(2, True)
    torch.manual_seed(seed)
    agent = play_policy(_sampled_actions(model), env, episodes, max_steps)
    env.close()
    env = home(2, True)
    random = play_policy(_random_actions(env.action_space, seed), env, episodes, max_steps)
    env.close()
    model_env.close()
    logger.info("      at home on %s: %.2f against random %.2f", origin.env_id, agent.mean, random.mean)
    return agent, random


def _random_actions(space: Any, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A uniformly random policy over ``space``, seeded: the same actions wherever it is played with one seed."""
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        return np.array([rng.integers(space.n) if hasattr(space, "n") else space.sample() for _ in obs])

    return act


def _sampled_actions(model: _SingleExpert) -> Callable[[np.ndarray], np.ndarray]:
    """The expert's stochastic policy as a function of observations."""
    return model.sample


def _add_logme(
    experts: dict[str, dict[str, Any]],
    features_of: dict[str, Any],
    env: Any,
    rollout_steps: int,
    seed: int,
    gamma: float,
) -> int:
    """LogME of each head-less expert's features on one random rollout; returns the steps it took.

    The frames reach the experts as they reach them in training: SB3's preprocessing (image frames channels first,
    scaled to [0, 1]).
    """
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first, preprocess_obs
    from stable_baselines3.common.vec_env import VecTransposeImage

    if is_image_space(env.observation_space) and not is_image_space_channels_first(env.observation_space):
        env = VecTransposeImage(env)  # as SB3 wraps the training environment
    observations: list[np.ndarray] = []
    rewards, dones = [], []
    obs = env.reset()
    env.action_space.seed(seed)
    for _ in range(max(rollout_steps // env.num_envs, 1)):
        observations.append(np.asarray(obs))
        obs, reward, done, _ = env.step(np.array([env.action_space.sample() for _ in range(env.num_envs)]))
        rewards.append(reward)
        dones.append(done.astype(np.float64))
    env.close()
    returns = discounted_returns(np.array(rewards), np.array(dones), gamma).reshape(-1)
    frames = preprocess_obs(torch.as_tensor(np.concatenate(observations)), env.observation_space)
    assert isinstance(frames, torch.Tensor)  # a Box space: one tensor
    frames = frames.float()
    for name, expert in features_of.items():
        with torch.no_grad():
            features = expert.forward_trunk(frames).numpy()
        experts[name]["logme"] = round(logme(features, returns), 4)
    return len(observations) * env.num_envs


def _source_references(spec: HubSpec) -> dict[str, tuple[float, float]]:
    """Expert name -> (its return on its source task, a random policy's there), where its provenance has both."""
    references: dict[str, tuple[float, float]] = {}
    for expert in spec.experts:
        source, random = expert.provenance.get("source_return"), expert.provenance.get("random_return")
        if isinstance(source, int | float) and isinstance(random, int | float) and math.isfinite(source - random):
            references[expert.name] = (float(source), float(random))
    return references


def score_target(hub: Any, env: Any) -> dict[str, Any]:
    """``prior="auto"``: :func:`score_hub` on the task ``env`` was made from, with :data:`AUTO_PRIOR_SEED`.

    The target is rebuilt from the environment's id with the project's presets (``gym.make`` arguments of ``env``
    are not known here; give a score file as ``prior`` for a variant).

    :raises PathwayOptionError: for an environment not made from a registered id.
    """
    from hp_rl.hub.options import PathwayOptionError

    specs = env.get_attr("spec", [0]) if hasattr(env, "get_attr") else [getattr(env, "spec", None)]
    env_id = getattr(specs[0], "id", None)
    if env_id is None:
        raise PathwayOptionError(
            "prior='auto' needs an environment made from a registered id; give a score file instead."
        )
    return score_hub(hub, str(env_id), seed=AUTO_PRIOR_SEED)
