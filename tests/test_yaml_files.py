"""The one strict YAML reader: repeated keys, bad bytes and wrong shapes are refused, naming file, line and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hp_rl.core.overrides import ConfigError, parse_overrides
from hp_rl.core.yaml_files import check_keys, load_yaml_text, read_yaml, read_yaml_mapping


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
    from hp_rl.core.errors import HpRlError

    path = tmp_path / "file.yml"
    path.write_text(text)
    with pytest.raises(HpRlError, match=message) as caught:
        if reader == "recipe":
            from hp_rl.rl.pretraining import load_recipe

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


def test_a_small_file_cannot_expand_without_bound_or_nest_past_the_stack(tmp_path: Path) -> None:
    import time

    from hp_rl.core.errors import HpRlError
    from hp_rl.hub import parse_hub

    # "billion laughs": 9 levels of 9 aliases each, 9^9 values from a few hundred bytes
    rows = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    rows += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "hub.yml"
    bomb.write_text("\n".join(rows) + "\nexperts: *a8\n")
    started = time.perf_counter()
    with pytest.raises(HpRlError, match="billion laughs"):
        parse_hub(str(bomb))
    assert time.perf_counter() - started < 2.0
    deep = tmp_path / "deep.yml"
    deep.write_text("experts: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(HpRlError, match="nested"):
        parse_hub(str(deep))
    ordinary = tmp_path / "ok.yml"  # a few aliases, as people use them, still read
    ordinary.write_text("description: &d shared\nexperts: [{source: random, name: a, options: {note: *d}}]\n")
    assert parse_hub(str(ordinary)).names == ("a",)


def test_messages_are_a_paragraph_without_terminal_escapes() -> None:
    from hp_rl.core.errors import MAX_MESSAGE_CHARS, HpRlError, error_message

    message = error_message(HpRlError("\x1b[31mred\x1b[0m " + "x" * 10**6))
    assert "\x1b" not in message and "\\x1b[31mred" in message and len(message) <= MAX_MESSAGE_CHARS + 10
