"""pipelines/nbrun.py: a failing stage becomes one readable line."""

from __future__ import annotations

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
