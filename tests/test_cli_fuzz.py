"""Fuzzed command lines of ``python -m hp_rl.train`` end in exit 0 or 2, never a traceback, a hang or raw
control characters (the 1,000-line run: ``benchmarks/cli_fuzz.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hp_rl.cli_fuzz import FLAG_VALUES, fuzz, fuzz_lines, run_line


def test_fuzz_lines_are_reproducible_and_cover_every_flag() -> None:
    lines = list(fuzz_lines(300, seed=3))
    assert lines == list(fuzz_lines(300, seed=3)) and lines != list(fuzz_lines(300, seed=4))
    assert set(FLAG_VALUES) <= {item for line in lines for item in line}


def test_fuzzed_command_lines_end_in_exit_0_or_2() -> None:
    report = fuzz(60, seed=11, timeout_s=120)
    assert report["problems"] == 0, report["details"]
    assert set(report["statuses"]) == {"0", "2"}  # some lines train, most are refused with a message


def test_the_fuzz_reports_what_a_user_would_see(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector itself: a bug (an exception out of main), raw escape codes and a hang are each reported."""
    import sys
    import time

    from hp_rl import train

    def raises(argv: list[str]) -> int:
        raise RuntimeError("a bug")

    def escapes(argv: list[str]) -> int:
        print("error: \x1b[31mred", file=sys.stderr)
        return 2

    def hangs(argv: list[str]) -> int:
        time.sleep(5)
        return 0

    for main, problem in ((raises, "traceback"), (escapes, "control characters"), (hangs, "hang")):
        monkeypatch.setattr(train, "main", main)
        assert run_line(["--env", "CartPole-v1"], tmp_path, timeout_s=1).problem == problem
