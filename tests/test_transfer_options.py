"""The transfer options: deliberate starts that survive SB3, meaning maps, output aggregation with the experts'
own heads, kickstarting, the base expert, noise bounds and schedules, the trunk schedule and the presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, DQN, PPO

from hp_rl.hub.adapters import ChannelMap, LinearMap
from hp_rl.hub.meanings import action_index_map, channel_map_weight
from hp_rl.hub.options import PRESETS, apply_preset, pathway_preset
from hp_rl.rl.algorithms import HubPPO
from hp_rl.rl.envs import env_meanings, make_env
from hp_rl.rl.extractor import BASE_EXPERT, HubPathwayExtractor
from hp_rl.rl.pathway_control import find_hub_extractors
from hp_rl.routing import HeadedExpert, NoisyTopKRouter, PathwaySchedule, linear_decay

BREAKOUT = "MinAtar/Breakout-v1"
SEAQUEST = "MinAtar/Seaquest-v1"


def _extractor_kwargs(hub: Any, **extra: Any) -> dict[str, Any]:
    return {
        "features_extractor_class": HubPathwayExtractor,
        "features_extractor_kwargs": {"hub": hub, **extra},
        "net_arch": [],
    }


def _random_experts(count: int, channels: int) -> dict[str, Any]:
    return {
        "experts": [
            {
                "name": f"r{i}",
                "source": "random",
                "arch": "small_frame_cnn",
                "input_shape": [channels, 10, 10],
                "options": {"seed": i},
            }
            for i in range(count)
        ]
    }


@pytest.fixture(scope="module")
def breakout_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SB3 PPO agent on MinAtar Breakout (small-frame CNN, linear heads), lightly trained."""
    from hp_rl.rl.baselines import SmallFrameCNN

    path = tmp_path_factory.mktemp("agents") / "breakout.zip"
    env = make_env(BREAKOUT, n_envs=2, seed=0)
    model = PPO(
        "CnnPolicy",
        env,
        n_steps=64,
        batch_size=64,
        n_epochs=1,
        seed=1,
        policy_kwargs={"features_extractor_class": SmallFrameCNN, "net_arch": []},
    )
    model.learn(128)
    model.save(path)
    return path


def _agent_spec(path: Path, name: str = "breakout") -> dict[str, Any]:
    channels, actions = env_meanings(make_env(BREAKOUT, 1, 0))
    return {
        "name": name,
        "source": "sb3",
        "path": str(path),
        "channel_names": list(channels or ()),
        "action_meanings": list(actions or ()),
    }


# --- defect 1: deliberate starts survive SB3's orthogonal initialisation -------------------------------------
@pytest.mark.parametrize("algo", [PPO, A2C, DQN])
def test_channel_map_keeps_its_average_start_after_sb3_construction(algo: type) -> None:
    env = make_env(SEAQUEST, n_envs=1, seed=0)  # 10 channels into 4-channel experts
    model = algo(
        "CnnPolicy",
        env,
        policy_kwargs=_extractor_kwargs(_random_experts(4, 4), k=2, features_dim=32),
        **({"buffer_size": 100, "learning_starts": 10} if algo is DQN else {}),
    )
    extractor = find_hub_extractors(model)[0]
    for name in extractor.expert_names:
        maps = [m for m in extractor.pathway.experts[name].modules() if isinstance(m, ChannelMap)]
        assert len(maps) == 1
        torch.testing.assert_close(maps[0].weight, torch.full((4, 10, 1, 1), 0.1))


def test_linear_map_keeps_its_identity_start_after_sb3_construction() -> None:
    hub = {"experts": [{"name": "wide", "source": "random", "arch": "mlp", "input_shape": [6], "options": {"seed": 0}}]}
    model = PPO("MlpPolicy", make_env("CartPole-v1", 1, 0), policy_kwargs=_extractor_kwargs(hub, k=1, features_dim=16))
    linear = next(m for m in find_hub_extractors(model)[0].modules() if isinstance(m, LinearMap))
    weight = linear.linear.module.weight
    expected = torch.zeros(6, 4)
    expected[:4, :4] = torch.eye(4)
    torch.testing.assert_close(weight, expected)
    assert not bool(linear.linear.module.bias.any())


