"""``python -m hp_rl.train`` and ``python -m hp_rl.evaluate``: run folders, hubs, overrides, errors, resume."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import A2C, DQN
from stable_baselines3.common.callbacks import BaseCallback

from hp_rl import evaluate as evaluate_cli
from hp_rl import train as train_cli
from hp_rl.core.archive import read_sb3_archive
from hp_rl.rl.runs import AgentRunFolder, RunConfig, checkpoints_by_step
from hp_rl.rl.training import StopOnSignal, run_training, save_atomically

REPO = Path(__file__).resolve().parents[1]
# A2C on CartPole with 2 envs x 8 steps per rollout: every step count below is a multiple of 16.
TINY = [
    "--algo",
    "a2c",
    "--env",
    "CartPole-v1",
    "--n-envs",
    "2",
    "--set",
    "n_steps=8",
    "--no-progress",
    "--eval-freq",
    "0",
    "--save-freq",
    "0",
]


def only_run(root: Path) -> Path:
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(runs) == 1, runs
    return runs[0]


def obs_batch() -> np.ndarray:
    return np.array([[0.01, -0.02, 0.03, 0.04], [0.1, 0.2, -0.1, -0.3]], dtype=np.float32)


def test_plain_run_writes_the_run_folder_and_overrides_reach_the_model(tmp_path: Path) -> None:
    argv = [
        *TINY,
        "--hub",
        "none",
        "-n",
        "256",
        "--tensorboard-log",
        str(tmp_path),
        "--set",
        "gamma=0.9",
        "--set",
        "policy_kwargs.net_arch=[16]",
    ]
    assert train_cli.main(argv) == 0
    run = only_run(tmp_path)
    assert run.name == "a2c_CartPole-v1_nohub_1"
    for name in ("config.yml", "command.txt", "versions.yml", "model.zip", "timing.yml"):
        assert (run / name).is_file(), name
    assert not (run / "hub_manifest.yml").exists()
    assert list(run.glob("tb_1/events.out.tfevents.*")), "TensorBoard events"
    assert [steps for _, steps in checkpoints_by_step(run / "checkpoints")] == [256]

    config = RunConfig.from_yaml(run / "config.yml")
    assert (config.algo, config.env_id, config.hub, config.n_timesteps, config.n_envs) == (
        "a2c",
        "CartPole-v1",
        None,
        256,
        2,
    )
    assert config.hyperparams["n_steps"] == 8 and config.hyperparams["gamma"] == 0.9
    assert config.hyperparams["policy_kwargs"] == {"net_arch": [16]}
    assert "n_envs" not in config.hyperparams and "n_timesteps" not in config.hyperparams
    assert "--set gamma=0.9" in (run / "command.txt").read_text()
    assert {"torch", "stable_baselines3", "python"} <= set(yaml.safe_load((run / "versions.yml").read_text()))

    model = A2C.load(run / "model.zip")
    assert model.num_timesteps == 256 and model.gamma == 0.9 and model.n_steps == 8
    assert model.policy.net_arch == [16]
    checkpoint = A2C.load(run / "checkpoints" / "rl_model_256_steps.zip")
    np.testing.assert_array_equal(
        model.predict(obs_batch(), deterministic=True)[0], checkpoint.predict(obs_batch(), deterministic=True)[0]
    )


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hubruns")
    argv = [
        *TINY,
        "--hub",
        "random:2",
        "--hub-set",
        "preset=paper",  # random trunks are routed only under the paper's configuration
        "-k",
        "1",
        "-n",
        "64",
        "--eval-freq",
        "32",
        "--eval-episodes",
        "1",
        "--explore-coef",
        "0.05",
        "--tensorboard-log",
        str(root),
    ]
    assert train_cli.main(argv) == 0
    return only_run(root)


def test_hub_run_writes_manifest_with_every_expert(hub_run: Path) -> None:
    assert hub_run.name == "a2c_CartPole-v1_random2-k1_1"
    manifest = yaml.safe_load((hub_run / "hub_manifest.yml").read_text())
    assert manifest["k"] == 1
    assert [e["name"] for e in manifest["experts"]] == ["random0", "random1"]
    assert all(e["source"] == "random" and e["parameters"] > 0 for e in manifest["experts"])
    config = RunConfig.from_yaml(hub_run / "config.yml")
    assert config.hub == "random:2" and config.k == 1 and config.hub_kwargs["explore_coef"] == 0.05
    assert config.hub_kwargs["aggregation"] == "features"  # the preset given is written out, so a resume keeps it
    assert (hub_run / "eval" / "evaluations.npz").is_file() and (hub_run / "eval" / "best_model.zip").is_file()


def test_each_evaluation_logs_a_route_picture(hub_run: Path) -> None:
    pytest.importorskip("matplotlib")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in hub_run.glob("**/events.out.tfevents.*") if "experts" not in p.parts}
    events = EventAccumulator(str(events_dir), size_guidance={"images": 0})
    events.Reload()
    pictures = events.Images("routes/episode")
    assert [picture.step for picture in pictures] == [32, 64]  # --eval-freq 32 over 64 steps
    assert all(picture.width > 200 and picture.height > 200 for picture in pictures)


def test_evaluate_prints_and_appends_evaluation_yml(hub_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_cli.main([str(hub_run), "--episodes", "2"]) == 0
    assert evaluate_cli.main([str(hub_run), "--episodes", "1", "--checkpoint", "best", "--stochastic"]) == 0
    out = capsys.readouterr().out
    assert "2 deterministic episodes: return" in out and "±" in out and "1 stochastic episodes" in out
    results = yaml.safe_load((hub_run / "evaluation.yml").read_text())
    final, best = results[-2:]
    assert final["episodes"] == 2 and len(final["returns"]) == 2 and final["num_timesteps"] == 64
    assert final["mean_return"] == pytest.approx(np.mean(final["returns"]))
    assert final["deterministic"] and not best["deterministic"]
    assert Path(best["checkpoint"]).name == "best_model.zip"


def test_evaluate_records_a_video(hub_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    video = tmp_path / "episode.mp4"
    assert evaluate_cli.main([str(hub_run), "--episodes", "1", "--video", str(video)]) == 0
    result = yaml.safe_load((hub_run / "evaluation.yml").read_text())[-1]
    assert video.stat().st_size > 0
    assert result["video"]["frames"] == result["lengths"][0]  # the reset frame plus one per non-final step
    # the video is the evaluated episode played again, not an extra one
    assert result["video"]["return"] == result["returns"][0] and result["video"]["episode"].startswith("episode 1")


def test_evaluate_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_cli.main([str(tmp_path / "nowhere")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yml").write_text(RunConfig("a2c", "CartPole-v1", None, n_timesteps=1000).to_yaml())
    assert evaluate_cli.main([str(run), "--checkpoint", "best"]) == 2
    assert "--eval-freq" in capsys.readouterr().err
    assert evaluate_cli.main([str(run)]) == 2
    assert "holds no model" in capsys.readouterr().err
    assert evaluate_cli.main([str(run), "--video", "x.webm"]) == 2
    assert "unknown video format '.webm'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "corrupt.zip").write_bytes(b"not a zip")
    (folder / "pixels.yml").write_text(
        "experts:\n  - {name: pixels, source: random, arch: nature_cnn, input_shape: [4, 84, 84]}\n"
    )
    (folder / "empty_run" / "checkpoints").mkdir(parents=True)
    (folder / "empty_run" / "config.yml").write_text(RunConfig("a2c", "CartPole-v1", None, n_timesteps=1000).to_yaml())
    return folder


# Each case: extra arguments, then words the message must hold (the problem, then the fix).
ERROR_CASES = {
    "unknown algo": (["--algo", "ppo2", "--env", "CartPole-v1", "--hub", "none"], ["ppo2", "Did you mean ppo"]),
    "unknown env": (["--algo", "a2c", "--env", "CartPol-v1", "--hub", "none"], ["CartPol-v1", "CartPole-v1"]),
    "k too small": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "random:2", "-k", "0"],
        ["-k 0", "between 1 and 2"],
    ),
    "k too large": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "random:2", "-k", "3"],
        ["-k 3", "between 1 and 2"],
    ),
    "missing checkpoint": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "{bad}/missing.zip", "-k", "1"],
        ["missing.zip", "does not exist"],
    ),
    "corrupt checkpoint": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "{bad}/corrupt.zip", "-k", "1"],
        ["corrupt.zip", "not a valid zip"],
    ),
    "expert cannot be adapted": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "{bad}/pixels.yml", "-k", "1"],
        ["expects images", "Use a vector expert"],
    ),
    "unknown --set key": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "none", "--set", "n_stepz=5"],
        ["n_stepz", "Did you mean n_steps"],
    ),
    "malformed --set": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "none", "--set", "n_steps"],
        ["'n_steps'", "key=value"],
    ),
    "bad --set value": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "none", "--set", "learning_rate=lin_x"],
        ["lin_x", "lin_2.5e-4"],
    ),
    "reserved --set key": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "none", "--set", "seed=3"],
        ["seed", "use --seed"],
    ),
    "unknown --hub-set key": (
        ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "random:2", "--hub-set", "nois=x"],
        ["nois", "Did you mean noise"],
    ),
    "dqn on continuous actions": (
        ["--algo", "dqn", "--env", "Pendulum-v1", "--hub", "none"],
        ["DQN needs discrete actions", "--algo ppo"],
    ),
    "resume without checkpoint": (["--resume", "{bad}/empty_run"], ["no checkpoint", "Start a new run"]),
    "resume of a non-run folder": (["--resume", "{bad}"], ["not a run folder", "Give a folder"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_exit_2_with_one_paragraph(
    case: str, bad_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args, words = ERROR_CASES[case]
    argv = [a.format(bad=bad_files) for a in args] + ["-n", "64", "--no-progress", "--tensorboard-log", str(tmp_path)]
    assert train_cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    for word in words:
        assert word in captured.err, (word, captured.err)
    assert not list(tmp_path.iterdir()), "no run folder is left behind by a failed start"


def test_auto_hub_without_defaults_module_names_the_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "hp_rl.hub.defaults", None)
    with pytest.raises(train_cli.CliError, match=r"--hub random:4.*--hub none"):
        train_cli.resolve_hub("auto", "CartPole-v1", "control")


def test_auto_hub_uses_the_defaults_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def resolve_auto_hub(env_id: str, family: str) -> str:
        calls.append((env_id, family))
        if env_id == "Unknown-v0":
            raise ValueError("No default hub fits Unknown-v0: give one with --hub.")
        return "random:3"

    monkeypatch.setitem(sys.modules, "hp_rl.hub.defaults", types.SimpleNamespace(resolve_auto_hub=resolve_auto_hub))
    assert train_cli.resolve_hub("auto", "CartPole-v1", "control") == "random:3"
    assert calls == [("CartPole-v1", "control")]
    with pytest.raises(train_cli.CliError, match="No default hub fits"):
        train_cli.resolve_hub("auto", "Unknown-v0", "control")
    assert train_cli.resolve_hub("none", "CartPole-v1", "control") is None
    monkeypatch.chdir(tmp_path)
    expected = f"{(tmp_path / 'a.zip').resolve()},hf:sb3/x@v1"
    assert train_cli.resolve_hub("a.zip, hf:sb3/x@v1", "CartPole-v1", "control") == expected


def test_run_names() -> None:
    assert train_cli.run_name("ppo", "ALE/Breakout-v5", "random:4", 2) == "ppo_ALE-Breakout-v5_random4-k2"
    assert train_cli.run_name("a2c", "CartPole-v1", None, 2, "control_pixels") == "a2c_CartPole-v1-control-pixels_nohub"
    assert train_cli.hub_tag("/x/hub/bundled/atari/hub.yaml", 1) == "atari-k1"
    assert train_cli.hub_tag("/x/a.zip,/y/b.zip,hf:sb3/c", 2, dense=True) == "3experts-dense"


def test_duration() -> None:
    from hp_rl.rl.callbacks import duration_text

    assert duration_text(59) == "0:00:59" and duration_text(2 * 86_400 + 3_723) == "2d 1:02:03"


def test_second_signal_aborts() -> None:
    stopper = StopOnSignal()
    stopper.handle(signal.SIGINT, None)
    assert stopper.received == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        stopper.handle(signal.SIGINT, None)


class _SignalAt(BaseCallback):
    """Sends SIGINT to this process at a given step (a Ctrl-C in the middle of a rollout)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _on_step(self) -> bool:
        if self.num_timesteps == self.step:
            signal.raise_signal(signal.SIGINT)
        return True


