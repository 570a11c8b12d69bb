"""Hyperparameter files and --set overrides."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
from stable_baselines3.common.utils import LinearSchedule

from hp_rl.rl.hyperparams import ConfigError, apply_overrides, load_hyperparams, parse_overrides, resolve_hyperparams


def test_overrides_are_parsed_as_yaml_values_never_evaluated() -> None:
    parsed = parse_overrides(["lr=3e-4", "n_steps=256", "policy_kwargs.net_arch=[64, 64]", "name=__import__('os')"])
    assert parsed == {"lr": 3e-4, "n_steps": 256, "policy_kwargs.net_arch": [64, 64], "name": "__import__('os')"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["n_steps"])


def test_dotted_overrides_and_rl_zoo_values() -> None:
    params = load_hyperparams("ppo", "atari")
    assert params["n_envs"] == 8 and params["batch_size"] == 256 and params["clip_range"] == "lin_0.1"
    merged = apply_overrides(params, {"policy_kwargs.net_arch": [32], "n_epochs": 2})
    assert merged["policy_kwargs"] == {"net_arch": [32]} and merged["n_epochs"] == 2
    resolved = resolve_hyperparams(load_hyperparams("a2c", "atari"))
    assert resolved["policy_kwargs"]["optimizer_class"].__name__ == "RMSpropTFLike"
    schedule = resolve_hyperparams(params)["learning_rate"]
    assert isinstance(schedule, LinearSchedule) and schedule(1.0) == pytest.approx(2.5e-4) and schedule(0.0) == 0.0
    with pytest.raises(ConfigError, match="unknown optimizer"):
        resolve_hyperparams({"policy_kwargs": {"optimizer_class": "Adamm"}})


def test_one_list_of_hub_pathway_options(capsys: pytest.CaptureFixture[str]) -> None:
    # The options classes are the one list: every field has a rule and a meaning, the extractor takes exactly
    # them, --hub-options and the guide's table show every one: the help cannot drift from the code.
    from dataclasses import fields

    from hp_rl import train as train_cli
    from hp_rl.hub.options import (
        ALGORITHM_KEYS,
        PATHWAY_OPTIONS,
        LossWeights,
        PathwayOptionError,
        PathwayOptions,
        options_markdown,
    )
    from hp_rl.rl.extractor import HubPathwayExtractor

    every = [*fields(PathwayOptions), *fields(LossWeights)]
    assert [f.name for f in fields(PathwayOptions)] == list(PATHWAY_OPTIONS)
    assert [f.name for f in fields(LossWeights)] == list(ALGORITHM_KEYS)
    assert all(f.metadata["doc"] and f.metadata["rule"].accepts(f.default) for f in every)
    space = gym.spaces.Box(0.0, 1.0, (4,))
    extractor = HubPathwayExtractor(space, "random:2", k=1, noise="none")
    assert extractor.options == PathwayOptions(k=1, noise="none") and extractor.k == 1
    with pytest.raises(PathwayOptionError, match=r"no option 'nois'\. Did you mean 'noise'"):
        HubPathwayExtractor(space, "random:2", nois="none")
    assert train_cli.main(["--hub-options"]) == 0
    out = capsys.readouterr().out
    for item in every:
        assert f"\n  {item.name} = " in out and item.metadata["rule"].describe() in out, item.name
    guide = (Path(__file__).parents[1] / "docs" / "GUIDE.md").read_text()
    assert options_markdown() in guide, "regenerate the guide's table: python -m hp_rl.hub.options"


def test_the_flags_that_set_an_option_state_its_default() -> None:
    # -k, --explore-coef and --exploit-coef keep hand-written help (--help imports no torch): their defaults are
    # the options'
    from hp_rl.hub.options import LossWeights, PathwayOptions
    from hp_rl.train_flags import build_parser

    helps = {action.dest: action.help or "" for action in build_parser()._actions}
    for dest, default in (
        ("k", PathwayOptions.k),
        ("explore_coef", PathwayOptions.explore_coef),
        ("exploit_coef", LossWeights.exploit_coef),
    ):
        assert f"(default: {default})" in helps[dest], dest


def test_ale_v5_ids_skip_frames_once_with_the_atari_preprocessing() -> None:
    pytest.importorskip("ale_py")
    from hp_rl.rl.envs import make_env

    # AtariWrapper repeats each action 4 frames; a v5 id would repeat each of those 4 more (16 frames a step)
    env = make_env("ALE/Breakout-v5", 1, 0)
    assert env.get_attr("unwrapped")[0]._frameskip == 1
    assert env.observation_space.shape == (84, 84, 4)
    env.close()
    explicit = make_env("ALE/Breakout-v5", 1, 0, env_kwargs={"frameskip": 2})
    assert explicit.get_attr("unwrapped")[0]._frameskip == 2  # a run's own arguments still decide
    explicit.close()


@pytest.mark.parametrize("algo, env_id", [("ppo", "CartPole-v1"), ("a2c", "MinAtar/Breakout-v1")])
def test_a_plain_run_of_a_task_is_what_hp_rl_train_sets_up_without_a_hub(algo: str, env_id: str) -> None:
    if env_id.startswith("MinAtar/"):
        pytest.importorskip("minatar")
    from hp_rl.rl.runs import RunConfig
    from hp_rl.train import build_parser
    from hp_rl.train_config import config_and_env

    built, env = config_and_env(build_parser().parse_args(["--algo", algo, "--env", env_id, "--hub", "none"]))
    env.close()
    plain = RunConfig.for_task(algo, env_id, seed=built.seed)
    assert plain.hyperparams == built.hyperparams and plain.n_envs == built.n_envs
    assert plain.n_timesteps == built.n_timesteps and plain.hub is None
    changed = RunConfig.for_task(algo, env_id, overrides={"learning_rate": 1e-4}, n_envs=3, n_timesteps=10)
    assert changed.hyperparams["learning_rate"] == 1e-4 and (changed.n_envs, changed.n_timesteps) == (3, 10)
