"""PPO on Atari Breakout with a hub of pretrained experts as the features extractor.

What this shows: plain Stable-Baselines3 PPO, ``CnnPolicy``, with :class:`hp_rl.HubPathwayExtractor` in
place of NatureCNN. Each stacked 84x84 frame is routed to ``k`` of the hub's experts; their features are
adapted to a common width and summed with the pathway weights, and the action and value heads are linear
on top (``net_arch=[]``). The exploration (load balance) loss reaches the gradient through the extractor
itself, so no PPO subclass is needed (``hp_rl.HubPPO`` adds the exploitation loss). Gate usage per expert
goes to TensorBoard through :class:`hp_rl.GateUsageCallback` (tags ``gates/usage/<expert>``, ...).

Environment: ``BreakoutNoFrameskip-v4`` with the rl-baselines3-zoo preprocessing (``make_atari_env``:
noop reset, frame skip 4, 84x84 grey, episodic life, clipped reward; 4 stacked frames) and rl-zoo's PPO
settings (8 envs, n_steps 128, batch 256, 4 epochs, lr 2.5e-4, clip 0.1, ent 0.01).

The hub (``--hub``): a YAML hub spec, comma-separated SB3 checkpoints (``a2c_pong.zip,a2c_qbert.zip``),
or ``random:N`` for N randomly initialised NatureCNN experts (to try the plumbing). Experts trained on
other games transfer; random ones only cost the same compute.

Run (a few minutes on a laptop CPU; full training is 10M steps on a GPU)::

    python agents/ppo_breakout_hub.py --hub random:4 -k 2 --timesteps 20000 --tensorboard-log runs/
    tensorboard --logdir runs/

At the end the model is saved, loaded back, and both must pick the same deterministic action on the same
observations (routing noise off for that check).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ale_py  # noqa: F401 - registers the Atari ids with gymnasium; import before making them
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

from hp_rl import GateUsageCallback, HubPathwayExtractor, routing_noise


def parse_args() -> argparse.Namespace:
    """Command-line options; the defaults are a short demonstration run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="BreakoutNoFrameskip-v4", help="an Atari NoFrameskip-v4 id")
    parser.add_argument("--hub", default="random:4", help="YAML spec, comma-separated checkpoints, or random:N")
    parser.add_argument("-k", type=int, default=2, help="experts per observation")
    parser.add_argument("--timesteps", type=int, default=20_000, help="environment steps to train")
    parser.add_argument("--n-envs", type=int, default=8, help="parallel environments (rl-zoo: 8)")
    parser.add_argument("--n-steps", type=int, default=128, help="steps per env per rollout (rl-zoo: 128)")
    parser.add_argument("--batch-size", type=int, default=256, help="minibatch size (rl-zoo: 256)")
    parser.add_argument("--n-epochs", type=int, default=4, help="epochs per update (rl-zoo: 4)")
    parser.add_argument("--fine-tune", action="store_true", help="train the expert trunks too (default: frozen)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard-log", default=None, help="TensorBoard folder (gate usage, losses)")
    parser.add_argument("--save-path", default="ppo_breakout_hub.zip", help="where the trained model is saved")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default; 1 is often fastest on a busy CPU)"
    )
    return parser.parse_args()


def make_env(env_id: str, n_envs: int, seed: int) -> VecEnv:
    """Atari with the rl-baselines3-zoo preprocessing and 4 stacked frames."""
    return VecFrameStack(make_atari_env(env_id, n_envs=n_envs, seed=seed), n_stack=4)


def check_reload(model: PPO, path: Path, env: VecEnv) -> None:
    """Load ``path`` back and check it acts exactly like ``model`` (deterministic actions, no routing noise)."""
    loaded = PPO.load(path, device=model.device)
    observations = env.reset()
    for _ in range(4):  # a few different frames
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
    env = make_env(args.env, args.n_envs, args.seed)
    model = PPO(
        "CnnPolicy",
        env,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        learning_rate=2.5e-4,
        clip_range=0.1,
        ent_coef=0.01,
        vf_coef=0.5,
        policy_kwargs=dict(
            features_extractor_class=HubPathwayExtractor,
            features_extractor_kwargs=dict(hub=args.hub, k=args.k, freeze_experts=not args.fine_tune),
            net_arch=[],  # linear policy and value heads on the aggregated features, as in the method
        ),
        tensorboard_log=args.tensorboard_log,
        seed=args.seed,
        device=args.device,
        verbose=1,
    )
    extractor = model.policy.features_extractor
    assert isinstance(extractor, HubPathwayExtractor)
    print(f"hub: {len(extractor.expert_names)} experts {list(extractor.expert_names)}, k={extractor.k}")
    began = time.perf_counter()
    model.learn(args.timesteps, callback=GateUsageCallback(), tb_log_name="ppo_breakout_hub")
    print(f"trained {model.num_timesteps} steps at {model.num_timesteps / (time.perf_counter() - began):.0f} steps/s")
    path = Path(args.save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    print(f"saved {path}")
    check_reload(model, path, make_env(args.env, 1, args.seed + 1))


if __name__ == "__main__":
    main()
