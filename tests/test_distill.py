"""``python -m hp_rl.distill``: the student learns the hub agent's policy, and its zip loads in plain SB3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from stable_baselines3 import PPO

from hp_rl import distill as distill_cli
from hp_rl import train as train_cli


def _run(tmp_path: Path, *argv: str) -> Path:
    args = ["--no-progress", "--eval-freq", "0", "--tensorboard-log", str(tmp_path), *argv]
    assert train_cli.main(args) == 0
    (run,) = [p for p in tmp_path.iterdir() if (p / "config.yml").is_file()]
    return run


def _load_without_hp_rl(zip_path: Path, observations: np.ndarray) -> np.ndarray:
    """Deterministic actions of ``zip_path`` in a Python where ``import hp_rl`` fails."""
    code = (
        "import sys; sys.modules['hp_rl'] = None\n"
        "import numpy as np\nfrom stable_baselines3 import PPO\n"
        f"model = PPO.load({str(zip_path)!r}, device='cpu')\n"
        f"obs = np.load({str(zip_path.with_suffix('.npy'))!r})\n"
        "print(' '.join(str(int(a)) for a in model.predict(obs, deterministic=True)[0]))\n"
    )
    np.save(zip_path.with_suffix(".npy"), observations)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return np.array([int(a) for a in out.stdout.split()])


def test_the_student_learns_the_teachers_policy_and_loads_in_plain_sb3(tmp_path: Path) -> None:
    hub = ["--hub", "random:2", "--hub-set", "preset=paper", "-k", "1"]  # a hub agent that routes its experts
    run = _run(tmp_path / "runs", "--env", "CartPole-v1", *hub, "-n", "4096")
    args = [str(run), "--steps", "3000", "--rounds", "6", "--episodes", "3"]
    assert distill_cli.main(args) == 0
    record = yaml.safe_load((run / "distill.yml").read_text())
    kls = [entry["kl_before"] for entry in record["rounds"]]
    assert kls[-1] < 0.5 * kls[0]  # the student comes to act as the teacher does
    assert record["distill_steps"] <= 3000 and record["student_parameters"] < record["teacher_parameters"]
    student = PPO.load(run / "student.zip", device="cpu")
    observations = np.random.default_rng(0).normal(0, 0.5, (32, 4)).astype(np.float32)
    expected = student.predict(observations, deterministic=True)[0]
    np.testing.assert_array_equal(_load_without_hp_rl(run / "student.zip", observations), expected)


def test_a_minatar_student_carries_its_small_frame_network(tmp_path: Path) -> None:
    pytest.importorskip("minatar")
    run = _run(tmp_path / "runs", "--env", "MinAtar/Breakout-v1", "--hub", "random:2", "-k", "1", "-n", "512")
    assert distill_cli.main([str(run), "--steps", "256", "--rounds", "2", "--epochs", "1", "--episodes", "1"]) == 0
    student = PPO.load(run / "student.zip", device="cpu")
    assert type(student.policy.features_extractor).__name__ == "SmallFrameCNN"
    observations = (np.random.default_rng(1).random((8, *student.observation_space.shape)) > 0.8).astype(np.float32)
    expected = student.predict(observations, deterministic=True)[0]
    np.testing.assert_array_equal(_load_without_hp_rl(run / "student.zip", observations), expected)


def test_runs_without_a_policy_to_copy_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = _run(tmp_path / "plain", "--env", "CartPole-v1", "--hub", "none", "-n", "256")
    assert distill_cli.main([str(plain)]) == 2
    assert "one network already" in capsys.readouterr().err
    dqn = _run(tmp_path / "dqn", "--algo", "dqn", "--env", "CartPole-v1", "--hub", "random:2", "-k", "1", "-n", "256")
    assert distill_cli.main([str(dqn)]) == 2
    assert "PPO and A2C" in capsys.readouterr().err
    assert distill_cli.main([str(tmp_path / "nowhere")]) == 2
