"""HubPPO / HubA2C: the exploitation loss, parity with SB3 when it is off, per-group learning rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO

from hp_rl import HubA2C, HubPPO
from hp_rl.rl.envs import make_env
from hp_rl.rl.extractor import HubPathwayExtractor
from hp_rl.rl.pathway_control import find_hub_extractors


@pytest.mark.parametrize(
    ("hub_cls", "sb3_cls", "kwargs"),
    [
        (HubPPO, PPO, {"n_steps": 32, "batch_size": 16, "n_epochs": 2}),
        (HubA2C, A2C, {"n_steps": 8}),
    ],
)
def test_without_auxiliary_losses_follows_sb3_exactly(hub_cls: type, sb3_cls: type, kwargs: dict) -> None:
    extractor = {"hub": "random:3", "k": 2, "explore_coef": 0.0}
    plain = sb3_cls(
        "MlpPolicy",
        make_env("CartPole-v1", 2, 0),
        seed=5,
        **kwargs,
        policy_kwargs={
            "features_extractor_class": HubPathwayExtractor,
            "features_extractor_kwargs": extractor,
            "net_arch": [],
        },
    )
    plain.learn(128)  # before the second model re-seeds the global generators
    hub = hub_cls("MlpPolicy", make_env("CartPole-v1", 2, 0), seed=5, exploit_coef=0.0, **extractor, **kwargs)
    hub.learn(128)
    plain_params = dict(plain.policy.named_parameters())
    hub_params = dict(hub.policy.named_parameters())
    assert plain_params.keys() == hub_params.keys()
    for name, value in plain_params.items():
        assert torch.equal(value, hub_params[name]), name


@pytest.mark.parametrize("cls", [HubPPO, HubA2C])
def test_losses_are_logged_and_exploitation_changes_training(cls: type) -> None:
    results = {}
    for coef in (0.0, 1.0):
        model = cls(
            "MlpPolicy", make_env("CartPole-v1", 2, 0), hub="random:3", k=1, seed=1, exploit_coef=coef, n_steps=16
        )
        model.learn(64)
        results[coef] = model
    logged = results[1.0].logger.name_to_value
    assert logged["train/exploit_loss"] > 0
    assert "train/explore_loss" in logged
    a = dict(results[0.0].policy.named_parameters())
    b = dict(results[1.0].policy.named_parameters())
    changed = [n for n in a if not torch.equal(a[n], b[n])]
    assert any("output_adapter" in n for n in changed)
    assert not any(".trunk." in n for n in changed)  # frozen trunks never move


def test_exploitation_gradient_reaches_only_routed_experts() -> None:
    model = HubPPO(
        "MlpPolicy",
        make_env("CartPole-v1", 1, 0),
        hub="random:4",
        k=1,
        exploit_coef=1.0,
        explore_coef=0.0,
        n_steps=8,
        batch_size=8,
    )
    model.learn(8)  # fills the buffer
    extractor = find_hub_extractors(model)[0]
    batch = next(model.rollout_buffer.get(4))
    model.rollout_buffer.current = batch
    model.policy.set_training_mode(True)
    model.policy.exploitation_hook = model._exploitation_loss
    model._explore_values, model._exploit_values = [], []
    model.policy.optimizer.zero_grad()
    values, _, _ = model.policy.evaluate_actions(batch.observations, batch.actions.long().flatten())
    (values * 0).sum().backward()  # only the attached exploitation loss has a gradient
    routed = set(extractor.last_output.experts)
    for name, expert in extractor.pathway.experts.items():
        grad = expert.output_adapter[0].weight.grad
        has_grad = grad is not None and float(grad.abs().sum()) > 0
        assert has_grad == (name in routed), name


def test_expert_learning_rate_scale_survives_sb3_schedule_updates() -> None:
    model = HubA2C(
        "MlpPolicy",
        make_env("CartPole-v1", 1, 0),
        hub="random:2",
        k=1,
        freeze_experts=False,
        expert_lr_scale=0.1,
        learning_rate=1e-3,
        n_steps=4,
    )
    model.learn(8)
    groups = model.policy.optimizer.param_groups
    assert sorted(g["lr"] for g in groups) == pytest.approx([1e-4, 1e-3])
    trunk_ids = {id(p) for e in find_hub_extractors(model)[0].pathway.experts.values() for p in e.trunk.parameters()}
    scaled = next(g for g in groups if g["lr_scale"] == 0.1)
    assert {id(p) for p in scaled["params"]} == trunk_ids
    assert sum(len(g["params"]) for g in groups) == len(list(model.policy.parameters()))


def test_hub_ppo_saves_and_loads_with_same_actions(tmp_path: Path) -> None:
    env = make_env("BreakoutNoFrameskip-v4", 1, 0)
    model = HubPPO("CnnPolicy", env, hub="random:2", k=1, n_steps=16, batch_size=16, n_epochs=1, seed=0)
    model.learn(16)
    model.save(tmp_path / "hub_ppo.zip")
    loaded = HubPPO.load(tmp_path / "hub_ppo.zip", env=env)
    assert loaded.exploit_coef == model.exploit_coef
    obs = env.reset()
    frames = np.repeat(obs, 3, axis=0)
    frames[1:] = np.random.default_rng(0).integers(0, 255, size=frames[1:].shape, dtype=np.uint8)
    assert np.array_equal(model.predict(frames, deterministic=True)[0], loaded.predict(frames, deterministic=True)[0])
