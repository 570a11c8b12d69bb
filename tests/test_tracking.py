"""--track: the run recorded by a real Weights & Biases (offline), its TensorBoard events and config with it, the
same W&B run continued by a resume."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hp_rl import train as train_cli

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

TINY = ["--algo", "a2c", "--env", "CartPole-v1", "--n-envs", "2", "--set", "n_steps=8", "--no-progress"]
_BLOCK = 32768  # W&B's transaction log: LevelDB-style blocks of records after a 7-byte file header


def _records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    raw = path.read_bytes()
    position, pending = 7, b""
    while position + 7 <= len(raw):
        left = _BLOCK - position % _BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        if length == 0 and kind == 0:
            position += left
            continue
        data = raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + data)
            pending = b""
            yield record
        else:  # the first or a middle piece
            pending = data if kind == 2 else pending + data


@pytest.fixture(autouse=True)
def fresh_wandb() -> Iterator[None]:
    """W&B keeps its settings (the mode among them) for the process once set up: each test starts it anew."""
    wandb.teardown()
    yield
    wandb.teardown()


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "wandb_dir"
    folder.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return folder


def test_track_records_the_run_its_tensorboard_events_and_config_and_a_resume_continues_it(
    tmp_path: Path, offline_wandb: Path
) -> None:
    runs = tmp_path / "runs"
    tracking = ["--track", "--wandb-project-name", "hp_rl_tests", "--wandb-tags", "tiny", "cartpole"]
    args = [*TINY, "--hub", "none", "--eval-freq", "0", "--tensorboard-log", str(runs), *tracking]
    assert train_cli.main([*args, "-n", "64", "--save-freq", "32"]) == 0
    (run,) = [p for p in runs.iterdir() if (p / "config.yml").is_file()]
    run_id = (run / "tracking_id.txt").read_text().strip()
    (offline,) = offline_wandb.glob(f"wandb/offline-run-*-{run_id}")
    records = list(_records(offline / f"run-{run_id}.wandb"))
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.display_name == run.name and started.project == "hp_rl_tests"
    assert list(started.tags) == ["tiny", "cartpole"]
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["env_id"] == "CartPole-v1" and config["n_timesteps"] == 64
    (board,) = [r.tbrecord for r in records if r.WhichOneof("record_type") == "tbrecord"]
    assert Path(board.root_dir) == run and board.save
    assert list(offline.glob("files/**/events.out.tfevents.*"))  # the charts go with the W&B run
    (ended,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert ended.exit_code == 0
    assert not list(run.rglob("wandb"))  # W&B's own files (links among them) stay out of the run folder

    assert train_cli.main(["--resume", str(run), "-n", "96", "--no-progress", *tracking]) == 0
    logs = sorted(offline_wandb.glob("wandb/offline-run-*/run-*.wandb"), key=lambda path: path.stat().st_mtime)
    assert {path.name for path in logs} == {f"run-{run_id}.wandb"}  # the same W&B run, continued
    (resumed,) = [r.run for r in _records(logs[-1]) if r.WhichOneof("record_type") == "run"]
    assert (
        resumed.run_id == run_id
        and json.loads({item.key: item.value_json for item in resumed.config.update}["n_timesteps"]) == 96
    )


def test_track_without_wandb_is_refused_before_anything_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as on an install without the [track] extra
    runs = tmp_path / "runs"
    assert train_cli.main([*TINY, "--hub", "none", "--tensorboard-log", str(runs), "--track"]) == 2
    assert 'pip install "hp_rl[track]"' in capsys.readouterr().err
    assert not runs.exists()


def test_track_that_cannot_start_says_how_to_go_on_and_leaves_no_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")  # online without a key: W&B refuses before any network call
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc holding a key
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = tmp_path / "runs"
    assert train_cli.main([*TINY, "--hub", "none", "--tensorboard-log", str(runs), "-n", "64", "--track"]) == 2
    err = capsys.readouterr().err
    assert "wandb login" in err and "WANDB_MODE=offline" in err
    assert not [p for p in runs.iterdir() if (p / "config.yml").is_file()]  # nothing trained, nothing left
