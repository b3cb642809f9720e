"""Side-by-side tables of the candidates of one run, for the comparison report.

Everything here reads what DVC tracks (the per-candidate Layout). The MLflow side is optional:
a clone of the project has DVC's outputs but not the MLflow store their runs were logged in.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.files import read_json
from pipelines.core.layout import Layout
from pipelines.modeling import runs

SHARED_STORE_HINT = "use a shared tracking server, see docs/operations.md#mlflow"


def holdout_table(layout: Layout, names: list[str]) -> pd.DataFrame:
    """One row per candidate, one column per holdout metric."""
    return pd.DataFrame(layout.read_holdout_scores(names)).T


def cv_folds(layout: Layout, names: list[str], metric: str) -> pd.DataFrame:
    """One column per candidate, one row per fold, of `metric`."""
    return pd.DataFrame({n: read_json(layout.cv_scores(n))[metric]["folds"] for n in names})


def curves(layout: Layout, names: list[str], kind: str) -> dict[str, pd.DataFrame]:
    """Each candidate's plot data of one kind (empty frames are dropped: not this task's plot)."""
    frames = {n: pd.read_csv(layout.plot_data(kind, n)) for n in names}
    return {n: f for n, f in frames.items() if len(f)}


def missing_run_note(run_id: str, store: str) -> str:
    return (
        f"run {run_id} is not in this MLflow store ({store}): it was logged in another store; "
        + SHARED_STORE_HINT
    )


def find_run(client: Any, run_id: str) -> Any | None:
    """The MLflow run, or None when this store does not hold it (it was logged elsewhere)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def lineage_table(client: Any, run_ids: dict[str, str]) -> pd.DataFrame:
    """Each candidate's run id, whether this store holds that run, and the run's lineage tags."""
    rows = {}
    for name, run_id in run_ids.items():
        run = find_run(client, run_id)
        tags = runs.lineage_of(run.data.tags) if run is not None else {}
        rows[name] = {"run_id": run_id, "in_this_store": run is not None, **tags}
    return pd.DataFrame(rows).T.fillna("")


def missing_run_notes(lineage: pd.DataFrame, store: str) -> list[str]:
    """One plain line per run of lineage_table's that this store lacks."""
    return [
        missing_run_note(run_id, store)
        for run_id, held in zip(lineage["run_id"], lineage["in_this_store"], strict=True)
        if not held
    ]


def versus_champion(
    champion: tuple[Any, dict[str, float]] | None, challenger: str, table: pd.DataFrame
) -> pd.DataFrame:
    """The challenger's holdout scores, below the champion's on today's holdout when there is one."""
    rows = {f"challenger {challenger}": table.loc[challenger]}
    if champion is not None:
        version, scores = champion
        rows = {f"champion v{version.version}": pd.Series(scores), **rows}
    return pd.DataFrame(rows).T


def serialized_size(model: Any) -> int:
    import joblib

    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.tell()


def single_row_latency_ms(model: Any, row: pd.DataFrame, repeats: int = 50) -> float:
    """Median wall time of one single-row prediction, in milliseconds (after one warm-up)."""
    predict = model.predict_proba if hasattr(model, "predict_proba") else model.predict
    predict(row)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(row)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def footprint(models: dict[str, Any], row: pd.DataFrame, repeats: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            n: {
                "size_mb": round(serialized_size(m) / 1e6, 3),
                "predict_1_row_ms": round(single_row_latency_ms(m, row, repeats), 3),
            }
            for n, m in models.items()
        }
    ).T
