"""Train/holdout split, and the feature/target view of a table and its column kinds."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split


def features_and_target(
    frame: pd.DataFrame, target: str, ignore: list[str]
) -> tuple[pd.DataFrame, pd.Series]:
    """The model's inputs (every column but the target and the ignored ones) and its target."""
    return frame.drop(columns=[target, *ignore]), frame[target]


def text_as_categories(features: pd.DataFrame) -> pd.DataFrame:
    """The text columns as pandas categoricals; numbers and every other column as they are.

    The preprocessing's imputer turns text into an array of Python objects: from `str` columns,
    one new string object per cell (about 60 bytes each: 5.6M rows x 11 columns is ~4 GB); from
    categoricals, references to each column's few category strings (8 bytes a cell). The values,
    and so the fitted model and its scores, are the same; the one-hot encoder is also faster on
    them, since a shared string's hash is computed once. A fitted model still takes `str` input.
    """
    text = [c for c, dtype in features.dtypes.items() if isinstance(dtype, pd.StringDtype)]
    return features.astype(dict.fromkeys(text, "category")) if text else features


def can_stratify(labels: pd.Series, n_splits: int = 2) -> bool:
    return bool(labels.value_counts().min() >= n_splits)


def split_frame(
    frame: pd.DataFrame, *, target: str, task: str, holdout_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded split; classification keeps the class balance where every class has two rows."""
    stratify = None
    if task == "classification" and can_stratify(frame[target]):
        # The labels' codes in sorted order: the classes, and so the split, of the labels
        # themselves, without sorting millions of Python strings (numpy's unique on objects).
        stratify = pd.factorize(frame[target], sort=True)[0]
    train, holdout = train_test_split(frame, test_size=holdout_size, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def column_kinds(features: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numeric columns and the rest (text, booleans), by dtype.

    pandas 3 reads text as `str`, not `object`, so select numbers and take the complement.
    """
    numeric = features.select_dtypes("number").columns.tolist()
    categorical = [c for c in features.columns if c not in numeric]
    return numeric, categorical