# --- defect 3: channels mapped by meaning -------------------------------------------------------------------
def test_channels_are_mapped_by_meaning_between_games() -> None:
    breakout, _ = env_meanings(make_env(BREAKOUT, 1, 0))
    seaquest, _ = env_meanings(make_env(SEAQUEST, 1, 0))
    assert breakout is not None and seaquest is not None
    weight = channel_map_weight(breakout, seaquest)  # (seaquest channels, breakout channels)
    assert weight is not None
    row = {name: weight[i] for i, name in enumerate(seaquest)}
    col = {name: i for i, name in enumerate(breakout)}
    assert row["sub_front"][col["paddle"]] == 1 and row["sub_front"].sum() == 1  # the agent reads the paddle
    assert row["trail"][col["trail"]] == 1 and row["trail"].sum() == 1  # same name
    assert row["friendly_bullet"][col["ball"]] == 1  # projectiles
    assert row["diver"][col["brick"]] == 1  # things to collect or hit
    assert row["oxygen_guage"].sum() == 0  # nothing in Breakout means that


def test_seaquest_target_gets_the_meaning_map_through_hubppo(breakout_agent: Path) -> None:
    model = HubPPO(
        "CnnPolicy",
        make_env(SEAQUEST, 1, 0),
        hub={"experts": [_agent_spec(breakout_agent)]},
        k=1,
        features_dim=32,
        n_steps=16,
        batch_size=16,
    )
    channel_map = next(m for m in find_hub_extractors(model)[0].modules() if isinstance(m, ChannelMap))
    seaquest, _ = env_meanings(make_env(SEAQUEST, 1, 0))
    breakout, _ = env_meanings(make_env(BREAKOUT, 1, 0))
    expected = channel_map_weight(seaquest, breakout)  # (breakout channels, seaquest channels)
    assert expected is not None
    torch.testing.assert_close(channel_map.weight[:, :, 0, 0], expected)


def test_same_meanings_need_no_adapter_and_other_meanings_of_equal_count_get_one() -> None:
    from hp_rl.hub import build_input_adapter
    from hp_rl.hub.architectures import TrunkInfo

    info = TrunkInfo("small_frame_cnn", "image", (4, 10, 10), 128)
    breakout = ("paddle", "ball", "trail", "brick")
    assert build_input_adapter((4, 10, 10), info, "e", breakout, breakout) is None
    adapter = build_input_adapter((4, 10, 10), info, "e", breakout, ("player", "enemy", "trail", "gold"))
    assert adapter is not None and any(isinstance(m, ChannelMap) for m in adapter.modules())


def test_action_maps_need_every_target_action() -> None:
    assert action_index_map(["NOOP", "LEFT", "RIGHT"], ["NOOP", "LEFT", "UP", "RIGHT", "DOWN", "FIRE"]) == [0, 1, 3]
    assert action_index_map(["NOOP", "LEFT", "RIGHT", "FIRE"], ["NOOP", "LEFT", "RIGHT"]) is None


# --- defect 2: noise bounded by the logits' spread, schedules --------------------------------------------------
def _real_frames(env_id: str, count: int) -> torch.Tensor:
    env = make_env(env_id, 8, 0)
    frames = [env.reset()]
    while len(frames) * 8 < count:
        frames.append(env.step(np.array([env.action_space.sample() for _ in range(8)]))[0])
    return torch.as_tensor(np.concatenate(frames)[:count])


def test_noise_cap_bounds_the_std_by_the_spread_of_the_clean_logits() -> None:
    model = PPO(
        "CnnPolicy",
        make_env(BREAKOUT, 2, 0),
        policy_kwargs=_extractor_kwargs(_random_experts(4, 4), k=2, noise_cap=1.0),
    )
    extractor = find_hub_extractors(model)[0]
    obs = _real_frames(BREAKOUT, 256)
    extractor.train()
    routes = extractor.pathway.route(obs)
    spread = routes.clean_logits.std(dim=1, unbiased=False)
    assert bool((routes.noise_std.max(dim=1).values <= spread + 1e-6).all())
    paper = PPO("CnnPolicy", make_env(BREAKOUT, 2, 0), policy_kwargs=_extractor_kwargs(_random_experts(4, 4), k=2))
    unbounded = find_hub_extractors(paper)[0].pathway.route(obs)
    # the paper's learned noise starts about softplus(-1) ~ 0.3, far above the logits' spread on real frames
    noise = float(unbounded.noise_std.detach().mean())
    ratio = noise / float(unbounded.clean_logits.detach().std(dim=1, unbiased=False).mean())
    assert ratio > 10


