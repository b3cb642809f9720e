"""pipelines/batch/distributed.py: the Dask engine on a real LocalCluster, against the local engine.

The model is a real scikit-learn pipeline saved with skops in a hand-built bundle (meta.json,
model.yaml labels, digests: what `make package` writes), so `bundle.load` and the trust rules
are the real ones. The oracle is the local engine's files and, for the answers, the fitted
pipeline's own predict_proba on the accepted rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipelines.batch import distributed, scoring
from pipelines.core.errors import PipelineError
from pipelines.serving import bundle

FIELDS = {
    "x1": {"type": "number", "nullable": False},
    "x2": {"type": "number", "nullable": False},
    "count": {"type": "integer", "nullable": False, "minimum": 0, "maximum": 20},
    "color": {"type": "string", "nullable": False, "allowed": ["blue", "green", "red"]},
}
TIMEOUT = 60.0


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "count": rng.integers(0, 21, size=n),
            "color": rng.choice(["red", "green", "blue"], size=n),
        }
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A packaged-model folder as `make package` lays it out, with a real fitted pipeline."""
    folder = tmp_path_factory.mktemp("models") / "tabular-champion" / "v1"
    folder.mkdir(parents=True)
    train = frame(400, 1)
    y = np.where(2 * train["x1"] - train["x2"] + (train["color"] == "red") > 0, "yes", "no")
    pipeline = make_pipeline(
        ColumnTransformer(
            [
                ("num", StandardScaler(), ["x1", "x2", "count"]),
                ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["color"]),
            ]
        ),
        LogisticRegression(),
    ).fit(train[list(FIELDS)].astype({"count": "float64"}), y)
    model = skops.io.dumps(pipeline)
    meta = {
        "version": "1",
        "task": "classification",
        "fields": FIELDS,
        "optional_fields": {"id": {"type": "integer", "nullable": False}},
        "target": "label",
        "limits": {"max_string_length": 16, "max_records": 1000},
        "digests": {bundle.MODEL_FILE: sha(model)},
    }
    meta_bytes = json.dumps(meta).encode()
    (folder / bundle.MODEL_FILE).write_bytes(model)
    (folder / bundle.META_FILE).write_bytes(meta_bytes)
    labels = {bundle.META_LABEL: sha(meta_bytes), bundle.SKOPS_LABEL: sha(model)}
    (folder / bundle.MODEL_YAML).write_text(yaml.safe_dump({"labels": labels}))
    return folder


@pytest.fixture(scope="module")
def cluster():
    """One real LocalCluster for the module (two single-threaded worker processes)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as running:
        yield running


def with_refusals(n: int, not_an_integer: object) -> pd.DataFrame:
    data = frame(n, 7).astype({"count": object})
    data.loc[[3, 400, 1999], "x1"] = np.nan  # not nullable
    data.loc[[10, 1500], "color"] = "purple"  # not allowed
    data.loc[[20, 2500], "count"] = not_an_integer
    data.loc[777, "count"] = 99  # over the maximum
    return data


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_dask_writes_the_local_engines_files_row_for_row(
    tmp_path: Path, model_dir: Path, cluster, suffix: str
) -> None:
    source = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        with_refusals(3000, 5.5).to_csv(source, index=False)  # "5.5": not an integer
    else:  # a Parquet integer column cannot hold 5.5: -1 is under the minimum
        with_refusals(3000, -1).astype({"count": "Int64"}).to_parquet(source, index=False)
    outputs = {}
    for name, engine in (
        ("local", scoring.local_engine),
        ("dask", distributed.dask_engine(cluster.scheduler_address, TIMEOUT)),
    ):
        target, rejects = tmp_path / f"{name}{suffix}", tmp_path / f"{name}.rejects{suffix}"
        counts = scoring.run(str(source), str(target), str(rejects), 256, model_dir, engine)
        read = pd.read_csv if suffix == ".csv" else pd.read_parquet
        outputs[name] = counts, read(target), read(rejects)
    (counts, scored, refused), (dask_counts, dask_scored, dask_refused) = outputs["local"], outputs["dask"]
    refused_ids = [3, 10, 20, 400, 777, 1500, 1999, 2500]
    assert counts == dask_counts == (3000 - len(refused_ids), len(refused_ids))
    assert refused["id"].tolist() == refused_ids
    pd.testing.assert_frame_equal(dask_scored, scored)
    pd.testing.assert_frame_equal(dask_refused, refused)
    # The answers themselves, from the fitted pipeline (not from the code under test).
    pipeline = skops.io.loads((model_dir / bundle.MODEL_FILE).read_bytes(), trusted=["numpy.dtype"])
    X = dask_scored[list(FIELDS)].astype({"count": "float64"})
    np.testing.assert_allclose(dask_scored["probability_yes"], pipeline.predict_proba(X)[:, 1], atol=1e-6)
    assert dask_scored["prediction"].tolist() == pipeline.predict(X).tolist()


def test_without_a_scheduler_a_local_cluster_is_started_and_closed(tmp_path: Path, model_dir: Path) -> None:
    import psutil

    source = tmp_path / "in.csv"
    frame(50, 3).to_csv(source, index=False)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = distributed.dask_engine(None, TIMEOUT)
    assert scoring.run(
        str(source), str(tmp_path / "o.csv"), str(tmp_path / "r.csv"), 20, model_dir, engine
    ) == (
        50,
        0,
    )
    deadline = time.monotonic() + 10
    while {p.pid for p in psutil.Process().children(recursive=True)} - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {p.pid for p in psutil.Process().children(recursive=True)} - before == set()  # no worker left


def test_a_tampered_model_is_refused_before_any_cluster_is_reached(tmp_path: Path, model_dir: Path) -> None:
    copy = tmp_path / "tabular-champion" / "v1"
    copy.mkdir(parents=True)
    for path in model_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / bundle.MODEL_FILE).write_bytes((copy / bundle.MODEL_FILE).read_bytes() + b"x")
    source = tmp_path / "in.csv"
    frame(5, 3).to_csv(source, index=False)
    # No scheduler listens there: a refusal after connecting would be a timeout, not this line.
    engine = distributed.dask_engine("tcp://127.0.0.1:9", 2.0)
    with pytest.raises(PipelineError, match=r"model\.skops does not match its recorded SHA-256"):
        scoring.run(str(source), str(tmp_path / "o.csv"), str(tmp_path / "r.csv"), 20, copy, engine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "tabular-champion"]


def test_no_scheduler_at_the_address_fails_in_one_line_within_the_timeout(
    tmp_path: Path, model_dir: Path
) -> None:
    source = tmp_path / "in.csv"
    frame(5, 3).to_csv(source, index=False)
    started = time.monotonic()
    with pytest.raises(
        PipelineError, match=r"^dask: no scheduler answered at 'tcp://127\.0\.0\.1:9' within 3 s$"
    ):
        scoring.run(
            str(source),
            str(tmp_path / "o.csv"),
            str(tmp_path / "r.csv"),
            20,
            model_dir,
            distributed.dask_engine("tcp://127.0.0.1:9", 3.0),
        )
    assert time.monotonic() - started < 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
