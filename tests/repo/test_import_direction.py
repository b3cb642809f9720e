"""pipelines/ imports point one way: core <- data <- modeling <- release, and serving stands alone.

Every import counts, including those inside functions. `serving/` is what the bento carries, so
it imports nothing of ours outside itself; batch scoring uses serving and core; the command line
(`cli.py`, `__main__.py`) may use anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers.support import PROJECT

PACKAGE = PROJECT / "pipelines"
# What each subpackage may import from pipelines/, besides itself.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    # serving/trust.py is the one home of the trusted skops types: the bento enforces them, and
    # training logs with them; a copy in modeling would let the two lists drift.
    "modeling": {"core", "data", "serving"},
    # release builds the monitoring reference when it packages a champion.
    "release": {"core", "data", "modeling", "monitoring", "serving"},
    "serving": set(),
    "batch": {"core", "serving"},
    # monitoring reads what serving writes (the log format); serving never imports it back.
    "monitoring": {"core", "data", "modeling", "serving"},
    # team starts and stops the team-scale processes (stack, fleet); it runs our commands as programs.
    "team": {"core"},
}


def imported_subpackages(path: Path) -> set[str]:
    """The pipelines subpackages a module imports (absolute imports; relative ones are refused)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "pipelines" and len(parts) > 1:
                found.add(parts[1])
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_lives_in_a_known_subpackage() -> None:
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py", "cli.py"}
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ALLOWED)


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_point_one_way(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) == 1:
        return  # the entry point and the command line use everything
    own = relative.parts[0]
    outside = imported_subpackages(path) - {own}
    assert outside <= ALLOWED[own], f"{relative} imports {sorted(outside - ALLOWED[own])}"


def test_the_oracle_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pipelines.release import gate\nimport pipelines.core.files\n")
    assert imported_subpackages(module) == {"release", "core"}


def test_no_module_shadows_the_standard_library_or_a_builtin() -> None:
    import builtins
    import sys

    names = {p.stem for p in modules()} | {p.name for p in PACKAGE.rglob("*") if p.is_dir()}
    clashes = names & (set(sys.stdlib_module_names) | set(dir(builtins)))
    assert clashes <= {"__init__", "__main__"}, sorted(clashes)