def test_annealed_noise_is_not_drawn_and_dense_warmup_routes_everything() -> None:
    space = make_env(BREAKOUT, 1, 0).observation_space
    extractor = HubPathwayExtractor(space, _random_experts(4, 4), k=2, noise_anneal=0.5, dense_warmup=0.1)
    extractor.train()
    obs = torch.rand(32, 4, 10, 10).round()
    extractor.set_progress(0.05)
    warm = extractor.pathway.route(obs)
    assert bool((warm.weights > 0).all()) and torch.allclose(warm.weights.sum(1), torch.ones(32))
    extractor.set_progress(0.3)
    noisy = extractor.pathway.route(obs)
    assert int((noisy.weights > 0).sum(1).max()) == 2 and float(noisy.noise_std.max()) > 0
    extractor.set_progress(0.6)
    calls = []
    original = extractor.pathway.noise.draw
    extractor.pathway.noise.draw = lambda *a: calls.append(1) or original(*a)  # type: ignore[method-assign]
    clean = extractor.pathway.route(obs)
    assert not calls and float(clean.noise_std.max()) == 0
    torch.testing.assert_close(clean.indices, clean.clean_logits.topk(2, dim=1).indices)


def test_schedule_fractions_are_validated_and_decay_linearly() -> None:
    assert linear_decay(0.0, 0.5) == 1.0 and linear_decay(0.25, 0.5) == 0.5 and linear_decay(0.9, 0.5) == 0.0
    assert linear_decay(0.9, None) == 1.0
    with pytest.raises(ValueError, match="noise_anneal"):
        PathwaySchedule(noise_anneal=1.5)
    with pytest.raises(ValueError, match="dense_warmup"):
        PathwaySchedule(dense_warmup=-0.1)


# --- base expert -------------------------------------------------------------------------------------------
def test_forced_expert_is_always_routed_beside_exactly_k_others() -> None:
    router = NoisyTopKRouter(5, 2, noise="fixed", noise_std=1.0, num_forced=1)
    clean = torch.randn(64, 5)
    routes = router(clean, None, torch.randn(64, 5))
    nonzero = routes.weights > 0
    assert bool(nonzero[:, 4].all()) and bool((nonzero[:, :4].sum(1) == 2).all())
    torch.testing.assert_close(routes.weights.sum(1), torch.ones(64))
    assert float(routes.noise_std[:, 4].max()) < 1e-5  # the forced expert gets no noise


def test_base_expert_starts_as_sb3_starts_the_plain_network() -> None:
    kwargs = _extractor_kwargs(_random_experts(2, 4), k=1, base_expert=True, features_dim=128)
    model = PPO("CnnPolicy", make_env(BREAKOUT, 1, 0), policy_kwargs=kwargs)
    extractor = find_hub_extractors(model)[0]
    assert extractor.expert_names[-1] == BASE_EXPERT
    base = extractor.pathway.experts[BASE_EXPERT]
    conv = base.inner_trunk.cnn[0].weight.detach().reshape(16, -1)  # type: ignore[union-attr,index]
    # SB3's orthogonal initialisation with gain sqrt(2), not PyTorch's default
    torch.testing.assert_close(conv @ conv.T, 2 * torch.eye(16), atol=1e-4, rtol=0)
    assert all(p.requires_grad for p in base.parameters())
    assert isinstance(base.output_adapter, torch.nn.Identity)  # type: ignore[union-attr]


def test_base_prior_is_the_bar_an_expert_must_clear_and_survives_sb3_construction() -> None:
    hub = _random_experts(2, 4)

    def generator_bias(**options: Any) -> torch.Tensor:
        kwargs = _extractor_kwargs(hub, k=1, base_expert=True, features_dim=128, **options)
        model = PPO("CnnPolicy", make_env(BREAKOUT, 1, 0), policy_kwargs=kwargs, seed=3)
        layer = find_hub_extractors(model)[0].pathway.generator.logits.module
        return layer.bias.detach().clone()  # type: ignore[union-attr]

    plain = generator_bias()
    tilted = generator_bias(prior={"r0": 0.25}, prior_scale=2.0, base_prior=0.5)
    # columns r0, r1, base: r0 starts 0.5 below the base expert, r1 (no evidence) 1.0 below
    torch.testing.assert_close(tilted - plain, torch.tensor([0.5, 0.0, 1.0]))
    with pytest.raises(ValueError, match="base_expert"):
        HubPathwayExtractor(make_env(BREAKOUT, 1, 0).observation_space, hub, k=1, base_prior=0.5)
    with pytest.raises(ValueError, match="base_prior"):
        HubPathwayExtractor(make_env(BREAKOUT, 1, 0).observation_space, hub, k=1, base_expert=True, base_prior=1.5)


