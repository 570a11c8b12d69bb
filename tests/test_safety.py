"""Run folders are read without running anything in them; checkpoints agree with their step counts; bad
input is exit 2 with no run folder left behind; the hub spec parser lets only the project's errors escape."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hp_rl import evaluate as evaluate_cli
from hp_rl import train as train_cli
from hp_rl.core.archive import read_sb3_archive
from hp_rl.core.errors import HpRlError
from hp_rl.hub import CheckpointError, parse_hub, read_sb3_trunk
from hp_rl.rl.runs import AgentRunFolder, checkpoints_by_step

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
]


class _Touch:
    """A pickle payload: unpickling it creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def _train(tmp_path: Path, *extra: str) -> Path:
    assert train_cli.main([*TINY, "--tensorboard-log", str(tmp_path), *extra]) == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and (p / "config.yml").is_file()]
    return run


def _rewrite_member(path: Path, name: str, content: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members[name] = content
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)


def _poison_data(path: Path, marker: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
    payload = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    for value in data.values():
        if isinstance(value, dict) and ":serialized:" in value:
            value[":serialized:"] = payload
    _rewrite_member(path, "data", json.dumps(data).encode())


def _poison_pth(path: Path, member: str, marker: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"weights": _Touch(marker)}, buffer)
    _rewrite_member(path, member, buffer.getvalue())


def test_payloads_in_every_member_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _train(tmp_path / "runs", "--hub", "none", "-n", "64", "--save-freq", "16")
    marker = tmp_path / "payload_ran"
    checkpoints = [p for p, _ in checkpoints_by_step(run / "checkpoints")]
    # Pickled objects in 'data' are never decoded: resume and evaluate work, and nothing runs.
    for path in [*checkpoints, run / "model.zip"]:
        _poison_data(path, marker)
    assert train_cli.main(["--resume", str(run), "-n", "80", "--no-progress"]) == 0
    assert evaluate_cli.main([str(run), "--episodes", "1"]) == 0
    assert not marker.exists()
    # A pickled object in any .pth is refused: every checkpoint poisoned -> exit 2, the folder unchanged.
    for index, path in enumerate(checkpoints_by_step(run / "checkpoints")):
        member = ("policy.pth", "policy.optimizer.pth", "pytorch_variables.pth")[index % 3]
        _poison_pth(path[0], member, marker)
    _poison_pth(run / "model.zip", "policy.pth", marker)
    before = {p.name: p.read_bytes() for p in (run / "config.yml", run / "command.txt")}
    capsys.readouterr()
    assert train_cli.main(["--resume", str(run), "-n", "200", "--no-progress"]) == 2
    assert "weights" in capsys.readouterr().err
    assert evaluate_cli.main([str(run), "--episodes", "1"]) == 2
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in (run / "config.yml", run / "command.txt")} == before
    assert not (run / "run.lock").exists()


def test_dqn_replay_buffer_has_no_pickle_and_a_planted_one_is_ignored(tmp_path: Path) -> None:
    run = _train(
        tmp_path / "runs",
        "--algo",
        "dqn",
        "--hub",
        "none",
        "-n",
        "64",
        "--set",
        "learning_starts=16",
        "--set",
        "buffer_size=500",
        "--set",
        "train_freq=4",
        "--set",
        "policy_kwargs.net_arch=[16]",
    )
    (buffer,) = (run / "checkpoints").glob("rl_model_replay_buffer_*")
    assert buffer.suffix == ".npz"
    marker = tmp_path / "payload_ran"
    buffer.unlink()
    steps = checkpoints_by_step(run / "checkpoints")[0][1]
    (run / "checkpoints" / f"rl_model_replay_buffer_{steps}_steps.pkl").write_bytes(pickle.dumps(_Touch(marker)))
    assert train_cli.main(["--resume", str(run), "-n", "96", "--no-progress"]) == 0
    assert not marker.exists()


