"""Train/holdout split, and the feature/target view of a table and its column kinds."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split


def features_and_target(
    frame: pd.DataFrame, target: str, ignore: list[str]
) -> tuple[pd.DataFrame, pd.Series]:
    """The model's inputs (every column but the target and the ignored ones) and its target."""
    return frame.drop(columns=[target, *ignore]), frame[target]


def can_stratify(labels: pd.Series, n_splits: int = 2) -> bool:
    return bool(labels.value_counts().min() >= n_splits)


def split_frame(
    frame: pd.DataFrame, *, target: str, task: str, holdout_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded split; classification keeps the class balance where every class has two rows."""
    stratify = frame[target] if task == "classification" and can_stratify(frame[target]) else None
    train, holdout = train_test_split(frame, test_size=holdout_size, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def column_kinds(features: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numeric columns and the rest (text, booleans), by dtype.

    pandas 3 reads text as `str`, not `object`, so select numbers and take the complement.
    """
    numeric = features.select_dtypes("number").columns.tolist()
    categorical = [c for c in features.columns if c not in numeric]
    return numeric, categorical
