"""pipelines/data/profiling.py, pipelines/modeling/plots.py and compare.py: report tables and figures."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from pipelines.core import files
from pipelines.core.layout import Layout
from pipelines.data import profiling
from pipelines.modeling import compare, plots


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


def test_overlays_only_for_kinds_with_data() -> None:
    roc = pd.DataFrame({"fpr": [0, 0.5, 1], "tpr": [0, 0.8, 1]})
    residuals = pd.DataFrame({"predicted": [1.0, 2.0, 3.0], "residual": [0.1, -0.2, 0.0]})
    figures = plots.overlays(
        {"roc": {"a": roc, "b": roc}, "precision_recall": {}, "residuals": {"a": residuals}}
    )
    assert set(figures) == {"roc", "residuals"}
    assert len(figures["roc"].axes[0].lines) == 3  # two candidates and the diagonal
    assert len(figures["residuals"].axes[0].collections) == 1  # points, not a line through them
    for fig in figures.values():
        plt.close(fig)


def test_show_puts_each_figure_in_the_output_as_png_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    figures = {"a": plt.figure(), "b": plt.figure()}

    plots.show(figures)

    assert [img.data[:8] for img in shown] == [b"\x89PNG\r\n\x1a\n"] * 2
    assert not any(plt.fignum_exists(f.number) for f in figures.values())  # closed: shown once


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "models", tmp_path / "metrics", tmp_path / "plots")
    for name, auc in (("a", 0.8), ("b", 0.7)):
        files.write_json({"roc_auc": auc}, layout.holdout_scores(name))
        files.write_json({"roc_auc": {"mean": auc, "folds": [auc, auc]}}, layout.cv_scores(name))
        files.write_text("fpr,tpr\n0,0\n1,1\n", layout.plot_data("roc", name))
        files.write_text("predicted,residual\n", layout.plot_data("residuals", name))
    return layout


def test_compare_tables_read_the_layout(layout: Layout) -> None:
    assert compare.holdout_table(layout, ["a", "b"])["roc_auc"].to_dict() == {"a": 0.8, "b": 0.7}
    assert compare.cv_folds(layout, ["a", "b"], "roc_auc").shape == (2, 2)
    assert set(compare.curves(layout, ["a", "b"], "roc")) == {"a", "b"}
    assert compare.curves(layout, ["a", "b"], "residuals") == {}  # not this task's plot


class FakeClient:
    """An MLflow client over one store that holds only the runs it is given."""

    tracking_uri = "sqlite:////here/mlruns/mlflow.db"

    def __init__(self, runs: dict[str, dict[str, str]]) -> None:
        self.runs = runs

    def get_run(self, run_id: str) -> SimpleNamespace:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        if run_id not in self.runs:
            raise MlflowException(f"Run with id={run_id} not found", error_code=RESOURCE_DOES_NOT_EXIST)
        return SimpleNamespace(data=SimpleNamespace(tags=self.runs[run_id]))


def test_lineage_names_the_runs_this_store_lacks() -> None:
    client = FakeClient({"r1": {"lineage.git_commit": "abc", "mlflow.user": "me"}})

    table = compare.lineage_table(client, {"a": "r1", "b": "r2"})

    assert table.loc["a", "lineage.git_commit"] == "abc" and "mlflow.user" not in table
    assert table["in_this_store"].tolist() == [True, False]
    assert compare.missing_run_notes(table, client.tracking_uri) == [
        "run r2 is not in this MLflow store (sqlite:////here/mlruns/mlflow.db): it was logged in "
        "another store; use a shared tracking server, see docs/operations.md#mlflow"
    ]


def test_versus_champion() -> None:
    table = pd.DataFrame({"roc_auc": [0.8]}, index=["a"])
    assert compare.versus_champion(None, "a", table).index.tolist() == ["challenger a"]
    champion = (SimpleNamespace(version="3"), {"roc_auc": 0.75})
    versus = compare.versus_champion(champion, "a", table)
    assert versus["roc_auc"].to_dict() == {"champion v3": 0.75, "challenger a": 0.8}
