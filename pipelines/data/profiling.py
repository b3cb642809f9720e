"""Tables for the proof-of-concept report: what the data holds and how it relates to the target."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipelines.data.splitting import column_kinds


def overview(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per column: dtype, missing share, distinct values and an example."""
    return pd.DataFrame(
        {
            "dtype": frame.dtypes.astype(str),
            "missing": frame.isna().mean().round(4),
            "distinct": frame.nunique(),
            "example": frame.apply(lambda s: s.dropna().iloc[0] if s.notna().any() else None),
        }
    )


def target_summary(target: pd.Series, task: str) -> pd.DataFrame:
    if task == "classification":
        counts = target.value_counts()
        return pd.DataFrame({"rows": counts, "share": (counts / len(target)).round(4)})
    return target.describe().to_frame("value")


def numeric_summary(features: pd.DataFrame) -> pd.DataFrame:
    numeric, _ = column_kinds(features)
    return features[numeric].describe().T if numeric else pd.DataFrame()


def category_effect(
    features: pd.DataFrame, target: pd.Series, *, task: str, positive: Any, top: int
) -> pd.DataFrame:
    """Per category of each text column: its rows and its mean outcome (positive rate or mean)."""
    _, categorical = column_kinds(features)
    outcome = (target == positive).astype(float) if task == "classification" else target
    rows = []
    for column in categorical:
        grouped = outcome.groupby(features[column].astype(str)).agg(["size", "mean"])
        for value, (size, mean) in grouped.nlargest(top, "size").iterrows():
            rows.append({"column": column, "value": value, "rows": int(size), "outcome": mean})
    return pd.DataFrame(rows, columns=["column", "value", "rows", "outcome"]).round(4)


def numeric_correlation(features: pd.DataFrame, target: pd.Series, *, task: str, positive: Any) -> pd.Series:
    """Spearman correlation of each numeric column with the outcome."""
    numeric, _ = column_kinds(features)
    outcome = (target == positive).astype(float) if task == "classification" else target
    return (
        features[numeric].corrwith(outcome, method="spearman").sort_values(key=abs, ascending=False).round(4)
    )
