"""The transfer benchmark (benchmarks/transfer.py) on a micro budget, and the MinAtar trunks it loads."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from hp_rl.hub.architectures import ARCHITECTURES, SmallFrameCNNTrunk, TrunkInfo, build_trunk
from hp_rl.hub.sb3_zip import read_sb3_trunk
from hp_rl.rl.baselines import SmallFrameCNN

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> SimpleNamespace:
    """The transfer benchmark's library (:mod:`hp_rl.bench`) under one name."""
    from hp_rl.bench import hubs, report, suites, sweep, transfer
    from hp_rl.hub.options import pathway_preset

    names: dict[str, object] = {"pathway_preset": pathway_preset}
    for module in (suites, hubs, sweep, report, transfer):
        names.update(vars(module))
    return SimpleNamespace(**names)


def _minatar_space(channels: int) -> object:
    from gymnasium import spaces

    return spaces.Box(0.0, 1.0, (channels, 10, 10), np.float32)


def test_small_frame_cnn_trunk_has_the_baseline_layout() -> None:
    baseline = SmallFrameCNN(_minatar_space(7), features_dim=32)
    trunk = SmallFrameCNNTrunk(7, 10, 10, features_dim=32)
    trunk.load_state_dict(baseline.state_dict())  # strict: same names and shapes
    x = torch.rand(5, 7, 10, 10)
    assert torch.equal(trunk(x), baseline(x))
    info = TrunkInfo("small_frame_cnn", "image", (7, 10, 10), 32, (("channels", "16"),))
    assert "small_frame_cnn" in ARCHITECTURES
    assert build_trunk(info)(x).shape == (5, 32)


