"""``--hub auto``: leave-X-out rl-zoo hub when cached or reachable, else the bundled hub, decided fast."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from hp_rl.core.paths import BUNDLED_HUB_DIR
from hp_rl.hub import ExpertSpec, NoFittingHubError, defaults, load_expert, load_hub, parse_hub, resolve_auto_hub
from hp_rl.hub.defaults import atari_game, choose_auto_hub, task_key, zoo_repos
from hp_rl.hub.export import ExportItem, export_hub
from hp_rl.hub_cli import BUNDLED_LIMIT_BYTES

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GAMES = {"qbert": "QbertNoFrameskip-v4", "seaquest": "SeaquestNoFrameskip-v4", "pong": "PongNoFrameskip-v4"}


@pytest.fixture()
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline mode, an empty Hugging Face cache and a private hp_rl cache in tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HP_RL_CACHE", str(tmp_path / "hp_rl"))
    return tmp_path / "hf"


@pytest.fixture()
def atari_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small stand-in for the bundled Atari hub (random NatureCNN trunks on 36x36 frames)."""
    items = []
    for index, (name, env_id) in enumerate(GAMES.items()):
        spec = ExpertSpec(
            name=name,
            source="random",
            arch="nature_cnn",
            input_shape=(4, 36, 36),
            features_dim=16,
            options={"seed": index},
        )
        items.append(ExportItem(name, load_expert(spec), {"env_id": env_id, "algo": "a2c", "steps": 10}))
    manifest = export_hub(items, tmp_path / "bundled_atari", description="test hub")
    monkeypatch.setitem(defaults.BUNDLED_HUBS, "atari", manifest)
    return manifest


def test_game_names() -> None:
    assert atari_game("BreakoutNoFrameskip-v4") == "Breakout"
    assert atari_game("ALE/MsPacman-v5") == "MsPacman"
    assert atari_game("CartPole-v1") is None
    assert task_key("CartPole-v0") == task_key("CartPole-v1") == "CartPole"
    repos = zoo_repos("Breakout")
    assert len(repos) == 18 and "sb3/ppo-PongNoFrameskip-v4" in repos and "sb3/a2c-EnduroNoFrameskip-v4" in repos
    assert not any("Breakout" in repo for repo in repos)


