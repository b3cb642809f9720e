"""pipelines/cli.py: one entry point, every operation listed, one error shell."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli

COMMANDS = (
    "notebook",
    "monitor",
    "promote",
    "rollback",
    "rollout",
    "package",
    "batch",
    "feedback",
    "tracking-uri",
)


def test_help_lists_every_operation() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True, check=True
    )
    for command in COMMANDS:
        assert f"    {command}" in done.stdout, command


def test_a_pipeline_error_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here or above
    assert cli.main(["promote"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR promote: no params.yaml found") and err.count("\n") == 1


def test_tracking_uri_is_the_projects_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "params.yaml").write_text("tracking: {experiment: e, store: st}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["tracking-uri"]) == 0
    assert capsys.readouterr().out.strip() == f"sqlite:///{tmp_path.resolve() / 'st' / 'mlflow.db'}"


def test_an_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["deploy-to-mars"])
    assert exit_.value.code == 2


def test_batch_checks_its_arguments_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "params.yaml").write_text("serving: {bentoml_home: null}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["batch", "in.csv", "out.csv"]) == 1
    assert (
        capsys.readouterr().err == "ERROR batch: batch.chunk_rows in params.yaml must be a positive integer\n"
    )
    (tmp_path / "params.yaml").write_text("serving: {bentoml_home: null}\nbatch: {chunk_rows: 10}\n")
    assert cli.main(["batch", "in.xlsx", "out.csv"]) == 1
    assert (
        capsys.readouterr().err
        == "ERROR batch: 'in.xlsx' has an unknown format: name it .csv, .tsv (either may end .gz, .bz2 or"
        " .xz), .parquet or .pq\n"
    )
    assert cli.main(["batch", "missing.csv", "out.csv"]) == 1
    assert capsys.readouterr().err == "ERROR batch: 'missing.csv' does not exist\n"
