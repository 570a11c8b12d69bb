"""Transferability scores: how promising each hub expert is for a target task, measured before training.

Two pieces of evidence per expert (``python -m hp_rl.hub score SPEC --env ENV_ID``):

- **zero-shot return**: where the expert's own policy head maps onto the target's actions (by meaning), the
  mean return of that policy (trunk, input adapter and head as loaded, stochastic actions) on the target;
- **LogME** (You et al. 2021): the log marginal evidence, per sample, of a Bayesian linear regression from the
  expert's frozen features to the discounted returns of a short random-policy rollout on the target: how
  well its features already explain value.

The *prior* combines them into one number in [0, 1] per expert that the pathway generator can start its
biases from (``prior=FILE``). It is absolute evidence, not a ranking, so that a hub with nothing relevant in it
tilts the routes little:

- where the expert's policy head maps onto the target's actions: the share of its own competence it keeps on
  the target, ``(zero-shot - random) / (source return - source random)``, from the source returns its
  provenance records (``hp_rl.hub export`` writes them); without them, relative to the best expert of the hub;
  clipped to [0, 1];
- for experts without such a head: LogME min-max normalised within those experts, times
  :data:`HEADLESS_PRIOR_CAP` (features that predict a random policy's returns are weaker evidence than a policy
  that plays the target, and on MinAtar SpaceInvaders they ranked the relevant expert last).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from hp_rl.hub import HubSpec, parse_hub
from hp_rl.hub.options import PathwayOptionError
from hp_rl.overrides import ConfigError
from hp_rl.routing import PathwayGenerator
from hp_rl.yaml_files import read_yaml

__all__ = [
    "routed_by_prior",
    "logme",
    "score_hub",
    "prior_from_scores",
    "write_scores",
    "read_prior",
    "start_from_prior",
    "AUTO_PRIOR_SEED",
    "HEADLESS_PRIOR_CAP",
]

# Seed of the scoring environments for prior="auto" (and the benchmark's scores): no training run uses it.
AUTO_PRIOR_SEED = 12_345
# Largest prior of an expert without a policy head that maps onto the target (evidence from LogME only).
HEADLESS_PRIOR_CAP = 0.2


def logme(features: np.ndarray, targets: np.ndarray, iterations: int = 50) -> float:
    """LogME evidence per sample of a linear Gaussian model ``targets ~ features`` (You et al. 2021).

    :param features: ``(N, D)``.
    :param targets: ``(N,)``.
    :return: the maximised log evidence divided by N (higher: the features explain the targets better).
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    z2 = (u.T @ y) ** 2
    residual = max(float(y @ y - z2.sum()), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * z2 / (t + sigma) ** 2).sum())
        res2 = float((z2 / (1 + sigma / t) ** 2).sum()) + residual
        new_alpha, new_beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
        converged = abs(new_alpha / new_beta - t) / t < 1e-3
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    t = alpha / beta
    m2 = float((sigma * z2 / (t + sigma) ** 2).sum())
    res2 = float((z2 / (1 + sigma / t) ** 2).sum()) + residual
    evidence = (
        d / 2 * math.log(alpha)
        + n / 2 * math.log(beta)
        - 0.5 * float(np.log(alpha + beta * sigma).sum())
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * math.log(2 * math.pi)
    )
    return evidence / n


def _discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    """``(T, E)`` returns-to-go within episodes (cut at the end of the rollout)."""
    out = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running * (1.0 - dones[t])
        out[t] = running
    return out


def _single_expert_model(spec: HubSpec, name: str, env: Any) -> Any:
    from hp_rl.rl.algorithms import HubPPO

    policy = "CnnPolicy" if len(env.observation_space.shape) == 3 else "MlpPolicy"
    single = {"experts": [e.as_dict() for e in spec.experts if e.name == name]}
    return HubPPO(
        policy,
        env,
        hub=single,
        k=1,
        aggregation="output",
        noise="none",
        explore_coef=0.0,
        exploit_coef=0.0,
        n_steps=8,
        batch_size=8,
        device="cpu",
    )