@pytest.mark.parametrize("algo", ["a2c", "dqn"])
def test_ctrl_c_checkpoint_then_resume_reaches_n(algo: str, tmp_path: Path) -> None:
    hyperparams = (
        {"n_steps": 8}
        if algo == "a2c"
        else {
            "learning_starts": 16,
            "train_freq": 8,
            "gradient_steps": 1,
            "buffer_size": 500,
            "batch_size": 16,
            "target_update_interval": 16,
            "policy_kwargs": {"net_arch": [16]},
        }
    )
    config = RunConfig(algo, "CartPole-v1", None, n_timesteps=96, n_envs=2, hyperparams=hyperparams)
    folder = AgentRunFolder.create(tmp_path, "run")
    folder.write_start(config.to_yaml(), ["test"])
    outcome = run_training(config, folder, progress_bar=False, callbacks=[_SignalAt(44)])
    assert outcome.interrupted_by == signal.SIGINT and outcome.final_model is None
    assert not folder.final_model.exists()
    # Training stops at the step after the signal (46). A2C throws away the rollout that was cut short
    # (steps 33-46), so those steps are not counted.
    expected = 32 if algo == "a2c" else 46
    assert outcome.model.num_timesteps == expected and outcome.checkpoint.name == f"rl_model_{expected}_steps.zip"
    if algo == "dqn":
        assert (folder.checkpoints / f"rl_model_replay_buffer_{expected}_steps.npz").is_file()
    assert train_cli.main(["--resume", str(folder.path), "--no-progress"]) == 0
    final = (A2C if algo == "a2c" else DQN).load(folder.final_model).num_timesteps
    if algo == "a2c":
        assert final == 96  # the same 6 rollouts of 16 steps as an uninterrupted run
    else:  # DQN steps in chunks of train_freq x n_envs = 16 from wherever it stopped: 46 -> 110
        assert 96 <= final < 96 + 16
    timing = yaml.safe_load((folder.path / "timing.yml").read_text())
    runs = [(t["start_step"], t["steps"], t["interrupted"]) for t in timing]
    assert runs == [(0, expected, True), (expected, final - expected, False)]


