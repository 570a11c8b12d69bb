"""The example scripts in ``agents/`` run end to end on a tiny budget, as a user would run them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "agents"

# Script -> extra arguments that shrink it to a few hundred steps with at least one update.
TINY: dict[str, list[str]] = {
    "ppo_breakout_hub.py": [
        "--timesteps",
        "64",
        "--n-envs",
        "2",
        "--n-steps",
        "32",
        "--batch-size",
        "32",
        "--n-epochs",
        "1",
        "--hub",
        "random:2",
        "-k",
        "1",
    ],
    "dqn_cartpole_hub.py": [
        "--timesteps",
        "200",
        "--learning-starts",
        "100",
        "--train-freq",
        "50",
        "--gradient-steps",
        "2",
        "--hub",
        "random:3",
    ],
    "sac_pendulum_hub.py": ["--timesteps", "150", "--learning-starts", "100", "--hub", "random:3"],
    "a2c_minatar_hub.py": ["--timesteps", "200", "--n-envs", "4", "--hub", "random:3"],
}


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), AGENTS / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_agent_script_is_tested() -> None:
    scripts = sorted(path.name for path in AGENTS.glob("*.py") if not path.name.startswith("_"))
    assert scripts == sorted(TINY), "add the new script to TINY so that it is run by the tests"
    assert len(scripts) >= 3
    for name in scripts:  # what a user reads first: the docstring says what the script shows
        source = (AGENTS / name).read_text()
        assert source.startswith('"""') and "What this shows" in source
        assert "from hp_rl import GateUsageCallback, HubPathwayExtractor" in source


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_agent_script_runs_saves_and_reloads(script: str, tmp_path: Path) -> None:
    save_path = tmp_path / "model.zip"
    tensorboard = tmp_path / "tb"
    command = [
        sys.executable,
        str(AGENTS / script),
        *TINY[script],
        "--seed",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--save-path",
        str(save_path),
        "--tensorboard-log",
        str(tensorboard),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert save_path.is_file() and save_path.stat().st_size > 0
    # The reload check printed the two actions and found them equal (else the exit code is not 0).
    assert "actions" in completed.stdout and "reloaded" in completed.stdout
    # Gate usage reached TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = list(tensorboard.rglob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file was written"
    tags: set[str] = set()
    for path in event_files:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags.update(accumulator.Tags()["scalars"])
    assert any(tag.startswith("gates/usage/") for tag in tags), sorted(tags)


def test_minatar_script_expands_random_hub_to_resizable_experts() -> None:
    hub_for = _load_script("a2c_minatar_hub.py").hub_for
    hub = hub_for("random:3", channels=4, expert_size=36)
    assert [expert["input_shape"] for expert in hub["experts"]] == [[4, 36, 36]] * 3
    assert {expert["arch"] for expert in hub["experts"]} == {"nature_cnn"}
    assert hub_for("hub.yml", channels=4, expert_size=36) == "hub.yml"  # other hubs pass through unchanged
