"""A small project with real candidates logged to a real MLflow store, for registry tests.

Candidates are real scikit-learn pipelines whose quality is set by what their training data
hides: a column blanked in training carries no signal, so hiding more makes a clearly worse model.
"""

import numpy as np
import pandas as pd
import pytest

from pipelines import dataio, metrics, models, registry, tracking


def make_frame(n, seed):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    logit = 2 * x1 - x2 + (color == "red")
    label = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"id": np.arange(n), "x1": x1, "x2": x2, "color": color, "label": label})


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = {
        "data": {"target": "label", "task": "classification", "ignore": ["id"], "positive_class": None},
        "paths": {
            "train": str(tmp_path / "train.parquet"),
            "holdout": str(tmp_path / "holdout.parquet"),
            "models": str(tmp_path / "models"),
            "metrics": str(tmp_path / "metrics"),
            "raw": str(tmp_path / "train.parquet"),
            "promotion": str(tmp_path / "promotion.json"),
        },
        "train": {"candidates": {"cand": {"model": "logistic_regression", "params": {}}}},
        "promote": {
            "registered_model": "test-model",
            "primary_metric": "roc_auc",
            "min_delta": 0.002,
            "guards": {"log_loss": 0.05},
            "floors": {"roc_auc": 0.55},
        },
        "tracking": {"experiment": "promotion-test", "store": str(tmp_path / "store")},
    }
    dataio.write_parquet(make_frame(1500, 1), params["paths"]["train"])
    dataio.write_parquet(make_frame(1000, 2), params["paths"]["holdout"])
    return tmp_path, params


def train_candidate(params, hide, seed=0):
    """Train the single candidate with the `hide` columns blanked; log it as train.ipynb does."""
    import mlflow

    data, paths = params["data"], params["paths"]
    frame = pd.read_parquet(paths["train"])
    for column in hide:
        frame[column] = 0.0 if column != "color" else "red"
    X, y = frame.drop(columns=["label", "id"]), frame["label"]
    spec = params["train"]["candidates"]["cand"]
    model = models.fit(models.build_pipeline("cand", spec, features=X, feature_params={}, task="classification", seed=0), X, y, "cand")
    holdout = pd.read_parquet(paths["holdout"])
    scores = metrics.score_model(model, holdout.drop(columns=["label", "id"]), holdout["label"], "classification", "yes")
    tracking.use_experiment(params["tracking"]["experiment"], tracking.Path(params["tracking"]["store"]))
    with mlflow.start_run() as run:
        mlflow.set_tags({"lineage.git_commit": "test", "lineage.data_md5": "x", "lineage.params_hash": ",".join(hide)})
        uri = tracking.log_model(model, X.head(3))
    dataio.write_json({"run_id": run.info.run_id, "model_uri": uri, "positive_class": "yes"}, f"{paths['models']}/cand/run.json")
    dataio.write_json(scores, f"{paths['metrics']}/holdout/cand.json")
    return scores


def champion(params):
    import mlflow

    version = registry.champion_version(mlflow.MlflowClient(), params["promote"]["registered_model"])
    return str(version.version) if version else None
