"""The one strict YAML reader: repeated keys, bad bytes and wrong shapes are refused, naming file, line and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hp_rl.overrides import ConfigError, parse_overrides
from hp_rl.yaml_files import check_keys, load_yaml_text, read_yaml, read_yaml_mapping


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "spec.yml"
    path.write_text("experts:\n  - name: a\n    source: random\n    name: b\n")
    with pytest.raises(ConfigError, match=r"spec\.yml: line 4: the key 'name' is given a second time.*line 2"):
        read_yaml(path)


def test_merge_keys_may_override_what_they_merge() -> None:
    # YAML's << merge is not a repeated key: a mapping may override what it merges.
    assert load_yaml_text("base: &b {lr: 1, n: 2}\nrun:\n  <<: *b\n  lr: 3\n", "x") == {
        "base": {"lr": 1, "n": 2},
        "run": {"lr": 3, "n": 2},
    }


def test_python_objects_are_never_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml_text("!!python/object/apply:os.system ['echo hacked']", "payload.yml")


def test_unreadable_files_name_the_file_and_what_it_is(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yml: the hub spec is not UTF-8 text"):
        read_yaml(latin, "hub spec")
    with pytest.raises(ConfigError, match=r"missing\.yml: cannot read the recipe"):
        read_yaml(tmp_path / "missing.yml", "recipe")
    listing = tmp_path / "list.yml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of keys at the top level, not list"):
        read_yaml_mapping(listing, "recipe")
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert read_yaml_mapping(empty, allow_empty=True) == {}
    with pytest.raises(ConfigError, match="not NoneType"):
        read_yaml_mapping(empty)


def test_unknown_keys_suggest_the_closest_allowed_one() -> None:
    with pytest.raises(ConfigError, match=r"recipe\.yml: unknown key 'n_timestep' \(did you mean 'n_timesteps'\?\)"):
        check_keys({"n_timestep": 5}, {"n_timesteps", "seed"}, "recipe.yml")
    check_keys({"seed": 1}, {"n_timesteps", "seed"}, "recipe.yml")


def test_overrides_use_the_same_reader() -> None:
    assert parse_overrides(["lr=3e-4", "net=[64, 64]"]) == {"lr": 3e-4, "net": [64, 64]}
    with pytest.raises(ConfigError, match="given a second time"):
        parse_overrides(["policy_kwargs={a: 1, a: 2}"])


def test_every_file_the_package_reads_goes_through_the_reader() -> None:
    # One reader: no module but the reader itself (and the override parser it serves) calls PyYAML's loaders.
    package = Path(__file__).resolve().parents[1] / "hp_rl"
    callers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "yaml_files.py" and ("yaml.safe_load(" in (text := path.read_text()) or "yaml.load(" in text)
    )
    assert callers == [], callers


@pytest.mark.parametrize(
    ("reader", "text", "message"),
    [
        ("recipe", "algo: ppo\nalgo: a2c\ntasks: []\n", "given a second time"),
        ("recipe", "algo: ppo\ntask: []\n", "unknown key"),
        ("run_config", "algo: ppo\nalgo: ppo\n", "given a second time"),
        ("vision_config", "data: x\ndata: y\n", "given a second time"),
        ("vision_config", "data: x\nlr: 1e-3\nlearning_rate: 2\n", "unknown key 'learning_rate'"),
        ("hub_spec", "experts: []\nexperts: []\n", "given a second time"),
    ],
)
def test_each_kind_of_file_refuses_repeated_and_unknown_keys(
    tmp_path: Path, reader: str, text: str, message: str
) -> None:
    from hp_rl.errors import HpRlError

    path = tmp_path / "file.yml"
    path.write_text(text)
    with pytest.raises(HpRlError, match=message) as caught:
        if reader == "recipe":
            from hp_rl.rl.hub_builder import load_recipe

            load_recipe(path)
        elif reader == "run_config":
            from hp_rl.rl.runs import RunConfig

            RunConfig.from_yaml(path)
        elif reader == "vision_config":
            from hp_rl.vision.config import TrainConfig

            TrainConfig.from_yaml(path)
        else:
            from hp_rl.hub import parse_hub

            parse_hub(str(path))
    assert str(path) in str(caught.value)