def test_checkpoints_hold_exactly_the_updates_of_their_steps(tmp_path: Path) -> None:
    run = _train(tmp_path / "runs", "--hub", "none", "-n", "160", "--save-freq", "16", "--keep-checkpoints", "0")
    found = checkpoints_by_step(run / "checkpoints")
    assert len(found) >= 5
    for path, steps in found:
        data = read_sb3_archive(path, tensors=False).data
        assert data["num_timesteps"] == steps and data["_n_updates"] == steps // 16  # A2C: one update per rollout


def test_resume_falls_back_from_a_truncated_checkpoint_and_prunes(tmp_path: Path) -> None:
    run = _train(tmp_path / "runs", "--hub", "none", "-n", "64", "--save-freq", "16", "--keep-checkpoints", "3")
    found = checkpoints_by_step(run / "checkpoints")
    assert len(found) == 3  # pruned to --keep-checkpoints
    newest = found[0][0]
    newest.write_bytes(newest.read_bytes()[:300])
    (run / "model.zip").unlink()
    assert train_cli.main(["--resume", str(run), "-n", "96", "--no-progress"]) == 0
    assert read_sb3_archive(run / "model.zip", tensors=False).data["num_timesteps"] == 96


def test_a_second_resume_of_a_running_run_exits_2_and_a_stale_lock_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train(tmp_path / "runs", "--hub", "none", "-n", "32", "--save-freq", "16")
    holder = (  # a live process holding the lock as a training process does
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); "
        "print('held', flush=True); time.sleep(60)"
    )
    sleeper = subprocess.Popen([sys.executable, "-c", holder, str(run / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert sleeper.stdout is not None and sleeper.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert train_cli.main(["--resume", str(run), "-n", "64", "--no-progress"]) == 2
        assert str(sleeper.pid) in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    (run / "run.lock").write_text("1")  # a lock file no live process holds, whatever id it names: taken
    assert train_cli.main(["--resume", str(run), "-n", "64", "--no-progress"]) == 0
    assert not (run / "run.lock").exists()


def test_a_run_resumes_and_evaluates_after_its_hub_spec_is_deleted(tmp_path: Path) -> None:
    spec = tmp_path / "hub.yml"
    spec.write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {"name": "a", "source": "random", "arch": "mlp"},
                    {"name": "b", "source": "random", "arch": "mlp"},
                ]
            }
        )
    )
    run = _train(tmp_path / "runs", "--hub", str(spec), "-k", "1", "-n", "32", "--save-freq", "16")
    assert AgentRunFolder(run).hub_spec.is_file()
    spec.unlink()
    assert train_cli.main(["--resume", str(run), "-n", "48", "--no-progress"]) == 0
    assert evaluate_cli.main([str(run), "--episodes", "1"]) == 0


