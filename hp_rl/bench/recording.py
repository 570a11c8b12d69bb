"""What a benchmark run records besides its final model: every training episode's return against steps, the
share of acting observations routed to each expert per rollout, and the forward FLOPs of the acting policy."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["episode_recorder", "forward_flops"]


def episode_recorder() -> Any:
    """A fresh SB3 callback whose ``episodes`` collect ``(steps, return)`` of every finished training episode and
    whose ``route_share`` collects ``(steps, {expert: share})`` per rollout (hub runs)."""
    from stable_baselines3.common.callbacks import BaseCallback

    from hp_rl.rl.extractor import find_hub_extractors

    class EpisodeRecorder(BaseCallback):
        """Records (environment steps, return) of every finished training episode, and per rollout the share
        of acting observations routed through each expert."""

        def __init__(self) -> None:
            super().__init__()
            self.episodes: list[tuple[int, float]] = []
            self.route_share: list[tuple[int, dict[str, float]]] = []
            self._routed: Any = None
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
                self._routed = routed if self._routed is None else self._routed + routed
                self._count += int(routes.weights.shape[0])
            return True

        def _on_rollout_end(self) -> None:
            if self._routed is not None and self._extractors and self._count:
                names = self._extractors[0].expert_names
                share = {n: round(float(v) / self._count, 4) for n, v in zip(names, self._routed, strict=True)}
                self.route_share.append((int(self.num_timesteps), share))
            self._routed, self._count = None, 0

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
