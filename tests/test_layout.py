"""The package's shape: dependencies point one way (routing <- hub <- rl / vision <- command lines <- bench)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hp_rl"

# What each layer must not import (any module under the named packages). Entry shims (__main__.py) may
# reach the command line that serves them.
COMMAND_LINES = (
    "hp_rl.train",
    "hp_rl.train_config",
    "hp_rl.train_flags",
    "hp_rl.evaluate",
    "hp_rl.tune",
    "hp_rl.hub_cli",
    "hp_rl.cli",
)
ABOVE_THE_LIBRARY = ("hp_rl.bench", *COMMAND_LINES)  # benchmark building blocks stand on the library
FORBIDDEN = {
    "routing": ("hp_rl.hub", "hp_rl.rl", "hp_rl.vision", *ABOVE_THE_LIBRARY),
    "hub": ("hp_rl.rl", "hp_rl.vision", *ABOVE_THE_LIBRARY),
    "rl": ("hp_rl.vision", *ABOVE_THE_LIBRARY),
    "vision": ("hp_rl.rl", *ABOVE_THE_LIBRARY),
    # the benchmarks stand on top: they measure the command lines users run (hp_rl.train's parser and defaults)
    "bench": (),
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


# The base every layer stands on (hp_rl/core): errors, paths, the YAML reader, option rules, run folders, runners.
BASE_MODULES = (
    "archive",
    "console",
    "errors",
    "overrides",
    "paths",
    "run_folder",
    "runner",
    "validation",
    "yaml_files",
)
FORBIDDEN["core"] = ("hp_rl.routing", *FORBIDDEN["routing"])


def _layer_files(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def test_the_base_modules_exist() -> None:
    assert all((PACKAGE / "core" / f"{name}.py").is_file() for name in BASE_MODULES)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    bad = []
    for path in _layer_files(layer):
        if path.name == "__main__.py":
            continue
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not bad, "\n".join(bad)


# Modules allowed over the ~500-line mark, each capped at a size it may only shrink from (none today).
OVERSIZED: dict[str, int] = {}


def test_modules_stay_small() -> None:
    sizes = {
        str(p.relative_to(PACKAGE.parent)): len(p.read_text(encoding="utf-8").splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    too_long = {name: n for name, n in sizes.items() if n > OVERSIZED.get(name, 500)}
    assert not too_long, too_long


def test_one_command_lists_and_dispatches_everything(capsys: pytest.CaptureFixture[str]) -> None:
    from hp_rl.cli import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "hub", "tune", "vision", "bench"):
        assert command in COMMANDS and f"  {command}" in out
    assert main(["train", "--help"]) == 0
    assert "usage: hp-rl train" in capsys.readouterr().out  # each command names itself as called
    assert main(["hub", "list"]) == 0
    assert "bundled" in capsys.readouterr().out.lower()
    assert main(["nope"]) == 2 and "unknown command" in capsys.readouterr().err
    assert main(["vision"]) == 0 and "train" in capsys.readouterr().out
    assert main(["bench"]) == 0 and "throughput" in capsys.readouterr().out
    # a benchmark of the package runs through the one command (its plan, nothing trained)
    plan = ["bench", "transfer", "--suite", "control", "--methods", "scratch", "--seeds", "0", "--dry-run"]
    assert main(plan) == 0 and "scratch/cartpole/seed0" in capsys.readouterr().out
    assert main(["bench", "nope"]) == 2


# Import cycles left, each to be removed (none may be added).
KNOWN_CYCLES: set[frozenset[str]] = set()


def _module_graph() -> dict[str, set[str]]:
    """Module -> the hp_rl modules it imports anywhere (in functions too; not under ``if TYPE_CHECKING``)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {
            id(sub)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for sub in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                full = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [item if item in modules else node.module for item in full]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("hp_rl") and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_new_import_cycles() -> None:
    cycles = _cycles(_module_graph())
    assert cycles <= KNOWN_CYCLES, sorted(sorted(c) for c in cycles - KNOWN_CYCLES)
    assert cycles == KNOWN_CYCLES, "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_the_methods_options_are_defined_in_one_module() -> None:
    # hp_rl/hub/options.py is the one home of the method's options: no other module keeps a second table of their
    # values (a dict of three or more of them) or of their defaults (three or more in a signature or a class).
    # Set apart, each with its reason: the routing core (a lower layer, whose gate the options map onto), the
    # vision companion (its own defaults for image classification: narrower features, fine-tuned trunks) and the
    # benchmarks (each case or method is a set of option values by design: what its row measures).
    from dataclasses import fields

    from hp_rl.hub.options import LossWeights, PathwayOptions

    names = {f.name for f in (*fields(PathwayOptions), *fields(LossWeights))}
    set_apart = ("hp_rl/routing/", "hp_rl/vision/", "hp_rl/bench/", "hp_rl/hub/options.py")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE.parent).as_posix()
        if where.startswith(set_apart):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            given: list[str] = []
            if isinstance(node, ast.Dict):
                given = [
                    k.value
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant)
                    and k.value in names
                    and not (isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value.startswith("-"))
                ]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                pairs = [
                    *zip(node.args.args[len(node.args.args) - len(node.args.defaults) :], node.args.defaults),
                    *zip(node.args.kwonlyargs, node.args.kw_defaults),
                ]
                given = [a.arg for a, d in pairs if a.arg in names and d is not None and not _is_none(d)]
            elif isinstance(node, ast.ClassDef):
                given = [
                    t.target.id
                    for t in node.body
                    if isinstance(t, ast.AnnAssign)
                    and isinstance(t.target, ast.Name)
                    and t.target.id in names
                    and t.value is not None
                    and not _is_none(t.value)
                    and not _reads_options(t.value)
                ]
            if len(given) >= 3:
                found.append(f"{where}:{node.lineno} {given}")
    assert not found, found


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _reads_options(node: ast.expr) -> bool:
    """A default read from the options classes (``LossWeights.exploit_coef``)."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id
        in (
            "PathwayOptions",
            "LossWeights",
        )
    )


def test_functions_stay_short() -> None:
    # a function longer than this (docstring included) does several things: give each its own name
    limit = 70
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_every_import_of_hp_rl_names_a_module_that_exists() -> None:
    # mypy is told to ignore missing imports (optional packages); a moved module would hide there
    import importlib.util

    root = PACKAGE.parent
    missing = set()
    for folder in ("hp_rl", "tests", "benchmarks", "agents"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                for name in names:
                    if name.split(".")[0] == "hp_rl" and importlib.util.find_spec(name) is None:
                        missing.add(f"{path.relative_to(root)}: {name}")
    assert not missing, sorted(missing)
