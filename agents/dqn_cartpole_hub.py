"""DQN on CartPole with a hub of state-vector experts as the features extractor.

What this shows: :class:`hp_rl.HubPathwayExtractor` inside an off-policy, value-based algorithm. DQN builds
two Q-networks (online and target), each with its own extractor; frozen expert trunks are shared between
them (one copy in memory), while each network has its own pathway generator and adapters, and the target
network's copy follows the online one through DQN's usual target updates. :class:`hp_rl.GateUsageCallback`
finds the online extractor by itself and counts each observation once (the target network's forward on the
same replayed observations is not a second observation; random epsilon-greedy actions make no forward).

DQN's ``net_arch`` is the Q-network's MLP between the features and the Q-values: ``--q-net-arch ""``
(the default here) makes the Q head linear on the aggregated features, as in the method; SB3's own default
for a custom extractor would be two hidden layers of 64.

Environment and settings: ``CartPole-v1`` with the rl-baselines3-zoo DQN hyperparameters (lr 2.3e-3,
batch 64, buffer 100k, train_freq 256 with 128 gradient steps, target update every 10 steps,
exploration over 16% of training down to 0.04).

The hub (``--hub``): ``random:N`` (N randomly initialised MLP experts, 2 x 64 tanh, to try the plumbing),
a YAML spec, or comma-separated SB3 checkpoints of MlpPolicy agents trained on other control tasks (their
actor layers become experts; the linear input adapters bridge different state sizes).

Run::

    python agents/dqn_cartpole_hub.py --hub random:4 -k 2 --timesteps 50000 --tensorboard-log runs/

At the end the model is saved, loaded back, and both must pick the same greedy action on the same states.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from hp_rl import GateUsageCallback, HubPathwayExtractor, routing_noise


def parse_args() -> argparse.Namespace:
    """Command-line options; the defaults are a short demonstration run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1", help="a control task with discrete actions")
    parser.add_argument("--hub", default="random:4", help="YAML spec, comma-separated checkpoints, or random:N")
    parser.add_argument("-k", type=int, default=2, help="experts per observation")
    parser.add_argument("--timesteps", type=int, default=50_000, help="environment steps to train")
    parser.add_argument("--learning-starts", type=int, default=1000, help="steps before the first update")
    parser.add_argument("--train-freq", type=int, default=256, help="env steps between updates (rl-zoo: 256)")
    parser.add_argument("--gradient-steps", type=int, default=128, help="gradient steps per update (rl-zoo: 128)")
    parser.add_argument(
        "--q-net-arch", default="", help="hidden sizes of the Q head, comma-separated ('' = linear head)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard-log", default=None, help="TensorBoard folder (gate usage, losses)")
    parser.add_argument("--save-path", default="dqn_cartpole_hub.zip", help="where the trained model is saved")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: small networks gain nothing from more on CPU)"
    )
    return parser.parse_args()


def check_reload(model: DQN, path: Path, env: gym.Env) -> None:
    """Load ``path`` back and check it acts exactly like ``model`` (greedy actions, no routing noise)."""
    loaded = DQN.load(path, device=model.device)
    states = np.stack([env.observation_space.sample() for _ in range(16)])
    with routing_noise(model, enabled=False), routing_noise(loaded, enabled=False):
        action, _ = model.predict(states, deterministic=True)
        reloaded_action, _ = loaded.predict(states, deterministic=True)
    print(f"greedy actions: trained {action.tolist()}  reloaded {reloaded_action.tolist()}")
    if not np.array_equal(action, reloaded_action):
        raise SystemExit("The reloaded model acts differently from the trained one.")


def main() -> None:
    """Train, save, reload, compare."""
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    env: VecEnv = make_vec_env(args.env, n_envs=1, seed=args.seed)
    q_net_arch = [int(size) for size in args.q_net_arch.split(",") if size.strip()]
    model = DQN(
        "MlpPolicy",
        env,
        learning_rate=2.3e-3,
        batch_size=64,
        buffer_size=100_000,
        learning_starts=args.learning_starts,
        gamma=0.99,
        target_update_interval=10,
        train_freq=args.train_freq,
        gradient_steps=args.gradient_steps,
        exploration_fraction=0.16,
        exploration_final_eps=0.04,
        policy_kwargs=dict(
            features_extractor_class=HubPathwayExtractor,
            features_extractor_kwargs=dict(hub=args.hub, k=args.k),
            net_arch=q_net_arch,  # passed to DQN's QNetwork: [] gives a linear Q head on the features
        ),
        tensorboard_log=args.tensorboard_log,
        seed=args.seed,
        device=args.device,
        verbose=1,
    )
    extractor = model.q_net.features_extractor
    assert isinstance(extractor, HubPathwayExtractor)
    print(f"hub: {len(extractor.expert_names)} experts {list(extractor.expert_names)}, k={extractor.k}")
    began = time.perf_counter()
    model.learn(args.timesteps, callback=GateUsageCallback(), tb_log_name="dqn_cartpole_hub")
    print(f"trained {model.num_timesteps} steps at {model.num_timesteps / (time.perf_counter() - began):.0f} steps/s")
    path = Path(args.save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    print(f"saved {path}")
    check_reload(model, path, gym.make(args.env))


if __name__ == "__main__":
    main()
