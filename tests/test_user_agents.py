"""Agents as users bring them: SB3 zips by path (bare, in rl-zoo folders, in hp_rl run folders), scored on the
target before training, the one that plays it routed and the others not, through the command line's defaults."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from hp_rl.hub import load_expert, parse_hub
from hp_rl.hub.origin import read_agent_origin
from hp_rl.hub.pickle_numbers import PickleReadError, read_pickle_numbers
from hp_rl.hub.sb3_zip import read_sb3_expert
from hp_rl.rl.agent_meanings import learn_task_meanings
from hp_rl.rl.algorithms import HubPPO
from hp_rl.rl.envs import make_env
from hp_rl.rl.extractor import BASE_EXPERT
from hp_rl.rl.pathway_control import find_hub_extractors
from hp_rl.rl.scoring import score_hub
from hp_rl.routing import HeadedExpert
from hp_rl.train import main as train_main


def _linear_agent(env_id: str, rows: list[list[float]], path: Path, **kwargs: Any) -> Path:
    """A plain SB3 PPO agent (``net_arch=[]``: its logits are linear in the observation) whose policy is the given
    action-logit rows, saved with ``model.save()``: a deliberate policy instead of a trained one."""
    model = PPO("MlpPolicy", make_vec_env(env_id, 1), policy_kwargs={"net_arch": []}, device="cpu", **kwargs)
    with torch.no_grad():
        model.policy.action_net.weight.copy_(torch.tensor(rows))
        model.policy.action_net.bias.zero_()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


# Acrobot: torque along the second joint's velocity pumps energy in (about -80 a episode; random: -500).
# Observation: cos1, sin1, cos2, sin2, velocity1, velocity2; actions: torque -1, 0, +1.
ACROBOT_ROWS = [[0, 0, 0, 0, 0, -20], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 20]]
# MountainCar: push along the velocity (about -145; random: -200 every episode). Observation: position, velocity.
MOUNTAINCAR_ROWS = [[0, -2000], [0, 0], [0, 2000]]
# CartPole: push towards where the pole falls (about 500; random: about 22).
CARTPOLE_ROWS = [[0, 0, -20, -20], [0, 0, 20, 20]]


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("agents")
    return {
        "acrobot": _linear_agent("Acrobot-v1", ACROBOT_ROWS, root / "bare" / "acrobot.zip"),
        "mountaincar": _linear_agent("MountainCar-v0", MOUNTAINCAR_ROWS, root / "bare" / "mountaincar.zip"),
        "cartpole": _linear_agent("CartPole-v1", CARTPOLE_ROWS, root / "bare" / "cartpole.zip"),
    }


def _rl_zoo_folder(root: Path, agent: Path, env_id: str, normalize: bool) -> Path:
    """``<root>/ppo/<env>_1/<env>.zip`` with ``<env>/args.yml`` and ``config.yml`` as rl-baselines3-zoo writes
    them (``OrderedDict`` YAML tags), and ``vecnormalize.pkl`` when the agent normalised observations."""
    from collections import OrderedDict

    run = root / "ppo" / f"{env_id}_1"
    params = run / env_id
    params.mkdir(parents=True)
    (run / f"{env_id}.zip").write_bytes(agent.read_bytes())
    args = OrderedDict([("algo", "ppo"), ("env", env_id), ("env_kwargs", {}), ("seed", 0)])
    (params / "args.yml").write_text(yaml.dump(args))
    config = OrderedDict([("n_envs", 8), ("normalize", normalize), ("policy", "MlpPolicy")])
    (params / "config.yml").write_text(yaml.dump(config))
    assert "!!python/object/apply:collections.OrderedDict" in (params / "args.yml").read_text()
    if normalize:
        venv = VecNormalize(make_vec_env(env_id, 2, seed=0), clip_obs=5.0)
        venv.reset()
        for _ in range(40):
            venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
        venv.save(str(params / "vecnormalize.pkl"))
    return run / f"{env_id}.zip"


# --- reading what the files say ----------------------------------------------------------------------------------
def test_a_bare_zip_tells_its_spaces_and_nothing_else(agents: dict[str, Path]) -> None:
    origin = read_agent_origin(agents["acrobot"])
    assert origin.env_id is None and origin.told_by == () and origin.normalization is None
    assert origin.observation_shape == (6,) and origin.num_actions == 3


def test_an_rl_zoo_folder_names_the_task_and_its_observation_statistics(
    agents: dict[str, Path], tmp_path: Path
) -> None:
    zipped = _rl_zoo_folder(tmp_path / "logs", agents["cartpole"], "CartPole-v1", normalize=True)
    origin = read_agent_origin(zipped)
    assert origin.env_id == "CartPole-v1" and origin.algo == "ppo"
    assert any("args.yml" in said for said in origin.told_by)
    assert origin.normalization is not None and origin.normalization.clip == 5.0
    # the expert normalises its input exactly as the agent's VecNormalize did
    saved = VecNormalize.load(str(zipped.parent / "CartPole-v1" / "vecnormalize.pkl"), make_vec_env("CartPole-v1", 1))
    expert = load_expert(parse_hub(str(zipped)).experts[0], (4,))
    observations = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32) * 3
    assert expert.normalizer is not None
    ours = expert.normalizer(torch.as_tensor(observations)).numpy()
    np.testing.assert_allclose(ours, saved.normalize_obs(observations), rtol=1e-5, atol=1e-5)
    # and the task's meanings follow from the id, so the head maps by meaning
    assert learn_task_meanings(expert).action_meanings == ("CartPole#0", "CartPole#1")


def test_an_hp_rl_run_folder_names_the_task(tmp_path: Path) -> None:
    code = train_main(
        [
            *("--env", "CartPole-v1", "--hub", "none", "-n", "64", "--n-envs", "1", "--set", "n_steps=32"),
            *("--tensorboard-log", str(tmp_path), "--no-progress", "--eval-freq", "0"),
        ]
    )
    assert code == 0
    (model,) = tmp_path.glob("*/model.zip")
    origin = read_agent_origin(model)
    assert origin.env_id == "CartPole-v1" and origin.algo == "ppo"
    assert any("hp_rl run folder" in said for said in origin.told_by)


def test_the_statistics_reader_builds_numbers_only(tmp_path: Path) -> None:
    import os

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, ("touch ran",))

    bad = tmp_path / "vecnormalize.pkl"
    bad.write_bytes(pickle.dumps({"obs_rms": Payload()}))
    with pytest.raises(PickleReadError, match=r"system, which is neither data"):
        read_pickle_numbers(bad)
    assert not Path("ran").exists()
    objects = tmp_path / "objects.pkl"
    objects.write_bytes(pickle.dumps(np.array([object()], dtype=object)))
    with pytest.raises(PickleReadError, match="not a number type"):
        read_pickle_numbers(objects)
    # beside an rl-zoo config, such a file is not read at all: the agent has no statistics, nothing ran
    run = tmp_path / "ppo" / "CartPole-v1_1"
    (run / "CartPole-v1").mkdir(parents=True)
    _linear_agent("CartPole-v1", CARTPOLE_ROWS, run / "CartPole-v1.zip")
    (run / "CartPole-v1" / "args.yml").write_text("env: CartPole-v1\nalgo: ppo\n")
    (run / "CartPole-v1" / "vecnormalize.pkl").write_bytes(bad.read_bytes())
    assert read_agent_origin(run / "CartPole-v1.zip").normalization is None


# --- heads of every kind of agent --------------------------------------------------------------------------------
class _Frames(gym.Env[np.ndarray, int]):
    """Small image observations for CnnPolicy agents (36x36 is NatureCNN's smallest input)."""

    observation_space = gym.spaces.Box(0, 255, (36, 36, 3), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self.observation_space.sample(), 0.0, False, False, {}


@pytest.mark.parametrize(
    ("algo", "policy", "net_arch"),
    [
        (PPO, "MlpPolicy", None),
        (PPO, "MlpPolicy", []),
        (A2C, "MlpPolicy", {"pi": [32], "vf": [16]}),
        (DQN, "MlpPolicy", None),
        (DQN, "MlpPolicy", []),
        (PPO, "CnnPolicy", None),
        (A2C, "CnnPolicy", None),
        (DQN, "CnnPolicy", None),
    ],
)
def test_every_kind_of_agent_arrives_with_a_head_that_computes_its_own_policy(
    tmp_path: Path, algo: Any, policy: str, net_arch: Any
) -> None:
    image = policy == "CnnPolicy"
    env = make_vec_env(_Frames, 1) if image else make_vec_env("CartPole-v1", 1)
    kwargs: dict[str, Any] = {"buffer_size": 64} if algo is DQN else {}
    model = algo(policy, env, policy_kwargs={} if net_arch is None else {"net_arch": net_arch}, device="cpu", **kwargs)
    path = tmp_path / "agent.zip"
    model.save(path)
    trunk, _, _, heads = read_sb3_expert(path)
    assert heads is not None
    obs = np.stack([env.observation_space.sample() for _ in range(5)])
    tensor, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        if algo is DQN:  # the Q-values are the head's logits
            expected = model.q_net(tensor)
        else:
            expected = model.policy.get_distribution(tensor).distribution.logits
        features = trunk(tensor.float() / 255.0 if image else tensor)
        logits = features @ heads.action_weight.T + heads.action_bias
    probabilities = torch.softmax(logits, 1)
    torch.testing.assert_close(probabilities, torch.softmax(expected, 1), rtol=1e-4, atol=1e-5)
    assert (heads.value_weight is None) == (algo is DQN)  # DQN keeps no state-value layer: that head starts fresh


# --- scoring without provenance ----------------------------------------------------------------------------------
def test_the_own_task_agent_scores_about_1_and_another_task_s_about_0(agents: dict[str, Path]) -> None:
    hub = f"{agents['acrobot']},{agents['mountaincar']}"
    scores = score_hub(hub, "MountainCar-v0", episodes=4, seed=3)
    own, other = scores["experts"]["mountaincar"], scores["experts"]["acrobot"]
    # bare zips: nothing names their tasks; both have MountainCar's three actions, so both heads map one to one
    assert own["policy_head"] == other["policy_head"] == "one-to-one"
    assert own["zero_shot_return"] > scores["random_return"] + 20
    # the Acrobot agent reads MountainCar's position and velocity as its first two inputs: it plays like random
    assert scores["prior"]["mountaincar"] == 1.0 and scores["prior"]["acrobot"] <= 0.1
    assert scores["cost"]["steps"] <= 3 * 5_000 and scores["cost"]["seconds"] > 0


def test_the_cli_finds_routes_and_reports_the_agent_that_plays_the_target(
    agents: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = f"{agents['acrobot']},{agents['mountaincar']},{agents['cartpole']}"
    code = train_main(
        [
            *("--env", "MountainCar-v0", "--hub", hub, "-n", "256", "--tensorboard-log", str(tmp_path)),
            *("--no-progress", "--eval-freq", "0", "--set", "n_steps=32"),
        ]
    )
    assert code == 0
    out = capsys.readouterr()
    assert "preset=transfer" in out.err + out.out
    (folder,) = tmp_path.iterdir()
    prior = yaml.safe_load((folder / "prior.yml").read_text())
    rows = {row["expert"]: row for row in prior["experts"]}
    assert prior["experts"][0]["expert"] == "mountaincar" and rows["mountaincar"]["routed"]
    assert not rows["acrobot"]["routed"] and "score" in rows["acrobot"]["why_not"]
    assert rows["cartpole"]["head"] == "fresh" and not rows["cartpole"]["routed"]  # two actions, the target three
    assert "mountaincar" in out.out and "one-to-one" in out.out  # the table on the console
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in folder.glob("**/events.out.tfevents.*") if "experts" not in p.parts}
    board = EventAccumulator(str(events), size_guidance={"tensors": 0})
    board.Reload()
    (text,) = board.Tensors("hub/prior/text_summary")  # and the same table in TensorBoard's Text tab
    assert b"mountaincar" in text.tensor_proto.string_val[0] and b"routed" in text.tensor_proto.string_val[0]
    run_config = yaml.safe_load((folder / "config.yml").read_text())
    assert run_config["hub_kwargs"]["k_from_prior"] == 0.5 and run_config["hub_kwargs"]["freeze_experts"] is False
    # the run keeps the measured prior, so a resume rebuilds the same pathway without scoring again
    assert run_config["hub_kwargs"]["prior"] == {name: row["score"] for name, row in rows.items()}
    assert train_main(["--resume", str(folder), "-n", "512", "--no-progress"]) == 0
    resumed = capsys.readouterr()
    assert "Resuming" in resumed.out and "Scoring" not in resumed.out + resumed.err


def test_with_no_agent_above_the_bar_the_base_acts_alone(agents: dict[str, Path]) -> None:
    env = make_env("MountainCar-v0", 2, 0)
    model = HubPPO("MlpPolicy", env, hub=str(agents["acrobot"]), preset="auto", n_steps=32, batch_size=32)
    (extractor,) = find_hub_extractors(model)
    assert extractor.expert_names == (BASE_EXPERT,) and extractor.k == 0
    assert set(extractor.unrouted) == {"acrobot"}
    assert model.prior_scores is not None and model.prior_scores["prior"]["acrobot"] <= 0.1
    calls: list[int] = []
    extractor.pathway.generator.register_forward_hook(lambda *_: calls.append(1))
    model.learn(64)  # it trains as the plain network would, and nothing is spent choosing routes
    assert not calls
    assert extractor.last_output is not None and torch.all(extractor.last_output.routes.weights == 1.0)
    env.close()


def test_preset_auto_uses_the_whole_agent_and_keeps_its_head(agents: dict[str, Path]) -> None:
    env = make_env("MountainCar-v0", 2, 0)
    hub = f"{agents['acrobot']},{agents['mountaincar']}"
    model = HubPPO("MlpPolicy", env, hub=hub, preset="auto", n_steps=32, batch_size=32)
    (extractor,) = find_hub_extractors(model)
    assert extractor.expert_names == ("mountaincar", BASE_EXPERT) and extractor.k == 1
    expert = extractor.pathway.experts["mountaincar"]
    assert isinstance(expert, HeadedExpert)
    # the deliberate head survives SB3's initialisation
    torch.testing.assert_close(
        expert.action_head.module.weight.detach(), torch.tensor(MOUNTAINCAR_ROWS, dtype=torch.float32)
    )
    env.close()


def test_a_lone_zip_of_the_target_s_own_task_is_found_and_routed(agents: dict[str, Path], tmp_path: Path) -> None:
    code = train_main(
        [
            *("--env", "CartPole-v1", "--hub", str(agents["cartpole"]), "-n", "64", "--n-envs", "1"),
            *("--set", "n_steps=32", "--tensorboard-log", str(tmp_path), "--no-progress", "--eval-freq", "0"),
        ]
    )
    assert code == 0
    (folder,) = tmp_path.iterdir()
    (row,) = yaml.safe_load((folder / "prior.yml").read_text())["experts"]
    assert row["expert"] == "cartpole" and row["head"] == "one-to-one" and row["score"] == 1.0 and row["routed"]


def test_statistics_pickled_beside_the_old_gym_package_read_without_it(tmp_path: Path) -> None:
    import sys
    import types

    from stable_baselines3.common.running_mean_std import RunningMeanStd

    # an old gym's Box, as a VecNormalize saved under gym 0.21 pickles its observation space; gym is not installed
    box_module = types.ModuleType("gym.spaces.box")

    class Box:
        def __init__(self) -> None:
            self.low, self.high, self.shape = np.full(4, -np.inf), np.full(4, np.inf), (4,)

    Box.__module__, Box.__qualname__ = "gym.spaces.box", "Box"
    box_module.Box = Box  # type: ignore[attr-defined]
    for name in ("gym", "gym.spaces", "gym.spaces.box"):
        sys.modules[name] = box_module if name == "gym.spaces.box" else types.ModuleType(name)
    try:
        rms = RunningMeanStd(shape=(4,))
        rms.update(np.random.default_rng(1).normal(2.0, 3.0, size=(50, 4)))
        saved = {"norm_obs": True, "obs_rms": rms, "observation_space": Box(), "clip_obs": 10.0, "epsilon": 1e-8}
        (tmp_path / "vecnormalize.pkl").write_bytes(pickle.dumps(saved))
    finally:
        for name in ("gym", "gym.spaces", "gym.spaces.box"):
            del sys.modules[name]
    _linear_agent("CartPole-v1", CARTPOLE_ROWS, tmp_path / "agent.zip")
    origin = read_agent_origin(tmp_path / "agent.zip")
    assert origin.normalization is not None
    np.testing.assert_allclose(origin.normalization.mean, rms.mean)
    np.testing.assert_allclose(origin.normalization.var, rms.var)


def test_an_agent_whose_files_name_another_variant_is_measured_at_home(agents: dict[str, Path], tmp_path: Path) -> None:
    # an hp_rl run folder of a long-pole CartPole: its config names the variant, no record of its return
    run = tmp_path / "ppo_CartPole-v1_nohub_1"
    run.mkdir()
    (run / "model.zip").write_bytes(agents["cartpole"].read_bytes())
    config = {"algo": "ppo", "env_id": "CartPole-v1", "hub": None, "env_kwargs": {"physics": {"length": 1.0}}}
    (run / "config.yml").write_text(yaml.safe_dump(config))
    scores = score_hub(str(run / "model.zip"), "CartPole-v1", episodes=4, seed=3)
    entry = scores["experts"]["ppo_CartPole-v1_nohub_1"]
    assert entry["policy_head"] == "mapped" and entry["task"] == "CartPole-v1"
    assert entry["source_return"] > entry["source_random_return"] + 100  # it plays its own variant
    kept = (entry["zero_shot_return"] - scores["random_return"]) / (
        entry["source_return"] - entry["source_random_return"]
    )
    assert entry["retention"] == pytest.approx(kept, abs=1e-3)
    assert scores["prior"]["ppo_CartPole-v1_nohub_1"] == pytest.approx(min(1.0, max(0.0, kept)), abs=1e-3)


def test_discrete_targets_call_for_transfer_whatever_the_hub_holds(agents: dict[str, Path]) -> None:
    from hp_rl.rl.agent_meanings import choose_preset

    env = make_env("Acrobot-v1", 1, 0)
    assert choose_preset(str(agents["acrobot"]), env)[0] == "transfer"  # its head reaches Acrobot's actions
    name, why = choose_preset(str(agents["cartpole"]), env)  # a whole agent whose head does not: scored, not routed
    assert name == "transfer" and "no head reaches" in why
    name, why = choose_preset("random:2", env)  # encoders only: scored, routed only on evidence
    assert name == "transfer" and "a hub of encoders" in why
    env.close()
    continuous = make_env("Pendulum-v1", 1, 0)
    assert choose_preset("random:2", continuous)[0] == "paper"  # no policy head maps onto continuous actions
    continuous.close()
