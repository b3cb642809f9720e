"""Committed notebooks carry no outputs, and the pre-commit hook keeps it that way, offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers.support import PROJECT, git_tracked_files, run

PRE_COMMIT = PROJECT / ".pre-commit-config.yaml"
NOTEBOOKS = sorted(name for name in git_tracked_files() if name.endswith(".ipynb"))


def test_the_stage_notebooks_are_committed() -> None:
    stages = {Path(n).stem for n in NOTEBOOKS if n.startswith("notebooks/")}
    assert {"ingest", "explore", "split", "train"} <= stages


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs_or_execution_counts(name: str) -> None:
    notebook = json.loads((PROJECT / name).read_text())
    dirty = [
        index
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert dirty == [], f"{name}: code cells {dirty} hold outputs or execution counts; run nbstripout"
    # Execution timestamps and widget state are outputs too.
    assert "widgets" not in notebook.get("metadata", {})
    assert not any("execution" in cell.get("metadata", {}) for cell in notebook["cells"])


def test_nbstripout_would_leave_the_committed_notebooks_unchanged() -> None:
    result = run(["nbstripout", "--verify", *NOTEBOOKS], PROJECT, timeout=120)
    assert result.returncode == 0, f"nbstripout would change:\n{result.stdout}{result.stderr}"


def test_pre_commit_config_runs_nbstripout_locally() -> None:
    config = yaml.safe_load(PRE_COMMIT.read_text())
    hooks = [
        hook
        for repo in config["repos"]
        if repo["repo"] == "local"
        for hook in repo["hooks"]
        if hook["entry"].split()[0].endswith("nbstripout")
    ]
    assert hooks, "no local hook runs nbstripout"
    hook = hooks[0]
    assert hook["language"] == "system"  # the venv's nbstripout: nothing to download
    assert "jupyter" in hook.get("types", []) or re.search(r"ipynb", hook.get("files", ""))


def test_pre_commit_config_names_no_download_address() -> None:
    text = PRE_COMMIT.read_text()
    assert not re.search(r"[a-z][a-z0-9+.-]*://", text, re.I), "committed files must not hold URLs"
    assert all(repo["repo"] in ("local", "meta") for repo in yaml.safe_load(text)["repos"])


def test_pre_commit_accepts_the_config() -> None:
    result = run(["pre-commit", "validate-config", str(PRE_COMMIT)], PROJECT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nbstripout_strips_an_executed_notebook(tmp_path: Path) -> None:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print('hi')", execution_count=3)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    notebook.cells = [cell]
    path = tmp_path / "executed.ipynb"
    nbformat.write(notebook, path)
    assert run(["nbstripout", "--verify", str(path)], tmp_path).returncode != 0
    assert run(["nbstripout", str(path)], tmp_path).returncode == 0
    stripped = json.loads(path.read_text())["cells"][0]
    assert stripped["outputs"] == [] and stripped["execution_count"] is None
    source = stripped["source"]
    assert (source if isinstance(source, str) else "".join(source)) == "print('hi')"
