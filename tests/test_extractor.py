"""HubPathwayExtractor inside real SB3 algorithms and environments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, DQN, PPO

from hp_rl.hub import AdapterError, CheckpointError, HubSpecError, read_sb3_trunk
from hp_rl.rl.envs import make_env
from hp_rl.rl.extractor import HubPathwayExtractor
from hp_rl.rl.pathway_control import find_hub_extractors, routing_noise
from hp_rl.routing import AdaptedExpert


def hub_kwargs(hub: object, **extra: object) -> dict[str, object]:
    return {
        "features_extractor_class": HubPathwayExtractor,
        "features_extractor_kwargs": {"hub": hub, **extra},
        "net_arch": [],
    }


@pytest.fixture(scope="module")
def breakout_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SB3 PPO CnnPolicy checkpoint on Breakout frames, lightly trained so it differs from init."""
    path = tmp_path_factory.mktemp("zips") / "ppo_breakout.zip"
    env = make_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0)
    model = PPO("CnnPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=1)
    model.learn(32)
    model.save(path)
    return path


def test_pretrained_trunks_survive_ortho_init(breakout_zip: Path) -> None:
    expected, _, _ = read_sb3_trunk(breakout_zip)
    env = make_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0)
    model = PPO("CnnPolicy", env, policy_kwargs=hub_kwargs([str(breakout_zip), "random:nature_cnn"], k=1), seed=3)
    assert model.policy.ortho_init
    extractor = find_hub_extractors(model)[0]
    expert = extractor.pathway.experts["ppo_breakout"]
    assert isinstance(expert, AdaptedExpert)
    trunk_state = expert.trunk.module.trunk.state_dict()
    for key, value in expected.state_dict().items():
        assert torch.equal(trunk_state[key], value), key


def test_routing_is_consistent_between_rollout_and_update() -> None:
    env = make_env("CartPole-v1", n_envs=2, seed=0)
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=0.0,
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        seed=0,
        policy_kwargs=hub_kwargs("random:4", k=2, noise="learned"),
    )
    model.learn(128)
    logged = model.logger.name_to_value
    assert logged["train/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert logged["train/clip_fraction"] == 0.0


def test_update_sees_rollout_noise_on_atari_frames() -> None:
    env = make_env("BreakoutNoFrameskip-v4", n_envs=2, seed=0)
    model = PPO(
        "CnnPolicy",
        env,
        learning_rate=0.0,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=0,
        policy_kwargs=hub_kwargs("random:3", k=1, noise="fixed", noise_std=3.0),
    )
    model.learn(32)
    assert model.logger.name_to_value["train/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert model.logger.name_to_value["train/clip_fraction"] == 0.0


def test_noise_is_redrawn_for_each_rollout() -> None:
    env = make_env("CartPole-v1", n_envs=1, seed=0)
    model = A2C("MlpPolicy", env, n_steps=4, seed=0, policy_kwargs=hub_kwargs("random:3", k=1))
    extractor = find_hub_extractors(model)[0]
    model.learn(16)
    assert extractor.pathway.noise.epoch >= 3


def test_exploration_loss_reaches_the_generator_in_vanilla_sb3() -> None:
    env = make_env("CartPole-v1", n_envs=1, seed=0)
    obs = torch.randn(16, 4)
    grads = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        model = PPO("MlpPolicy", env, seed=0, policy_kwargs=hub_kwargs("random:4", k=1, explore_coef=coef))
        extractor = find_hub_extractors(model)[0]
        extractor.train()
        (extractor(obs) * 0.0).sum().backward()  # the task loss contributes nothing
        grads[coef] = extractor.pathway.generator.logits.module.weight.grad
    assert grads[0.0] is None or float(grads[0.0].abs().sum()) == 0.0
    assert grads[1.0] is not None and float(grads[1.0].abs().sum()) > 0.0


def test_frozen_experts_unchanged_adapters_and_generator_trained() -> None:
    env = make_env("CartPole-v1", n_envs=2, seed=0)
    model = PPO(
        "MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=2, seed=0, policy_kwargs=hub_kwargs("random:3", k=2)
    )
    extractor = find_hub_extractors(model)[0]
    before = {n: p.detach().clone() for n, p in extractor.named_parameters()}
    model.learn(64)
    after = dict(extractor.named_parameters())
    trunk_keys = [n for n in before if ".trunk." in n]
    assert trunk_keys and all(torch.equal(before[n], after[n]) for n in trunk_keys)
    assert any(not torch.equal(before[n], after[n]) for n in before if "output_adapter" in n)
    assert any(not torch.equal(before[n], after[n]) for n in before if "generator" in n)


def test_images_and_vectors_and_mixed_feature_sizes(tmp_path: Path) -> None:
    hub = {
        "experts": [
            {"name": "wide", "source": "random", "arch": "nature_cnn", "features_dim": 512},
            {"name": "narrow", "source": "random", "arch": "nature_cnn", "features_dim": 64},
            {"name": "small_frames", "source": "random", "arch": "nature_cnn", "input_shape": [2, 42, 42]},
        ]
    }
    env = make_env("BreakoutNoFrameskip-v4", n_envs=2, seed=0)
    model = PPO(
        "CnnPolicy", env, n_steps=8, batch_size=16, n_epochs=1, policy_kwargs=hub_kwargs(hub, k=3, features_dim=32)
    )
    model.learn(16)
    extractor = find_hub_extractors(model)[0]
    assert extractor.features_dim == 32
    assert extractor.pathway(torch.rand(5, 4, 84, 84)).features.shape == (5, 32)
    vector = PPO("MlpPolicy", make_env("CartPole-v1", 1, 0), policy_kwargs=hub_kwargs("random:2", k=1))
    assert find_hub_extractors(vector)[0](torch.zeros(3, 4)).shape == (3, 256)


def test_save_load_gives_the_same_action(tmp_path: Path) -> None:
    env = make_env("CartPole-v1", n_envs=1, seed=0)
    # Strong noise (k=1) makes routing, and so actions, depend on the noise state being restored too.
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        seed=0,
        policy_kwargs=hub_kwargs("random:3", k=1, noise="fixed", noise_std=5.0),
    )
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip", env=env)
    obs = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    with routing_noise(model, False), routing_noise(loaded, False):
        assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_one_hub_for_separate_actor_and_critic_and_dqn_target() -> None:
    env = make_env("CartPole-v1", n_envs=1, seed=0)
    model = PPO("MlpPolicy", env, policy_kwargs={**hub_kwargs("random:2", k=1), "share_features_extractor": False})
    pi, vf = model.policy.pi_features_extractor, model.policy.vf_features_extractor
    assert pi is not vf
    for name in pi.expert_names:
        assert pi.pathway.experts[name].trunk.module is vf.pathway.experts[name].trunk.module
    assert len(find_hub_extractors(model)) == 2
    dqn = DQN("MlpPolicy", env, policy_kwargs={**hub_kwargs("random:2", k=1)}, learning_starts=0)
    online, target = dqn.policy.q_net.features_extractor, dqn.policy.q_net_target.features_extractor
    for name in online.expert_names:
        assert online.pathway.experts[name].trunk.module is target.pathway.experts[name].trunk.module
    assert find_hub_extractors(dqn) == [online]
    tuned = PPO(
        "MlpPolicy",
        env,
        policy_kwargs={**hub_kwargs("random:2", k=1, freeze_experts=False), "share_features_extractor": False},
    )
    a, b = tuned.policy.pi_features_extractor, tuned.policy.vf_features_extractor
    assert a.pathway.experts["random0"].trunk.module is not b.pathway.experts["random0"].trunk.module


def test_frozen_batchnorm_stays_eval_under_set_training_mode(tmp_path: Path) -> None:
    trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU())
    path = tmp_path / "bn.pt"
    torch.jit.save(torch.jit.script(trunk), str(path), _extra_files={"facts.json": '{"features_dim": 8}'})
    env = make_env("CartPole-v1", n_envs=1, seed=0)
    model = PPO("MlpPolicy", env, policy_kwargs=hub_kwargs(str(path), k=1))
    model.policy.set_training_mode(True)
    expert = find_hub_extractors(model)[0].pathway.experts["bn"]
    assert not any(m.training for m in expert.trunk.modules())
    assert expert.output_adapter.training