# --- output aggregation with the experts' own heads -----------------------------------------------------------
def test_a_single_whole_agent_acts_as_the_agent_it_was_read_from(breakout_agent: Path) -> None:
    agent = PPO.load(breakout_agent, device="cpu")
    env = make_env(BREAKOUT, 2, 5)
    model = HubPPO(
        "CnnPolicy",
        env,
        hub={"experts": [_agent_spec(breakout_agent)]},
        k=1,
        aggregation="output",
        noise="none",
        explore_coef=0.0,
        n_steps=16,
        batch_size=16,
    )
    extractor = find_hub_extractors(model)[0]
    assert extractor.head_sources == {"breakout": "mapped"} and extractor.features_dim == 4
    obs = torch.as_tensor(np.stack([env.reset() for _ in range(4)]).reshape(-1, 4, 10, 10))
    with torch.no_grad():
        ours = model.policy.get_distribution(obs).distribution.probs
        theirs = agent.policy.get_distribution(obs).distribution.probs
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        values = model.policy.predict_values(obs), agent.policy.predict_values(obs)
        torch.testing.assert_close(*values, atol=1e-5, rtol=1e-4)


def test_heads_that_cannot_map_start_fresh(breakout_agent: Path) -> None:
    env = make_env("MinAtar/SpaceInvaders-v1", 1, 0)  # needs FIRE, which Breakout's agent never had
    model = HubPPO(
        "CnnPolicy",
        env,
        hub={"experts": [_agent_spec(breakout_agent)]},
        k=1,
        aggregation="output",
        n_steps=16,
        batch_size=16,
    )
    extractor = find_hub_extractors(model)[0]
    assert extractor.head_sources == {"breakout": "fresh"}
    expert = extractor.pathway.experts["breakout"]
    assert isinstance(expert, HeadedExpert) and expert.pretrained_value and not expert.pretrained_policy


def test_output_aggregation_trains_saves_and_loads(tmp_path: Path, breakout_agent: Path) -> None:
    hub = {"experts": [_agent_spec(breakout_agent), *_random_experts(2, 4)["experts"]]}
    env = make_env(BREAKOUT, 2, 0)
    model = HubPPO(
        "CnnPolicy", env, hub=hub, n_steps=32, batch_size=32, n_epochs=1, seed=0, **pathway_preset("transfer")
    )
    model.learn(128)
    assert model.logger.name_to_value["train/kickstart_kl"] >= 0
    model.save(tmp_path / "m.zip")
    loaded = HubPPO.load(tmp_path / "m.zip", device="cpu")
    obs = env.reset()
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_k_from_prior_routes_one_expert_per_agent_with_evidence_and_survives_save_and_load(tmp_path: Path) -> None:
    from hp_rl.hub.options import PathwayOptionError
    from hp_rl.rl.prior import HEADLESS_PRIOR_CAP, routed_by_prior

    names = ("a", "b", "c")
    assert routed_by_prior({"a": 0.9, "b": 0.7, "c": 0.1}, names, k=2, threshold=0.5) == 2
    assert routed_by_prior({"a": 0.9, "b": 0.7, "c": 0.6}, names, k=2, threshold=0.5) == 2  # at most k
    assert routed_by_prior({"a": 0.9, "b": HEADLESS_PRIOR_CAP}, names, k=2, threshold=0.5) == 1
    assert routed_by_prior({}, names, k=2, threshold=0.5) == 1  # no evidence: still one routed expert
    assert routed_by_prior({"base": 1.0}, names, k=2, threshold=0.5) == 1  # only hub experts count
    env = make_env(BREAKOUT, 2, 0)
    options = {**pathway_preset("transfer"), "n_steps": 16, "batch_size": 16, "n_epochs": 1, "seed": 0}
    assert options["k"] == 2 and options["k_from_prior"] == 0.5
    hub = _random_experts(3, 4)
    obs = torch.rand(64, 4, 10, 10).round()
    for prior, expected in (({"r0": 0.9, "r1": 0.7, "r2": 0.1}, 2), ({"r0": 0.9, "r1": 0.2, "r2": 0.0}, 1)):
        model = HubPPO("CnnPolicy", env, hub=hub, **{**options, "prior": prior})
        extractor = find_hub_extractors(model)[0]
        assert extractor.k == expected
        extractor(obs)
        assert extractor.last_output is not None
        weights = extractor.last_output.routes.weights
        assert bool(((weights > 0).sum(1) == expected + 1).all())  # + the base expert
        torch.testing.assert_close(weights.sum(1), torch.ones(64))
    model.learn(32)
    model.save(tmp_path / "m.zip")
    loaded = HubPPO.load(tmp_path / "m.zip", device="cpu")
    assert find_hub_extractors(loaded)[0].k == 1
    observation = env.reset()
    np.testing.assert_array_equal(
        model.predict(observation, deterministic=True)[0], loaded.predict(observation, deterministic=True)[0]
    )
    without_prior = {key: value for key, value in options.items() if key not in ("prior", "teacher_trust")}
    assert find_hub_extractors(HubPPO("CnnPolicy", env, hub=hub, **without_prior))[0].k == 1
    with pytest.raises(PathwayOptionError, match="k_from_prior"):
        HubPathwayExtractor(env.observation_space, hub, k=2, k_from_prior=1.5)


