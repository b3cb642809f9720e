"""pipelines/modeling/runs.py: lineage hashes, parameters, and models logged without pickle."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.modeling import runs


@pytest.mark.parametrize("size", [0, 17, 3 * (1 << 20) + 5])  # empty, small, several read blocks
def test_file_md5_equals_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert runs.file_md5(path) == hashlib.md5(data).hexdigest()
    assert runs.file_md5(str(path)) == hashlib.md5(data).hexdigest()


def test_params_hash_is_stable_and_sensitive() -> None:
    a = {"candidate": {"model": "ridge", "params": {"alpha": 1.0}}, "seed": 42, "data": {"ignore": ["id"]}}
    reordered = {
        "seed": 42,
        "data": {"ignore": ["id"]},
        "candidate": {"params": {"alpha": 1.0}, "model": "ridge"},
    }
    assert runs.params_hash(a) == runs.params_hash(reordered)
    changed = {**a, "candidate": {"model": "ridge", "params": {"alpha": 2.0}}}
    assert runs.params_hash(changed) != runs.params_hash(a)
    digest = runs.params_hash(a)
    assert len(digest) == 16 and int(digest, 16) >= 0


def test_params_hash_is_the_same_in_another_process() -> None:
    params = {"b": [1, 2, {"x": None}], "a": {"z": 1.5, "y": "text"}}
    code = (
        "import sys, json; from pipelines.modeling import runs; "
        "print(runs.params_hash(json.loads(sys.argv[1])))"
    )
    import json

    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(params)], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()
    assert out == runs.params_hash(params)


def test_flatten() -> None:
    nested = {"model": "rf", "params": {"n": 3, "deep": {"x": 1}}, "empty": {}}
    assert runs.flatten(nested) == {"model": "rf", "params.n": 3, "params.deep.x": 1}


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_lineage_tags(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    raw = tmp_path / "data" / "snapshot.parquet"
    raw.write_bytes(b"some bytes")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "x")
    tags = runs.lineage_tags(tmp_path, "data/snapshot.parquet", {"seed": 1})
    assert tags == {
        "lineage.git_commit": _git(tmp_path, "rev-parse", "HEAD"),
        "lineage.data_md5": hashlib.md5(b"some bytes").hexdigest(),
        "lineage.params_hash": runs.params_hash({"seed": 1}),
    }


def test_git_commit_outside_a_repository_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "not-a-repo"
    folder.mkdir()
    # GIT_CEILING_DIRECTORIES keeps git from finding a repository above tmp_path.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert runs.git_commit(folder) == "unknown"


def test_pinned_requirements_name_installed_versions() -> None:
    from importlib import metadata

    pins = runs.pinned_requirements()
    assert pins == [f"{name}=={metadata.version(name)}" for name in runs.MODEL_REQUIREMENTS]
    assert any(pin.startswith("scikit-learn==") for pin in pins)


def test_signature_frame_declares_integers_as_long_and_gaps_as_double() -> None:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(
        {
            "count": np.array([1, 2], dtype="int32"),
            "level": pd.array([1, None], dtype="Int64"),
            "price": [1.5, np.nan],
            "flag": [True, False],
            "kind": ["a", "b"],
        }
    )
    dtypes = runs.signature_frame(frame).dtypes.astype(str).to_dict()
    assert dtypes == {"count": "int64", "level": "float64", "price": "float64", "flag": "bool", "kind": "str"}


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh SQLite store in tmp_path as MLflow's global store, put back afterwards."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    previous = mlflow.get_tracking_uri()
    runs.use_experiment("signature-test", tmp_path / "store")
    yield mlflow
    mlflow.set_tracking_uri(previous)


def test_logged_model_takes_integer_columns_as_read_from_csv(tmp_path: Path, tracking) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(0, 72, n),
            "charges": rng.uniform(20, 100, n).round(2),
            "plan": rng.choice(["a", "b"], n),
        }
    )
    frame.loc[[3, 7], "charges"] = np.nan
    y = np.where(frame["tenure"] > 30, "Yes", "No")
    pre = ColumnTransformer(
        [("num", "passthrough", ["tenure"]), ("cat", OneHotEncoder(), ["plan"])], remainder="drop"
    )
    model = Pipeline([("preprocess", pre), ("model", LogisticRegression())]).fit(frame, y)
    with tracking.start_run():
        uri = runs.log_model(model, frame.head(5))

    csv = tmp_path / "rows.csv"
    frame.assign(target=y).to_csv(csv, index=False)
    read = pd.read_csv(csv).drop(columns="target")
    assert str(read["tenure"].dtype) == "int64" and str(read["charges"].dtype) == "float64"

    inputs = {c.name: c.type.name for c in tracking.models.get_model_info(uri).signature.inputs.inputs}
    assert inputs == {"tenure": "long", "charges": "double", "plan": "string"}
    loaded = tracking.pyfunc.load_model(uri)
    assert list(loaded.predict(read)) == list(model.predict(read))
    # What the contract forbids, MLflow refuses too: a gap in an integer column.
    gap = read.astype({"tenure": "float64"})
    gap.loc[0, "tenure"] = np.nan
    with pytest.raises(tracking.exceptions.MlflowException, match="tenure"):
        loaded.predict(gap)


def test_use_experiment_takes_the_experiment_another_process_created_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two queued experiments on a fresh server both look, find nothing, and both create: the one
    that loses the create must run in the winner's experiment, not fail and not land in Default."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlruns"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    winner = mlflow.MlflowClient(uri).create_experiment("race", artifact_location=(store / "a").as_uri())
    real = mlflow.MlflowClient.get_experiment_by_name
    looks = []

    def first_look_misses(self, name):  # the look that happened before the other process created it
        looks.append(name)
        return None if len(looks) == 1 else real(self, name)

    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", first_look_misses)
    try:
        assert runs.use_experiment("race", store) == winner
        with mlflow.start_run() as run:
            pass
        assert run.info.experiment_id == winner
    finally:
        mlflow.set_tracking_uri("")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert len(looks) == 2
