"""Files from elsewhere, round two: declared sizes are checked before anything is allocated, a TorchScript file
(a program) is never run to be looked at and runs from a run folder only when the user trusts it, and damaged
checkpoints fall back to the one before."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hp_rl import evaluate as evaluate_cli
from hp_rl import hub_cli
from hp_rl import train as train_cli
from hp_rl.core.archive import ArchiveError, check_npz_file, check_safetensors_file, read_sb3_archive
from hp_rl.hub import CheckpointError, HubSpecError, load_hub
from hp_rl.hub.trusted_code import CODE_TIMEOUT_ENV, TimeBoundedCode, code_timeout_s, trust_file, trusted_digests
from hp_rl.rl.runs import checkpoints_by_step
from hp_rl.vision.data import DataError, load_npz

TINY = ["--algo", "a2c", "--env", "CartPole-v1", "--n-envs", "2", "--set", "n_steps=8", "--no-progress"]


def _safetensors(path: Path, header: dict[str, object], data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_safetensors_sizes_are_checked_before_reading(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(3, 4)}, str(good), metadata={"arch": "mlp"})
    assert check_safetensors_file(good) == {"arch": "mlp"}
    huge_header = tmp_path / "header.safetensors"
    huge_header.write_bytes(struct.pack("<Q", 32 * 2**30) + b"{}")
    with pytest.raises(ArchiveError, match="declares 34359738368 bytes"):
        check_safetensors_file(huge_header)
    beyond = _safetensors(
        tmp_path / "tensor.safetensors", {"w": {"dtype": "F32", "shape": [2**20, 2**17], "data_offsets": [0, 2**39]}}
    )
    with pytest.raises(ArchiveError, match="holds 0 bytes of data"):
        check_safetensors_file(beyond)
    deep = _safetensors(tmp_path / "deep.safetensors", {})
    raw = b"[" * 200_000 + b"]" * 200_000
    deep.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(ArchiveError, match="nested too deeply"):
        check_safetensors_file(deep)
    spec = {"experts": [{"name": "x", "source": "safetensors", "path": str(beyond), "arch": "mlp", "input_shape": [4]}]}
    with pytest.raises(CheckpointError, match=r"'x'.*declares"):
        load_hub(spec)


def _npz_declaring(path: Path, shape: tuple[int, ...]) -> Path:
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    buffer = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", buffer.getvalue() + b"\0" * 64)
        archive.writestr("labels.npy", buffer.getvalue())
    return path


def test_npz_arrays_declaring_terabytes_are_refused(tmp_path: Path) -> None:
    bomb = _npz_declaring(tmp_path / "bomb.npz", (2**20, 2**20, 1))  # 8 TiB in a few hundred bytes
    assert bomb.stat().st_size < 1024
    with pytest.raises(ArchiveError, match=r"declares shape \(1048576, 1048576, 1\)"):
        check_npz_file(bomb)
    with pytest.raises(DataError, match="declares shape"):
        load_npz(bomb)
    fine = tmp_path / "fine.npz"
    np.savez(fine, images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4) % 2)
    check_npz_file(fine)
    assert len(load_npz(fine)) == 4


def test_a_checkpoint_nested_too_deeply_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    assert train_cli.main([*TINY, "--eval-freq", "0", "--tensorboard-log", str(tmp_path), "--hub", "none", "-n", "64",
                           "--save-freq", "16"]) == 0  # fmt: skip
    (run,) = [p for p in tmp_path.iterdir() if (p / "config.yml").is_file()]
    newest, _ = checkpoints_by_step(run / "checkpoints")[0]
    with zipfile.ZipFile(newest) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["data"] = b"[" * 300_000 + b"]" * 300_000
    with zipfile.ZipFile(newest, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    with pytest.raises(ArchiveError, match="nested too deeply"):
        read_sb3_archive(newest)
    (run / "model.zip").unlink()
    assert train_cli.main(["--resume", str(run), "-n", "80", "--no-progress"]) == 0
    assert read_sb3_archive(run / "model.zip", tensors=False).data["num_timesteps"] == 80


class _Trunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.layer(x))


def _torchscript(path: Path, facts: dict[str, object] | None = None) -> Path:
    extra = {"facts.json": json.dumps(facts)} if facts is not None else {}
    torch.jit.save(torch.jit.script(_Trunk()), str(path), _extra_files=extra)
    return path


def test_torchscript_shapes_come_from_the_file_or_the_spec_never_from_running_it(tmp_path: Path) -> None:
    bare = _torchscript(tmp_path / "bare.pt")
    with pytest.raises(HubSpecError, match=r"add 'features_dim'.*does not run it"):
        load_hub(str(bare), observation_shape=(4,))
    described = _torchscript(tmp_path / "described.pt", {"features_dim": 6, "input_shape": [4]})
    expert = load_hub(str(described))["described"]
    assert expert.info.features_dim == 6 and expert.info.input_shape == (4,)
    spec = {"experts": [{"name": "b", "source": "torchscript", "path": str(bare), "features_dim": 6}]}
    assert load_hub(spec, observation_shape=(4,))["b"].info.features_dim == 6


def test_inspect_describes_a_torchscript_file_without_loading_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not loadable at all: a loader would fail on it, so a description proves nothing was loaded.
    fake = tmp_path / "fake.pt"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("fake/extra/facts.json", json.dumps({"features_dim": 6, "input_shape": [4]}))
        archive.writestr("fake/code/__torch__/evil.py", "def forward(self): ...")
        archive.writestr("fake/data.pkl", b"not a pickle")
    assert hub_cli.main(["inspect", str(fake)]) == 0
    out = capsys.readouterr().out
    assert "program (TorchScript)" in out and "inspect did not load it" in out
    assert "hp_rl.hub trust" in out and "(4,)" in out


class _HangsLater(nn.Module):
    """Plays for ``fine_calls`` forwards, then never returns (TorchScript releases the GIL meanwhile)."""

    def __init__(self, fine_calls: int) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 6)
        self.register_buffer("calls", torch.zeros(()))
        self.fine_calls = fine_calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        spins = 0
        while bool(self.calls > self.fine_calls) and spins >= 0:
            spins += 1
        return torch.relu(self.layer(x))


def test_a_torchscript_forward_that_never_returns_stops_the_run_keeping_its_checkpoints(tmp_path: Path) -> None:
    trunk = tmp_path / "later.pt"
    torch.jit.save(torch.jit.script(_HangsLater(200)), str(trunk), _extra_files={"facts.json": '{"features_dim": 6}'})
    runs = tmp_path / "runs"
    env = {**os.environ, CODE_TIMEOUT_ENV: "2", "HP_RL_CACHE": str(tmp_path / "cache")}
    args = [*TINY, "--eval-freq", "0", "--tensorboard-log", str(runs), "--hub", str(trunk), "-k", "1"]
    args += ["--hub-set", "preset=paper"]  # no scoring before training: the hang comes after a few checkpoints
    command = [sys.executable, "-m", "hp_rl.train", *args, "-n", "4096", "--save-freq", "8"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "expert 'later' (TorchScript) has run for more than 2 s" in done.stderr and "--resume" in done.stderr
    (run,) = [p for p in runs.iterdir() if (p / "config.yml").is_file()]
    assert checkpoints_by_step(run / "checkpoints")  # what was trained before the hang is kept


def test_the_time_bound_leaves_a_torchscript_trunk_s_weights_and_outputs_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = torch.jit.script(_Trunk())
    bounded = TimeBoundedCode(code, "t")
    assert list(bounded.state_dict()) == list(code.state_dict()) == ["layer.weight", "layer.bias"]
    state = {key: torch.full_like(value, 0.5) for key, value in code.state_dict().items()}
    bounded.load_state_dict(state)
    assert torch.equal(code.layer.weight, torch.full((6, 4), 0.5))
    x = torch.randn(3, 4)
    assert torch.equal(bounded(x), code(x))
    monkeypatch.setenv(CODE_TIMEOUT_ENV, "soon")
    with pytest.raises(HubSpecError, match=f"{CODE_TIMEOUT_ENV}='soon' is not a number of seconds"):
        code_timeout_s()


def test_a_run_folder_runs_torchscript_only_when_the_user_trusts_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trunk = _torchscript(tmp_path / "trunk.pt", {"features_dim": 6, "input_shape": [4]})
    runs = tmp_path / "runs"
    args = [*TINY, "--eval-freq", "0", "--tensorboard-log", str(runs), "--hub", str(trunk), "-k", "1"]
    assert train_cli.main([*args, "-n", "32", "--save-freq", "16"]) == 0
    (run,) = [p for p in runs.iterdir() if (p / "config.yml").is_file()]
    assert trusted_digests()  # given on the command line: recorded, so the user's own run resumes
    assert train_cli.main(["--resume", str(run), "-n", "48", "--no-progress"]) == 0
    trust_file().unlink()  # the same folder on a machine whose user never ran it
    capsys.readouterr()
    assert train_cli.main(["--resume", str(run), "-n", "64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "TorchScript" in err and f"python -m hp_rl.hub trust {trunk}" in err
    assert evaluate_cli.main([str(run), "--episodes", "1"]) == 2
    assert hub_cli.main(["trust", str(trunk)]) == 0
    assert evaluate_cli.main([str(run), "--episodes", "1"]) == 0


def _race_for_lock(path: str, start: float, queue: object) -> None:
    import time

    from hp_rl.core.run_folder import RunLockedError, acquire_lock

    time.sleep(max(0.0, start - time.time()))
    try:
        acquire_lock(Path(path))
        queue.put("won")  # type: ignore[attr-defined]
        time.sleep(0.3)  # hold it while the other tries
    except RunLockedError:
        queue.put("refused")  # type: ignore[attr-defined]


def test_two_processes_never_both_take_a_stale_lock(tmp_path: Path) -> None:
    import multiprocessing
    import time

    context = multiprocessing.get_context("fork")
    for trial in range(8):
        lock = tmp_path / f"run{trial}.lock"
        lock.write_text("1")  # stale: names a process that does not hold it
        queue = context.Queue()
        start = time.time() + 0.2
        racers = [context.Process(target=_race_for_lock, args=(str(lock), start, queue)) for _ in range(2)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(10)
        assert sorted(queue.get(timeout=5) for _ in racers) == ["refused", "won"]


def test_a_checkpoint_named_for_steps_it_does_not_hold_is_not_trusted(tmp_path: Path) -> None:
    assert train_cli.main([*TINY, "--eval-freq", "0", "--tensorboard-log", str(tmp_path), "--hub", "none", "-n", "32",
                           "--save-freq", "16"]) == 0  # fmt: skip
    (run,) = [p for p in tmp_path.iterdir() if (p / "config.yml").is_file()]
    newest, _ = checkpoints_by_step(run / "checkpoints")[0]
    (run / "checkpoints" / "rl_model_999999_steps.zip").symlink_to(newest)  # a link: not a checkpoint at all
    assert checkpoints_by_step(run / "checkpoints")[0][0] == newest
    (run / "checkpoints" / "rl_model_999999_steps.zip").unlink()
    (run / "checkpoints" / "rl_model_999999_steps.zip").write_bytes(newest.read_bytes())  # a copy under a false name
    assert train_cli.main(["--resume", str(run), "-n", "48", "--no-progress"]) == 0  # not "already trained"
    assert read_sb3_archive(run / "model.zip", tensors=False).data["num_timesteps"] == 48


def test_a_replay_buffer_that_cannot_fit_in_memory_is_refused_before_it_is_allocated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--algo", "dqn", "--env", "CartPole-v1", "--hub", "none", "--no-progress", "-n", "64"]
    runs = tmp_path / "runs"
    # 10^11 rows of 4 floats: 3.2 TB, more than any machine has free
    assert train_cli.main([*args, "--tensorboard-log", str(runs), "--set", "buffer_size=100000000000"]) == 2
    err = capsys.readouterr().err
    assert "replay buffer needs" in err and "--set buffer_size=" in err
    assert not runs.exists() or not any(runs.iterdir())
    fits = int(err.split("--set buffer_size=")[1].split()[0])
    assert train_cli.main([*args, "--tensorboard-log", str(runs), "--set", f"buffer_size={min(fits, 1000)}"]) == 0


class _Faulty(__import__("gymnasium").Env):  # type: ignore[misc]
    """CartPole-sized environment that goes wrong after five steps in the way ``fault`` names."""

    import gymnasium.spaces as _spaces

    observation_space = _spaces.Box(-1, 1, (4,), np.float32)
    action_space = _spaces.Discrete(2)

    def __init__(self, fault: str = "none") -> None:
        self.fault, self.t = fault, 0

    def reset(self, *, seed: int | None = None, options: dict[str, object] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action: int) -> tuple[object, float, bool, bool, dict]:
        self.t += 1
        obs: object = np.zeros(4, np.float32)
        reward = 1.0
        if self.t > 5:
            if self.fault == "raise":
                raise RuntimeError("the simulator crashed")
            reward = float("nan") if self.fault == "nan_reward" else reward
            obs = np.zeros(7, np.float32) if self.fault == "shape" else "text" if self.fault == "type" else obs
        return obs, reward, self.t >= 20, False, {}


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ("raise", "RuntimeError: the simulator crashed"),
        ("nan_reward", "returned the reward(s) [nan"),
        ("shape", "could not broadcast input array from shape (7,)"),
        ("type", "could not convert string to float"),
    ],
)
def test_an_environment_that_fails_stops_with_exit_2_and_keeps_a_checkpoint(
    fault: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gymnasium as gym

    gym.register(f"HpRlFaulty{fault}-v0", entry_point=_Faulty, kwargs={"fault": fault})
    runs = tmp_path / "runs"
    argv = ["--algo", "ppo", "--env", f"HpRlFaulty{fault}-v0", "--hub", "none", "-n", "256", "--set", "n_steps=16"]
    assert train_cli.main([*argv, "--tensorboard-log", str(runs), "--no-progress", "--eval-freq", "0"]) == 2
    err = capsys.readouterr().err
    assert said in err and "environment's error" in err and "Checkpoint" in err
    (run,) = [p for p in runs.iterdir() if (p / "config.yml").is_file()]
    assert checkpoints_by_step(run / "checkpoints")  # what was learnt is kept for --resume


def test_bad_env_kwargs_in_a_run_folder_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    assert train_cli.main([*TINY, "--eval-freq", "0", "--tensorboard-log", str(tmp_path), "--hub", "none", "-n", "32",
                           "--save-freq", "16"]) == 0  # fmt: skip
    (run,) = [p for p in tmp_path.iterdir() if (p / "config.yml").is_file()]
    config = yaml.safe_load((run / "config.yml").read_text())
    (run / "config.yml").write_text(yaml.safe_dump({**config, "env_kwargs": {"gravity_of_jupiter": 1}}))
    capsys.readouterr()
    assert train_cli.main(["--resume", str(run), "-n", "48", "--no-progress"]) == 2
    assert "gravity_of_jupiter" in capsys.readouterr().err
    assert evaluate_cli.main([str(run), "--episodes", "1"]) == 2


def test_hub_export_onto_a_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hp_rl.core.paths import BUNDLED_HUB_DIR

    target = tmp_path / "a_file"
    target.write_text("mine")
    assert hub_cli.main(["export", str(BUNDLED_HUB_DIR / "control"), "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "mine"


def test_an_image_claiming_a_billion_pixels_is_skipped_not_decoded(tmp_path: Path) -> None:
    from PIL import Image

    from hp_rl.vision.data import load_image_folder

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    Image.new("1", (40_000, 40_000)).save(tmp_path / "a" / "bomb.png")  # ~200 KB on disk, 1.6 G pixels
    data = load_image_folder(tmp_path, 8)
    assert len(data) == 4 and len(data.skipped) == 1 and "bomb.png" in data.skipped[0]


def test_malformed_safetensors_metadata_names_the_key(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from hp_rl.hub.architectures import MLPTrunk

    trunk = MLPTrunk(4, (8,))
    for key, value in (("input_shape", "[[["), ("input_shape", '["a"]'), ("options", "[1, 2]"), ("features_dim", "x")):
        path = tmp_path / f"{key}.safetensors"
        save_file(trunk.state_dict(), str(path), metadata={"arch": "mlp", "input_shape": "[4]", key: value})
        with pytest.raises(CheckpointError, match=f"metadata '{key}'"):
            load_hub({"experts": [{"name": "x", "source": "safetensors", "path": str(path)}]})


def test_a_yaml_value_that_holds_itself_and_an_absurd_budget_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hp_rl.core.errors import ConfigError
    from hp_rl.core.yaml_files import load_yaml_text

    with pytest.raises(ConfigError, match="refers to the collection that holds it"):
        load_yaml_text("&a [*a, *a]", "a test value")
    assert load_yaml_text("[&a 1, *a, *a]", "a test value") == [1, 1, 1]  # plain aliases still read
    base = ["--env", "CartPole-v1", "--tensorboard-log", str(tmp_path), "--no-progress"]
    assert train_cli.main([*base, "--env-kwargs", "x=&a [*a, *a]", "-n", "48"]) == 2
    assert train_cli.main([*base, "-n", "99999999999999999999999"]) == 2  # 1e23 steps: a typo, not a plan
    assert "between 1 and 1000000000000" in capsys.readouterr().err


def test_encoders_are_scored_on_frames_as_training_sees_them() -> None:
    """LogME reads an image target's frames channels first and scaled, as SB3 gives them to the extractor."""
    from hp_rl.rl.scoring import score_hub

    hub = {"experts": [{"name": "cnn", "source": "random", "arch": "nature_cnn", "input_shape": [4, 84, 84]}]}
    scores = score_hub(hub, "CartPole-v1", episodes=1, rollout_steps=32, seed=0, env_preset="control_pixels")
    assert np.isfinite(scores["experts"]["cnn"]["logme"]) and 0.0 <= scores["prior"]["cnn"] <= 0.2