def score_hub(
    hub: Any,
    env_id: str,
    episodes: int = 10,
    rollout_steps: int = 2048,
    seed: int = 0,
    gamma: float = 0.99,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Zero-shot return and LogME of every expert of ``hub`` on ``env_id``, and the prior they give.

    :param hub: anything :func:`hp_rl.hub.parse_hub` accepts.
    :param env_id: the target task.
    :param episodes: episodes per zero-shot evaluation (and of the random policy).
    :param rollout_steps: environment steps of the random rollout that LogME reads.
    :param seed: seed of the environments.
    :param gamma: discount of the returns LogME predicts.
    :return: ``{"env_id", "random_return", "experts": {name: {...}}, "prior": {name: value}}``.
    """
    # The zero-shot returns sample actions with torch (and fresh heads draw torch weights): seeded here, so the
    # scores depend on ``seed`` alone, not on whatever the caller (a training run, a parallel job) did before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _score_hub(hub, env_id, episodes, rollout_steps, seed, gamma, env_kwargs)


def _score_hub(
    hub: Any,
    env_id: str,
    episodes: int,
    rollout_steps: int,
    seed: int,
    gamma: float,
    env_kwargs: dict[str, Any] | None,
) -> dict[str, Any]:
    from stable_baselines3.common.evaluation import evaluate_policy

    from hp_rl.rl.envs import make_env
    from hp_rl.rl.source_eval import RandomPolicy
    from hp_rl.routing import HeadedExpert

    spec = parse_hub(hub)
    env = make_env(env_id, 8, seed, env_kwargs=env_kwargs)
    eval_env = make_env(env_id, 4, seed + 1, env_kwargs=env_kwargs)
    random_result, _ = evaluate_policy(RandomPolicy(eval_env), eval_env, n_eval_episodes=episodes)
    random_return = float(np.mean(random_result))
    # One random rollout shared by every expert: observations and discounted returns-to-go.
    observations: list[np.ndarray] = []
    rewards, dones = [], []
    obs = env.reset()
    env.action_space.seed(seed)
    for _ in range(max(rollout_steps // env.num_envs, 1)):
        observations.append(np.asarray(obs))
        obs, reward, done, _ = env.step(np.array([env.action_space.sample() for _ in range(env.num_envs)]))
        rewards.append(reward)
        dones.append(done.astype(np.float64))
    returns = _discounted_returns(np.array(rewards), np.array(dones), gamma).reshape(-1)
    frames = torch.as_tensor(np.concatenate(observations)).float()
    references = _source_references(spec)
    experts: dict[str, dict[str, Any]] = {}
    for name in spec.names:
        model = _single_expert_model(spec, name, env)
        extractor = model.policy.features_extractor
        expert = extractor.pathway.experts[name]
        assert isinstance(expert, HeadedExpert)
        with torch.no_grad():
            features = expert.forward_trunk(frames).numpy()
        entry: dict[str, Any] = {
            "policy_head": extractor.head_sources[name],
            "logme": round(logme(features, returns), 4),
        }
        if extractor.head_sources[name] == "pretrained":
            mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=episodes, deterministic=False)
            entry["zero_shot_return"] = round(float(np.mean(mean)), 4)
            source, source_random = references.get(name, (math.nan, math.nan))
            if source > source_random:  # the share of its own competence the expert keeps on the target
                entry["retention"] = round((entry["zero_shot_return"] - random_return) / (source - source_random), 4)
        experts[name] = entry
    env.close()
    eval_env.close()
    return {
        "env_id": env_id,
        "episodes": episodes,
        "rollout_steps": rollout_steps,
        "random_return": round(random_return, 4),
        "experts": experts,
        "prior": prior_from_scores(experts, random_return),
    }


def _source_references(spec: HubSpec) -> dict[str, tuple[float, float]]:
    """Expert name -> (its return on its source task, a random policy's there), where its provenance has both."""
    references: dict[str, tuple[float, float]] = {}
    for expert in spec.experts:
        source, random = expert.provenance.get("source_return"), expert.provenance.get("random_return")
        if isinstance(source, int | float) and isinstance(random, int | float) and math.isfinite(source - random):
            references[expert.name] = (float(source), float(random))
    return references


def prior_from_scores(experts: dict[str, dict[str, Any]], random_return: float) -> dict[str, float]:
    """The prior of each scored expert (the rules of the module docstring)."""
    zero_shot = {n: e["zero_shot_return"] for n, e in experts.items() if "zero_shot_return" in e}
    prior: dict[str, float] = {}
    if zero_shot:
        best_gain = max(zero_shot.values()) - random_return
        for name, value in zero_shot.items():
            if "retention" in experts[name]:
                share = float(experts[name]["retention"])
            else:  # no record of what the expert achieves at home: the best expert of this hub is the reference
                share = (value - random_return) / best_gain if best_gain > 0 else 0.0
            # below a random policy is no evidence for the expert, not evidence against the others: floor at 0
            prior[name] = round(min(1.0, max(0.0, share)), 4)
    evidence = {n: e["logme"] for n, e in experts.items() if n not in prior}
    if evidence:
        low, high = min(evidence.values()), max(evidence.values())
        for name, value in evidence.items():
            prior[name] = round(HEADLESS_PRIOR_CAP * (value - low) / (high - low), 4) if high > low else 0.0
    return prior


def write_scores(scores: dict[str, Any], path: str | Path) -> Path:
    """Write a score file (YAML) that ``prior=FILE`` reads."""
    from hp_rl.paths import written_by_rename

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_by_rename(path) as partial:  # a reader never sees half a file
        partial.write_text(yaml.safe_dump(scores, sort_keys=False))
    return path


def read_prior(prior: str | Path | dict[str, Any]) -> dict[str, float]:
    """Expert name -> prior from a score file (or its ``prior`` mapping, or a plain name -> value mapping).

    :raises PathwayOptionError: for a file without a ``prior`` mapping or with values that are not finite numbers.
    """
    raw: Any = prior
    if isinstance(prior, str | Path):
        path = Path(prior)
        if not path.is_file():
            raise PathwayOptionError(
                f"prior={prior}: no such file; write one with python -m hp_rl.hub score SPEC --env ENV."
            )
        try:
            raw = read_yaml(path, "score file")
        except ConfigError as error:
            raise PathwayOptionError(f"prior={prior}: {error}") from None
    if isinstance(raw, dict) and isinstance(raw.get("prior"), dict):
        raw = raw["prior"]
    if not isinstance(raw, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in raw.values()
    ):
        raise PathwayOptionError(f"prior={prior!r}: expected a mapping of expert names to finite numbers.")
    return {str(k): float(v) for k, v in raw.items()}


def start_from_prior(
    generator: PathwayGenerator, names: tuple[str, ...], prior: str | Mapping[str, float], scale: float
) -> dict[str, float]:
    """Add ``scale * prior`` to the generator's logit biases (column i is expert ``names[i]``; experts the prior
    does not name: 0).

    :param prior: a score file or a mapping expert name -> prior (``"auto"`` is resolved by HubPPO/HubA2C).
    :return: the prior read (expert -> value).
    :raises PathwayOptionError: for ``"auto"`` here, or a prior naming experts the hub does not hold.
    """
    if prior == "auto":
        raise PathwayOptionError(
            "prior='auto' is resolved by HubPPO/HubA2C, which know the target environment; "
            "with the extractor alone give a score file (python -m hp_rl.hub score)."
        )
    values = read_prior(dict(prior) if isinstance(prior, Mapping) else prior)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise PathwayOptionError(f"prior names experts {unknown} that the hub does not hold ({', '.join(names)}).")
    layer = generator.logits.module
    assert isinstance(layer, torch.nn.Linear)
    with torch.no_grad():
        for column, name in enumerate(names):
            layer.bias[column] += scale * values.get(name, 0.0)
    return values


def routed_by_prior(prior: Mapping[str, float], names: Sequence[str], k: int, threshold: float) -> int:
    """How many experts to route per observation under ``k_from_prior``: those of ``names`` whose prior is at
    least ``threshold``, at least 1 and at most ``k``.

    A head-less expert's prior is at most :data:`HEADLESS_PRIOR_CAP`, so a threshold above it counts only agents
    whose own policy keeps that share of its competence on the target zero-shot. Two such agents then share
    each observation, and the policy loss reaches the weights between them (one routed slot has a constant
    weight); a hub with one such agent, or none, keeps a single slot instead of mixing in an expert with no
    evidence. Without a prior no expert has that evidence: 1.
    """
    relevant = sum(1 for name in names if prior.get(name, 0.0) >= threshold)
    return max(1, min(k, relevant))