def test_bad_hubs_give_clear_errors(tmp_path: Path) -> None:
    env = make_env("CartPole-v1", n_envs=1, seed=0)
    with pytest.raises(ValueError, match=r"k=3 is out of range .* 1 <= k <= 2"):
        PPO("MlpPolicy", env, policy_kwargs=hub_kwargs("random:2", k=3))
    with pytest.raises(ValueError, match="option k: 0 is not accepted"):
        PPO("MlpPolicy", env, policy_kwargs=hub_kwargs("random:2", k=0))
    with pytest.raises(AdapterError, match="expects images"):
        PPO(
            "MlpPolicy",
            env,
            policy_kwargs=hub_kwargs(["random:nature_cnn"], k=1)
            | {
                "features_extractor_kwargs": {
                    "hub": {
                        "experts": [
                            {"name": "cnn", "source": "random", "arch": "nature_cnn", "input_shape": [4, 84, 84]}
                        ]
                    },
                    "k": 1,
                }
            },
        )
    with pytest.raises(HubSpecError, match=r"missing\.zip does not exist"):  # the file, before k is checked
        PPO("MlpPolicy", env, policy_kwargs=hub_kwargs(str(tmp_path / "missing.zip"), k=2))
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="not a valid zip"):
        PPO("MlpPolicy", env, policy_kwargs=hub_kwargs(str(corrupt), k=1))


def test_cartpole_expert_adapts_to_a_different_state_size(tmp_path: Path) -> None:
    acrobot = PPO("MlpPolicy", make_env("Acrobot-v1", 1, 0), seed=0)
    acrobot.save(tmp_path / "acrobot.zip")
    env = make_env("CartPole-v1", n_envs=1, seed=0)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        policy_kwargs=hub_kwargs(str(tmp_path / "acrobot.zip"), k=1),
    )
    model.learn(16)
    expert = find_hub_extractors(model)[0].pathway.experts["acrobot"]
    assert expert.input_adapter.linear.module.in_features == 4
    assert expert.input_adapter.linear.module.out_features == 6
