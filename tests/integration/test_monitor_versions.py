"""The monitoring reference is bound to the model version (issue 11): `make package` stores it with
the model and logs it on the champion's run, a rollback brings the old version's reference back, and
`make monitor` judges each version's traffic against its own reference.

One project serves two real versions in turn (real `bentoml serve`, one log folder). The oracle is
independent of pipelines.monitoring: the stored skops model's own predictions on the training split
(numpy/scipy statistics), the answers the service gave, and sha256 of the bytes read back.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.champion import (
    default_store_env,
    free_port,
    new_project,
    package_project,
    post,
    private_home,
    serve,
    server_env,
    stop,
    train_candidate,
)
from helpers.support import PROJECT as REPO
from helpers.support import TRACEBACK
from scipy import stats

from pipelines.core import stores
from pipelines.release import promotion

pytestmark = pytest.mark.integration

N = 400  # records each version answers: above monitor.min_rows (300), so every column is judged
BATCH = 100
BENTOML = str(Path(sys.executable).parent / "bentoml")
MODEL = "tabular-champion"
FEATURES = {"x1", "x2", "color"}
REFERENCE_TAG = "monitoring.reference.sha256"
REFERENCE_ARTIFACT = "monitoring/reference.json"


def complete_params(params):
    """The sections the monitor (and the reference) read, copied from the repo's params.yaml where
    the synthetic project lacks them; package_project writes the whole dict to params.yaml."""
    repo = yaml.safe_load((REPO / "params.yaml").read_text())
    for section in ("seed", "monitor", "validate", "run", "promote", "data", "tracking"):
        params.setdefault(section, repo[section])
    for key in ("monitor", "reports"):
        params["paths"].setdefault(key, repo["paths"][key])


def model_dir(record):
    name, version = record["model"].split(":")
    return Path(record["bentoml_home"]) / "models" / name / version


def load_model(folder):
    import skops.io

    path = folder / "model.skops"
    return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))


SERVED_DECIMALS = 6  # the answers' rounding (docs/serving.md): the reference is built as served
SERVED_TOLERANCE = 2e-6  # the compiled graph computes in float32: a rounded score may differ by 1e-6


def training_scores(folder, train):
    """The stored model's positive-class probability on every training row, by scikit-learn,
    rounded as the service rounds its answers."""
    model = load_model(folder)
    positive = json.loads((folder / "meta.json").read_text())["positive_class"]
    classes = [str(c) for c in model.classes_]
    proba = model.predict_proba(train[list(model.feature_names_in_)])
    return np.round(proba[:, classes.index(str(positive))], SERVED_DECIMALS), str(positive), model


def assert_bins_hold(stats, scores):
    """The reference's bins, checked on the scores: each edge within their range, and the share of
    scores below each edge equal to the cumulative bin shares (a row or two may sit 1e-6 off)."""
    edges = np.asarray(stats["edges"])
    assert len(edges) >= 1 and np.all(np.diff(edges) > 0)
    assert edges.min() >= scores.min() - SERVED_TOLERANCE and edges.max() <= scores.max()
    below = np.array([(scores <= e).mean() for e in edges])
    np.testing.assert_allclose(below, np.cumsum(stats["bin_shares"])[:-1], atol=2.5 / len(scores))


def stored_reference(record):
    return json.loads((model_dir(record) / "reference.json").read_text())


def send(record, log_dir, home_folder, rows):
    """Serve `record` from a private copy of its home, send `rows` in batches; the answers'
    positive-class probabilities (the service's own numbers)."""
    positive = json.loads((model_dir(record) / "meta.json").read_text())["positive_class"]
    home = private_home(record, home_folder)
    port = free_port()
    cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)]
    proc = serve(cmd, record["root"], server_env(record, log_dir, home), port)
    scores = []
    try:
        records = json.loads(rows.drop(columns=["label"]).to_json(orient="records"))
        for start in range(0, len(records), BATCH):
            status, body = post(port, records[start : start + BATCH], timeout=30)
            assert status == 200 and body["model_version"] == record["registry_version"]
            scores += [p[str(positive)] for p in body["probabilities"]]
    finally:
        stop(proc)
    return np.asarray(scores)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """v1 (x1 and x2 hidden: a colour-only model) packaged and served N records, then v2 (all
    columns) promoted, packaged and served the next N records into the same log folder."""
    root = tmp_path_factory.mktemp("versions")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = new_project(root)
        complete_params(params)
        (root / "notebooks").mkdir()
        shutil.copy(REPO / "notebooks" / "monitor.ipynb", root / "notebooks" / "monitor.ipynb")
        holdout = pd.read_parquet(params["paths"]["holdout"])
        log_dir = root / "predlog"

        train_candidate(params, hide=["x1", "x2"])
        assert promotion.run_promotion(root, params)["promoted"]
        first = package_project(root, params, REPO) | {"root": root}
        served = {"1": send(first, log_dir, tmp_path_factory.mktemp("home1"), holdout.iloc[:N])}

        train_candidate(params, hide=[])
        assert promotion.run_promotion(root, params)["promoted"]
        second = package_project(root, params, REPO) | {"root": root}
        assert (first["registry_version"], second["registry_version"]) == ("1", "2")
        served["2"] = send(second, log_dir, tmp_path_factory.mktemp("home2"), holdout.iloc[N : 2 * N])
        yield SimpleNamespace(
            root=root,
            params=params,
            records={"1": first, "2": second},
            log_dir=log_dir,
            served=served,
            train=pd.read_parquet(params["paths"]["train"]),
        )