def test_kickstart_teacher_is_the_pretrained_policy_and_its_weight_decays(breakout_agent: Path) -> None:
    agent = PPO.load(breakout_agent, device="cpu")
    env = make_env(BREAKOUT, 2, 0)
    model = HubPPO(
        "CnnPolicy",
        env,
        hub={"experts": [_agent_spec(breakout_agent)]},
        k=1,
        aggregation="output",
        freeze_experts=False,
        noise="none",
        kickstart_coef=2.0,
        kickstart_fraction=0.5,
        n_steps=16,
        batch_size=16,
    )
    extractor = find_hub_extractors(model)[0]
    extractor.kickstart_active = True
    extractor.train()
    obs = torch.rand(8, 4, 10, 10).round()
    with torch.no_grad():  # move the fine-tuned copy away from the teacher: the teacher must not follow
        for p in extractor.pathway.experts["breakout"].action_head.parameters():
            p.add_(1.0)
    extractor(obs)
    assert extractor.last_teacher is not None
    teacher, mask, trust = extractor.last_teacher
    torch.testing.assert_close(trust, torch.ones(8))  # teacher_trust="uniform": every teacher imitated fully
    with torch.no_grad():
        torch.testing.assert_close(teacher, agent.policy.get_distribution(obs).distribution.probs, atol=1e-5, rtol=1e-4)
    assert bool(mask.all())
    for remaining, weight in ((1.0, 2.0), (0.75, 1.0), (0.5, 0.0), (0.1, 0.0)):
        model._current_progress_remaining = remaining
        assert model._kickstart_weight() == pytest.approx(weight)


def test_teachers_are_trusted_as_far_as_their_prior_says_they_play_the_target(breakout_agent: Path) -> None:
    hub = {"experts": [_agent_spec(breakout_agent, "strong"), _agent_spec(breakout_agent, "weak")]}
    options: dict[str, Any] = {"k": 1, "aggregation": "output", "noise": "none", "n_steps": 16, "batch_size": 16}
    model = HubPPO(
        "CnnPolicy",
        make_env(BREAKOUT, 2, 0),
        hub=hub,
        kickstart_coef=1.0,
        prior={"strong": 0.8, "weak": 0.1},
        teacher_trust="prior",
        **options,
    )
    extractor = find_hub_extractors(model)[0]
    extractor.kickstart_active = True
    extractor(torch.rand(64, 4, 10, 10).round())
    assert extractor.last_teacher is not None and extractor.last_output is not None
    _, mask, trust = extractor.last_teacher
    weights = extractor.last_output.routes.weights.detach()
    assert bool(mask.all())
    torch.testing.assert_close(trust, 0.8 * weights[:, 0] + 0.1 * weights[:, 1])
    with pytest.raises(ValueError, match="teacher_trust='prior' needs a prior"):
        HubPPO("CnnPolicy", make_env(BREAKOUT, 2, 0), hub=hub, kickstart_coef=1.0, teacher_trust="prior", **options)


