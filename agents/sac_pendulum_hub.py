"""SAC on Pendulum (continuous actions) with a hub of state-vector experts as the features extractor.

What this shows: :class:`hp_rl.HubPathwayExtractor` in an off-policy actor-critic with continuous actions.
SAC gives the actor and the critic separate features extractors by default (``share_features_extractor=
False``), and keeps a target critic. Each gets its own pathway generator and adapters, trained by its own
loss; frozen expert trunks are one shared copy in memory for all three. :class:`hp_rl.GateUsageCallback`
finds the extractors by itself (``gates`` for the actor's, ``gates/1`` for the critic's; the target
critic is left out, it sees no new observations).

SAC's heads: the actor's mean and log-std are linear on the features (``pi=[]``, as in the method);
the critic's Q(s, a) needs hidden layers after concatenating the action (``qf=[64, 64]`` by default,
``--qf-arch``): a Q head linear in the action cannot express a maximum inside the action range.

Environment and settings: ``Pendulum-v1``, SAC with lr 1e-3 and the rl-baselines3-zoo values otherwise
close to SB3's defaults (buffer 1e6, batch 256, tau 0.005, gamma 0.99, train every step).

The hub (``--hub``): ``random:N`` (N randomly initialised MLP experts, 2 x 64 tanh, to try the plumbing),
a YAML spec, or comma-separated SB3 checkpoints of MlpPolicy agents trained on other control tasks (the
linear input adapters bridge different state sizes).

Run::

    python agents/sac_pendulum_hub.py --hub random:4 -k 2 --timesteps 20000 --tensorboard-log runs/

At the end the model is saved, loaded back, and both must give the same deterministic action on the same
states (routing noise off for that check).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC

from hp_rl import GateUsageCallback, HubPathwayExtractor, find_hub_extractors, routing_noise


def parse_args() -> argparse.Namespace:
    """Command-line options; the defaults are a short demonstration run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Pendulum-v1", help="a control task with a Box action space")
    parser.add_argument("--hub", default="random:4", help="YAML spec, comma-separated checkpoints, or random:N")
    parser.add_argument("-k", type=int, default=2, help="experts per observation")
    parser.add_argument("--timesteps", type=int, default=20_000, help="environment steps to train")
    parser.add_argument("--learning-starts", type=int, default=100, help="steps before the first update")
    parser.add_argument("--qf-arch", default="64,64", help="hidden sizes of the critic after [features, action]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensorboard-log", default=None, help="TensorBoard folder (gate usage, losses)")
    parser.add_argument("--save-path", default="sac_pendulum_hub.zip", help="where the trained model is saved")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: small networks gain nothing from more on CPU)"
    )
    return parser.parse_args()


def check_reload(model: SAC, path: Path, env: gym.Env) -> None:
    """Load ``path`` back and check it acts exactly like ``model`` (deterministic actions, no routing noise)."""
    loaded = SAC.load(path, device=model.device)
    states = np.stack([env.observation_space.sample() for _ in range(16)])
    with routing_noise(model, enabled=False), routing_noise(loaded, enabled=False):
        action, _ = model.predict(states, deterministic=True)
        reloaded_action, _ = loaded.predict(states, deterministic=True)
    print(
        f"deterministic actions (first 4): trained {action[:4].ravel().round(4).tolist()}  "
        f"reloaded {reloaded_action[:4].ravel().round(4).tolist()}"
    )
    if not np.allclose(action, reloaded_action, rtol=0.0, atol=1e-6):
        raise SystemExit("The reloaded model acts differently from the trained one.")


def main() -> None:
    """Train, save, reload, compare."""
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    qf_arch = [int(size) for size in args.qf_arch.split(",") if size.strip()]
    model = SAC(
        "MlpPolicy",
        args.env,
        learning_rate=1e-3,
        learning_starts=args.learning_starts,
        policy_kwargs=dict(
            features_extractor_class=HubPathwayExtractor,
            features_extractor_kwargs=dict(hub=args.hub, k=args.k),
            net_arch=dict(pi=[], qf=qf_arch),
        ),
        tensorboard_log=args.tensorboard_log,
        seed=args.seed,
        device=args.device,
        verbose=1,
    )
    extractors = find_hub_extractors(model)
    first = extractors[0]
    print(
        f"hub: {len(first.expert_names)} experts {list(first.expert_names)}, k={first.k}; "
        f"{len(extractors)} extractors (actor, critic) share the frozen trunks"
    )
    began = time.perf_counter()
    model.learn(args.timesteps, callback=GateUsageCallback(), tb_log_name="sac_pendulum_hub", log_interval=10)
    print(f"trained {model.num_timesteps} steps at {model.num_timesteps / (time.perf_counter() - began):.0f} steps/s")
    path = Path(args.save_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    print(f"saved {path}")
    check_reload(model, path, gym.make(args.env))


if __name__ == "__main__":
    main()
