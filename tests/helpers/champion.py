"""A small project with real candidates logged to a real MLflow store, for registry tests.

Candidates are real scikit-learn pipelines whose quality is set by what their training data
hides: a column blanked in training carries no signal, so hiding more makes a clearly worse model.
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core import files
from pipelines.core.layout import Layout
from pipelines.modeling import metrics, models, runs
from pipelines.release import registry


def make_frame(n, seed):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    logit = 2 * x1 - x2 + (color == "red")
    label = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"id": np.arange(n), "x1": x1, "x2": x2, "color": color, "label": label})


def new_project(tmp_path):
    """Params and train/holdout data of a small classification project in `tmp_path`."""
    params = {
        "data": {"target": "label", "task": "classification", "ignore": ["id"], "positive_class": None},
        "paths": {
            "train": str(tmp_path / "train.parquet"),
            "holdout": str(tmp_path / "holdout.parquet"),
            "models": str(tmp_path / "models"),
            "metrics": str(tmp_path / "metrics"),
            "plots": str(tmp_path / "plots"),
            "raw": str(tmp_path / "train.parquet"),
            "promotion": str(tmp_path / "promotion.json"),
        },
        "train": {"candidates": {"cand": {"model": "linear", "params": {}}}},
        "promote": {
            "registered_model": "test-model",
            "primary_metric": "roc_auc",
            "min_delta": 0.002,
            "guards": {"log_loss": 0.05},
            "floors": {"roc_auc": 0.55},
        },
        "tracking": {"experiment": "promotion-test", "store": str(tmp_path / "store")},
    }
    files.write_parquet(make_frame(1500, 1), params["paths"]["train"])
    files.write_parquet(make_frame(1000, 2), params["paths"]["holdout"])
    return params


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path, new_project(tmp_path)


def package_project(root, params, repo, limits=None, compile=None):
    """Copy what the bento needs into `root`, infer the data contract, and run `make package`'s
    code in a subprocess (BentoML fixes its home at first import). Returns the package record."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from pipelines.data import contract

    patterns = [p.lstrip("/") for p in yaml.safe_load((repo / "bentofile.yaml").read_text())["include"]]
    included = [path.relative_to(repo) for pattern in patterns for path in repo.glob(pattern)]
    for name in (Path("bentofile.yaml"), *included):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / name, root / name)
    # The project's own serving settings (compile, parity, workers, ...), with a store and limits here.
    project_params = yaml.safe_load((repo / "params.yaml").read_text())
    settings = project_params["serving"]
    params["batch"] = project_params["batch"]
    # What `make package` builds the monitoring reference with, and what `make monitor` reads.
    for section in ("monitor", "seed", "validate", "run"):
        params.setdefault(section, project_params[section])
    params["paths"].setdefault("reports", str(root / "reports"))
    params["paths"].setdefault("monitor", str(root / "reports" / "monitor.json"))
    params["serving"] = {
        **settings,
        "bentoml_home": None,  # BentoML's own default: ~/bentoml, with HOME set to `root` below
        "limits": {**settings["limits"], **(limits or {})},
        "compile": compile or settings["compile"],
    }
    params["paths"]["contract"] = str(root / "contract.yaml")
    params["paths"]["bento"] = str(root / "bento.json")
    frame = pd.read_parquet(params["paths"]["train"])
    schema = contract.infer_contract(frame, "label", max_categories=50, null_tolerance=0.05)
    contract.save_contract(schema, params["paths"]["contract"])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "package"],
        cwd=root,
        capture_output=True,
        text=True,
        env=default_store_env(root),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("PACKAGED tabular-mlops:")
    record = json.loads(Path(params["paths"]["bento"]).read_text())
    assert Path(record["bentoml_home"]) == root / "bentoml"
    return record