# --- trunk schedule, generator learning rate, presets ----------------------------------------------------------
def test_trunks_unfreeze_on_schedule_with_their_own_learning_rate() -> None:
    model = HubPPO(
        "CnnPolicy",
        make_env(BREAKOUT, 1, 0),
        hub=_random_experts(2, 4),
        k=1,
        unfreeze_at=0.5,
        expert_lr_scale=0.1,
        generator_lr_scale=3.0,
        n_steps=16,
        batch_size=16,
    )
    extractor = find_hub_extractors(model)[0]
    trunk_params = list(extractor.pathway.experts["r0"].trunk.parameters())
    extractor.set_progress(0.2)
    assert not any(p.requires_grad for p in trunk_params)
    extractor.set_progress(0.6)
    assert all(p.requires_grad for p in trunk_params)
    scales = {group["lr_scale"]: {id(p) for p in group["params"]} for group in model.policy.optimizer.param_groups}
    assert {id(p) for p in trunk_params} <= scales[0.1]
    assert {id(p) for p in extractor.pathway.generator.parameters()} <= scales[3.0]


def test_presets_expand_under_explicit_options() -> None:
    assert set(PRESETS) >= {"paper", "transfer"}
    assert apply_preset({"preset": "paper", "k": 3})["k"] == 3
    assert apply_preset({"preset": "transfer"})["aggregation"] == "output"
    with pytest.raises(ValueError, match="paper"):
        pathway_preset("bogus")


# --- transferability scores and the prior ----------------------------------------------------------------------
def test_logme_prefers_features_that_explain_the_targets() -> None:
    from hp_rl.rl.scoring import logme

    rng = np.random.default_rng(0)
    informative = rng.normal(size=(512, 16))
    targets = informative @ rng.normal(size=16) + 0.1 * rng.normal(size=512)
    assert logme(informative, targets) > logme(rng.normal(size=(512, 16)), targets) + 0.5


def test_hub_score_measures_zero_shot_returns_and_the_prior_tilts_the_generator(
    tmp_path: Path, breakout_agent: Path
) -> None:
    import yaml

    from hp_rl.hub_cli import main as hub_main

    spec = tmp_path / "hub.yml"
    # the agent's provenance says what it achieves at home: the prior is the share of that it keeps here
    agent = {**_agent_spec(breakout_agent), "provenance": {"source_return": 50.0, "random_return": -50.0}}
    hub = {"experts": [agent, *_random_experts(1, 4)["experts"]]}
    spec.write_text(yaml.safe_dump(hub))
    out = tmp_path / "scores.yml"
    assert (
        hub_main(["score", str(spec), "--env", BREAKOUT, "--episodes", "2", "--rollout-steps", "64", "--out", str(out)])
        == 0
    )
    scores = yaml.safe_load(out.read_text())
    assert scores["experts"]["breakout"]["policy_head"] == "mapped"
    assert "zero_shot_return" in scores["experts"]["breakout"] and "zero_shot_return" not in scores["experts"]["r0"]
    assert set(scores["prior"]) == {"breakout", "r0"}
    breakout = scores["experts"]["breakout"]
    kept = (breakout["zero_shot_return"] - scores["random_return"]) / 100.0
    assert breakout["retention"] == pytest.approx(kept, abs=1e-4)
    # the measured evidence, lowered to the share of its competence the record says it keeps
    assert scores["prior"]["breakout"] == breakout["score"] <= max(0.0, kept) + 1e-4
    assert scores["cost"]["steps"] > 0 and "budget" in scores["cost"]
    assert scores["prior"]["r0"] == 0.0  # the only head-less expert: no spread of LogME, no evidence
    space = make_env(BREAKOUT, 1, 0).observation_space
    plain = HubPathwayExtractor(space, hub, k=1)
    tilted = HubPathwayExtractor(space, hub, k=1, prior={"breakout": 1.0}, prior_scale=3.0)
    bias = tilted.pathway.generator.logits.module.bias - plain.pathway.generator.logits.module.bias
    torch.testing.assert_close(bias.detach(), torch.tensor([3.0, 0.0]))
    with pytest.raises(ValueError, match="does not hold"):
        HubPathwayExtractor(space, hub, k=1, prior={"nobody": 1.0})
    assert hub_main(["score", str(spec), "--env", "MinAtar/Nope-v1"]) == 2


