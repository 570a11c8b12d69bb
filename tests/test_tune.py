"""python -m hp_rl.tune: a real Optuna study in a SQLite storage, on a tiny budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from hp_rl import tune  # noqa: E402

TRAIN = [
    "--algo",
    "a2c",
    "--env",
    "CartPole-v1",
    "--hub",
    "random:2",
    "-n",
    "192",
    "--n-envs",
    "2",
    "--set",
    "n_steps=8",
    "--no-progress",
]


def test_two_trial_study_is_stored_reported_and_resumable(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    best = tmp_path / "best.yml"
    argv = [
        "--trials",
        "2",
        "--study",
        "tiny",
        "--storage",
        storage,
        "--eval-freq",
        "64",
        "--eval-episodes",
        "2",
        "--params",
        "learning_rate,explore_coef,k",
        "--out",
        str(best),
        "--",
        *TRAIN,
    ]
    assert tune.main(argv) == 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 2
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 2
    for trial in study.trials:
        assert set(trial.params) == {"learning_rate", "explore_coef", "k"}
        assert 1 <= trial.params["k"] <= 2 and 1e-5 <= trial.params["learning_rate"] <= 3e-3
        assert trial.intermediate_values, "every evaluation is reported to Optuna (pruning reads them)"
    written = yaml.safe_load(best.read_text())
    assert written["study"] == "tiny" and written["params"] == study.best_trial.params
    assert "python -m hp_rl.train" in written["command"] and "--explore-coef" in written["command"]
    # Resumable by study name: a second call adds trials to the same study.
    assert tune.main([*argv[:1], "1", *argv[2:]]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 3


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--params", "nope", "--", *TRAIN], ["--params", "nope"]),
        (["--params", "explore_coef", "--", *[a if a != "random:2" else "none" for a in TRAIN]], ["no hub"]),
        (["--trials", "0", "--", *TRAIN], ["--trials"]),
        ([], ["No training command"]),
        (["--", "--env", "CartPole-v1", "--resume", "runs/x"], ["--resume"]),
        (["--storage", "nosuchdb://x", "--", *TRAIN], ["--storage"]),
    ],
)
def test_bad_tuning_input_is_exit_2_with_a_message(
    argv: list[str],
    words: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert tune.main(argv) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err
