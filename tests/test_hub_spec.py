"""Hub spec validation: every error names the file and the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hp_rl.hub import ExpertSpec, HubSpecError, parse_hub


def _write(tmp_path: Path, experts: list[dict[str, object]], **top: object) -> Path:
    (tmp_path / "a.safetensors").write_bytes(b"not really")
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump({"experts": experts, **top}))
    return path


@pytest.mark.parametrize(
    ("expert", "key"),
    [
        ({"name": "a", "source": "random", "input_shape": [4], "colour": "red"}, "colour"),
        ({"name": "a", "source": "safetensors", "path": "missing.safetensors"}, "path"),
        ({"name": "a", "source": "nonsense"}, "source"),
        ({"name": "a"}, "source"),
        ({"source": "random"}, "name"),
        ({"name": "a", "source": "random", "lr_scale": -1}, "lr_scale"),
        ({"name": "a", "source": "random", "lr_scale": "fast"}, "lr_scale"),
        ({"name": "a", "source": "random", "input_shape": [4, 0]}, "input_shape"),
        ({"name": "a", "source": "random", "features_dim": 0}, "features_dim"),
        ({"name": "a", "source": "random", "frozen": "yes"}, "frozen"),
        ({"name": "a", "source": "random", "options": [1, 2]}, "options"),
        ({"name": "a", "source": "random", "provenance": "x"}, "provenance"),
        ({"name": "a", "source": "safetensors", "path": "a.safetensors", "sha256": "abc"}, "sha256"),
        ({"name": "a", "source": "random", "arch": 3}, "arch"),
    ],
)
def test_bad_expert_entries_name_file_and_key(tmp_path: Path, expert: dict[str, object], key: str) -> None:
    path = _write(tmp_path, [expert])
    with pytest.raises(HubSpecError) as caught:
        parse_hub(str(path))
    message = str(caught.value)
    assert str(path) in message
    assert f"'{key}'" in message or f"['{key}']" in message


def test_duplicate_names_name_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"name": "a", "source": "random"}, {"name": "a", "source": "random"}])
    with pytest.raises(HubSpecError, match="duplicate expert name 'a'") as caught:
        parse_hub(str(path))
    assert str(path) in str(caught.value)


def test_unknown_top_level_key_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"name": "a", "source": "random"}], extra=1)
    with pytest.raises(HubSpecError, match=r"unknown top-level key\(s\) \['extra'\]"):
        parse_hub(str(path))
    with pytest.raises(HubSpecError, match="does not exist"):
        parse_hub(str(tmp_path / "absent.yaml"))
    (tmp_path / "bad.yaml").write_text("experts: [unclosed")
    with pytest.raises(HubSpecError, match="not valid YAML"):
        parse_hub(str(tmp_path / "bad.yaml"))


def test_relative_paths_resolve_against_the_spec_folder(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {
                "name": "a",
                "source": "safetensors",
                "path": "a.safetensors",
                "sha256": "ab" * 32,
                "provenance": {"env_id": "CartPole-v1"},
            }
        ],
    )
    hub = parse_hub(str(path))
    assert hub.experts[0].path == str(tmp_path / "a.safetensors")
    assert hub.experts[0].provenance == {"env_id": "CartPole-v1"}
    # as_dict round trips through parse_hub
    assert parse_hub(hub.as_dict()).experts == hub.experts


def test_string_entries() -> None:
    hub = parse_hub("hf:sb3/ppo-PongNoFrameskip-v4@abc123,hf:sb3/a2c-PongNoFrameskip-v4")
    assert hub.names == ("ppo-PongNoFrameskip-v4", "a2c-PongNoFrameskip-v4")
    assert hub.experts[0] == ExpertSpec(
        name="ppo-PongNoFrameskip-v4", source="hf", path="sb3/ppo-PongNoFrameskip-v4", options={"revision": "abc123"}
    )
    assert parse_hub("random:3").names == ("random0", "random1", "random2")
    with pytest.raises(HubSpecError, match="Cannot tell the source"):
        parse_hub("weights.bin")


@pytest.mark.parametrize(
    "name", ["control_finetune_example.yml", "zoo_atari_leave_breakout.yml", "imagenet_backbones.yml"]
)
def test_example_specs_are_valid(name: str) -> None:
    from hp_rl.core.paths import HUB_CONFIG_DIR

    hub = parse_hub(str(HUB_CONFIG_DIR / name))
    assert len(hub.experts) >= 2
    if name.startswith("zoo"):
        assert len(hub.experts) == 18 and all(e.source == "hf" for e in hub.experts)


def test_shipped_specs_are_found_by_name_and_their_path_variables_expand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hp_rl.core.paths import BUNDLED_HUB_DIR, HUB_CONFIG_DIR, named_hub_spec

    monkeypatch.chdir(tmp_path)  # from any working directory
    spec = parse_hub("control_finetune_example")
    assert spec.origin == str(HUB_CONFIG_DIR / "control_finetune_example.yml")
    assert spec.experts[0].path == str(BUNDLED_HUB_DIR / "control" / "acrobot.safetensors")
    assert named_hub_spec("minatar_bundled") is None  # recipes are not hub specs
    assert named_hub_spec("../etc/passwd") is None and named_hub_spec("a.yml") is None
    # A local file of the same name wins over the shipped spec.
    (tmp_path / "control_finetune_example").write_bytes(b"")
    with pytest.raises(HubSpecError):
        parse_hub("control_finetune_example")


def test_package_data_folders_resolve_to_the_checkout_and_builds_stay_out_of_the_package() -> None:
    from hp_rl.core import paths

    assert (paths.CONFIG_DIR / "ppo.yml").is_file() and (paths.ENV_PRESET_DIR / "minatar.yml").is_file()
    assert paths.IN_CHECKOUT and paths.BUILD_ROOT == paths.PROJECT_ROOT / "hub_build"
    assert paths.expand_path_variables("${HP_RL_BUILD}/x.pt") == str(paths.BUILD_ROOT / "x.pt")
    assert paths.expand_path_variables("a/${HP_RL_BUILD}") == "a/${HP_RL_BUILD}"  # only a leading variable
