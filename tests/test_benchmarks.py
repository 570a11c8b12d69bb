"""Smoke test of ``benchmarks/throughput.py`` on a micro budget, and its bookkeeping on synthetic numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"


def _load() -> SimpleNamespace:
    """The throughput benchmark's library (:mod:`hp_rl.bench.throughput`) under one name."""
    from hp_rl.bench.throughput import acting, cli, extractor, report, results, training

    names: dict[str, object] = {}
    for module in (results, training, extractor, acting, report, cli):
        names.update(vars(module))
    return SimpleNamespace(**names)


def test_extractor_configs_cover_m_k_and_both_dense_forms() -> None:
    bench = _load()
    configs = bench._extractor_configs([2, 8], [1, 2, 4], ["frozen"])
    sparse = {(c["experts"], c["k"]) for c in configs if c["routing"] == "sparse"}
    assert sparse == {(2, 1), (2, 2), (8, 1), (8, 2), (8, 4)}  # k > m is left out
    assert {(c["experts"], c["k"]) for c in configs if c["routing"] == "dense-mixture"} == {(2, 2), (8, 8)}
    assert {(c["experts"], c["k"]) for c in configs if c["routing"] == "dense-dispatch"} == {(2, 2), (8, 2)}


def test_targets_are_judged_on_wall_and_cpu_time() -> None:
    bench = _load()
    plain = bench.TrainResult(
        "breakout", "plain PPO (NatureCNN)", 0, 0, True, False, 1024, 4.0, 4.0, 256.0, 256.0, 0.5, 1.0, 1.0
    )
    hub = bench.TrainResult(
        "breakout", "hub m=4 k=2 frozen", 4, 2, True, False, 1024, 10.0, 4.2, 102.4, 243.8, 0.6, 0.4, 0.95
    )
    dense = bench.TrainResult(
        "breakout", "dense mixture m=4 frozen", 4, 4, True, True, 1024, 12.0, 8.0, 85.3, 128.0, 0.6, 0.33, 0.5
    )
    two = bench.ExtractorResult("frozen", "sparse", 2, 2, 256, 50.0, 100.0, 50.0, 100.0, 1)
    sixteen = bench.ExtractorResult("frozen", "sparse", 16, 2, 256, 60.0, 140.0, 55.0, 110.0, 1)
    targets = {t["target"]: t["passed"] for t in bench.check_targets([plain, hub, dense], [two, sixteen])}
    assert targets == {
        "Breakout: hub m=4 k=2 frozen >= 0.9x plain PPO steps/s (cpu time)": True,
        "Breakout: hub m=4 k=2 frozen >= 0.9x plain PPO steps/s (wall time)": False,
        "breakout: Hub-Pathway k=2 of 4 <= 0.6x the dense mixture's CPU time per training step": True,  # 128/243.8
        "Extractor, frozen trunks, batch 256: fwd+bwd m=16 k=2 <= 1.15x m=2 k=2 (cpu time)": True,
    }


@pytest.mark.slow
def test_quick_benchmark_writes_tables_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--games",
        "minatar",
        "--only",
        "m=4 k=2 frozen$",
        "--ms",
        "2,16",
        "--ks",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    report = json.loads((out / "throughput.json").read_text())
    assert report["machine"]["torch_threads"] == 1 and report["machine"]["torch"]
    assert report["machine"]["cpu"] and report["machine"]["usable_cores"] >= 1
    training = {row["case"]: row for row in report["training"]}
    assert set(training) == {"plain PPO (SmallFrameCNN)", "hub m=4 k=2 frozen"}
    assert training["plain PPO (SmallFrameCNN)"]["ratio_to_plain"] == 1.0
    hub = training["hub m=4 k=2 frozen"]
    assert hub["steps"] >= 32 and hub["steps_per_s"] > 0 and hub["cpu_ratio_to_plain"] > 0
    assert 0.0 <= hub["rollout_share"] <= 1.0

    rows = report["extractor"]
    assert rows[0]["routing"] == "NatureCNN (plain SB3)" and report["extractor_timing"] == "fresh process"
    assert {(r["routing"], r["experts"]) for r in rows[1:]} == {
        (routing, m) for routing in ("sparse", "dense-dispatch", "dense-mixture") for m in (2, 16)
    }
    for row in rows:
        assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0
        assert row["forward_backward_peak_mib"] is not None and row["forward_backward_peak_mib"] >= 0
    acting = {row["part"]: row for row in report["acting"]}
    assert all(row["game"] == "minatar" and row["batch"] == 2 and row["cpu_us"] > 0 for row in acting.values())
    assert acting["plain extractor (SmallFrameCNN)"]["experts_run"] is None
    assert acting["dense mixture m=4 extractor"]["experts_run"] == 4.0  # the dense mixture calls every expert
    assert 1.0 <= acting["hub m=8 k=2 extractor"]["experts_run"] <= 4.0  # at most k per observation, 2 observations
    assert any(part.startswith("part: routing") for part in acting)
    assert any("m=16 k=2" in t["target"] for t in report["targets"]) and report["complete"]
    assert any(t["target"].startswith("MinAtar: hub m=4 k=2 frozen") for t in report["targets"])

    markdown = (out / "throughput.md").read_text()
    assert "| minatar | hub m=4 k=2 frozen |" in markdown and "## Targets" in markdown
    assert "| minatar | hub m=4 k=2 extractor |" in markdown
    assert "Each configuration in a fresh process" in markdown
    assert (out / "extractor_time_vs_m.png").stat().st_size > 1000


