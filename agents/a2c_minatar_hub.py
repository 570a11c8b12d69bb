"""A2C on a MinAtar game with a hub of image experts built for larger frames.

What this shows: :class:`hp_rl.HubPathwayExtractor` on small ``10 x 10 x C`` frames with experts that
expect something else. Each expert's input adapter bridges the gap: a nearest-neighbour resize (binary
frames stay binary) and, where channel counts differ, a trainable 1x1 convolution started as channel
averaging. So experts pretrained on another MinAtar game (a different channel count) or on Atari
(84x84 grey stacks) plug into any MinAtar game. The pathway generator works on the raw 10x10 frames.

Environment and settings: MinAtar through the project's preset (``hp_rl.rl.envs.make_env``: MinAtar's
boolean frames as float32 channels-first, the way SB3 wants them), A2C with 16 envs, n_steps 5,
ent 0.01, vf 0.25 and RMSprop (TF-like, eps 1e-5), as ``configs/a2c.yml`` has for MinAtar.

The hub (``--hub``): a YAML spec or comma-separated checkpoints are used as given. ``random:N`` here means
N randomly initialised NatureCNN experts taking ``C x S x S`` frames (``--expert-size S``, 36 by
default: the smallest frame NatureCNN accepts), which is how the plumbing is tried without pretrained
experts. Pass ``--expert-size 84`` to see what Atari-sized experts cost.

Run::

    python agents/a2c_minatar_hub.py --env MinAtar/Breakout-v1 --hub random:4 -k 2 --timesteps 100000 \\
        --tensorboard-log runs/

At the end the model is saved, loaded back, and both must pick the same deterministic action on the same
observations (routing noise off for that check).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import A2C
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
from stable_baselines3.common.vec_env import VecEnv

from hp_rl import GateUsageCallback, HubPathwayExtractor, routing_noise
from hp_rl.rl.envs import make_env


def parse_args() -> argparse.Namespace:
    """Command-line options; the defaults are a short demonstration run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="MinAtar/Breakout-v1", help="a MinAtar id: MinAtar/<Game>-v1")
    parser.add_argument("--hub", default="random:4", help="YAML spec, comma-separated checkpoints, or random:N")
    parser.add_argument("-k", type=int, default=2, help="experts per observation")
    parser.add_argument("--expert-size", type=int, default=36, help="frame side of random:N experts (>= 36)")
    parser.add_argument("--timesteps", type=int, default=100_000, help="environment steps to train")
    parser.add_argument("--n-envs", type=int, default=16, help="parallel environments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard-log", default=None, help="TensorBoard folder (gate usage, losses)")
    parser.add_argument("--save-path", default="a2c_minatar_hub.zip", help="where the trained model is saved")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: small batches gain nothing from more on CPU)"
    )
    return parser.parse_args()


def hub_for(hub: str, channels: int, expert_size: int) -> Any:
    """``random:N`` as N random NatureCNN experts at ``expert_size``; anything else unchanged."""
    count = hub[len("random:") :]
    if not (hub.startswith("random:") and count.isdigit()):
        return hub
    shape = [channels, expert_size, expert_size]
    experts = [
        {"name": f"random{i}", "source": "random", "arch": "nature_cnn", "input_shape": shape}
        for i in range(int(count))
    ]
    return {"experts": experts}


def check_reload(model: A2C, path: Path, env: VecEnv) -> None:
    """Load ``path`` back and check it acts exactly like ``model`` (deterministic actions, no routing noise)."""
    loaded = A2C.load(path, device=model.device)
    observations = env.reset()
    for _ in range(4):
        observations, *_ = env.step(np.array([env.action_space.sample() for _ in range(env.num_envs)]))
    assert isinstance(observations, np.ndarray)
    with routing_noise(model, enabled=False), routing_noise(loaded, enabled=False):
        action, _ = model.predict(observations, deterministic=True)
        reloaded_action, _ = loaded.predict(observations, deterministic=True)
    print(f"deterministic actions: trained {action.tolist()}  reloaded {reloaded_action.tolist()}")
    if not np.array_equal(action, reloaded_action):
        raise SystemExit("The reloaded model acts differently from the trained one.")


def main() -> None:
    """Train, save, reload, compare."""
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    env = make_env(args.env, n_envs=args.n_envs, seed=args.seed)
    channels = int(env.observation_space.shape[0])  # type: ignore[index]
    model = A2C(
        "CnnPolicy",
        env,
        n_steps=5,
        ent_coef=0.01,
        vf_coef=0.25,
        policy_kwargs=dict(
            features_extractor_class=HubPathwayExtractor,
            features_extractor_kwargs=dict(hub=hub_for(args.hub, channels, args.expert_size), k=args.k),
            net_arch=[],  # linear policy and value heads on the aggregated features
            optimizer_class=RMSpropTFLike,
            optimizer_kwargs=dict(eps=1e-5),
        ),
        tensorboard_log=args.tensorboard_log,
        seed=args.seed,
        device=args.device,
        verbose=1,
    )
    extractor = model.policy.features_extractor
    assert isinstance(extractor, HubPathwayExtractor)
    print(
        f"hub: {len(extractor.expert_names)} experts {list(extractor.expert_names)}, k={extractor.k}, "
        f"frames {tuple(env.observation_space.shape or ())}"
    )
    began = time.perf_counter()
    model.learn(args.timesteps, callback=GateUsageCallback(), tb_log_name="a2c_minatar_hub", log_interval=100)
    print(f"trained {model.num_timesteps} steps at {model.num_timesteps / (time.perf_counter() - began):.0f} steps/s")
    path = Path(args.save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    print(f"saved {path}")
    check_reload(model, path, make_env(args.env, n_envs=1, seed=args.seed + 1))


if __name__ == "__main__":
    main()
