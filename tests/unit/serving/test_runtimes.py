"""The array path gives exactly the DataFrame path's answers, for every candidate type and task."""

import numpy as np
import pandas as pd
import pytest
from helpers.champion import make_frame
from threadpoolctl import threadpool_limits

from pipelines.data import contract
from pipelines.modeling import models
from pipelines.serving import answers, bundle, runtimes

KINDS = {
    "classification": ["logistic_regression", "random_forest", "hist_gradient_boosting"],
    "regression": ["ridge", "random_forest", "hist_gradient_boosting"],
}


def frames(task):
    train, test = make_frame(600, 1), make_frame(200, 2)
    for frame in (train, test):
        frame.loc[frame.index % 17 == 0, "x2"] = np.nan  # missing values the model imputes
        frame.loc[frame.index % 23 == 0, "color"] = None
        if task == "regression":
            frame["label"] = frame["x1"] * 3 + frame["x2"].fillna(0)
    return train, test


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_array_path_equals_dataframe_path(task, index):
    threadpool_limits(1)  # as the service runs: OpenMP spin-waiting on a busy box costs seconds
    train, test = frames(task)
    kind = KINDS[task][index]
    X, y = train.drop(columns=["label", "id"]), train["label"]
    params = {"n_estimators": 20} if kind == "random_forest" else {}
    model = models.fit(
        models.build_pipeline(
            kind, {"model": kind, "params": params}, features=X, feature_params={}, task=task, seed=0
        ),
        X,
        y,
        kind,
    )
    schema = contract.infer_contract(train, "label", max_categories=50, null_tolerance=0.05)
    fields = contract.field_specs(schema, list(X.columns))
    loaded = bundle.LoadedModel(
        model=model,
        version="1",
        task=task,
        features=list(X.columns),
        classes=list(getattr(model, "classes_", [])),
        meta={"fields": fields},
        arrays=runtimes.array_runtime(model),
    )
    assert loaded.arrays is not None and bundle._arrays_agree(loaded)
    records = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in test.drop(columns=["label", "id"]).to_dict("records")
    ]
    with_arrays = answers.answer(loaded, records)
    without = answers.answer(bundle.LoadedModel(**{**loaded.__dict__, "arrays": None}), records)
    assert with_arrays[0] == without[0]
    if task == "classification":
        assert with_arrays[1] == without[1]
    expected = model.predict(pd.DataFrame.from_records(records, columns=X.columns))
    assert [str(v) for v in with_arrays[0]] == [str(v) for v in expected] or np.allclose(
        with_arrays[0], expected
    )


def test_array_path_refuses_other_shapes():
    from sklearn.linear_model import LogisticRegression

    assert runtimes.array_runtime(LogisticRegression()) is None