def test_scores_do_not_depend_on_the_caller_s_random_state(breakout_agent: Path) -> None:
    from hp_rl.rl.scoring import score_hub

    hub = {"experts": [_agent_spec(breakout_agent)]}
    scores = []
    for caller_seed in (1, 2, 3):  # a training run seeds torch before it scores (prior="auto", the benchmark)
        torch.manual_seed(caller_seed)
        state = torch.get_rng_state()
        scored = score_hub(hub, BREAKOUT, episodes=6, rollout_steps=64, seed=5)
        scored.pop("cost")  # the time it took differs between calls; nothing else may
        scores.append(scored)
        assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left as it was
    assert scores[0] == scores[1] == scores[2]


def test_the_prior_is_measured_evidence_that_an_expert_plays_the_target() -> None:
    from hp_rl.rl.prior import HEADLESS_PRIOR_CAP, prior_from_scores
    from hp_rl.rl.scoring import Play, effect_size, score_from_play

    random = Play((0.0, 1.0, 0.0, 1.0, 0.0, 1.0), 60, 0.0)
    own_task = Play((5.0, 6.0, 4.0, 5.0, 6.0, 4.0), 300, 0.0)
    like_random = Play((1.0, 0.0, 1.0, 0.0, 0.0, 1.0), 60, 0.0)
    # an agent of the target's own task scores 1 with no record of where it came from; one that plays like
    # random scores 0, whatever the other experts of the hub do (absolute evidence, not a ranking)
    assert score_from_play(effect_size(own_task, random), None) == 1.0
    assert score_from_play(effect_size(like_random, random), None) == 0.0
    assert score_from_play(effect_size(random, own_task), None) == 0.0  # below random: no evidence, floored
    # a recorded source return refines the measurement (lowers it to the share kept), never raises it
    assert score_from_play(effect_size(own_task, random), 0.6) == 0.6
    assert score_from_play(effect_size(like_random, random), 0.9) == 0.0
    # returns that never vary (Acrobot's random policy: -500 every episode) still compare
    stuck = Play((-500.0,) * 4, 2000, 0.0)
    assert score_from_play(effect_size(Play((-90.0,) * 4, 360, 0.0), stuck), None) == 1.0
    assert score_from_play(effect_size(stuck, stuck), None) == 0.0
    experts = {
        "relevant": {"score": 1.0},
        "decoy": {"score": 0.0},
        "encoder_a": {"logme": -0.8},
        "encoder_b": {"logme": -0.9},
    }
    prior = prior_from_scores(experts)
    assert prior["relevant"] == 1.0 and prior["decoy"] == 0.0
    assert prior["encoder_a"] == HEADLESS_PRIOR_CAP and prior["encoder_b"] == 0.0


def test_needle_suites_hold_one_or_two_variants_of_the_target_among_other_games() -> None:
    from hp_rl.bench import suites as bench

    for suite, variants in (("needle", 1), ("needle2", 2)):
        for target, experts in bench.SUITES[suite].hubs.items():
            assert target not in experts
            assert sum(e.startswith(target) for e in experts) == variants
            assert len(experts) == variants + 4


