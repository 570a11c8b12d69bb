"""Whole MLP agents as experts: SB3's MLP policies keep a separate critic network beside the actor, and the
expert's value must be that critic's, not a fresh layer on the actor's features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from stable_baselines3 import PPO

from hp_rl.hub.export import ExportItem, export_trunk
from hp_rl.hub.sources import load_expert
from hp_rl.hub.spec import ExpertSpec
from hp_rl.hub.trunks import manifest_entry
from hp_rl.rl.algorithms import HubPPO
from hp_rl.rl.envs import env_meanings, make_env
from hp_rl.rl.pathway_control import find_hub_extractors
from hp_rl.routing import ActorCriticTrunk, HeadedExpert
from hp_rl.routing.fused import lower

CARTPOLE = "CartPole-v1"


@pytest.fixture(scope="module")
def cartpole_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SB3 PPO MlpPolicy agent on CartPole (actor 64-64, critic 64-64), lightly trained."""
    path = tmp_path_factory.mktemp("agents") / "cartpole.zip"
    model = PPO("MlpPolicy", make_env(CARTPOLE, 2, 0), n_steps=64, batch_size=64, n_epochs=2, seed=3, device="cpu")
    model.learn(256)
    model.save(path)
    return path


def _spec(path: Path, name: str = "cartpole") -> dict[str, Any]:
    _, actions = env_meanings(make_env(CARTPOLE, 1, 0))
    return {"name": name, "source": "sb3", "path": str(path), "action_meanings": list(actions or ())}


def _hub_agent(hub: dict[str, Any], **options: Any) -> HubPPO:
    return HubPPO(
        "MlpPolicy",
        make_env(CARTPOLE, 2, 1),
        hub=hub,
        k=1,
        aggregation="output",
        noise="none",
        explore_coef=0.0,
        n_steps=16,
        batch_size=16,
        device="cpu",
        **options,
    )


def _same_policy_and_value(model: PPO, agent: PPO) -> None:
    obs = torch.as_tensor(make_env(CARTPOLE, 8, 7).reset(), dtype=torch.float32)
    obs = obs + torch.randn(obs.shape, generator=torch.Generator().manual_seed(0))  # states off the reset manifold
    with torch.no_grad():
        ours = model.policy.get_distribution(obs).distribution.probs
        theirs = agent.policy.get_distribution(obs).distribution.probs
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            model.policy.predict_values(obs), agent.policy.predict_values(obs), atol=1e-5, rtol=1e-4
        )


def test_an_mlp_agent_acts_and_values_as_the_agent_it_was_read_from(cartpole_agent: Path) -> None:
    agent = PPO.load(cartpole_agent, device="cpu")
    model = _hub_agent({"experts": [_spec(cartpole_agent)]})
    extractor = find_hub_extractors(model)[0]
    expert = extractor.pathway.experts["cartpole"]
    assert isinstance(expert, HeadedExpert) and expert.pretrained_policy and expert.pretrained_value
    _same_policy_and_value(model, agent)
    # The critic is frozen with the trunk, and the hub manifest still names the checkpoint it came from.
    assert isinstance(expert.inner_trunk, ActorCriticTrunk)
    assert not any(p.requires_grad for p in expert.inner_trunk.critic.parameters())
    entry = manifest_entry("cartpole", expert)
    assert entry["source"] == "sb3" and entry["arch"] == "mlp" and entry["critic_parameters"] == 4 * 64 + 64 * 64 + 128
    # Two towers are not one chain of operations: fused execution leaves this expert to sparse dispatch.
    assert lower(expert) is None


def test_a_fine_tuned_critic_learns_and_the_kickstart_teacher_reads_the_actor_only(cartpole_agent: Path) -> None:
    model = _hub_agent({"experts": [_spec(cartpole_agent)]}, freeze_experts=False, kickstart_coef=1.0)
    expert = find_hub_extractors(model)[0].pathway.experts["cartpole"]
    assert isinstance(expert, HeadedExpert) and isinstance(expert.inner_trunk, ActorCriticTrunk)
    critic = expert.inner_trunk.critic
    before = [p.detach().clone() for p in critic.parameters()]
    obs = torch.zeros(3, 4)
    teacher = expert.teacher_probs(obs)
    assert teacher is not None and teacher.shape == (3, 2)
    torch.testing.assert_close(teacher, expert(obs)[:, :2])
    model.learn(32)
    assert all(p.requires_grad for p in critic.parameters())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, critic.parameters(), strict=True))


def test_the_critic_travels_through_the_safetensors_export(cartpole_agent: Path, tmp_path: Path) -> None:
    original = load_expert(ExpertSpec(name="cartpole", source="sb3", path=str(cartpole_agent)))
    assert original.heads is not None and len(original.heads.critic_layers) == 2
    item = ExportItem("cartpole", original, action_meanings=("CartPole#0", "CartPole#1"))
    spec = export_trunk(item, tmp_path, "float32")
    exported = load_expert(ExpertSpec(name="cartpole", source="safetensors", path=str(tmp_path / spec.path)))
    assert exported.heads is not None
    for (w0, b0), (w1, b1) in zip(original.heads.critic_layers, exported.heads.critic_layers, strict=True):
        assert torch.equal(w0, w1) and torch.equal(b0, b1)
    hub = {"experts": [{"name": "cartpole", "source": "safetensors", "path": str(tmp_path / spec.path),
                        "action_meanings": ["CartPole#0", "CartPole#1"]}]}  # fmt: skip
    _same_policy_and_value(_hub_agent(hub), PPO.load(cartpole_agent, device="cpu"))
