"""GateUsageCallback on real SB3 algorithms, read back from the TensorBoard event files SB3 wrote."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.env_util import make_vec_env
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor

from hp_rl.rl.callbacks import GateUsageCallback, concat_routes
from hp_rl.rl.envs import make_env
from hp_rl.rl.extractor import HubPathwayExtractor
from hp_rl.routing import NoisyTopKRouter

N_ENVS, N_STEPS, ROLLOUTS = 2, 32, 3


def hub_policy(hub: str, k: int, **extra: Any) -> dict[str, Any]:
    return dict(
        features_extractor_class=HubPathwayExtractor,
        features_extractor_kwargs=dict(hub=hub, k=k, features_dim=32),
        net_arch=[],
        **extra,
    )


def read_events(folder: Path) -> EventAccumulator:
    """The single TensorBoard event file SB3 wrote under ``folder`` (not the experts' runs), fully loaded."""
    files = sorted(p for p in folder.rglob("events.out.tfevents*") if "experts" not in p.parts)
    assert len(files) == 1, files
    events = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in events.Scalars(tag)}


def capture_acting_forwards(extractor: HubPathwayExtractor) -> list[Tensor]:
    """Weights ``(B, m)`` of every forward the extractor makes outside training mode, in order."""
    captured: list[Tensor] = []

    def hook(module: HubPathwayExtractor, args: Any, output: Any) -> None:
        if not module.training:
            assert module.last_output is not None
            captured.append(module.last_output.routes.weights.detach().clone())

    extractor.register_forward_hook(hook)
    return captured


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """PPO on CartPole with a 3-expert hub (k=2) for three rollouts of 2 envs x 32 steps."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ppo_tb")
    env = make_vec_env("CartPole-v1", n_envs=N_ENVS, seed=0)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=N_STEPS,
        batch_size=N_ENVS * N_STEPS,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs=hub_policy("random:3", k=2),
        tensorboard_log=str(folder),
    )
    callback = GateUsageCallback(min_samples=1)
    extractor = model.policy.features_extractor
    assert isinstance(extractor, HubPathwayExtractor)
    captured = capture_acting_forwards(extractor)
    model.learn(N_ENVS * N_STEPS * ROLLOUTS, callback=callback)
    return dict(
        events=read_events(folder), names=extractor.expert_names, captured=captured, callback=callback, folder=folder
    )


def test_ppo_writes_every_tag(ppo_run: dict[str, Any]) -> None:
    events, names = ppo_run["events"], ppo_run["names"]
    tags = events.Tags()
    for name in names:
        for kind in ("usage", "weight", "confidence"):
            assert f"gates/{kind}/{name}" in tags["scalars"]
        assert f"gates/weight_hist/{name}" in tags["histograms"]
    for tag in ("entropy", "balance_cv2", "noise_std", "num_samples", "explore_loss"):
        assert f"gates/{tag}" in tags["scalars"]
    assert "gates/coactivation" in tags["images"]
    image = events.Images("gates/coactivation")[-1]
    assert image.width > 3 * 16 and image.height > 3 * 16  # the grid of 16-pixel squares and its labels
    from hp_rl.rl.callbacks import chart_order

    assert [names[c] for c in chart_order(names)] == sorted(names)
    (legend,) = events.Tensors("gates/coactivation_legend/text_summary")
    text = legend.tensor_proto.string_val[0].decode()
    assert all(f"| {i} | {name} |" in text for i, name in enumerate(sorted(names)))
    for name in names:
        histogram = events.Histograms(f"gates/weight_hist/{name}")[-1].histogram_value
        assert histogram.num > 0 and 0.0 < histogram.min <= histogram.max <= 1.0
    # The first rollout is recorded before any update ran: no exploration loss yet, then one per update.
    assert sorted(scalars(events, "gates/explore_loss")) == [128, 192]


def test_ppo_values_are_consistent(ppo_run: dict[str, Any]) -> None:
    events, names = ppo_run["events"], ppo_run["names"]
    usage = {name: scalars(events, f"gates/usage/{name}") for name in names}
    weight = {name: scalars(events, f"gates/weight/{name}") for name in names}
    steps = sorted(usage[names[0]])
    assert steps == [N_ENVS * N_STEPS * (r + 1) for r in range(ROLLOUTS)]
    for step in steps:
        assert sum(usage[name][step] for name in names) == pytest.approx(2.0, abs=1e-5)
        assert sum(weight[name][step] for name in names) == pytest.approx(1.0, abs=1e-5)
        for name in names:
            assert 0.0 <= usage[name][step] <= 1.0 and 0.0 <= weight[name][step] <= 1.0
            confidence = scalars(events, f"gates/confidence/{name}").get(step)
            assert confidence is None or 0.0 < confidence <= 1.0
        assert 0.0 <= scalars(events, "gates/entropy")[step] <= math.log(2) + 1e-6
        assert scalars(events, "gates/balance_cv2")[step] >= 0.0
        assert scalars(events, "gates/noise_std")[step] > 0.0  # learned noise, floored at 0.01


def test_ppo_averages_each_observation_once(ppo_run: dict[str, Any]) -> None:
    """Each rollout's values average its n_envs * n_steps observations, without the value bootstrap."""
    events, names, captured = ppo_run["events"], ppo_run["names"], ppo_run["captured"]
    assert scalars(events, "gates/num_samples") == {N_ENVS * N_STEPS * (r + 1): N_ENVS * N_STEPS for r in range(3)}
    # Every rollout makes n_steps acting forwards, then one for the value bootstrap that must not count.
    assert len(captured) == ROLLOUTS * (N_STEPS + 1)
    for r in range(ROLLOUTS):
        rollout = torch.cat(captured[r * (N_STEPS + 1) : r * (N_STEPS + 1) + N_STEPS])  # (n_envs * n_steps, m)
        step = N_ENVS * N_STEPS * (r + 1)
        expected_usage = (rollout > 0).double().mean(0)
        expected_weight = rollout.double().mean(0)
        for column, name in enumerate(names):
            usage, weight = scalars(events, f"gates/usage/{name}"), scalars(events, f"gates/weight/{name}")
            assert usage[step] == pytest.approx(float(expected_usage[column]), abs=1e-6)
            assert weight[step] == pytest.approx(float(expected_weight[column]), abs=1e-6)


