"""pipelines/core/stores.py: one store per project, even from a DVC experiment's temporary copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core import stores


@pytest.mark.parametrize(
    "inside",
    [".dvc/tmp/exps/tmpabc", ".dvc/tmp/exps/tmpabc/notebooks", ".dvc/tmp/exps/run-7f3a/x/y"],
)
def test_main_root_of_an_experiment_workspace_is_the_project(tmp_path: Path, inside: str) -> None:
    project = tmp_path / "X"
    assert stores.main_root(project / inside) == project.resolve()


def test_main_root_of_a_plain_project_is_itself(tmp_path: Path) -> None:
    assert stores.main_root(tmp_path / "X") == (tmp_path / "X").resolve()
    # A folder merely named like part of the marker is not an experiment workspace.
    assert stores.main_root(tmp_path / "exps" / "tmp") == (tmp_path / "exps" / "tmp").resolve()
    assert stores.main_root(tmp_path / ".dvc" / "tmp") == (tmp_path / ".dvc" / "tmp").resolve()


def test_main_root_resolves_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert stores.main_root(Path(".dvc/tmp/exps/tmpabc")) == tmp_path.resolve()
    assert stores.main_root(Path(".")) == tmp_path.resolve()


def test_store_dir_of_an_experiment_workspace_is_in_the_main_project(tmp_path: Path) -> None:
    project = tmp_path / "X"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpabc"
    assert stores.store_dir(workspace, "mlruns") == project.resolve() / "mlruns"
    assert stores.store_dir(workspace, "stores/ml") == project.resolve() / "stores" / "ml"


def test_store_dir_of_a_plain_project(tmp_path: Path) -> None:
    assert stores.store_dir(tmp_path, "mlruns") == tmp_path.resolve() / "mlruns"


def test_absolute_store_dir_is_kept(tmp_path: Path) -> None:
    store = tmp_path / "shared" / "store"
    workspace = tmp_path / "X" / ".dvc" / "tmp" / "exps" / "tmpabc"
    assert stores.store_dir(workspace, str(store)) == store


def test_tracking_uri_is_sqlite_in_the_store_unless_a_server_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert stores.tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert stores.tracking_uri(tmp_path) == "http://mlflow.internal:5000"


def test_bentoml_home_is_bentomls_default_unless_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    assert stores.bentoml_home(tmp_path, {"serving": {"bentoml_home": None}}) is None
    assert stores.bentoml_home(tmp_path, {"serving": {"bentoml_home": "bm"}}) == tmp_path.resolve() / "bm"
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "env"))
    assert stores.bentoml_home(tmp_path, {"serving": {"bentoml_home": "bm"}}) == tmp_path / "env"
