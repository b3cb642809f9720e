"""`make batch-predict ENGINE=spark`: real Spark (local[2], its own JVM) on local Parquet.

One champion is trained and packaged per module (as test_batch_dask.py does). The local
engine's files are the oracle for the Spark engine's, row for row.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.champion import default_store_env, make_frame, new_project, package_project, train_candidate
from helpers.support import PROJECT as REPO

from pipelines.release import promotion

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
pyspark = pytest.importorskip("pyspark")

TIMEOUT = 120  # batch.timeout_seconds: a cold JVM and Python workers importing scikit-learn
ROWS = 4000
MISSING = "x1: missing, and the contract says not nullable"
COLOR = "color: not an allowed value"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-spark")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = new_project(root)
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    package_project(root, params, REPO)
    settings = yaml.safe_load((root / "params.yaml").read_text())
    settings["batch"]["timeout_seconds"] = TIMEOUT
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    return root


def with_refusals(n: int) -> pd.DataFrame:
    frame = make_frame(n, 5)
    frame.loc[[7, (2 * n) // 5, n - 1], "x1"] = np.nan  # not nullable in the inferred contract
    frame.loc[[30, (2 * n) // 3], "color"] = "purple"  # not an allowed value
    return frame


def batch(root: Path, *args) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in default_store_env(root).items() if k != "SPARK_MASTER"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "batch", *map(str, args)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    return done, time.monotonic() - started


def test_spark_writes_the_local_engines_files_from_parquet(packaged, tmp_path):
    source = tmp_path / "in.parquet"
    with_refusals(ROWS).to_parquet(source, index=False)
    local, local_s = batch(packaged, source, tmp_path / "local.parquet", "--chunk-rows", "500")
    assert local.returncode == 0, local.stderr[-2000:]
    spark, spark_s = batch(
        packaged, source, tmp_path / "spark.parquet", "--chunk-rows", "500", "--engine", "spark"
    )
    assert spark.returncode == 0, spark.stderr[-3000:]
    print(f"\n{ROWS} rows: local {local_s:.1f} s, spark {spark_s:.1f} s (whole command)")
    assert spark.stdout.replace("spark.", "local.") == local.stdout  # the same counts
    for name in ("{}.parquet", "{}.rejects.parquet"):
        expected = pd.read_parquet(tmp_path / name.format("local"))
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name.format("spark")), expected)
    # Independent of both engines: the refused rows are the spoiled ones and those outside the
    # training range (the contract's bounds), in IN's order; every other row is scored, in order.
    frame, train = with_refusals(ROWS), pd.read_parquet(packaged / "train.parquet")
    spoiled = {7: MISSING, 30: COLOR, 1600: MISSING, 2666: COLOR, 3999: MISSING}
    outside = pd.Series(False, index=frame.index)
    for column in ("x1", "x2"):
        low, high = train[column].min(), train[column].max()
        outside |= (frame[column] < low) | (frame[column] > high)
    refused = sorted(set(spoiled) | set(frame.loc[outside, "id"]))
    rejects = pd.read_parquet(tmp_path / "spark.rejects.parquet")
    assert rejects["id"].tolist() == refused and len(refused) > len(spoiled)
    reasons = rejects.set_index("id")["reason"]
    assert reasons[list(spoiled)].to_dict() == spoiled
    assert reasons.drop(list(spoiled)).str.contains("the (?:minimum|maximum)").all()
    scored = pd.read_parquet(tmp_path / "spark.parquet")
    assert scored["id"].tolist() == [i for i in range(ROWS) if i not in set(refused)]
    assert set(scored["prediction"]) <= {"yes", "no"}


def test_spark_with_an_s3_path_is_one_line_before_any_work(packaged, tmp_path):
    source = tmp_path / "in.parquet"
    make_frame(50, 5).to_parquet(source, index=False)
    done, took = batch(packaged, source, "s3://bucket/out.parquet", "--engine", "spark")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "ERROR batch: --engine spark takes local paths only, not 's3://bucket/out.parquet' "
        "(no Hadoop AWS jars here); use --engine local or dask for s3://"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
    assert took < 30  # no JVM was started