def test_ppo_separate_extractors_get_their_own_prefix(tmp_path: Path) -> None:
    env = make_vec_env("CartPole-v1", n_envs=N_ENVS, seed=0)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=N_STEPS,
        batch_size=N_ENVS * N_STEPS,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs=hub_policy("random:2", k=1, share_features_extractor=False),
        tensorboard_log=str(tmp_path),
    )
    callback = GateUsageCallback(min_samples=1)
    model.learn(N_ENVS * N_STEPS, callback=callback)
    assert callback.extractors == {
        "gates": model.policy.pi_features_extractor,
        "gates/1": model.policy.vf_features_extractor,
    }
    tags = read_events(tmp_path).Tags()["scalars"]
    for prefix, extractor in callback.extractors.items():
        assert f"{prefix}/num_samples" in tags
        assert all(f"{prefix}/usage/{name}" in tags for name in extractor.expert_names)


def test_ppo_atari_images(tmp_path: Path) -> None:
    pytest.importorskip("ale_py")
    env = make_env("BreakoutNoFrameskip-v4", n_envs=2, seed=0)
    model = PPO(
        "CnnPolicy",
        env,
        n_steps=16,
        batch_size=32,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs=hub_policy("random:2", k=1),
        tensorboard_log=str(tmp_path),
    )
    model.learn(64, callback=GateUsageCallback(min_samples=1))
    env.close()
    events = read_events(tmp_path)
    extractor = model.policy.features_extractor
    assert isinstance(extractor, HubPathwayExtractor)
    names = extractor.expert_names
    tags = events.Tags()
    for tag in ("gates/entropy", "gates/balance_cv2", "gates/noise_std", "gates/num_samples"):
        assert tag in tags["scalars"]
    assert "gates/coactivation" in tags["images"]
    assert all(f"gates/usage/{name}" in tags["scalars"] for name in names)
    assert any(f"gates/weight_hist/{name}" in tags["histograms"] for name in names)
    last = {name: events.Scalars(f"gates/usage/{name}")[-1].value for name in names}
    assert sum(last.values()) == pytest.approx(1.0, abs=1e-5)
    assert scalars(events, "gates/num_samples") == {32: 32, 64: 32}