def _lines(stream: object, sink: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.put(line)


def test_sigterm_in_a_real_process_saves_a_checkpoint_that_resume_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, "--hub", "none", "-n", "100000000", "-v", "--tensorboard-log", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hp_rl.train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    out: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, out), daemon=True).start()
    seen: list[str] = []
    deadline = time.time() + 60
    try:
        while not any("total_timesteps" in line for line in seen):  # SB3's first log table: training is running
            assert process.poll() is None, "".join(seen) + process.stderr.read()  # type: ignore[union-attr]
            assert time.time() < deadline, "no training log within 60 s:\n" + "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(out.get(timeout=1))
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process.stderr.read()  # type: ignore[union-attr]
    time.sleep(0.2)
    while not out.empty():
        seen.append(out.get())
    assert code == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    assert any("Continue with: python -m hp_rl.train --resume" in line for line in seen)
    run = only_run(tmp_path)
    (checkpoint, steps), *_ = checkpoints_by_step(run / "checkpoints")
    assert steps > 0 and steps % 16 == 0 and not (run / "model.zip").exists()
    assert A2C.load(checkpoint).num_timesteps == steps

    target = steps + 32
    assert train_cli.main(["--resume", str(run), "-n", str(target), "--no-progress", "--seed", "7"]) == 0
    assert "--seed ignored with --resume" in capsys.readouterr().err
    assert A2C.load(run / "model.zip").num_timesteps == target
    assert RunConfig.from_yaml(run / "config.yml").n_timesteps == target
    assert len((run / "command.txt").read_text().splitlines()) == 2