def test_oversized_zip_members_are_refused_before_they_are_read(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data", b"{" + b" " * (65 * 2**20) + b"}")
        archive.writestr("policy.pth", b"\0" * (65 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"over the limit|inflates"):
        read_sb3_trunk(bomb)
    with pytest.raises(HpRlError, match=r"over the limit|inflates"):
        read_sb3_archive(bomb)


BAD_INPUTS: dict[str, tuple[list[str], list[str]]] = {
    "n_steps text": (["--set", "n_steps=abc"], ["n_steps", "'abc'"]),
    "n_steps zero": (["--set", "n_steps=0"], ["n_steps", "0"]),
    "batch_size negative": (["--algo", "ppo", "--set", "batch_size=-1"], ["batch_size", "-1"]),
    "learning_rate word": (["--set", "learning_rate=fast"], ["learning_rate", "fast"]),
    "unknown policy_kwargs key": (["--set", "policy_kwargs.foo=1"], ["foo"]),
    "hub-set noise": (["--hub", "random:2", "--hub-set", "noise=bogus"], ["--hub-set noise", "learned"]),
    "hub-set features_dim": (["--hub", "random:2", "--hub-set", "features_dim=-1"], ["--hub-set features_dim"]),
    "hub-set freeze maybe": (["--hub", "random:2", "--hub-set", "freeze_experts=maybe"], ["freeze_experts", "true"]),
    "explore-coef nan": (["--hub", "random:2", "--explore-coef", "nan"], ["--explore-coef", "finite"]),
    "device": (["--device", "bogus"], ["--device", "bogus"]),
    "seed negative": (["--seed", "-1"], ["--seed", "-1"]),
    "eval-freq negative": (["--eval-freq", "-5"], ["--eval-freq", "-5"]),
    "save-freq negative": (["--save-freq", "-5"], ["--save-freq", "-5"]),
    "eval-episodes zero": (["--eval-episodes", "0"], ["--eval-episodes", "0"]),
    "random hub too large": (["--hub", "random:100000000"], ["random:100000000", "256"]),
    "missing expert file with k": (["--hub", "/nope/a.zip", "-k", "2"], ["/nope/a.zip", "does not exist"]),
    "NUL byte in a path": (["--hub", "a\0b.zip"], ["NUL"]),
    "very long path": (["--hub", "x" * 5000 + ".zip"], ["not a usable path"]),
    "threads negative": (["--threads", "-1"], ["--threads", "-1"]),
    "hub-set execution": (["--hub", "random:2", "--hub-set", "execution=gpu"], ["--hub-set execution", "fused"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_exit_2_with_no_run_folder(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra, words = BAD_INPUTS[case]
    root = tmp_path / "runs"
    argv = [*TINY, "--hub", "none", "-n", "16", "--tensorboard-log", str(root)]
    if "--hub" in extra:
        argv = argv[: argv.index("--hub")] + argv[argv.index("--hub") + 2 :]
    assert train_cli.main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert not root.exists() or not any(root.iterdir())


def test_tensorboard_log_naming_a_file_and_a_non_utf8_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert train_cli.main([*TINY, "--hub", "none", "-n", "16", "--tensorboard-log", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    spec = tmp_path / "bad.yml"
    spec.write_bytes(b"experts:\n  - name: \xff\n    source: random\n")
    assert train_cli.main([*TINY, "--hub", str(spec), "-n", "16", "--tensorboard-log", str(tmp_path / "r")]) == 2
    assert "UTF-8" in capsys.readouterr().err


def _mutate(value: Any, rng: random.Random) -> Any:
    choices: list[Any] = [
        None,
        True,
        -1,
        0,
        10**12,
        float("nan"),
        float("inf"),
        "",
        "x.y",
        "a\0b",
        [],
        {},
        [1, -2],
        {"seed": "s"},
        "random",
        "mlp",
        "nature_cnn",
        [4, 10, 10],
        [0],
        "../../etc/passwd",
    ]
    if isinstance(value, dict) and value and rng.random() < 0.7:
        out = dict(value)
        key = rng.choice([*out, "unknown", "options", "input_shape", "arch", "lr_scale", "frozen", "sha256"])
        out[key] = _mutate(out.get(key), rng)
        if rng.random() < 0.2:
            out.pop(rng.choice(list(out)), None)
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        out_list = list(value)
        index = rng.randrange(len(out_list))
        out_list[index] = _mutate(out_list[index], rng)
        return out_list
    return rng.choice(choices)


def test_fuzzed_hub_specs_raise_only_project_errors(tmp_path: Path) -> None:
    rng = random.Random(1234)
    base = {
        "description": "d",
        "experts": [
            {"name": "a", "source": "random", "arch": "mlp", "input_shape": [4], "features_dim": 8},
            {
                "name": "b",
                "source": "random",
                "arch": "small_frame_cnn",
                "input_shape": [4, 10, 10],
                "options": {"seed": 3},
                "lr_scale": 0.5,
                "frozen": False,
            },
        ],
    }
    text = yaml.safe_dump(base).encode()
    path = tmp_path / "spec.yml"
    parsed = 0
    for _ in range(2000):
        spec = _mutate(base, rng)
        try:
            parse_hub(spec)
            parsed += 1
        except HpRlError:
            pass
        raw = bytearray(text)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        path.write_bytes(bytes(raw))
        with contextlib.suppress(HpRlError):
            parse_hub(str(path))
    assert parsed > 0  # some mutations are still valid specs


def test_non_finite_observations_stop_with_the_step_or_are_sanitized(tmp_path: Path) -> None:
    import gymnasium as gym
    import numpy as np
    from stable_baselines3.common.vec_env import DummyVecEnv

    from hp_rl.rl.envs import FiniteObservations, NonFiniteObservationError

    class NaNAt(gym.Wrapper):
        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self.count = 0

        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.count += 1
            if self.count == 5:
                obs = np.full_like(obs, np.nan)
            return obs, reward, terminated, truncated, info

    def make() -> gym.Env:
        return NaNAt(gym.make("CartPole-v1"))

    strict = FiniteObservations(DummyVecEnv([make]), "error", "NaNCartPole")
    strict.reset()
    with pytest.raises(NonFiniteObservationError, match="at step 5"):
        for _ in range(6):
            strict.step(np.array([0]))
    lenient = FiniteObservations(DummyVecEnv([make]), "sanitize", "NaNCartPole")
    lenient.reset()
    for _ in range(6):
        obs, *_ = lenient.step(np.array([0]))
        assert np.isfinite(obs).all()
    assert lenient.sanitized_values == 4
    from hp_rl.core.errors import RoutingError
    from hp_rl.rl.extractor import HubPathwayExtractor

    extractor = HubPathwayExtractor(gym.spaces.Box(-1, 1, (4,)), "random:2", k=1, features_dim=8)
    rows = torch.zeros(3, 4)
    rows[1, 0] = float("nan")
    with pytest.raises(RoutingError, match="1 of 3 input row"):
        extractor(rows)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_the_last_checkpoint_of_a_finished_run_is_the_final_model_not_a_copy(tmp_path: Path) -> None:
    run = _train(tmp_path / "runs", "--hub", "none", "-n", "64", "--save-freq", "0")
    (last,) = sorted((run / "checkpoints").glob("rl_model_*_steps.zip"))
    assert last.name == "rl_model_64_steps.zip" and os.path.samefile(last, run / "model.zip")
    # Resuming with a larger budget continues from it.
    assert train_cli.main(["--resume", str(run), "-n", "80", "--no-progress"]) == 0
    assert (run / "checkpoints" / "rl_model_80_steps.zip").is_file()


def test_a_signal_in_the_middle_of_an_update_stops_at_once_and_keeps_the_weights_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from stable_baselines3 import A2C

    original_train = A2C.train
    seen: dict[str, Any] = {}

    def train_then_signal(self: A2C) -> None:
        if self.num_timesteps >= 48 and "weights" not in seen:
            seen["weights"] = {k: v.clone() for k, v in self.policy.state_dict().items()}
            seen["updates"], seen["steps"] = self._n_updates, self.num_timesteps
            original_train(self)  # half an update's worth of change...
            os.kill(os.getpid(), signal.SIGINT)  # ...then the signal, before the update returns
            seen["after_signal"] = True  # never reached: the handler stops the update at once
            return
        original_train(self)

    monkeypatch.setattr(A2C, "train", train_then_signal)
    code = train_cli.main(
        [*TINY, "--hub", "none", "-n", "100000", "--save-freq", "0", "--tensorboard-log", str(tmp_path)]
    )
    assert code == 128 + signal.SIGINT and "after_signal" not in seen
    (run,) = [p for p in tmp_path.iterdir() if (p / "config.yml").is_file()]
    (last,) = sorted((run / "checkpoints").glob("rl_model_*_steps.zip"))
    # The cut rollout is not counted, and the weights are those before its update.
    assert last.name == f"rl_model_{seen['steps'] - 16}_steps.zip"
    from hp_rl.core.archive import MAX_TENSOR_BYTES, load_tensors, read_member

    with zipfile.ZipFile(last) as archive:
        saved = load_tensors(read_member(archive, "policy.pth", last, MAX_TENSOR_BYTES), "policy.pth")
    for key, value in seen["weights"].items():
        assert torch.equal(saved[key], value), key


def test_resume_restores_the_recent_episode_statistics_without_unpickling(tmp_path: Path) -> None:
    from hp_rl.rl.checkpoints import episodes_path, load_latest
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.runs import AgentRunFolder, RunConfig

    run = _train(tmp_path / "runs", "--hub", "none", "-n", "400", "--save-freq", "0")
    (last,) = sorted((run / "checkpoints").glob("rl_model_*_steps.zip"))
    saved = json.loads(episodes_path(last).read_text())["ep_info_buffer"]
    assert saved and all(set(e) >= {"r", "l"} for e in saved)
    config = RunConfig.from_yaml(run / "config.yml")
    env = make_env(config.env_id, config.n_envs, config.seed)
    try:
        model, _, _ = load_latest(config, AgentRunFolder(run), env)
        assert [e["r"] for e in model.ep_info_buffer] == [e["r"] for e in saved]
        episodes_path(last).write_text("{not json")  # a damaged record costs the statistics, not the resume
        model, _, _ = load_latest(config, AgentRunFolder(run), env)
        assert model.ep_info_buffer is None or len(model.ep_info_buffer) == 0
    finally:
        env.close()


@pytest.mark.parametrize(
    "spec,words",
    [
        ("experts:\n  - {name: a, source: random, arch: resnet9000}\n", ["resnet9000", "arch"]),
        ("experts:\n  - {name: a.b, source: random}\n", ["a.b", "name"]),
        ("experts:\n  - {name: a, source: random, lr_scale: .nan}\n", ["lr_scale"]),
        ("- just a list\n", ["experts"]),
    ],
)
def test_bad_hub_specs_are_exit_2_with_no_run_folder(
    spec: str, words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hub.yml"
    path.write_text(spec)
    runs = tmp_path / "runs"
    assert train_cli.main([*TINY, "--hub", str(path), "-n", "16", "--tensorboard-log", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(word in err for word in words), err
    assert not runs.exists() or not any(runs.iterdir())


def test_random_experts_fit_small_frames_and_an_early_interrupt_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("minatar")
    flags = "--algo ppo --env MinAtar/Breakout-v1 --hub random:2 -n 64 --n-envs 2 --set n_steps=32 --set batch_size=32"
    argv = [*flags.split(), "--no-progress", "--eval-freq", "0"]
    assert train_cli.main([*argv, "--tensorboard-log", str(tmp_path / "ok")]) == 0  # small-frame CNNs, no error

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # what SIGINT's default handler does before training has started

    monkeypatch.setattr("hp_rl.rl.training.run_training", interrupted)
    assert train_cli.main([*argv, "--tensorboard-log", str(tmp_path / "cut")]) == 130
    assert not any((tmp_path / "cut").iterdir())  # the run folder made for it is gone


@pytest.mark.parametrize("planted", ["model.zip.partial", "eval/best_model.zip", "timing.yml", "evaluation.yml"])
def test_a_link_planted_in_a_run_folder_is_refused_and_its_target_untouched(
    planted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train(tmp_path, "-n", "32", "--hub", "none")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = run / planted
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    assert train_cli.main(["--resume", str(run), "-n", "256", "--no-progress"]) == 2
    assert evaluate_cli.main([str(run), "--episodes", "1"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "keep me"


def test_records_are_written_by_rename_never_through_a_link(tmp_path: Path) -> None:
    from hp_rl.core.paths import append_text_by_rename, write_text_by_rename

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "config.yml.partial").symlink_to(victim)  # a partial name planted as a link
    write_text_by_rename(tmp_path / "config.yml", "algo: ppo\n")
    (tmp_path / "timing.yml").symlink_to(victim)
    append_text_by_rename(tmp_path / "timing.yml", "- steps: 1\n")
    assert victim.read_text() == "keep me"
    assert (tmp_path / "config.yml").read_text() == "algo: ppo\n" and not (tmp_path / "config.yml").is_symlink()
    assert (tmp_path / "timing.yml").read_text() == "- steps: 1\n" and not (tmp_path / "timing.yml").is_symlink()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--env", "MinAtar/Breakout-v1", "--seed", "4294967295"], ["--seed 4294967295", "between 0 and"]),
        (["--env", "CartPole-v1", "--env-preset", "minatar"], ["--env-preset minatar does not fit CartPole-v1"]),
        (["--env", "CartPole-v1", "--hub", "y" * 300], ["y" * 50]),
    ],
)
def test_more_bad_input_is_exit_2_not_a_traceback(
    extra: list[str], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--hub", "none", "-n", "64", "--tensorboard-log", str(tmp_path), "--no-progress", *extra]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
    assert not any(tmp_path.iterdir())


def test_checkpoints_leave_out_frozen_hub_trunks_and_load_them_back_exactly(tmp_path: Path) -> None:
    from hp_rl.core.archive import ArchiveError
    from hp_rl.core.paths import BUNDLED_HUB_DIR
    from hp_rl.rl.checkpoints import FROZEN_FROM_HUB, load_model, restore_from_archive
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.runs import RunConfig

    hub = str(BUNDLED_HUB_DIR / "control" / "hub.yaml")  # safetensors trunks, frozen under the paper's preset
    run = _train(tmp_path / "runs", "--hub", hub, "--hub-set", "preset=paper", "-n", "64", "--save-freq", "32")
    trimmed = read_sb3_archive(run / "checkpoints" / "rl_model_32_steps.zip")
    final = read_sb3_archive(run / "model.zip")
    left_out = trimmed.data[FROZEN_FROM_HUB]
    assert left_out and all(len(digest) == 64 for digest in left_out.values())
    assert not any(k.startswith(tuple(left_out)) for k in trimmed.state_dicts["policy"])
    assert (run / "checkpoints" / "rl_model_32_steps.zip").stat().st_size < (run / "model.zip").stat().st_size
    config = RunConfig.from_yaml(run / "config.yml")
    env = make_env(config.env_id, config.n_envs, config.seed)
    model = load_model(config, run / "checkpoints" / "rl_model_32_steps.zip", env, AgentRunFolder(run))
    for key, value in model.policy.state_dict().items():  # the trained part from the checkpoint, the rest the files'
        expected = trimmed.state_dicts["policy"].get(key, final.state_dicts["policy"][key])
        assert torch.equal(value.cpu(), expected.cpu()), key
    trimmed.data[FROZEN_FROM_HUB] = {prefix: "0" * 64 for prefix in left_out}  # another file than the run's
    with pytest.raises(ArchiveError, match="Restore that file"):
        restore_from_archive(model, trimmed)
    assert train_cli.main(["--resume", str(run), "-n", "96", "--no-progress"]) == 0


def test_a_hub_agents_zip_holds_no_pickled_object_of_hp_rl(tmp_path: Path) -> None:
    # SB3 saves a model's attributes; one that is an hp_rl object would be written pickled, and plain SB3 would
    # unpickle it (needing hp_rl) where hp_rl itself never decodes it: the hub agent's own state is plain values
    run = _train(tmp_path / "runs", "--hub", "random:2", "--hub-set", "preset=paper", "-n", "64")
    with zipfile.ZipFile(run / "model.zip") as archive:
        data = json.loads(archive.read("data"))
    pickled = {k: v[":type:"] for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}
    assert not {key: kind for key, kind in pickled.items() if "hp_rl" in kind}, pickled
    assert data["exploit_coef"] == 0.1 and data["kickstart_coef"] == 0.0