@pytest.fixture(scope="module")
def minatar_zip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A tiny PPO agent on MinAtar SpaceInvaders (6 channels), trained as the hub builder trains one."""
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.runs import RunConfig
    from hp_rl.rl.training import build_model

    env = make_env("MinAtar/SpaceInvaders-v1", 2, seed=0)
    params = {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "policy_kwargs": {"net_arch": []}}
    config = RunConfig(
        algo="ppo",
        env_id="MinAtar/SpaceInvaders-v1",
        hub=None,
        n_timesteps=32,
        n_envs=2,
        hyperparams=params,
        device="cpu",
    )
    model = build_model(config, env)
    model.learn(32)
    path = tmp_path_factory.mktemp("minatar") / "space_invaders.zip"
    model.save(path)
    env.close()
    return path, model


def test_read_sb3_trunk_reads_a_minatar_agent(minatar_zip: tuple[Path, object]) -> None:
    path, model = minatar_zip
    trunk, info, _ = read_sb3_trunk(path)
    assert info.arch == "small_frame_cnn" and info.input_kind == "image"
    assert info.input_shape == (6, 10, 10) and info.features_dim == 128
    x = torch.rand(3, 6, 10, 10)
    with torch.no_grad():
        expected = model.policy.features_extractor(x)  # type: ignore[attr-defined]
        assert torch.allclose(trunk(x), expected)


def test_small_frame_shape_without_space_metadata() -> None:
    from hp_rl.hub.sb3_zip import _small_frame_shape

    conv, linear = torch.zeros(16, 4, 3, 3), torch.zeros(128, 16 * 8 * 8)
    assert _small_frame_shape({}, conv, linear) == (4, 10, 10)


def test_minatar_expert_reaches_other_channel_counts(minatar_zip: tuple[Path, object]) -> None:
    from hp_rl.hub.adapters import ChannelMap
    from hp_rl.rl.extractor import HubPathwayExtractor

    path, _ = minatar_zip
    extractor = HubPathwayExtractor(_minatar_space(4), [str(path), str(path)], k=1, features_dim=16)
    maps = [m for m in extractor.modules() if isinstance(m, ChannelMap)]
    assert maps and maps[0].conv.module.in_channels == 4 and maps[0].conv.module.out_channels == 6
    assert extractor(torch.rand(5, 4, 10, 10)).shape == (5, 16)


def _micro_recipe(tmp_path: Path, tasks: list[dict[str, str]], n_envs: int = 2) -> Path:
    recipe = {
        "algo": "ppo",
        "n_timesteps": 64,
        "seed": 0,
        "save_freq": 0,
        "tasks": tasks,
        "overrides": {"n_envs": n_envs, "n_steps": 16, "batch_size": 32, "n_epochs": 1},
    }
    path = tmp_path / "micro.recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    return path


_MICRO = [
    "--seeds",
    "0",
    "--steps",
    "64",
    "--eval-points",
    "2",
    "--eval-episodes",
    "1",
    "--set",
    "n_envs=2",
    "n_steps=16",
]
_MICRO += ["batch_size=32", "n_epochs=1"]


def test_transfer_sweep_micro_budget_is_resumable(tmp_path: Path) -> None:
    bench = _bench()
    recipe = _micro_recipe(
        tmp_path,
        [
            {"name": "cartpole", "env_id": "CartPole-v1"},
            {"name": "acrobot", "env_id": "Acrobot-v1"},
            {"name": "mountaincar", "env_id": "MountainCar-v0"},
        ],
    )
    out = tmp_path / "out"
    argv = ["--suite", "control", "--recipe", str(recipe), "--targets", "cartpole", "--out", str(out), *_MICRO]
    assert bench.main(argv) == 0
    runs = sorted(p.relative_to(out / "runs/control/cartpole").parts[0] for p in out.glob("runs/*/*/*/seed0.json"))
    assert runs == [
        "cli_default",
        "cli_default_paper",
        "cli_default_transfer",
        "cli_paper",
        "dense",
        "hub_pathway",
        "no_exploit",
        "no_explore",
        "no_noise",
        "scratch",
        "single-acrobot",
        "single-mountaincar",
        "single_agent-acrobot",
        "single_agent-mountaincar",
        "single_agent_warmup-acrobot",
        "single_agent_warmup-mountaincar",
        "transfer",
        "transfer_base_prior",
        "transfer_critic_warmup",
        "transfer_features",
        "transfer_k1",
        "transfer_k2",
        "transfer_no_base",
        "transfer_no_kickstart",
        "transfer_noise",
        "transfer_prior",
        "transfer_random",
        "transfer_strong_prior",
        "transfer_uniform_trust",
        "transfer_weak_prior",
        "user_zips",
        "user_zips_frozen",
        "user_zips_no_base",
        "user_zips_no_kickstart",
    ]
    prior = json.loads((out / "runs/control/cartpole/transfer_prior/seed0.json").read_text())
    assert set(prior["hub_kwargs"]["prior"]) == {"acrobot", "mountaincar"}
    assert (out / "scores/control_cartpole.yml").is_file()  # scored once, before the runs
    random = json.loads((out / "runs/control/cartpole/transfer_random/seed0.json").read_text())
    assert {e["source"] for e in random["hub_experts"]} == {"random"} and len(random["hub_experts"]) == 2
    warmup = json.loads((out / "runs/control/cartpole/transfer_critic_warmup/seed0.json").read_text())
    assert warmup["hyperparams"]["critic_warmup"] == 0.05
    base_prior = json.loads((out / "runs/control/cartpole/transfer_base_prior/seed0.json").read_text())
    assert base_prior["hub_kwargs"]["base_prior"] == 0.5
    strong = json.loads((out / "runs/control/cartpole/transfer_strong_prior/seed0.json").read_text())
    assert strong["hub_kwargs"]["prior_scale"] == 4.0 and strong["hub_kwargs"]["prior"] == prior["hub_kwargs"]["prior"]
    assert prior["hub_kwargs"]["prior_scale"] == bench.pathway_preset("transfer")["prior_scale"]  # the preset's
    weak = json.loads((out / "runs/control/cartpole/transfer_weak_prior/seed0.json").read_text())
    assert weak["hub_kwargs"]["prior_scale"] == 2.0 and weak["hub_kwargs"]["prior"] == prior["hub_kwargs"]["prior"]
    two = json.loads((out / "runs/control/cartpole/transfer_k2/seed0.json").read_text())
    # neither the Acrobot nor the MountainCar agent has CartPole's two actions: no evidence, the base acts alone
    assert two["k"] == 2 and prior["k"] == 0 and two["hub_kwargs"]["prior"] == prior["hub_kwargs"]["prior"]
    user = json.loads((out / "runs/control/cartpole/user_zips/seed0.json").read_text())
    # the ablations of the defaults: the user's command with one more --hub-set each
    no_kickstart = json.loads((out / "runs/control/cartpole/user_zips_no_kickstart/seed0.json").read_text())
    assert no_kickstart["hyperparams"]["kickstart_coef"] == 0 and user["hub_kwargs"]["base_expert"] is True
    no_base = json.loads((out / "runs/control/cartpole/user_zips_no_base/seed0.json").read_text())
    assert no_base["hub_kwargs"]["base_expert"] is False
    frozen = json.loads((out / "runs/control/cartpole/user_zips_frozen/seed0.json").read_text())
    assert frozen["hub_kwargs"]["freeze_experts"] is True and user["hub_kwargs"]["freeze_experts"] is False
    assert [Path(e["path"]).name for e in user["hub_experts"]] == ["model.zip", "model.zip"]  # the builds' own zips
    default = json.loads((out / "runs/control/cartpole/cli_default/seed0.json").read_text())
    assert default["hub_experts"] and default["env_id"] == "CartPole-v1"  # --hub auto: the bundled control hub
    # whole agents whose heads do not reach CartPole's actions: transfer, scored, none routed, the base alone
    assert user["k"] == 0 and set(user["prior_scores"]["experts"]) == {"acrobot", "mountaincar"}
    assert user["hub_kwargs"]["k_from_prior"] == 0.5
    one = json.loads((out / "runs/control/cartpole/transfer_k1/seed0.json").read_text())
    assert one["k"] == 1 and one["hub_kwargs"]["k_from_prior"] is None  # the preset's k_from_prior: 0.5
    assert prior["hub_kwargs"]["k_from_prior"] == bench.pathway_preset("transfer")["k_from_prior"]
    # per rollout: with k=2 and the base, three experts routed per observation, whose mean weights sum to 1
    assert two["route_share"] and len(two["route_weight"]) == len(two["route_share"])
    for (steps, share), (weight_steps, weight) in zip(two["route_share"], two["route_weight"], strict=True):
        assert steps == weight_steps and set(weight) == set(share) == {"acrobot", "mountaincar", "base"}
        assert sum(share.values()) == pytest.approx(3.0, abs=1e-3)
        assert sum(weight.values()) == pytest.approx(1.0, abs=1e-3)
        assert all(0.0 <= weight[name] <= share[name] + 1e-4 for name in weight)
    record = json.loads((out / "runs/control/cartpole/hub_pathway/seed0.json").read_text())
    assert [steps for steps, _ in record["noise_free_evaluations"]] == [32, 64] and record["eval_episodes"] == 1
    assert record["steps"] >= 64 and record["k"] == 2 and record["hub_kwargs"]["freeze_experts"] is False
    assert {e["name"] for e in record["hub_experts"]} == {"acrobot", "mountaincar"}  # the target's own left out
    assert record["forward_flops_per_obs"] > 0 and record["cpu_ms_per_step"] > 0
    dense = json.loads((out / "runs/control/cartpole/dense/seed0.json").read_text())
    single = json.loads((out / "runs/control/cartpole/single-acrobot/seed0.json").read_text())
    assert dense["hub_kwargs"]["dense"] is True and single["k"] == 1 and single["exploit_coef"] == 0.0
    report = (out / "transfer.md").read_text()
    assert "single expert, best in hindsight" in report and "Hub-Pathway" in report
    assert (out / "out_control_cartpole.png").stat().st_size > 0  # pictures are named after the output folder
    # Resumable: a second call finds every run finished and runs none.
    stamp = (out / "runs/control/cartpole/scratch/seed0.json").stat().st_mtime_ns
    assert bench.main(argv) == 0
    assert (out / "runs/control/cartpole/scratch/seed0.json").stat().st_mtime_ns == stamp


def test_transfer_sweep_minatar_adapts_channels(tmp_path: Path) -> None:
    bench = _bench()
    recipe = _micro_recipe(
        tmp_path,
        [
            {"name": "breakout", "env_id": "MinAtar/Breakout-v1"},
            {"name": "space_invaders", "env_id": "MinAtar/SpaceInvaders-v1"},
            {"name": "freeway", "env_id": "MinAtar/Freeway-v1"},
        ],
    )
    out = tmp_path / "out"
    argv = [
        "--suite",
        "minatar",
        "--recipe",
        str(recipe),
        "--targets",
        "breakout",
        "--out",
        str(out),
        "--methods",
        "scratch",
        "hub_pathway",
        *_MICRO,
    ]
    assert bench.main(argv) == 0
    record = json.loads((out / "runs/minatar/breakout/hub_pathway/seed0.json").read_text())
    assert {e["name"] for e in record["hub_experts"]} == {"space_invaders", "freeway"}
    assert record["k"] == 2 and record["steps"] >= 64


def test_metrics() -> None:
    bench = _bench()
    episodes = [(10, 1.0), (20, 3.0), (95, 5.0)]
    grid, curve = bench.learning_curve(episodes, 100, points=4, window=2)
    assert grid.tolist() == [25.0, 50.0, 75.0, 100.0]
    assert curve.tolist() == [2.0, 2.0, 2.0, 4.0]
    assert bench.final_return(episodes, 100) == 5.0
    mean, half, n = bench.mean_ci([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(2.484, abs=1e-3)


def test_overview_table_is_relative_to_scratch() -> None:
    bench = _bench()

    def row(aucs: list[float]) -> dict[str, object]:
        return {"auc": dict(enumerate(aucs))}

    summary = {
        "minatar": {
            "a": {"scratch": row([2.0, 2.0]), "hub_pathway": row([3.0, 3.0])},
            "b": {"scratch": row([-4.0, -4.0]), "hub_pathway": row([-5.0, -5.0]), "dense": row([-2.0, -2.0])},
            "c": {"scratch": row([1.0, 1.0]), "hub_pathway": row([1.0, 1.0])},
        }
    }
    lines = bench.overview_table(summary)
    hub = next(line for line in lines if line.startswith("| Hub-Pathway |"))
    dense = next(line for line in lines if line.startswith("| dense mixture |"))
    # (3 - 2) / 2 = +0.50 on a; (-5 - -4) / 4 = -0.25 on b (a negative scale keeps "higher is better").
    # c ties scratch: 0.00, which is not above it. The median ignores how far +0.50 lies from the rest.
    assert hub.split("|")[2:8] == [" +0.50 ", " -0.25 ", " +0.00 ", " +0.083 ", " +0.000 ", " 1 of 3 "]
    assert dense.split("|")[2:8] == [" – ", " +0.50 ", " – ", " +0.500 ", " +0.500 ", " 1 of 1 "]
    assert not any(line.startswith("| scratch |") for line in lines)


def test_plan_runs_can_restrict_the_single_experts() -> None:
    bench = _bench()
    suite = bench.SUITES["minatar"]
    keys = bench.plan_runs(suite, ["breakout"], ["scratch", "single"], [0, 1], single_experts=["seaquest", "breakout"])
    assert [k.method for k in keys] == ["scratch", "single:seaquest"] * 2  # the target's own expert stays out
    with pytest.raises(ValueError, match="pong"):
        bench.plan_runs(suite, ["breakout"], ["single"], [0], single_experts=["pong"])


def _synthetic_run(method: str, seed: int, level: float) -> dict[str, object]:
    episodes = [(step, level + seed) for step in range(10, 1001, 10)]
    return {
        "suite": "minatar",
        "target": "breakout",
        "method": method,
        "seed": seed,
        "steps": 1000,
        "episodes": episodes,
        "cpu_ms_per_step": 1.0,
        "forward_flops_per_obs": 1.0,
        "trainable_parameters": 1,
    }


def test_summary_picks_the_best_single_expert_and_says_when_only_one_ran() -> None:
    bench = _bench()
    several = [
        _synthetic_run(m, s, lvl) for m, lvl in (("scratch", 1.0), ("single:a", 2.0), ("single:b", 4.0)) for s in (0, 1)
    ]
    rows = bench.summarise(several)["minatar"]["breakout"]
    assert rows["single_best"]["expert"] == "b" and not rows["single_best"]["only"]
    assert rows["single_mean"]["auc"] == {0: 3.0, 1: 4.0}  # per-seed mean over a and b
    assert "best in hindsight (b)" in bench.markdown_tables({"minatar": {"breakout": rows}})

    alone = bench.summarise([r for r in several if r["method"] != "single:a"])["minatar"]["breakout"]
    assert alone["single_best"]["only"] and "single_mean" not in alone  # no choice was made, no mean exists
    text = bench.markdown_tables({"minatar": {"breakout": alone}})
    assert "single expert (b, the only one run)" in text and "best in hindsight" not in text


def test_rliable_report_gives_iqm_intervals_probability_of_improvement_and_steps_to_threshold(tmp_path: Path) -> None:
    from hp_rl.bench import transfer_report as report

    runs = []
    for seed in range(5):
        scratch = _synthetic_run("scratch", seed, 1.0)
        # the transfer method starts high: it reaches scratch's final return at once
        better = _synthetic_run("transfer", seed, 3.0)
        better["route_share"] = [[500, {"variant": 0.9, "other": 0.1}], [1000, {"variant": 1.0, "other": 0.0}]]
        better["route_weight"] = [[500, {"variant": 0.6 + seed / 100, "other": 0.4 - seed / 100}]]
        runs += [scratch, better]
    summary = report.summarise_runs(runs)
    rows = summary["minatar"]["breakout"]["methods"]
    transfer = rows["transfer"]
    low, high = transfer["iqm_auc_ci"]
    assert low <= transfer["iqm_auc"] <= high
    assert transfer["iqm_auc_gain"] > 0 and transfer["probability_of_improvement"] > 0.8
    assert transfer["steps_to_scratch_final_ratio"] < 0.1
    assert transfer["route_share_mid"] == {"variant": 0.9, "other": 0.1}
    assert transfer["route_weight_mid"] == {"variant": 0.62, "other": 0.38}  # the mean over seeds
    assert rows["scratch"]["route_weight_mid"] is None  # no routes, no weights
    assert "Mean pathway weight of each expert at mid-training" in report.markdown(summary)
    assert "probability_of_improvement" not in rows["scratch"]
    out = tmp_path / "summary.json"
    sweep = tmp_path / "sweep"
    for run in runs:
        path = sweep / "runs" / run["suite"] / run["target"] / run["method"] / f"seed{run['seed']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run))
    assert report.main([str(sweep), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["minatar"]["breakout"]["methods"]["transfer"]["seeds"] == [0, 1, 2, 3, 4]
    # --update keeps what an earlier session's sweeps wrote and replaces only what is computed now.
    earlier = {"minatar": {"freeway": {"methods": {}}, "breakout": {"stale": True}}, "control": {"acrobot": {}}}
    out.write_text(json.dumps(earlier))
    assert report.main([str(sweep), "--json", str(out), "--update"]) == 0
    merged = json.loads(out.read_text())
    assert set(merged) == {"minatar", "control"} and set(merged["minatar"]) == {"freeway", "breakout"}
    assert "stale" not in merged["minatar"]["breakout"] and merged["control"] == {"acrobot": {}}


def test_sweep_through_a_local_ray_writes_the_same_results_as_the_in_process_runner(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    bench = _bench()
    recipe = _micro_recipe(
        tmp_path, [{"name": "cartpole", "env_id": "CartPole-v1"}, {"name": "acrobot", "env_id": "Acrobot-v1"}]
    )
    hubs = tmp_path / "hubs"
    common = [
        "--suite",
        "control",
        "--recipe",
        str(recipe),
        "--targets",
        "cartpole",
        "--hub-workdir",
        str(hubs),
        "--methods",
        "scratch",
        "hub_pathway",
        *_MICRO,
        "--seeds",
        "0",
        "1",
    ]
    assert bench.main([*common, "--out", str(tmp_path / "here")]) == 0
    assert bench.main([*common, "--out", str(tmp_path / "ray"), "--no-build", "--ray", "--jobs", "2"]) == 0
    here = sorted(p.relative_to(tmp_path / "here") for p in (tmp_path / "here").glob("runs/**/*.json"))
    there = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").glob("runs/**/*.json"))
    assert here == there and len(here) == 4
    for relative in here:
        a = json.loads((tmp_path / "here" / relative).read_text())
        b = json.loads((tmp_path / "ray" / relative).read_text())
        assert bench.comparable_record(a) == bench.comparable_record(b), relative


def test_ray_backend_without_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from hp_rl.core import runner

    monkeypatch.setattr(runner, "ray_available", lambda: False)
    with pytest.raises(runner.BackendError, match="pip install"):
        runner.Backend("ray").check()


def test_a_suite_runs_on_an_exported_hub_without_pretraining(tmp_path: Path) -> None:
    # --experts-from: the needle suite on the bundled MinAtar hub (its safetensors trunks and heads).
    pytest.importorskip("minatar")
    from hp_rl.core.paths import BUNDLED_HUB_DIR

    bench = _bench()
    manifest = BUNDLED_HUB_DIR / "minatar" / "hub.yaml"
    out = tmp_path / "out"
    argv = ["--suite", "needle", "--targets", "space_invaders", "--experts-from", str(manifest), "--out", str(out)]
    argv += ["--methods", "single_agent", "transfer_random", "--single-experts", "space_invaders_noramp", *_MICRO]
    assert bench.main(argv) == 0
    single = json.loads((out / "runs/needle/space_invaders/single_agent-space_invaders_noramp/seed0.json").read_text())
    (expert,) = single["hub_experts"]
    assert expert["source"] == "safetensors" and Path(expert["path"]).parent == manifest.parent
    assert expert["sha256"] and expert["action_meanings"]  # the file's digest and its agent's actions
    random = json.loads((out / "runs/needle/space_invaders/transfer_random/seed0.json").read_text())
    names = [e["name"] for e in random["hub_experts"]]
    assert names == ["space_invaders_noramp", "asterix", "breakout", "freeway", "seaquest"]
    assert {e["source"] for e in random["hub_experts"]} == {"random"}
    assert {e["arch"] for e in random["hub_experts"]} == {"small_frame_cnn"}  # the same architecture
    not_a_hub = tmp_path / "list.yml"
    not_a_hub.write_text("- a\n")
    with pytest.raises(SystemExit, match="not a hub manifest"):
        bench.main([*argv[:4], "--experts-from", str(not_a_hub), "--out", str(out)])


def test_built_experts_carry_their_source_returns_into_the_hub(
    tmp_path: Path, minatar_zip: tuple[Path, object]
) -> None:
    # The score prior needs what each expert achieves at home; a hub build records it beside the model.
    import shutil

    from hp_rl.core.paths import file_sha256

    bench = _bench()
    model = tmp_path / "space_invaders" / "model.zip"
    model.parent.mkdir()
    shutil.copy(minatar_zip[0], model)
    suite = bench.SUITES["needle"]
    assert "provenance" not in bench.hub_mapping(suite, {"space_invaders": model})["experts"][0]
    record = {"return_mean": 33.4, "random_return_mean": 4.2, "model_sha256": file_sha256(model)}
    (model.parent / "source_eval.yml").write_text(yaml.safe_dump(record))
    (entry,) = bench.hub_mapping(suite, {"space_invaders": model})["experts"]
    assert entry["provenance"] == {"source_return": 33.4, "random_return": 4.2}
    # an evaluation of another file says nothing about this one
    (model.parent / "source_eval.yml").write_text(yaml.safe_dump({**record, "model_sha256": "0" * 64}))
    assert "provenance" not in bench.hub_mapping(suite, {"space_invaders": model})["experts"][0]


def test_a_source_evaluation_of_another_episode_count_is_not_reused(tmp_path: Path) -> None:
    # hub build re-evaluates when asked for more episodes; the benchmark takes whatever count was recorded
    from hp_rl.core.paths import file_sha256
    from hp_rl.rl.source_eval import read_source_evaluation, write_source_evaluation

    model = tmp_path / "model.zip"
    model.write_bytes(b"weights")
    assert read_source_evaluation(model) is None
    record = write_source_evaluation(model, {"return_mean": 1.5, "random_return_mean": 0.2, "episodes": 20})
    assert record["model_sha256"] == file_sha256(model)
    assert (tmp_path / "source_eval.yml").is_file()
    assert read_source_evaluation(model) == record
    assert read_source_evaluation(model, episodes=20) == record
    assert read_source_evaluation(model, episodes=50) is None
    model.write_bytes(b"retrained weights")
    assert read_source_evaluation(model, episodes=20) is None


def test_the_benchmark_measures_the_shipped_transfer_preset() -> None:
    from hp_rl.hub.options import pathway_preset

    bench = _bench()
    shipped = pathway_preset("transfer")
    measured = bench.METHODS["transfer_prior"]
    assert measured.prior and shipped.pop("prior") == "auto"
    assert {**measured.extractor, **measured.algo_kwargs, "exploit_coef": measured.exploit_coef} == shipped
    # the ablations differ from it in the one part they name
    no_base = bench.METHODS["transfer_no_base"]
    assert {key for key in shipped if no_base.extractor.get(key, shipped[key]) != shipped[key]} == {"base_expert"}


def test_report_intervals_are_the_same_on_every_run() -> None:
    # rliable's two-sample bootstrap draws from numpy's global generator too: seeded for the call, a report
    # written twice from the same records is the same file
    pytest.importorskip("rliable")
    from hp_rl.bench.aggregates import iqm_interval, probability_of_improvement

    method, scratch = np.array([1.0, 2.0, 3.5, 2.2, 1.7]), np.array([1.3, 2.4, 3.1, 2.0, 2.2])
    np.random.seed(1)
    first = probability_of_improvement(method, scratch), iqm_interval(method[:, None])
    np.random.seed(2)
    assert (probability_of_improvement(method, scratch), iqm_interval(method[:, None])) == first
    assert np.random.get_state()[1][0] == np.random.RandomState(2).get_state()[1][0]  # the caller's state restored


def test_every_method_of_the_data_file_is_a_valid_configuration() -> None:
    # methods.yml is data: each method's extractor options and loss weights pass the method's own checks, and the
    # transfer methods are the shipped preset with their changes
    from hp_rl.bench.suites import METHODS
    from hp_rl.hub.options import LossWeights, PathwayOptions, pathway_preset

    for method in METHODS.values():
        PathwayOptions.from_mapping(method.extractor, method.name)
        LossWeights.from_mapping({"exploit_coef": method.exploit_coef, **method.algo_kwargs}, method.name)
    preset = pathway_preset("transfer")
    shipped = METHODS["transfer_prior"]
    assert shipped.prior and shipped.extractor["k_from_prior"] == preset["k_from_prior"]
    assert shipped.algo_kwargs == {key: preset[key] for key in ("kickstart_coef", "kickstart_fraction")}
    assert "kickstart_coef" not in METHODS["transfer_no_kickstart"].algo_kwargs
    assert METHODS["cli_default_paper"].hub == "auto" and METHODS["cli_paper"].preset == "paper"
    assert METHODS["user_zips_no_kickstart"].cli_set == ("kickstart_coef=0",)
    assert METHODS["user_zips_no_base"].hub_set == ("base_expert=false",)
    from hp_rl.bench.suites import _method
    from hp_rl.core.errors import HpRlError

    wrong = [("hub_set", "base_expert=maybe"), ("hub_set", "kickstart_coef=0"), ("set", "kickstart_coef=-1")]
    for flag, value in wrong:  # a bad value, a loss weight given as an option, a bad weight: the load stops
        with pytest.raises(HpRlError, match=r"methods\.yml: ablation"):
            _method("ablation", {"label": "x", "kind": "cli", flag: [value]})
    with pytest.raises(HpRlError, match="kind: cli"):
        _method("ablation", {"label": "x", "kind": "hub", "hub_set": ["k=1"]})
