"""Every stage in dvc.yaml depends on all the pipelines/ code its notebook runs, transitively.

A missing dep means DVC skips the stage after that code changes, and a stale result survives.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from helpers.support import PROJECT

PACKAGE = "pipelines"
# The stages' runner, `python -m pipelines.core.nbrun`: light on purpose, since the whole
# command line (pipelines/cli.py) would make every stage depend on every module.
RUNNER = {f"{PACKAGE}/core/nbrun.py"}


def _module_file(dotted: str) -> str | None:
    """pipelines/x.py for 'pipelines.x', pipelines/__init__.py for 'pipelines', else None."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return f"{PACKAGE}/__init__.py"
    candidate = Path(*parts).with_suffix(".py")
    if (PROJECT / candidate).is_file():
        return candidate.as_posix()
    package = Path(*parts) / "__init__.py"
    return package.as_posix() if (PROJECT / package).is_file() else None


def imported_files(source: str, module: str | None = None) -> set[str]:
    """The pipelines/ files a piece of code imports directly (anywhere, also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside the package
                anchor = (module or PACKAGE).split(".")[: -node.level] or [PACKAGE]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing pipelines.x runs pipelines/__init__
                path = _module_file(".".join(parts[:depth]))
                if path:
                    found.add(path)
    return found


def transitive(files: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(files)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        module = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        todo.extend(imported_files((PROJECT / path).read_text(), module) - seen)
    return seen


def notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        # IPython magics and shell escapes are not Python; drop them before parsing.
        code.append(
            "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        )
    return "\n\n".join(code)


def _interpolate(text: str, context: dict) -> str:
    """DVC's ${a.b} templating from dvc.yaml's vars and params.yaml; foreach's ${key} stays."""

    def lookup(match: re.Match) -> str:
        value: object = context
        for part in match.group(1).split("."):
            if not isinstance(value, dict) or part not in value:
                return match.group(0)
            value = value[part]
        return str(value)

    return re.sub(r"\$\{\s*([\w.-]+)\s*\}", lookup, text)


def stages() -> dict[str, dict]:
    definition = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    context = dict(yaml.safe_load((PROJECT / "params.yaml").read_text()))
    for entry in definition.get("vars", []):
        if isinstance(entry, dict):
            context.update(entry)
    result = {}
    for name, stage in definition["stages"].items():
        body = dict(stage.get("do", stage))
        body["cmd"] = _interpolate(body["cmd"], context)
        body["deps"] = [
            _interpolate(next(iter(d)) if isinstance(d, dict) else d, context) for d in body.get("deps", [])
        ]
        result[name] = body
    return result


def dep_paths(stage: dict) -> set[str]:
    return set(stage["deps"])


def stage_notebook(stage: dict) -> str:
    match = re.search(r"notebooks/[\w.-]+\.ipynb", stage["cmd"])
    assert match, f"no notebook in {stage['cmd']!r}"
    return match.group(0)


STAGES = stages()


def test_import_parser_follows_aliases_functions_and_relative_imports() -> None:
    code = (
        "from pipelines.core import config, files as f\n"
        "import pipelines.modeling.metrics\n"
        "def f():\n    from pipelines.data.splitting import split_frame\n"
        "from . import errors\n"
        "import pandas\n"
    )
    assert imported_files(code, "pipelines.core.x") == {
        "pipelines/__init__.py",
        "pipelines/core/__init__.py",
        "pipelines/core/config.py",
        "pipelines/core/files.py",
        "pipelines/core/errors.py",
        "pipelines/modeling/__init__.py",
        "pipelines/modeling/metrics.py",
        "pipelines/data/__init__.py",
        "pipelines/data/splitting.py",
    }
    # models imports preprocessing, which imports errors: all three count.
    assert {"pipelines/modeling/preprocessing.py", "pipelines/core/errors.py"} <= transitive(
        {"pipelines/modeling/models.py"}
    )


def test_every_stage_runs_a_committed_notebook_through_the_runner() -> None:
    assert set(STAGES) >= {"ingest", "explore", "split", "train"}
    for name, stage in STAGES.items():
        assert "-m pipelines.core.nbrun" in stage["cmd"], name
        assert (PROJECT / stage_notebook(stage)).is_file(), name
        assert stage_notebook(stage) in dep_paths(stage), f"{name}: its notebook is not a dep"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_its_notebook_imports(name: str) -> None:
    stage = STAGES[name]
    direct = imported_files(notebook_code(PROJECT / stage_notebook(stage)))
    assert direct, f"{name}: the notebook imports nothing from {PACKAGE}/?"
    needed = transitive(direct | RUNNER)
    missing = sorted(needed - dep_paths(stage))
    assert not missing, f"dvc.yaml stage '{name}' lacks deps: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_exist(name: str) -> None:
    code = [d for d in dep_paths(STAGES[name]) if d.startswith(f"{PACKAGE}/")]
    assert code
    assert [d for d in code if not (PROJECT / d).is_file()] == []


def test_train_stage_declares_the_candidate_layout() -> None:
    """dvc.yaml's train outputs are the files pipelines/core/layout.py puts each candidate in."""
    from pipelines.core.layout import Layout

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    stage = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    context = {**params, "key": "CAND"}
    declared = {
        _interpolate(next(iter(o)) if isinstance(o, dict) else o, context)
        for o in stage["outs"] + stage["metrics"]
    }
    layout = Layout.from_paths(params["paths"])
    written = {
        layout.model_dir("CAND"),
        layout.cv_scores("CAND"),
        layout.holdout_scores("CAND"),
        layout.plot_image("CAND", "roc").parent,
        *(
            layout.plot_data(kind, "CAND")
            for kind in ("roc", "precision_recall", "confusion", "residuals", "importance")
        ),
    }
    assert {p.as_posix() for p in written} <= declared
    assert layout.run_record("CAND").parent == layout.model_file("CAND").parent == layout.model_dir("CAND")