def default_store_env(root):
    """The environment of a user with no BENTOML_HOME whose home folder is `root`: BentoML's
    default store is then root/bentoml. The package caches stay where they are (no downloads)."""
    home = Path.home()
    env = {k: v for k, v in os.environ.items() if k not in ("BENTOML_HOME", "MLFLOW_TRACKING_URI")}
    return {
        **env,
        "HOME": str(root),
        "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(home / ".cache" / "uv")),
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(home / ".cache" / "pip")),
        "BENTOML_DO_NOT_TRACK": "true",
    }


def train_candidate(params, hide, seed=0):
    """Train the single candidate with the `hide` columns blanked; log it as train.ipynb does."""
    import mlflow

    paths = params["paths"]
    frame = pd.read_parquet(paths["train"])
    for column in hide:
        frame[column] = 0.0 if column != "color" else "red"
    X, y = frame.drop(columns=["label", "id"]), frame["label"]
    spec = params["train"]["candidates"]["cand"]
    model = models.fit(
        models.build_pipeline("cand", spec, features=X, feature_params={}, task="classification", seed=0),
        X,
        y,
        "cand",
    )
    holdout = pd.read_parquet(paths["holdout"])
    scores = metrics.evaluate(
        model, holdout.drop(columns=["label", "id"]), holdout["label"], "classification", "yes"
    )
    # This project's store: mlflow.set_tracking_uri (in an earlier test, in-process) leaves
    # MLFLOW_TRACKING_URI in os.environ, which would aim this run at that test's store.
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    runs.use_experiment(params["tracking"]["experiment"], Path(params["tracking"]["store"]))
    with mlflow.start_run() as run:
        mlflow.set_tags(
            {"lineage.git_commit": "test", "lineage.data_md5": "x", "lineage.params_hash": ",".join(hide)}
        )
        uri = runs.log_model(model, X.head(3))
    layout = Layout.from_paths(paths)
    files.write_json(
        {"run_id": run.info.run_id, "model_uri": uri, "positive_class": "yes"}, layout.run_record("cand")
    )
    files.write_json(scores, layout.holdout_scores("cand"))
    return scores


def champion(params):
    import mlflow

    version = registry.champion_version(mlflow.MlflowClient(), params["promote"]["registered_model"])
    return str(version.version) if version else None


# --- a real `bentoml serve` on 127.0.0.1 ---


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, records, timeout=5, headers=None):
    body = json.dumps({"records": records}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", body, {"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def serve(cmd, cwd, env, port, deadline=120):
    """Start `bentoml serve`, wait until /readyz answers, and return the process.

    Its output goes to a file (never an unread pipe, which would fill and stall the server).
    """
    import tempfile

    log = tempfile.NamedTemporaryFile("w+", prefix="bentoml-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log.name
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"bentoml serve exited early:\n{Path(log.name).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError(f"bentoml serve did not become ready in time:\n{Path(log.name).read_text()[-3000:]}")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def server_env(record, log_dir, home=None, **extra):
    """A `bentoml serve` environment for a packaged record; open (API_AUTH=off) unless `extra`
    names keys. `home` is the BentoML home to serve from (default: the packaged one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "API_KEY_FILE", "API_AUTH")}
    if not {"API_KEY", "API_KEY_FILE"} & set(extra):
        extra = {"API_AUTH": "off", **extra}
    return {
        **env,
        "BENTOML_HOME": str(home or record["bentoml_home"]),
        "BENTOML_DO_NOT_TRACK": "true",
        "PREDICTION_LOG_DIR": str(log_dir),
        **extra,
    }


def private_home(record, folder):
    """A copy of the packaged BentoML home for one long-lived server. Every `bentoml serve`
    empties its home's prometheus_multiproc_dir at start, so the other servers a test module
    starts would wipe this one's metrics (docs/serving.md)."""
    home = Path(folder) / "bentoml"
    shutil.copytree(record["bentoml_home"], home, ignore=shutil.ignore_patterns("prometheus_multiproc_dir"))
    return home