def test_a_save_that_dies_midway_leaves_no_model_zip_for_a_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that waits for ``model.zip`` to exist (one hub-build process per expert) must never see half a file."""
    model = A2C("MlpPolicy", "CartPole-v1", n_steps=5, device="cpu")
    target = tmp_path / "model.zip"

    def write_half_then_die(path: str | Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half of a zip")
        raise OSError("killed while writing")

    with monkeypatch.context() as patched:
        patched.setattr(model, "save", write_half_then_die)
        with pytest.raises(OSError, match="killed while writing"):
            save_atomically(model, target)
    assert not target.exists()

    save_atomically(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]
    assert A2C.load(target, device="cpu").observation_space == model.observation_space


def test_threads_flag_sets_torch_threads_and_is_recorded(tmp_path: Path) -> None:
    import torch
    import yaml

    from hp_rl import train as train_cli

    before = torch.get_num_threads()
    try:
        argv = [
            "--algo",
            "a2c",
            "--env",
            "CartPole-v1",
            "--hub",
            "none",
            "-n",
            "16",
            "--n-envs",
            "2",
            "--set",
            "n_steps=8",
            "--no-progress",
            "--eval-freq",
            "0",
            "--tensorboard-log",
            str(tmp_path),
            "--threads",
            "2",
        ]
        assert train_cli.main(argv) == 0
        assert torch.get_num_threads() == 2
        (config,) = tmp_path.glob("*/config.yml")
        assert yaml.safe_load(config.read_text())["threads"] == 2
        # The default (0) is one thread on CPU.
        assert train_cli.main([*argv[:-2], "--seed", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_atari_evaluation_ends_fires_after_a_lost_life_and_caps_frames() -> None:
    pytest.importorskip("ale_py")
    from hp_rl.rl.envs import make_env

    def noop_episode(max_frames: int | None) -> tuple[int, bool]:
        kwargs = {} if max_frames is None else {"max_num_frames_per_episode": max_frames}
        env = make_env("BreakoutNoFrameskip-v4", 1, 0, evaluation=True, env_kwargs=kwargs)
        env.reset()
        try:
            for _ in range(30_000):
                _, _, done, infos = env.step(np.array([0]))  # NOOP only: never FIRE
                if done[0]:
                    return int(infos[0]["episode"]["l"]), bool(infos[0].get("TimeLimit.truncated", False))
        finally:
            env.close()
        raise AssertionError("the evaluation episode did not end")

    # Without FIRE after a lost life, a NOOP policy waits out the cap; with it, the game ends on its own.
    frames, _ = noop_episode(20_000)
    assert frames < 20_000
    frames, _ = noop_episode(300)  # the frame cap ends an episode (Monitor counts emulator frames)
    assert frames <= 300


def test_evaluate_max_frames_is_atari_only(hub_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_cli.main([str(hub_run), "--max-frames", "100"]) == 2
    assert "--max-frames applies to Atari" in capsys.readouterr().err


def test_evaluate_draws_the_routes_of_an_episode(hub_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    picture = tmp_path / "routes.png"
    assert evaluate_cli.main([str(hub_run), "--episodes", "1", "--routes", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5_000
    result = yaml.safe_load((hub_run / "evaluation.yml").read_text())[-1]
    assert result["routes"]["steps"] == result["lengths"][0] and result["routes"]["episode"].startswith("episode 1")


def test_route_picture_needs_a_hub_and_reads_every_observation_kind() -> None:
    from hp_rl.rl.route_picture import RoutePictureError, _as_image, record_routes

    model = A2C("MlpPolicy", "CartPole-v1", device="cpu")
    with pytest.raises(RoutePictureError, match="hub"):
        record_routes(model, model.get_env())
    assert _as_image(np.zeros(4)).shape == (1, 4)  # a state vector: one row
    assert _as_image(np.zeros((4, 84, 84))).shape == (84, 84)  # stacked frames: the newest
    minatar = np.zeros((10, 10, 10))
    minatar[3, 2, 5] = 1.0
    assert _as_image(minatar)[2, 5] == 4  # object channels: the channel index that is on


def test_env_kwargs_make_a_variant_and_a_wrong_one_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--env", "MinAtar/Breakout-v1", "--hub", "none", "-n", "64", "--n-envs", "1", "--set", "n_steps=32"]
    base += ["--tensorboard-log", str(tmp_path), "--no-progress", "--eval-freq", "0"]
    assert train_cli.main([*base, "--env-kwargs", "sticky_action_prob=0.0"]) == 0
    (folder,) = tmp_path.iterdir()
    assert RunConfig.from_yaml(folder / "config.yml").env_kwargs == {"sticky_action_prob": 0.0}
    assert train_cli.main([*base, "--env-kwargs", "sticky=0.0"]) == 2
    assert "--env-kwargs sticky=0.0" in capsys.readouterr().err


def test_returns_are_printed_and_a_short_run_evaluates_ten_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--env", "CartPole-v1", "--hub", "none", "-n", "5e2", "--n-envs", "1", "--set", "n_steps=50"]
    assert train_cli.main([*argv, "--tensorboard-log", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("eval at step ")]
    assert len(lines) == 10 and "return" in lines[0] and "best so far" in lines[0]  # every 50 of 500 steps
    assert "Last evaluation (step 500): return" in out
    (folder,) = tmp_path.iterdir()
    assert RunConfig.from_yaml(folder / "config.yml").eval_freq == 50
    assert train_cli.main([*argv, "-n", "1.5"]) == 2  # a step count is a whole number


def test_a_device_the_machine_lacks_is_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert train_cli.main(["--env", "CartPole-v1", "--hub", "none", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_evaluate_checks_what_route_pictures_need_before_playing(
    hub_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    played: list[int] = []
    monkeypatch.setattr("stable_baselines3.common.evaluation.evaluate_policy", lambda *a, **k: played.append(1))
    assert evaluate_cli.main([str(hub_run), "--episodes", "1", "--routes", str(hub_run / "r.png")]) == 2
    assert "matplotlib" in capsys.readouterr().err and not played


def test_the_progress_bar_counts_the_run_s_own_steps_after_a_resume_and_at_the_end() -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from hp_rl.rl.training import StepsBar

    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", 1), n_steps=64, batch_size=64, n_epochs=1, device="cpu")
    first = StepsBar(100)
    model.learn(100, callback=first)
    assert first.bar.n == first.bar.total == 128  # whole rollouts: the bar grows to the steps taken
    resumed = StepsBar(200)
    model.learn(72, callback=resumed, reset_num_timesteps=False)
    assert resumed.bar.initial == 128 and resumed.bar.n == 256 and resumed.bar.total == 256


def test_evaluate_shows_no_sb3_warning_about_its_one_env_model(tmp_path: Path) -> None:
    import warnings

    argv = ["--env", "CartPole-v1", "--hub", "none", "-n", "64", "--n-envs", "2", "--set", "n_steps=32"]
    assert train_cli.main([*argv, "--tensorboard-log", str(tmp_path), "--no-progress", "--eval-freq", "0"]) == 0
    (run,) = tmp_path.iterdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate_cli.main([str(run), "--episodes", "1"]) == 0
    assert not [w for w in caught if "mini-batch" in str(w.message)]


def test_small_traps_of_the_command_line_name_their_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hp_rl.core.paths import BUNDLED_HUB_DIR
    from hp_rl.hub import parse_hub

    # a hub folder (an export) stands for its hub.yaml, on the command line and in Python
    folder = BUNDLED_HUB_DIR / "control"
    assert train_cli.resolve_hub(str(folder), "CartPole-v1", "control") == str(folder / "hub.yaml")
    assert parse_hub(str(folder)).names == parse_hub(str(folder / "hub.yaml")).names
    # a run's name without runs/ in front: the message says where it is
    monkeypatch.chdir(tmp_path)
    argv = ["--env", "CartPole-v1", "--hub", "none", "-n", "32", "--n-envs", "1", "--set", "n_steps=32"]
    assert train_cli.main([*argv, "--no-progress", "--eval-freq", "0"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert train_cli.main(["--resume", run.name]) == 2
    assert f"Did you mean --resume runs/{run.name}?" in capsys.readouterr().err
    # the option list reads as text, not as Sphinx markup
    assert train_cli.main(["--hub-options"]) == 0
    assert ":func:" not in capsys.readouterr().out


def test_vec_env_subproc_steps_the_same_episodes_in_processes(tmp_path: Path) -> None:
    argv = ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "none", "-n", "64", "--n-envs", "2", "--set", "n_steps=8"]
    argv += ["--no-progress", "--eval-freq", "0"]
    for kind in ("dummy", "subproc"):
        assert train_cli.main([*argv, "--vec-env", kind, "--tensorboard-log", str(tmp_path / kind)]) == 0
    (dummy,), (subproc,) = (list((tmp_path / kind).iterdir()) for kind in ("dummy", "subproc"))
    assert RunConfig.from_yaml(subproc / "config.yml").vec_env == "subproc"
    weights = [read_sb3_archive(run / "model.zip").state_dicts["policy"] for run in (dummy, subproc)]
    for name, value in weights[0].items():  # the same seeds give the same transitions, so the same updates
        assert torch.equal(value, weights[1][name]), name
    assert train_cli.main(["--resume", str(subproc), "-n", "80", "--no-progress"]) == 0


def test_seeds_train_one_run_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--algo", "a2c", "--env", "CartPole-v1", "--hub", "none", "-n", "32", "--set", "n_steps=8"]
    argv += ["--eval-freq", "0", "--no-progress", "--tensorboard-log", str(tmp_path)]
    assert train_cli.main([*argv, "--seeds", "3", "4"]) == 0
    seeds = sorted(RunConfig.from_yaml(run / "config.yml").seed for run in tmp_path.iterdir())
    assert seeds == [3, 4] and "Seeds: 3 exit 0, 4 exit 0" in capsys.readouterr().out
    assert train_cli.main([*argv, "--seeds", "5", "--seed", "1"]) == 2
    assert train_cli.main([*argv, "--seeds", "6", "7", "--jobs", "2"]) == 0  # in two processes
    assert len(list(tmp_path.iterdir())) == 4


def test_a_resumed_run_evaluates_at_the_run_s_own_multiples_of_the_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    plain = [*TINY, "--hub", "none", "--tensorboard-log", str(runs), "--eval-freq", "32", "--eval-episodes", "1"]
    assert train_cli.main([*plain, "-n", "48", "--save-freq", "16"]) == 0  # a run stopped between two evaluations
    (run,) = [p for p in runs.iterdir() if (p / "config.yml").is_file()]
    capsys.readouterr()
    assert train_cli.main(["--resume", str(run), "-n", "112", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [int(line.split()[3].rstrip(":")) for line in lines if line.startswith("eval at step")]
    assert steps == [64, 96]  # 32-step multiples of the run, not 80 and 112 counted from the resume at 48


@pytest.mark.filterwarnings("error::UserWarning")
def test_a_minatar_video_is_written_without_gymnasium_s_rendering_warnings(tmp_path: Path) -> None:
    pytest.importorskip("minatar")
    pytest.importorskip("cv2")
    runs = tmp_path / "runs"
    args = ["--algo", "a2c", "--env", "MinAtar/Breakout-v1", "--n-envs", "2", "--set", "n_steps=8", "--no-progress"]
    assert train_cli.main([*args, "--hub", "none", "--tensorboard-log", str(runs), "-n", "32", "--eval-freq", "0"]) == 0
    (run,) = [p for p in runs.iterdir() if (p / "config.yml").is_file()]
    video = tmp_path / "episode.mp4"
    assert evaluate_cli.main([str(run), "--episodes", "1", "--video", str(video)]) == 0
    assert video.stat().st_size > 0


def test_evaluate_plays_the_episodes_of_its_seed(hub_run: Path) -> None:
    # SB3's load re-seeds the environment with the training seed; evaluate's own seed must still decide the episodes
    played = {}
    for seed in (1, 2, 3, 1):
        assert evaluate_cli.main([str(hub_run), "--episodes", "3", "--seed", str(seed)]) == 0
        result = yaml.safe_load((hub_run / "evaluation.yml").read_text())[-1]
        assert result["seed"] == seed
        played.setdefault(seed, []).append(tuple(result["lengths"]))
    assert played[1][0] == played[1][1]  # the same seed, the same episodes
    assert len({runs[0] for runs in played.values()}) > 1  # other seeds, other episodes


def test_a_bad_environment_argument_with_one_process_per_copy_names_the_cause_without_tracebacks(
    tmp_path: Path,
) -> None:
    # each copy in its own process would fail there, printing its traceback, and the main process would see a
    # broken pipe; the environment is built once in this process first, so the message names the real cause
    command = [sys.executable, "-m", "hp_rl.train", "--env", "CartPole-v1", "--env-kwargs", "x=1", "--vec-env"]
    command += ["subproc", "--n-envs", "2", "-n", "32", "--no-progress", "--tensorboard-log", str(tmp_path / "runs")]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert done.returncode == 2
    assert "unexpected keyword argument 'x'" in done.stderr and "Traceback" not in done.stderr
