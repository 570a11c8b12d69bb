"""What a benchmark run records besides its final model: every training episode's return against steps, the
share of acting observations routed to each expert per rollout, and the forward FLOPs of the acting policy."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["episode_recorder", "forward_flops", "noise_free_evaluator"]


def episode_recorder() -> Any:
    """A fresh SB3 callback whose ``episodes`` collect ``(steps, return)`` of every finished training episode, whose
    ``route_share`` collects ``(steps, {expert: share})`` per rollout (hub runs: the share of acting observations
    routed through each expert) and whose ``route_weight`` collects ``(steps, {expert: mean pathway weight})`` per
    rollout (with k > 1 every relevant expert can be routed on every observation; the weights say which one
    plays)."""
    from stable_baselines3.common.callbacks import BaseCallback

    from hp_rl.rl.pathway_control import find_hub_extractors

    class EpisodeRecorder(BaseCallback):
        """Records (environment steps, return) of every finished training episode, and per rollout the share
        of acting observations routed through each expert."""

        def __init__(self) -> None:
            super().__init__()
            self.episodes: list[tuple[int, float]] = []
            self.route_share: list[tuple[int, dict[str, float]]] = []
            self.route_weight: list[tuple[int, dict[str, float]]] = []
            self._routed: Any = None
            self._weight: Any = None
            self._count = 0
            self._extractors: list[Any] = []

        def _on_training_start(self) -> None:
            self._extractors = find_hub_extractors(self.model)  # once: the per-step path stays a lookup

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                episode = info.get("episode")
                if episode is not None:
                    self.episodes.append((int(self.num_timesteps), float(episode["r"])))
            routes = self._extractors[0].last_acting_routes if self._extractors else None
            if routes is not None:
                routed = (routes.weights > 0).float().sum(0).detach().cpu().numpy()
                weight = routes.weights.sum(0).detach().cpu().numpy()
                self._routed = routed if self._routed is None else self._routed + routed
                self._weight = weight if self._weight is None else self._weight + weight
                self._count += int(routes.weights.shape[0])
            return True

        def _on_rollout_end(self) -> None:
            if self._routed is not None and self._extractors and self._count:
                names = self._extractors[0].expert_names
                share = {n: round(float(v) / self._count, 4) for n, v in zip(names, self._routed, strict=True)}
                self.route_share.append((int(self.num_timesteps), share))
                weight = {n: round(float(v) / self._count, 4) for n, v in zip(names, self._weight, strict=True)}
                self.route_weight.append((int(self.num_timesteps), weight))
            self._routed, self._weight, self._count = None, None, 0

    return EpisodeRecorder()


def forward_flops(model: Any, env: Any, batch: int = 64) -> float:
    """Forward FLOPs per observation of the acting policy (features, heads; routed experts only)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    observations = []
    current = env.reset()
    for _ in range(max(batch // env.num_envs, 1)):  # real observations: routing depends on the input
        observations.append(current)
        current, *_ = env.step(np.array([env.action_space.sample() for _ in range(env.num_envs)]))
    obs = np.concatenate(observations)[:batch]
    policy = model.policy
    policy.set_training_mode(False)
    tensor, _ = policy.obs_to_tensor(obs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        policy(tensor)
    return float(counter.get_total_flops()) / len(obs)


def noise_free_evaluator(env: Any, every: int, episodes: int) -> Any:
    """A fresh SB3 callback that evaluates the policy every ``every`` environment steps (and at the end of
    training) on ``env`` for ``episodes`` deterministic episodes with routing noise off, and keeps
    ``(steps, mean return)`` in ``evaluations``: returns of the greedy agent, beside the training episodes'
    returns of the behaviour policy.

    :param env: a separate vectorised environment with one copy (its own seed).
    :param every: steps between evaluations (counted over all training environments).
    :param episodes: episodes per evaluation.

    The CPU and wall seconds the evaluations took are in ``cpu_seconds`` / ``wall_seconds``, so that a run's
    training time can leave them out.
    """
    import time

    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    from hp_rl.rl.pathway_control import routing_noise

    class NoiseFreeEvaluator(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.evaluations: list[tuple[int, float]] = []
            self.cpu_seconds = 0.0
            self.wall_seconds = 0.0
            self._next = every

        def _evaluate(self) -> None:
            cpu, wall = time.process_time(), time.perf_counter()
            with routing_noise(self.model, enabled=False):
                returns, _ = evaluate_policy(
                    self.model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True
                )
            self.evaluations.append((int(self.num_timesteps), round(float(np.mean(returns)), 4)))
            self.cpu_seconds += time.process_time() - cpu
            self.wall_seconds += time.perf_counter() - wall

        def _on_step(self) -> bool:
            if self.num_timesteps >= self._next:
                self._next += every
                self._evaluate()
            return True

        def _on_training_end(self) -> None:
            if not self.evaluations or self.evaluations[-1][0] != self.num_timesteps:
                self._evaluate()

    return NoiseFreeEvaluator()