def test_physics_variants_change_the_task_and_reject_unknown_constants() -> None:
    env = make_env("CartPole-v1", 1, 0, env_kwargs={"physics": {"length": 1.0, "masspole": 0.3}})
    cartpole = env.envs[0].unwrapped  # type: ignore[attr-defined]
    assert (cartpole.length, cartpole.masspole) == (1.0, 0.3)
    assert cartpole.polemass_length == pytest.approx(0.3) and cartpole.total_mass == pytest.approx(1.3)
    with pytest.raises(ValueError, match=r"no numeric constant 'lenght'.*length"):
        make_env("CartPole-v1", 1, 0, env_kwargs={"physics": {"lenght": 1.0}})
    with pytest.raises(ValueError, match="finite"):
        make_env("Acrobot-v1", 1, 0, env_kwargs={"physics": {"LINK_MASS_1": float("nan")}})
    # variants of one task share action meanings, so their heads map onto the default task
    assert env_meanings(env)[1] == env_meanings(make_env("CartPole-v1", 1, 0))[1]


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_pathway_schedules_follow_training_with_sb3_s_own_algorithms(algo: str) -> None:
    # SB3's DQN / PPO with the extractor in policy_kwargs: the schedules move only with PathwayScheduleCallback.
    from stable_baselines3.common.env_util import make_vec_env

    from hp_rl.rl.callbacks import PathwayScheduleCallback

    def model() -> Any:
        options = {"hub": "random:2", "k": 1, "features_dim": 8, "noise_anneal": 0.5, "dense_warmup": 0.25}
        kwargs = {"features_extractor_class": HubPathwayExtractor, "features_extractor_kwargs": options}
        env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
        if algo == "dqn":
            return DQN("MlpPolicy", env, learning_starts=16, train_freq=4, buffer_size=500, policy_kwargs=kwargs)
        return PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, policy_kwargs=kwargs)

    seen: list[tuple[float, bool]] = []

    class Watch(PathwayScheduleCallback):
        def _on_rollout_start(self) -> None:
            super()._on_rollout_start()
            router = find_hub_extractors(self.model)[0].pathway.router
            seen.append((router.noise_scale, router.dense_active))

    scheduled = model()
    scheduled.learn(256, callback=Watch())
    router = find_hub_extractors(scheduled)[0].pathway.router
    assert seen[0] == (1.0, True)  # the start: full noise, dense warm-up on
    assert seen[-1][0] == 0.0 and not seen[-1][1]  # past half of training: noise annealed away, top-k routing
    assert any(0.0 < scale < 1.0 for scale, _ in seen)  # and linearly in between
    assert router.noise_scale == 0.0
    unscheduled = model()
    unscheduled.learn(256)
    router = find_hub_extractors(unscheduled)[0].pathway.router
    assert router.noise_scale == 1.0 and router.dense_active  # stuck at the start: what the callback is for


@pytest.mark.parametrize(("algo", "scheduled"), [("dqn", True), ("ppo", False), ("a2c", False)])
def test_hp_rl_train_adds_the_schedule_callback_where_the_algorithm_does_not_apply_them(
    tmp_path: Path, algo: str, scheduled: bool
) -> None:
    from hp_rl.rl.callbacks import PathwayScheduleCallback
    from hp_rl.rl.runs import AgentRunFolder, RunConfig
    from hp_rl.rl.training import StopOnSignal, _callbacks

    config = RunConfig(algo=algo, env_id="CartPole-v1", hub="random:2", eval_freq=0, save_freq=0)
    found = _callbacks(config, AgentRunFolder(tmp_path), StopOnSignal(), with_hub=True)
    assert any(isinstance(c, PathwayScheduleCallback) for c in found) is scheduled


@pytest.mark.parametrize("aggregation", ["features", "output"])
def test_value_only_warm_up_trains_the_critic_alone(aggregation: str) -> None:
    from stable_baselines3.common.env_util import make_vec_env

    from hp_rl.rl.algorithms import HubA2C

    def model(warmup: float) -> Any:
        env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
        options = {"k": 1, "features_dim": 8, "freeze_experts": False, "aggregation": aggregation}
        return HubA2C("MlpPolicy", env, hub="random:2", n_steps=8, critic_warmup=warmup, seed=0, **options)

    warm = model(1.0)  # every update a warm-up update
    before = {name: p.detach().clone() for name, p in warm.policy.named_parameters()}
    warm.learn(64)
    moved = {name for name, p in warm.policy.named_parameters() if not torch.equal(p, before[name])}
    critic = {name for name in before if HubA2C.is_critic_parameter(name)}
    assert critic and moved == {name for name in critic if warm.policy.get_parameter(name).requires_grad}
    assert all(p.requires_grad for name, p in warm.policy.named_parameters() if "trunk" in name)  # restored
    after_warmup = model(0.5)
    start = {name: p.detach().clone() for name, p in after_warmup.policy.named_parameters()}
    after_warmup.learn(64)  # 4 updates: 2 of the critic alone, then the whole agent
    changed = {name for name, p in after_warmup.policy.named_parameters() if not torch.equal(p, start[name])}
    assert changed - critic  # the policy, trunks and generator learn once the warm-up is over
