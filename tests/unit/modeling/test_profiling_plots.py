"""pipelines/explore.py and pipelines/plots.py: report tables and offline figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.data import profiling
from pipelines.modeling import plots


@pytest.fixture
def data() -> tuple[pd.DataFrame, pd.Series]:
    X = pd.DataFrame(
        {
            "tenure": [1, 5, 10, 40, 60, 70],
            "charges": [90.0, 80.0, np.nan, 40.0, 30.0, 20.0],
            "plan": ["basic", "basic", "plus", "plus", "premium", "premium"],
        }
    )
    y = pd.Series(["Yes", "Yes", "Yes", "No", "No", "No"], name="churn")
    return X, y


def test_overview(data) -> None:
    X, _ = data
    table = profiling.overview(X)
    assert table.loc["charges", "missing"] == pytest.approx(1 / 6, abs=1e-4)
    assert table.loc["plan", "distinct"] == 3


def test_category_effect_is_the_positive_rate(data) -> None:
    X, y = data
    table = profiling.category_effect(X, y, task="classification", positive="Yes", top=10)
    rates = table.set_index("value")["outcome"]
    assert rates["basic"] == 1.0 and rates["plus"] == 0.5 and rates["premium"] == 0.0
    assert set(table["column"]) == {"plan"}


def test_numeric_correlation_sign(data) -> None:
    X, y = data
    corr = profiling.numeric_correlation(X, y, task="classification", positive="Yes")
    assert corr["tenure"] < 0 < corr["charges"]


def test_target_summary(data) -> None:
    _, y = data
    assert profiling.target_summary(y, "classification")["rows"].to_dict() == {"Yes": 3, "No": 3}
    assert "mean" in profiling.target_summary(pd.Series([1.0, 2.0]), "regression").index


def test_figures_per_task(tmp_path: Path) -> None:
    importance = pd.DataFrame({"feature": ["a", "b"], "importance": [0.2, 0.1], "std": [0.01, 0.02]})
    empty_roc = pd.DataFrame(columns=["fpr", "tpr"])
    regression = {
        "importance": importance,
        "roc": empty_roc,
        "residuals": pd.DataFrame({"predicted": [1.0, 2.0], "residual": [0.1, -0.1]}),
    }
    figures = plots.figures(regression, {"r2": 0.9}, "ridge")
    assert set(figures) == {"importance", "residuals"}
    classification = {
        "importance": importance,
        "roc": pd.DataFrame({"fpr": [0, 1], "tpr": [0, 1]}),
        "precision_recall": pd.DataFrame({"recall": [0, 1], "precision": [1, 0.5]}),
        "confusion": pd.DataFrame({"actual": ["a", "b"], "predicted": ["a", "a"]}),
        "residuals": pd.DataFrame(columns=["predicted", "residual"]),
    }
    figures = plots.figures(classification, {"roc_auc": 0.75}, "logreg")
    assert set(figures) == {"importance", "roc", "precision_recall", "confusion"}
    assert "0.750" in figures["roc"].axes[0].get_title()
    target = tmp_path / "images" / "logreg" / "roc.png"
    plots.save(figures["roc"], target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