def mlflow_client(params):
    import mlflow

    return mlflow.MlflowClient(stores.tracking_uri(Path(params["tracking"]["store"])))


def logged_bytes(params, version, folder):
    client = mlflow_client(params)
    entry = client.get_model_version(params["promote"]["registered_model"], version)
    local = client.download_artifacts(entry.run_id, REFERENCE_ARTIFACT, str(folder))
    return Path(local).read_bytes(), entry.tags


def run_monitor(root, log_dir, home=None):
    """`python -m pipelines monitor` as a user whose HOME is `home` (default: the project's)."""
    report_path = root / "reports" / "monitor.json"
    report_path.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "monitor", "--log-dir", str(log_dir)],
        cwd=root,
        env=default_store_env(home or root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert TRACEBACK not in done.stdout + done.stderr, done.stderr[-3000:]
    assert report_path.is_file(), done.stderr[-3000:]
    return done, json.loads(report_path.read_text())


@pytest.mark.parametrize("version", ["1", "2"])
def test_package_stores_logs_and_tags_the_same_reference(world, version, tmp_path):
    folder = model_dir(world.records[version])
    data = (folder / "reference.json").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert json.loads((folder / "meta.json").read_text())["digests"]["reference.json"] == digest
    logged, tags = logged_bytes(world.params, version, tmp_path)
    assert tags[REFERENCE_TAG] == digest
    assert logged == data

    reference = json.loads(data)
    assert reference["model_version"] == version
    assert set(reference["columns"]) == FEATURES
    scores, positive, model = training_scores(folder, world.train)
    assert set(model.feature_names_in_) == FEATURES
    assert reference["prediction_form"] == {"form": "probability", "class": positive}
    prediction = reference["prediction"]
    assert reference["rows"] == prediction["n"] == len(world.train)
    assert prediction["mean"] == pytest.approx(scores.mean(), abs=SERVED_TOLERANCE)
    assert prediction["sd"] == pytest.approx(scores.std(ddof=1), abs=SERVED_TOLERANCE)
    extremes = (prediction["min"], prediction["max"])
    assert extremes == pytest.approx((scores.min(), scores.max()), abs=SERVED_TOLERANCE)
    assert_bins_hold(prediction, scores)
    # The features are the training split's, whichever columns the model was trained without.
    assert reference["columns"]["x1"]["mean"] == pytest.approx(world.train["x1"].mean(), abs=1e-12)
    shares = world.train["color"].value_counts(normalize=True)
    assert reference["columns"]["color"]["frequencies"] == pytest.approx(shares.to_dict(), abs=1e-12)


@pytest.mark.timeout(600)
def test_the_monitor_judges_each_version_against_its_own_reference(world):
    done, report = run_monitor(world.root, world.log_dir)
    assert report["window"]["versions"] == {"1": N, "2": N}
    assert set(report["drift"]) == set(report["quality"]) == {"1", "2"}
    own = {}
    for version in ("1", "2"):
        scores, _, _ = training_scores(model_dir(world.records[version]), world.train)
        own[version] = scores
        entry = report["references"][version]
        assert entry["status"] == "found" and entry["from"] == "bentoml"
        assert entry["rows"] == len(world.train)
        assert_bins_hold(entry["prediction"], scores)
        assert report["drift"][version]["model_version"] == version
    # The two references differ where the models differ: their predictions.
    bins = {v: report["references"][v]["prediction"] for v in ("1", "2")}
    assert bins["1"]["edges"] != bins["2"]["edges"] and bins["1"]["bin_shares"] != bins["2"]["bin_shares"]

    for version, other in (("1", "2"), ("2", "1")):
        answers, judged = world.served[version], report["drift"][version]["prediction"]
        assert judged["n"] == len(answers) == N
        # The figures, by scipy, on the answers and the reference's own stored sample.
        stored = stored_reference(world.records[version])["prediction"]
        sample = np.asarray(stored["sample"])
        effect = stats.wasserstein_distance(answers, sample) / stored["sd"]
        against_other = stats.wasserstein_distance(answers, own[other]) / own[other].std(ddof=1)
        assert judged["effect"] == pytest.approx(effect, abs=1e-9)
        assert abs(against_other - effect) > 0.05  # the wrong reference would show
        ks = stats.ks_2samp(answers, sample, method="asymp").pvalue
        assert judged["p_value"] == pytest.approx(ks, rel=1e-6, abs=1e-12)
    # Unchanged traffic is not drifted, even for v1, whose scores take three values: built from
    # unrounded scikit-learn scores, its reference put every edge on a value the log held 1e-7
    # away (PSI 5.6, KS p 1e-34 on unchanged traffic).
    for version in ("1", "2"):
        judged = report["drift"][version]["prediction"]
        assert judged["status"] == "ok" and judged["psi"] < 0.1 and judged["p_value"] > 1e-3, judged
        # The features: this version's traffic rows against the training split.
        sent = pd.read_parquet(world.params["paths"]["holdout"]).iloc[
            (int(version) - 1) * N : int(version) * N
        ]
        x1 = world.train["x1"]
        expected = stats.wasserstein_distance(sent["x1"], x1) / x1.std(ddof=1)
        assert report["drift"][version]["features"]["x1"]["effect"] == pytest.approx(expected, abs=1e-8)
    # Neither window has a missing reference.
    assert not [a for a in report["alerts"] if a["condition"].startswith("reference:missing")]
    assert done.returncode == report["exit_code"]


def test_a_version_with_no_reference_is_named_and_never_ok(world, tmp_path):
    """Version 2's lines, relabelled as version 99 (never packaged, not in the registry)."""
    folder = tmp_path / "log" / "predictions"
    folder.mkdir(parents=True)
    lines = [
        json.loads(line)
        for path in sorted((world.log_dir / "predictions").glob("predictions.*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    for line in lines:
        if line["model_version"] == "2":
            line["model_version"] = "99"
    (folder / "predictions.copy.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    done, report = run_monitor(world.root, folder.parent)
    assert report["window"]["versions"] == {"1": N, "99": N}
    assert report["references"]["99"]["status"] == "missing"
    assert report["references"]["1"]["status"] == "found"
    assert "99" not in report["drift"] and "1" in report["drift"]
    missing = [a for a in report["alerts"] if a["condition"] == "reference:missing@v99"]
    assert [a["severity"] for a in missing] == ["warning"]
    assert done.returncode >= 1 and report["exit_code"] >= 1


def test_a_tampered_reference_in_the_store_is_refused(world, tmp_path):
    """One byte of version 2's reference.json changed, in a copy of the home the monitor reads."""
    store = tmp_path / "bentoml"
    shutil.copytree(
        world.root / "bentoml", store, ignore=shutil.ignore_patterns("prometheus_multiproc_dir", "bentos")
    )
    tampered = 0
    for folder in (store / "models" / MODEL).iterdir():
        meta = folder / "meta.json"
        if meta.is_file() and json.loads(meta.read_text())["version"] == "2":
            # Still a well-formed reference (1500 rows become 2500): only its digest tells.
            path = folder / "reference.json"
            data = path.read_bytes()
            at = data.index(b'"rows":') + len(b'"rows":')
            path.write_bytes(data[:at] + (b"2" if data[at : at + 1] != b"2" else b"3") + data[at + 1 :])
            tampered += 1
    assert tampered == 1

    done, report = run_monitor(world.root, world.log_dir, home=tmp_path)
    refused = report["references"]["2"]
    assert refused["status"] == "missing" and "refused" in refused["reason"]
    assert report["references"]["1"]["status"] == "found"
    assert set(report["drift"]) == {"1"}
    assert "reference:missing@v2" in {a["condition"] for a in report["alerts"]}
    assert done.returncode != 0 and report["exit_code"] != 0


@pytest.mark.timeout(600)
def test_after_a_rollback_package_reuses_the_logged_reference(world, tmp_path):
    """Rollback to v1 with v1's packaged models gone from the store and the training split changed:
    a rebuilt reference would differ, so equal bytes mean the logged one came back. Runs last: it
    makes v1 the champion again (its store and data are put back afterwards)."""
    root, params = world.root, world.params
    first_bytes = (model_dir(world.records["1"]) / "reference.json").read_bytes()
    logged, tags = logged_bytes(params, "1", tmp_path)
    assert logged == first_bytes
    train_path = Path(params["paths"]["train"])
    original = train_path.read_bytes()
    aside = tmp_path / "aside"
    shutil.move(model_dir(world.records["1"]), aside)
    try:
        shifted = world.train.assign(x1=world.train["x1"] + 5.0)
        shifted.to_parquet(train_path)
        promotion.run_rollback(root, params, "bad release")
        third = package_project(root, params, REPO)
    finally:  # the data and the store as before (plus the new v1 copy), for any later test
        train_path.write_bytes(original)
        shutil.move(aside, model_dir(world.records["1"]))
    assert third["registry_version"] == "1" and third["model"] != world.records["1"]["model"]
    models = Path(third["bentoml_home"]) / "models" / MODEL
    assert (models / "latest").read_text().strip() == third["model"].split(":")[1]
    stored = (model_dir(third) / "reference.json").read_bytes()
    assert stored == logged
    assert json.loads(stored)["columns"]["x1"]["mean"] == pytest.approx(world.train["x1"].mean(), abs=1e-12)
    again, tags_after = logged_bytes(params, "1", tmp_path / "again")
    assert again == logged and tags_after[REFERENCE_TAG] == tags[REFERENCE_TAG]
