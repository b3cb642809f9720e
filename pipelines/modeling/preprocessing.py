"""Preprocessing as a scikit-learn ColumnTransformer, so it travels inside every model."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipelines.core.errors import ParamsError

MISSING_CATEGORY = "__missing__"


def column_kinds(features: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numeric columns and the rest (text, booleans), by dtype.

    pandas 3 reads text as `str`, not `object`, so select numbers and take the complement.
    """
    numeric = features.select_dtypes("number").columns.tolist()
    categorical = [c for c in features.columns if c not in numeric]
    return numeric, categorical


def build_preprocessor(features: pd.DataFrame, params: dict[str, Any]) -> ColumnTransformer:
    """Impute, scale and one-hot encode, with the column lists taken from `features`."""
    numeric, categorical = column_kinds(features)
    strategy = params.get("numeric_imputer", "median")
    if strategy not in ("mean", "median", "most_frequent"):
        raise ParamsError(f"features.numeric_imputer '{strategy}' is unknown")
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=strategy))]
    if params.get("scale", True):
        numeric_steps.append(("scale", StandardScaler()))
    categorical_steps = [
        ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
        (
            "onehot",
            OneHotEncoder(
                handle_unknown="infrequent_if_exist",
                max_categories=params.get("max_categories"),
                sparse_output=False,  # histogram gradient boosting needs dense input
            ),
        ),
    ]
    return ColumnTransformer(
        [
            ("numeric", Pipeline(numeric_steps), numeric),
            ("categorical", Pipeline(categorical_steps), categorical),
        ],
        verbose_feature_names_out=False,
    )
