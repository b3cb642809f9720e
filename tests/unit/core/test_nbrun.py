"""pipelines/core/nbrun.py: a failing stage becomes one readable line; it runs without the venv
activated; the kernels are quiet; the HTML report shows outputs, not code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core import nbrun


@pytest.mark.parametrize("ename", ["ParamsError", "DataError", "ContractViolation", "PipelineError"])
def test_our_errors_are_one_line_without_a_pointer_to_a_traceback(ename: str) -> None:
    line = nbrun.failure_line("validate", ename, "column 'age': wrong type\nmore detail", "reports/v.ipynb")
    assert line == "ERROR validate: column 'age': wrong type"


def test_other_errors_name_the_type_and_where_the_traceback_is() -> None:
    line = nbrun.failure_line("train-hgb", "ValueError", "  bad input\n  detail", "reports/train-hgb.ipynb")
    assert line == "ERROR train-hgb: ValueError: bad input (traceback in reports/train-hgb.ipynb)"
    assert "\n" not in line


def test_empty_error_value() -> None:
    assert (
        nbrun.failure_line("split", "KeyError", "", "r.ipynb")
        == "ERROR split: KeyError:  (traceback in r.ipynb)"
    )
    assert nbrun.failure_line("split", "DataError", "\n\n", "r.ipynb") == "ERROR split: "


def test_error_names_match_the_error_classes() -> None:
    from pipelines.core import errors

    assert set(nbrun.ERROR_NAMES) == {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.PipelineError)
    }


def test_main_without_enough_arguments_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert nbrun.main(["only-one.ipynb"]) == 2
    assert "Usage" in capsys.readouterr().err


def test_main_with_a_missing_notebook_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reports" / "ingest.ipynb"
    assert nbrun.main([str(tmp_path / "missing.ipynb"), str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("ERROR ingest: ") and "missing.ipynb" in err[0]
    assert out.parent.is_dir()  # created for papermill, which does not


# DVC runs `python -m pipelines.core.nbrun` with the first python on PATH. `python -S` stands in
# for a system Python: no site-packages, so no papermill; PYTHONPATH still finds this package.
PROJECT = Path(__file__).resolve().parents[3]
FAKE_VENV_PYTHON = """#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/argv"
printf '%s\\n' "$PATH" > "$(dirname "$0")/path"
exit 7
"""


def _run_without_papermill(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-S", "-m", "pipelines.core.nbrun", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_without_papermill_or_a_venv_it_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    result = _run_without_papermill(tmp_path, "notebooks/split.ipynb", "reports/split.ipynb")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"ERROR split: papermill is not installed for {sys.executable}; "
        "run `make run` or `source .venv/bin/activate`"
    ]
    assert not (tmp_path / "reports").exists()  # nothing ran


def test_without_papermill_it_runs_again_with_the_projects_venv(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / "params.yaml").write_text("seed: 1\n")
    fake = project / ".venv" / "bin" / "python"
    fake.write_text(FAKE_VENV_PYTHON)
    fake.chmod(0o755)
    # A DVC experiment's temporary copy has a params.yaml but no venv: the project's is used.
    copy = project / ".dvc" / "tmp" / "exps" / "run1"
    copy.mkdir(parents=True)
    (copy / "params.yaml").write_text("seed: 1\n")
    args = ["notebooks/train.ipynb", "reports/train-a.ipynb", "--html", "-f", "params.yaml"]

    result = _run_without_papermill(copy, *args)

    assert result.returncode == 7, result.stderr  # the venv's exit code is the stage's
    assert result.stderr == ""
    assert (fake.parent / "argv").read_text().splitlines() == ["-m", "pipelines.core.nbrun", *args]
    assert (fake.parent / "path").read_text().startswith(f"{fake.parent}{os.pathsep}")


def test_with_papermill_there_is_nothing_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("no re-exec when papermill imports"))
    nbrun.ensure_papermill(["a.ipynb", "b.ipynb"], "b")


def test_the_kernels_do_not_warn_about_ipywidgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONWARNINGS", "error::ResourceWarning")
    nbrun.kernel_environment()
    nbrun.kernel_environment()  # idempotent: main() may run more than once in one process
    filters = os.environ["PYTHONWARNINGS"].split(",")
    assert filters == ["ignore:IProgress not found:Warning", "error::ResourceWarning"]
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import warnings; from tqdm.std import TqdmWarning; "
            "warnings.warn('IProgress not found. Please update jupyter and ipywidgets.', TqdmWarning)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0 and child.stderr == ""


def test_html_report_holds_outputs_but_no_code(tmp_path: Path) -> None:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("secret_code_line = 41 + 1", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="the visible answer\n")]
    notebook.cells = [nbformat.v4.new_markdown_cell("# A heading"), cell]
    path = tmp_path / "report.ipynb"
    nbformat.write(notebook, path)

    html = nbrun.render_html(path).read_text()

    body = html[html.index("<body") :]  # the head's CSS names every class
    assert "the visible answer" in body and "A heading" in body
    assert "secret_code_line" not in body
    assert not [c for c in ("jp-InputArea-editor", "jp-InputPrompt", "jp-OutputPrompt") if c in body]
