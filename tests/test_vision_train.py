"""``hp_rl.vision.train`` / ``evaluate`` on a tiny generated image folder: run folder, TensorBoard, --resume."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("PIL", reason="the vision extra (pillow) is not installed")

from hp_rl.vision import evaluate, train
from hp_rl.vision.recipe import build_vision_hub, ensure_hub_files

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # torch.jit (TorchScript experts)
    pytest.mark.filterwarnings("ignore:.*could not be decoded:UserWarning"),  # the corrupt file is on purpose
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("vision")
    data = root / "shapes"
    rng = np.random.default_rng(0)
    for index, name in enumerate(("dark", "bright")):
        (data / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, (10, 10)) + 150 * index
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(data / name / f"{i}.png")
    (data / "dark" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    hub = root / "hub.yml"
    hub.write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {
                        "name": "left",
                        "source": "random",
                        "arch": "nature_cnn",
                        "input_shape": [1, 36, 36],
                        "features_dim": 16,
                    },
                    {
                        "name": "right",
                        "source": "random",
                        "arch": "nature_cnn",
                        "input_shape": [4, 40, 40],
                        "features_dim": 8,
                    },
                    {
                        "name": "third",
                        "source": "random",
                        "arch": "nature_cnn",
                        "input_shape": [1, 36, 36],
                        "features_dim": 12,
                    },
                ]
            }
        )
    )
    return {"root": root, "data": data, "hub": hub}


def _args(ws: dict[str, Path], *extra: str) -> list[str]:
    return [
        "--data",
        str(ws["data"]),
        "--hub",
        str(ws["hub"]),
        "-k",
        "2",
        "--tensorboard-log",
        str(ws["root"] / "runs"),
        "--no-progress",
        "--set",
        "batch_size=4",
        "--set",
        "val_fraction=0.25",
        "--set",
        "features_dim=8",
        "--set",
        "generator_hidden=8",
        "--set",
        "augment.shift=1",
        *extra,
    ]


def _tags(run: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    return events.Tags()  # type: ignore[no-any-return]


def test_one_epoch_cli_run_writes_checkpoints_and_gate_statistics(workspace: dict[str, Path]) -> None:
    assert train.main(_args(workspace, "--epochs", "1", "--name", "one")) == 0
    run = workspace["root"] / "runs" / "one_1"
    assert (run / "checkpoints" / "epoch_0001.pt").is_file() and (run / "model.pt").is_file()
    for name in (
        "config.yml",
        "command.txt",
        "versions.yml",
        "hub_manifest.yml",
        "metrics.yml",
        "confusion_matrix.png",
    ):
        assert (run / name).is_file(), name
    assert "corrupt.png" in (run / "skipped.txt").read_text()
    config = yaml.safe_load((run / "config.yml").read_text())
    assert config["k"] == 2 and config["augment"] == {"shift": 1} and config["epochs"] == 1
    tags = _tags(run)
    for tag in (
        "gates/usage/left",
        "gates/usage/right",
        "gates/usage/third",
        "gates/weight/left",
        "gates/entropy",
        "gates/balance_cv2",
        "train/loss",
        "train/exploit_loss",
        "train/explore_loss",
        "val/accuracy",
    ):
        assert tag in tags["scalars"], tag
    assert "val/confusion_matrix" in tags["images"] and "gates/coactivation" in tags["images"]
    assert "gates/routed_weight/left" in tags["histograms"] or "gates/routed_weight/right" in tags["histograms"]
    state = torch.load(run / "checkpoints" / "epoch_0001.pt", weights_only=True)
    assert state["epoch"] == 1 and state["classes"] == ["bright", "dark"]


def test_resume_continues_exactly_where_the_run_stopped(workspace: dict[str, Path]) -> None:
    assert train.main(_args(workspace, "--epochs", "2", "--name", "full", "--seed", "3")) == 0
    run = workspace["root"] / "runs" / "full_1"
    uninterrupted = torch.load(run / "model.pt", weights_only=True)["model"]
    # Simulate an interruption during epoch 2: only epoch 1's checkpoint is left.
    (run / "checkpoints" / "epoch_0002.pt").unlink()
    (run / "model.pt").unlink()
    assert train.main(["--resume", str(run), "--no-progress"]) == 0
    resumed = torch.load(run / "model.pt", weights_only=True)["model"]
    assert (run / "checkpoints" / "epoch_0002.pt").is_file()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, msg=key)
    assert len((run / "command.txt").read_text().splitlines()) == 2
    # Resuming with a longer schedule continues the epoch count.
    assert train.main(["--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert (run / "checkpoints" / "epoch_0003.pt").is_file()
    assert [r["epoch"] for r in yaml.safe_load((run / "metrics.yml").read_text())] == [1, 2, 3]
    # The evaluator reads the run folder back.
    assert evaluate.main([str(run)]) == 0
    report = yaml.safe_load((run / "evaluation.yml").read_text())
    assert 0.0 <= report["accuracy"] <= 1.0 and set(report["gates"]) == {"left", "right", "third"}


def test_cli_errors(workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train.main(_args(workspace, "--set", "lr=fast")) == 2
    assert "expected float" in capsys.readouterr().err
    assert train.main(_args(workspace, "--set", "learning_rate=1")) == 2
    assert "Unknown config key 'learning_rate'" in capsys.readouterr().err
    assert train.main(_args(workspace, "--set", "lr=__import__('os')")) == 2  # YAML string, never evaluated
    (tmp_path / "one" / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (4, 4)).save(tmp_path / "one" / "a" / "x.png")
    assert train.main(["--data", str(tmp_path / "one"), "--hub", str(workspace["hub"])]) == 2
    assert "Only one class" in capsys.readouterr().err
    assert train.main(["--resume", str(tmp_path), "--no-progress"]) == 2
    assert train.main(_args(workspace, "-k", "4")) == 2
    assert "k=4 is out of range" in capsys.readouterr().err


def test_overrides_are_typed() -> None:
    parsed = train.parse_overrides(["lr=3e-4", "epochs=2", "grad_clip=null", "augment.hflip=true", "dense=true"])
    assert parsed == {"lr": 3e-4, "epochs": 2, "grad_clip": None, "augment.hflip": True, "dense": True}
    with pytest.raises(train.ConfigError, match="expected int"):
        train.parse_overrides(["epochs=2.5"])
    with pytest.raises(train.ConfigError, match="key=value"):
        train.parse_overrides(["epochs"])


def test_vision_recipe_builds_a_loadable_hub(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (vision extra) is not installed")
    recipe = tmp_path / "vision_tiny.recipe.yml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "kind": "vision",
                "data": "sklearn-digits",
                "epochs": 1,
                "batch_size": 128,
                "out_dir": "built",
                "experts": [
                    {
                        "name": "low",
                        "objective": "classify",
                        "classes": [0, 1, 2],
                        "input_size": 8,
                        "widths": [4, 8],
                        "features_dim": 8,
                    },
                    {
                        "name": "turns",
                        "objective": "rotation",
                        "arch": "nature_cnn",
                        "input_size": 36,
                        "features_dim": 8,
                    },
                ],
            }
        )
    )
    hub = tmp_path / "vision_tiny.yml"
    hub.write_text(
        yaml.safe_dump(
            {
                "recipe": recipe.name,
                "experts": [
                    {"name": "low", "source": "torchscript", "path": "built/low.pt", "input_shape": [1, 8, 8]},
                    {"name": "turns", "source": "safetensors", "path": "built/turns.safetensors"},
                ],
            }
        )
    )
    ensure_hub_files(hub, verbose=False)  # builds the missing files from the recipe
    manifest = yaml.safe_load((tmp_path / "built" / "manifest.yml").read_text())
    assert manifest["low"]["objective"] == "classify" and "heldout_accuracy" in manifest["turns"]
    from hp_rl.vision import HubPathwayClassifier

    model = HubPathwayClassifier(str(hub), num_classes=10, k=1, image_shape=(1, 8, 8), features_dim=4)
    assert model.eval()(torch.rand(2, 1, 8, 8)).logits.shape == (2, 10)
    stamp = (tmp_path / "built" / "low.pt").stat().st_mtime_ns
    build_vision_hub(recipe, verbose=False)  # files exist: nothing is retrained
    assert (tmp_path / "built" / "low.pt").stat().st_mtime_ns == stamp


def test_a_refused_vision_run_leaves_no_run_folder(tmp_path: Path) -> None:
    from hp_rl.vision.train import main

    assert (
        main(["--data", str(tmp_path / "missing.npz"), "--tensorboard-log", str(tmp_path / "runs"), "--no-progress"])
        == 2
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@contextlib.contextmanager
def _lock_held(path: Path, pid: int) -> Iterator[None]:
    """Hold ``path`` as a training process does (an exclusive flock), naming ``pid`` in it."""
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, str(pid).encode())
        yield
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


def test_vision_runs_share_the_run_folder_of_the_agents(workspace: dict[str, Path], tmp_path: Path) -> None:
    from hp_rl.core.run_folder import RunFolder, RunLockedError
    from hp_rl.rl.runs import AgentRunFolder

    assert issubclass(train.VisionRun, RunFolder) and issubclass(AgentRunFolder, RunFolder)
    run = train.VisionRun.create(tmp_path, "locked")
    assert run.path.name == "locked_1" and run.checkpoints.is_dir()
    for epoch in (1, 3, 2):
        (run.checkpoints / f"epoch_{epoch:04d}.pt").write_bytes(b"")
    (run.checkpoints / "epoch_0009.pt.partial").write_bytes(b"")  # a save that died: never a checkpoint
    assert [progress for _, progress in run.checkpoints_by_progress()] == [3, 2, 1]
    # Another holder (named as this test's parent) has the lock: a resume is refused before touching anything.
    import os

    held = _lock_held(run.lock_file, os.getppid())
    with held, pytest.raises(RunLockedError, match=f"process {os.getppid()}"), run.locked():
        pass


def test_a_locked_vision_run_refuses_a_second_trainer(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    assert train.main(_args(workspace, "--epochs", "1", "--name", "busy")) == 0
    run = workspace["root"] / "runs" / "busy_1"
    commands = (run / "command.txt").read_text()
    with _lock_held(run / "run.lock", os.getppid()):
        assert train.main(["--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    assert "is being trained by process" in capsys.readouterr().err
    assert (run / "command.txt").read_text() == commands and not (run / "checkpoints" / "epoch_0002.pt").exists()
    assert train.main(["--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert not (run / "run.lock").exists()
    last_command = (run / "command.txt").read_text().splitlines()[-1]
    assert last_command.endswith(f"--resume {run} --epochs 2 --no-progress")


def test_damaged_vision_checkpoints_are_errors_and_bugs_keep_their_traceback(
    workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main(_args(workspace, "--epochs", "1", "--name", "damaged")) == 0
    run = workspace["root"] / "runs" / "damaged_1"
    (run / "checkpoints" / "epoch_0001.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert train.main(["--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    assert "not a readable vision checkpoint" in capsys.readouterr().err
    (run / "model.pt").write_bytes(b"")
    assert evaluate.main([str(run)]) == 2
    assert "not a readable vision checkpoint" in capsys.readouterr().err

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(train, "train", broken)
    with pytest.raises(ValueError, match="an internal bug"):  # not "error: ..." with exit 2
        train.main(_args(workspace, "--epochs", "1", "--name", "bug"))


def test_every_vision_setting_has_a_rule() -> None:
    from dataclasses import fields

    from hp_rl.hub.options import PATHWAY_OPTIONS, PathwayOptionError
    from hp_rl.vision.config import VISION_RULES, TrainConfig

    unchecked = {f.name for f in fields(TrainConfig)} - set(VISION_RULES) - set(PATHWAY_OPTIONS) - {"augment"}
    assert not unchecked
    with pytest.raises(PathwayOptionError, match="vision config explore_coef: nan"):
        TrainConfig(data="x", explore_coef=float("nan")).validate()
    with pytest.raises(train.ConfigError, match="vision config lr: nan"):
        TrainConfig(data="x", lr=float("nan")).validate()


def test_the_recipe_command_reports_a_bad_recipe_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hp_rl.vision import recipe

    bad = tmp_path / "bad.recipe.yml"
    bad.write_text("kind: vision\nexperts: []\nexperts: []\n")
    assert recipe.main([str(bad)]) == 2
    assert "given a second time" in capsys.readouterr().err
    bad.write_text("kind: vision\nexprts: []\n")
    assert recipe.main([str(bad)]) == 2
    assert "unknown key 'exprts' (did you mean 'experts'?)" in capsys.readouterr().err


def test_a_damaged_last_vision_checkpoint_falls_back_and_a_refused_resume_changes_nothing(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main(_args(workspace, "--epochs", "2", "--name", "fallback")) == 0
    run = workspace["root"] / "runs" / "fallback_1"
    (run / "checkpoints" / "epoch_0002.pt").write_bytes(b"PK\x03\x04 damaged")
    assert train.main(["--resume", str(run), "--epochs", "3", "--no-progress"]) == 0  # from epoch 1
    assert torch.load(run / "checkpoints" / "epoch_0003.pt", weights_only=True)["epoch"] == 3
    for path in (run / "checkpoints").glob("*.pt"):
        path.write_bytes(b"damaged")
    records = {name: (run / name).read_bytes() for name in ("config.yml", "command.txt")}
    capsys.readouterr()
    assert train.main(["--resume", str(run), "--epochs", "4", "--no-progress"]) == 2
    assert "no checkpoint that can be resumed from" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in records} == records
