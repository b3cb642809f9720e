"""Side-by-side tables of the candidates of one run, for the comparison report."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.files import read_json


def holdout_table(metrics_dir: str | Path, names: list[str]) -> pd.DataFrame:
    return pd.DataFrame({n: read_json(Path(metrics_dir) / "holdout" / f"{n}.json") for n in names}).T


def cv_folds(metrics_dir: str | Path, names: list[str], metric: str) -> pd.DataFrame:
    """One column per candidate, one row per fold, of `metric`."""
    return pd.DataFrame(
        {n: read_json(Path(metrics_dir) / "cv" / f"{n}.json")[metric]["folds"] for n in names}
    )


def curves(plots_dir: str | Path, names: list[str], kind: str) -> dict[str, pd.DataFrame]:
    """Each candidate's plot data of one kind (empty frames are dropped: not this task's plot)."""
    frames = {n: pd.read_csv(Path(plots_dir) / kind / f"{n}.csv") for n in names}
    return {n: f for n, f in frames.items() if len(f)}


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