def test_small_frame_cnn_is_the_minatar_paper_network() -> None:
    """The benchmark's plain MinAtar baseline: Conv 3x3 x16 stride 1, ReLU, flatten, Linear 128, ReLU."""
    import numpy as np
    from gymnasium import spaces
    from torch import nn

    from hp_rl.rl.baselines import SmallFrameCNN

    space = spaces.Box(0.0, 1.0, (4, 10, 10), np.float32)
    cnn = SmallFrameCNN(space)
    conv, linear = cnn.cnn[0], cnn.linear[0]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (4, 16)
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (0, 0)
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (16 * 8 * 8, 128)
    assert cnn.features_dim == 128
    features = cnn(torch.rand(5, 4, 10, 10))
    assert features.shape == (5, 128) and bool((features >= 0).all())
    with pytest.raises(TypeError, match="C, H, W"):
        SmallFrameCNN(spaces.Box(0.0, 1.0, (8,), np.float32))


def test_small_frame_cnn_trains_in_sb3_with_linear_heads() -> None:
    from stable_baselines3 import PPO

    from hp_rl.rl.baselines import SmallFrameCNN
    from hp_rl.rl.envs import make_env

    env = make_env("MinAtar/Breakout-v1", n_envs=2, seed=0)
    model = PPO(
        "CnnPolicy",
        env,
        n_steps=16,
        batch_size=32,
        n_epochs=1,
        device="cpu",
        seed=0,
        policy_kwargs={"features_extractor_class": SmallFrameCNN, "net_arch": []},
    )
    before = model.policy.features_extractor.linear[0].weight.detach().clone()
    model.learn(32)
    assert model.policy.action_net.in_features == 128  # linear head straight on the 128 features
    assert not torch.equal(before, model.policy.features_extractor.linear[0].weight)  # it trained


def test_the_benchmark_measures_the_models_hp_rl_train_builds(tmp_path: Path) -> None:
    # The plain and HubPPO rows are built as `python -m hp_rl.train` builds them: same class, same
    # hyperparameters, same parameters (shapes and initial values, for the same seed).
    pytest.importorskip("minatar")
    import argparse

    from hp_rl import train as train_cli

    bench = _load()
    args = argparse.Namespace(minatar_game="MinAtar/Breakout-v1", atari_game="", seed=0, device="cpu", quick=True)
    args.steps = 64
    import yaml

    spec = tmp_path / "hub.yml"
    spec.write_text(yaml.safe_dump(bench.minatar_hub(4, 4, None)))
    for case, flags in (
        (bench.TrainCase("plain"), ["--hub", "none"]),
        (bench.TrainCase("hubppo", 4, 2, algo="hubppo"), ["--hub", str(spec), "-k", "2", "--hub-set", "preset=paper"]),
    ):
        measured = bench._build_train_model("minatar", case, args)
        command = "--env MinAtar/Breakout-v1 --n-envs 2 --device cpu --set n_steps=16 --set batch_size=32"
        parsed = train_cli.build_parser().parse_args([*command.split(), "--set", "n_epochs=1", *flags])
        config, env = train_cli.config_and_env(parsed)
        built = train_cli.build_or_close(config, env, 0)
        assert type(measured) is type(built), case.name
        for key in ("n_steps", "batch_size", "n_epochs", "gamma", "ent_coef", "clip_range"):
            value, expected = getattr(measured, key), getattr(built, key)
            if callable(value):
                value, expected = value(1.0), expected(1.0)
            assert value == expected, (case.name, key)
        ours, theirs = measured.policy.state_dict(), built.policy.state_dict()
        assert list(ours) == list(theirs), case.name
        for name, tensor in ours.items():
            assert tensor.shape == theirs[name].shape, (case.name, name)
            torch.testing.assert_close(tensor, theirs[name], msg=f"{case.name}: {name}")
        measured.env.close()
        env.close()


def test_compile_probe_compiles_the_pathway_to_the_same_routes_outputs_and_gradients(tmp_path: Path) -> None:
    # The probe behind the compile measurement on the throughput page: its traceable path routes as the pathway
    # does, and the compiled graphs give the same routes and outputs when acting and the same gradients in an
    # update, frozen and fine-tuned (inductor needs a C++ compiler).
    pytest.importorskip("minatar")
    import shutil

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile's CPU backend needs a C++ compiler")
    out = tmp_path / "probe.json"
    done = subprocess.run(
        [sys.executable, "-m", "hp_rl", "bench", "compile_probe", "--calls", "10", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["same routes as the pathway"] and result["compiled same routes"]
    assert result["compiled max abs difference"] < 1e-5
    for kind in ("frozen", "fine-tuned"):
        assert result[f"update {kind}: max gradient difference, relative"] < 1e-4
        assert result[f"update {kind}: path compiled"] > 0
