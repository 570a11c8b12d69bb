"""The Python snippets of the README and the guide run as written (their budgets are tiny already), and their
commands parse; the README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = (README, README.parent / "docs" / "GUIDE.md")
BLOCKS = [
    block for doc in DOCS for block in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
]


def test_the_readme_has_python_snippets_and_reads_in_five_minutes() -> None:
    assert BLOCKS
    assert len(README.read_text(encoding="utf-8")) <= 12_000


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_snippet_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ale_py")
    pytest.importorskip("minatar")
    monkeypatch.chdir(tmp_path)  # from any folder, writing nothing into the checkout
    exec(compile(BLOCKS[index], f"README.md/GUIDE.md python block {index}", "exec"), {"__name__": "__readme__"})


def _command_lines() -> list[str]:
    """Every ``python -m hp_rl...`` / ``python benchmarks/...`` / ``hp-rl ...`` command of the docs' bash blocks."""
    lines: list[str] = []
    blocks = [b for doc in DOCS for b in re.findall(r"```bash\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)]
    for block in blocks:
        for raw in block.replace("\\\n", " ").splitlines():
            line = raw.split(" #")[0].strip()
            if line.startswith(("python -m hp_rl", "python benchmarks/", "hp-rl ")) and "&&" not in line:
                lines.append(line)
    return lines


COMMANDS = _command_lines()


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_is_accepted_by_its_parser(line: str) -> None:
    """Each command's flags exist and parse (nothing is run: budgets there are real ones)."""
    import importlib.util
    import shlex

    from hp_rl.cli import BENCH, COMMANDS, VISION

    words = shlex.split(line)
    if words[0] == "hp-rl":  # the one command: its subcommand's own parser
        if words[1] == "bench":
            importlib.import_module(BENCH[words[2]]).build_parser().parse_args(words[3:])
        elif words[1] == "vision":
            importlib.import_module(VISION[words[2]])  # the vision commands parse in their main
        else:
            importlib.import_module(COMMANDS[words[1]][0]).build_parser().parse_args(words[2:])
        return
    if words[1].startswith("benchmarks/") and Path(words[1]).stem in BENCH:  # a checkout's wrapper of the package's
        importlib.import_module(BENCH[Path(words[1]).stem]).build_parser().parse_args(words[2:])
        return
    if words[1] == "-m":
        module = {"hp_rl.hub": "hp_rl.hub_cli"}.get(words[2], words[2])
        parser = importlib.import_module(module).build_parser()
        args = words[3:]
        if module == "hp_rl.tune" and "--" in args:  # the training command after -- must parse as one too
            split = args.index("--")
            importlib.import_module("hp_rl.train").build_parser().parse_args(args[split + 1 :])
        parser.parse_args(args)
        return
    script = README.parent / words[1]
    spec = importlib.util.spec_from_file_location(f"readme_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module_obj = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = module_obj
    spec.loader.exec_module(module_obj)
    parse = getattr(module_obj, "parse_args", None) or getattr(module_obj, "_parse_args", None)
    if parse is not None:
        parse(words[2:])


def test_every_relative_link_of_the_docs_resolves() -> None:
    """README, the guide, the benchmark index and every results page link only to files that exist."""
    root = README.parent
    pages = [README, *sorted((root / "docs").glob("*.md")), *sorted((root / "docs" / "results").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(root)} -> {target}")
    assert not broken, broken