def test_dqn_counts_greedy_actions_only(tmp_path: Path) -> None:
    """Random (epsilon) actions make no forward; the target network's forwards are never counted."""
    total = 300
    model = DQN(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=1, seed=0),
        learning_starts=50,
        train_freq=4,
        buffer_size=1_000,
        batch_size=32,
        target_update_interval=50,
        exploration_fraction=0.5,
        exploration_initial_eps=1.0,
        exploration_final_eps=0.2,
        seed=0,
        device="cpu",
        policy_kwargs=hub_policy("random:2", k=1),
        tensorboard_log=str(tmp_path),
    )
    online, target = model.q_net.features_extractor, model.q_net_target.features_extractor
    assert isinstance(online, HubPathwayExtractor) and isinstance(target, HubPathwayExtractor)
    assert online is not target
    greedy = capture_acting_forwards(online)
    # A small window, so that several rollouts are recorded between two dumps (dumps follow episodes).
    callback = GateUsageCallback(min_samples=8)
    model.learn(total, callback=callback)
    assert list(callback.extractors.values()) == [online]
    # The target network made eval-mode forwards during the updates; counting them would inflate the total.
    assert target.acting_forwards > 0
    greedy_actions = sum(batch.shape[0] for batch in greedy)
    assert 0 < greedy_actions < total - 50  # the first 50 (learning_starts) steps and epsilon steps are random
    counted = read_events(tmp_path).Scalars("gates/num_samples")
    assert len(counted) > 1
    # Every dump averages what came since the previous one: none lost, none twice.
    assert sum(int(event.value) for event in counted) == greedy_actions


def test_model_without_hub_is_refused() -> None:
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, seed=0, device="cpu")
    with pytest.raises(ValueError, match="HubPathwayExtractor"):
        model.learn(16, callback=GateUsageCallback())


def test_concat_routes_adds_batches() -> None:
    router = NoisyTopKRouter(4, k=2, noise="fixed", noise_std=0.5)
    first = router(torch.randn(3, 4), None, torch.randn(3, 4))
    second = router(torch.randn(5, 4), None, torch.randn(5, 4))
    both = concat_routes([first, second])
    assert both.weights.shape == (8, 4) and both.indices.shape == (8, 2) and both.noise_std.shape == (8, 4)
    torch.testing.assert_close(both.importance, first.importance + second.importance)
    torch.testing.assert_close(both.load, first.load + second.load)
    torch.testing.assert_close(both.weights.sum(1), torch.ones(8))


def _screenshot_script() -> Any:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tensorboard_screenshot.py"
    spec = importlib.util.spec_from_file_location("tensorboard_screenshot", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_real_tensorboard_server_serves_the_gate_layout_and_every_expert_line(ppo_run: dict[str, Any]) -> None:
    import urllib.parse

    script = _screenshot_script()
    with script.tensorboard_server(ppo_run["folder"]) as port:

        def get(path: str) -> Any:
            return script.get_json(port, path)

        layout = get("/data/plugin/custom_scalars/layout")
        (category,) = layout["category"]
        charts = {chart["title"].split(":")[0]: chart["multiline"]["tag"] for chart in category["chart"]}
        assert set(charts) == {"usage", "weight", "confidence", "routing"}
        runs = get("/data/runs")
        main_run = next(run for run in runs if "experts" not in run)
        # each expert is a run of its own: TensorBoard gives it a colour and its name in the legend
        expert_runs = {run.rsplit("/", 1)[-1]: run for run in runs if "/experts/" in run}
        assert sorted(expert_runs) == sorted(ppo_run["names"])
        all_tags = get("/data/plugin/scalars/tags")
        for run in expert_runs.values():
            assert {"gates/usage", "gates/weight"} <= set(all_tags[run])
        tags = all_tags[main_run]
        import re

        for quantity in ("usage", "weight"):
            lines = [t for t in tags if any(re.search(pattern, t) for pattern in charts[quantity])]
            assert sorted(lines) == sorted(f"gates/{quantity}/{name}" for name in ppo_run["names"])
        query = urllib.parse.urlencode({"run": main_run, "tag": f"gates/usage/{ppo_run['names'][0]}"})
        points = get(f"/data/plugin/scalars/scalars?{query}")
        assert len(points) >= 1 and all(0.0 <= value <= 1.0 for _, _, value in points)


@pytest.mark.parametrize("view", ["experts", "coactivation"])
def test_a_headless_chromium_screenshots_the_gate_charts(ppo_run: dict[str, Any], tmp_path: Path, view: str) -> None:
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    script = _screenshot_script()
    out = tmp_path / "gates.png"
    size = ["--width", "900", "--height", "700"]
    assert script.main([str(ppo_run["folder"]), "--view", view, "--out", str(out), *size]) == 0
    from PIL import Image

    with Image.open(out) as picture:
        assert picture.size == (900, 700)
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # a drawn page, not a blank one