def test_offline_falls_back_to_the_bundled_hub_fast(
    offline: Path, atari_hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    spec = resolve_auto_hub("BreakoutNoFrameskip-v4", "atari")
    assert time.perf_counter() - started < 3.0
    assert spec == str(atari_hub)
    lines = capsys.readouterr().out.strip().splitlines()  # the console log the command lines configure
    assert len(lines) == 1
    assert "bundled-atari" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert set(load_hub(spec)) == set(GAMES)


def test_target_game_is_left_out_of_the_bundled_hub(offline: Path, atari_hub: Path) -> None:
    choice = choose_auto_hub("ALE/Qbert-v5", "atari")
    assert "qbert" in choice.reason
    hub = parse_hub(choice.spec)
    assert hub.names == ("seaquest", "pong")
    assert all(expert.sha256 for expert in hub.experts)
    experts = load_hub(hub)
    assert experts["pong"].provenance.details["env_id"] == "PongNoFrameskip-v4"
    # Deciding twice gives the same file (no churn in the cache).
    assert choose_auto_hub("QbertNoFrameskip-v4", "atari").spec == choice.spec


def test_unreachable_hub_falls_back_within_seconds(
    offline: Path, atari_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.perf_counter()
    choice = choose_auto_hub("BreakoutNoFrameskip-v4", "atari", reach_timeout=2.0)
    assert time.perf_counter() - started < 3.0
    assert choice.name == "bundled-atari" and "unreachable" in choice.reason


def test_zoo_agents_in_the_cache_are_used_pinned(offline: Path, atari_hub: Path) -> None:
    for repo in zoo_repos("Breakout"):
        snapshot = offline / ("models--" + repo.replace("/", "--")) / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        (snapshot / f"{repo.split('/')[-1]}.zip").write_bytes(b"zip")
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    choice = choose_auto_hub("BreakoutNoFrameskip-v4", "atari")
    assert choice.name == "zoo-leave-Breakout-out"
    hub = parse_hub(choice.spec)
    assert len(hub.experts) == 18
    assert all(e.source == "hf" and e.options["revision"] == COMMIT for e in hub.experts)
    if pytest.importorskip("ale_py"):  # each agent's game's actions, so its policy head maps onto the target's
        pong = next(e for e in hub.experts if e.name == "ppo-pong")
        assert pong.action_meanings == ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
        assert all(e.action_meanings for e in hub.experts)
    # One agent missing: offline, so the bundled hub.
    (offline / "models--sb3--a2c-PongNoFrameskip-v4" / "snapshots" / COMMIT / "a2c-PongNoFrameskip-v4.zip").unlink()
    assert choose_auto_hub("BreakoutNoFrameskip-v4", "atari").name == "bundled-atari"


def test_control_tasks_get_the_bundled_control_hub(offline: Path) -> None:
    choice = choose_auto_hub("CartPole-v1", "control")
    assert choice.name == "bundled-control"
    hub = parse_hub(choice.spec)
    assert "cartpole" not in hub.names and len(hub.names) >= 3
    experts = load_hub(hub, observation_shape=(4,))
    assert all(expert.info.input_kind == "vector" for expert in experts.values())


def test_pixels_family_gets_image_experts(offline: Path, atari_hub: Path) -> None:
    assert choose_auto_hub("CartPole-v1", "control_pixels").spec == str(atari_hub)


def test_no_fitting_hub_names_the_ways_to_give_one(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(defaults._FAMILY_HUB, "minatar")
    with pytest.raises(NoFittingHubError) as caught:
        resolve_auto_hub("MinAtar/Breakout-v1", "minatar")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    for way in ("--hub path.yaml", "a.zip,b.safetensors", "random:4", "--hub none"):
        assert way in message


def test_minatar_games_get_the_bundled_minatar_hub_without_the_target(offline: Path) -> None:
    choice = choose_auto_hub("MinAtar/Breakout-v1", "minatar")
    assert choice.name == "bundled-minatar"
    hub = parse_hub(choice.spec)
    # leave-target-out drops the default-setting expert and its variants alike
    assert not any(name.startswith("breakout") for name in hub.names)
    assert {"asterix", "freeway", "seaquest", "space_invaders"} <= set(hub.names)
    experts = load_hub(hub, observation_shape=(4, 10, 10))
    assert all(expert.heads is not None and expert.heads.value_weight is not None for expert in experts.values())
    assert all(expert.channel_names and expert.action_meanings for expert in hub.experts)


def test_bundled_minatar_hub_meets_its_recipe() -> None:
    hub = parse_hub(str(BUNDLED_HUB_DIR / "minatar" / "hub.yaml"))
    games = {"asterix", "breakout", "freeway", "seaquest", "space_invaders"}
    assert games <= set(hub.names)
    for expert in hub.experts:
        steps = int(expert.provenance["steps"])
        assert steps >= (2_000_000 if expert.name in games else 1_000_000)
        assert float(expert.provenance["source_return"]) > float(expert.provenance["random_return"])
        assert (expert.name in games) == ("env_kwargs" not in expert.provenance)


def test_missing_bundled_hub_is_a_clear_error(offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(defaults.BUNDLED_HUBS, "atari", tmp_path / "nowhere" / "hub.yaml")
    with pytest.raises(NoFittingHubError, match="missing"):
        choose_auto_hub("BreakoutNoFrameskip-v4", "atari")


def test_bundled_hubs_are_small_and_valid() -> None:
    total = sum(p.stat().st_size for p in BUNDLED_HUB_DIR.rglob("*") if p.is_file())
    assert total < BUNDLED_LIMIT_BYTES
    for manifest in BUNDLED_HUB_DIR.glob("*/hub.yaml"):
        hub = parse_hub(str(manifest))
        assert len(hub.experts) >= 4
        for expert in hub.experts:
            assert expert.source == "safetensors" and expert.sha256
            for key in (
                "recipe",
                "command",
                "algo",
                "env_id",
                "steps",
                "seed",
                "source_return",
                "random_return",
                "size_bytes",
            ):
                assert key in expert.provenance, f"{manifest}: {expert.name} lacks provenance {key!r}"


def test_bundled_atari_hub_meets_its_recipe() -> None:
    hub = parse_hub(str(BUNDLED_HUB_DIR / "atari" / "hub.yaml"))
    games = {expert.provenance["env_id"] for expert in hub.experts}
    assert len(games) == len(hub.experts) >= 4 and not any("Breakout" in game for game in games)
    for expert in hub.experts:
        assert int(expert.provenance["steps"]) >= 500_000
        assert float(expert.provenance["source_return"]) > float(expert.provenance["random_return"])
    experts = load_hub(hub, (4, 84, 84))
    frames = torch.rand(2, 4, 84, 84)
    assert all(e(frames).shape == (2, 512) for e in experts.values())


def test_the_shipped_zoo_spec_names_each_game_s_actions() -> None:
    pytest.importorskip("ale_py")
    from hp_rl.core.paths import HUB_CONFIG_DIR
    from hp_rl.hub.defaults import ale_action_meanings

    hub = parse_hub(str(HUB_CONFIG_DIR / "zoo_atari_leave_breakout.yml"))
    for expert in hub.experts:
        game = expert.path.split("-", 1)[1].removesuffix("NoFrameskip-v4")
        assert expert.action_meanings == ale_action_meanings(game), expert.name
