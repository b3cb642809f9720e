"""The native runtime end to end: a random-forest champion (built by the forest kernel) trained, promoted and packaged by the
project's own commands (`python -m pipelines package` in a subprocess), then loaded, tampered
with and shipped to Dask workers.

A shared library runs code when it is loaded, so it is held to the trust rules of model.onnx and
more: built locally at packaging (never from the registry), its SHA-256 in meta.json, verified
before loading and loaded from a private copy of the verified bytes. Oracles: hashlib for the
digests, the fitted pipeline's own predict_proba for the answers, the local engine's files for
the Dask engine's.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.champion import default_store_env, new_project, package_project, train_candidate
from helpers.support import PROJECT as REPO

from pipelines.batch import distributed, scoring
from pipelines.core.errors import PipelineError
from pipelines.release import promotion
from pipelines.serving import bundle, trust

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build the native library"),
]
FOREST = {"model": "random_forest", "params": {"n_estimators": 20, "max_depth": 6, "min_samples_leaf": 5}}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A project whose champion v1, a random forest, is packaged."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        root = tmp_path_factory.mktemp("native")
        params = new_project(root)
        params["train"]["candidates"]["cand"] = FOREST
        train_candidate(params, hide=[])
        assert promotion.run_promotion(root, params)["promoted"]
        record = package_project(root, params, REPO)
        yield root, params, record


def packaged_dir(record):
    return Path(record["bentoml_home"]) / "models" / Path(*record["model"].split(":"))


def copy_of(record, tmp_path):
    target = tmp_path / bundle.MODEL_NAME / record["model"].split(":")[1]
    shutil.copytree(packaged_dir(record), target)
    return target


def test_the_forest_is_packaged_with_a_verified_library_and_serves_natively(shop, tmp_path):
    _, params, record = shop
    assert record["batch_runtime"] == "native"
    assert record["runtime"] in ("onnx", "native")  # requests: the graph if it passed parity
    folder = copy_of(record, tmp_path)
    meta = json.loads((folder / bundle.META_FILE).read_text())
    library = (folder / bundle.NATIVE_FILE).read_bytes()
    assert library.startswith(b"\x7fELF")
    assert (
        meta["digests"][bundle.NATIVE_FILE] == hashlib.sha256(library).hexdigest() == meta["native"]["sha256"]
    )
    assert meta["native"]["parity"]["passed"] and meta["native"]["input"] == "float32"
    assert meta["native"]["engine"] == "forest-kernel"  # the trees as data, not tl2cgen's code
    loaded = bundle.load(folder)
    assert loaded.batch_runtime == "native" and loaded.native is not None
    assert loaded.native.kernel is not None
    holdout = pd.read_parquet(params["paths"]["holdout"])
    X = holdout[loaded.features]
    expected = loaded.model.predict_proba(X)
    assert np.array_equal(loaded.frame_scores(X), expected)  # bit for bit
    records = json.loads(X.head(50).to_json(orient="records"))
    by_library = loaded.native.run(loaded.native.matrix_of_records(records, loaded.features))
    assert np.abs(by_library - loaded.model.predict_proba(X.head(50))).max() < 1e-6


def test_a_tampered_library_is_refused_by_bundle_load(shop, tmp_path):
    _, _, record = shop
    folder = copy_of(record, tmp_path)
    with open(folder / bundle.NATIVE_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(trust.Untrusted, match=r"model\.so does not match its recorded SHA-256") as caught:
        bundle.load(folder)
    assert "\n" not in str(caught.value)


def test_a_missing_library_is_refused_not_skipped(shop, tmp_path):
    _, _, record = shop
    folder = copy_of(record, tmp_path)
    (folder / bundle.NATIVE_FILE).unlink()
    with pytest.raises(trust.Untrusted, match=r"model\.so cannot be read"):
        bundle.load(folder)


def test_a_replaced_library_and_its_digests_are_refused_by_the_label(shop, tmp_path):
    """Two edits (the library, and meta.json's digests of it) still fail: meta.json's own
    digest is a label in BentoML's model.yaml."""
    _, _, record = shop
    folder = copy_of(record, tmp_path)
    forged = (folder / bundle.NATIVE_FILE).read_bytes() + b"\0"
    (folder / bundle.NATIVE_FILE).write_bytes(forged)
    meta = json.loads((folder / bundle.META_FILE).read_text())
    meta["digests"][bundle.NATIVE_FILE] = meta["native"]["sha256"] = hashlib.sha256(forged).hexdigest()
    (folder / bundle.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(trust.Untrusted, match=r"meta\.json does not match its recorded SHA-256"):
        bundle.load(folder)


def test_batch_predict_refuses_a_tampered_library_in_one_line(shop, tmp_path):
    root, params, record = shop
    stored = packaged_dir(record) / bundle.NATIVE_FILE
    original = stored.read_bytes()
    source = tmp_path / "in.csv"
    pd.read_parquet(params["paths"]["holdout"]).drop(columns=["label"]).head(20).to_csv(source, index=False)
    try:
        stored.write_bytes(original + b"\0")
        done = subprocess.run(
            [sys.executable, "-m", "pipelines", "batch", str(source), str(tmp_path / "out.csv")],
            cwd=root,
            env=default_store_env(root),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stored.write_bytes(original)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR batch: "), done.stderr[-2000:]
    assert "model.so does not match its recorded SHA-256" in lines[0]
    assert not (tmp_path / "out.csv").exists()


def test_the_library_travels_to_dask_workers_and_scores_as_the_local_engine(shop, tmp_path):
    _, params, record = shop
    folder = copy_of(record, tmp_path)
    shipped = distributed.shipped_model(folder)
    assert shipped.files[bundle.NATIVE_FILE] == (folder / bundle.NATIVE_FILE).read_bytes()
    holdout = pd.read_parquet(params["paths"]["holdout"]).drop(columns=["label"])
    source = tmp_path / "in.parquet"
    holdout.to_parquet(source)
    outputs = {}
    for name, engine in (("local", scoring.local_engine), ("dask", distributed.dask_engine(timeout=120))):
        target = tmp_path / f"{name}.parquet"
        scored, refused = scoring.run(
            str(source), str(target), str(tmp_path / f"{name}.rejects.parquet"), 300, folder, engine
        )
        assert scored == len(holdout) and refused == 0
        outputs[name] = pd.read_parquet(target)
    pd.testing.assert_frame_equal(outputs["local"], outputs["dask"])
    loaded = bundle.load(folder)
    expected = loaded.model.predict_proba(holdout[loaded.features])
    columns = [f"probability_{c}" for c in loaded.classes]
    assert np.abs(outputs["local"][columns].to_numpy() - expected).max() <= 1e-6  # answers are rounded


def test_a_library_changed_on_its_way_to_a_worker_is_refused_there(shop, tmp_path):
    _, _, record = shop
    folder = copy_of(record, tmp_path)
    shipped = distributed.shipped_model(folder)
    files = {**shipped.files, bundle.NATIVE_FILE: shipped.files[bundle.NATIVE_FILE] + b"\0"}
    forged = distributed.ShippedModel(shipped.name, files, shipped.meta_sha256)
    with pytest.raises(trust.Untrusted, match=r"model\.so does not match its recorded SHA-256"):
        distributed.worker_model(forged)
    with open(folder / bundle.NATIVE_FILE, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(trust.Untrusted, match=r"model\.so does not match"):
        distributed.shipped_model(folder)
    engine = distributed.dask_engine(scheduler="tcp://127.0.0.1:1", timeout=5)
    with pytest.raises(PipelineError, match=r"model\.so does not match"), engine(folder, {}):
        pass
