"""Preprocessing as a scikit-learn ColumnTransformer, so it travels inside every model."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipelines.core.errors import ParamsError
from pipelines.data.splitting import column_kinds
from pipelines.modeling import backports

# Before any encoder is fitted: the one-hot encoder's text counts at C speed (backports.py).
backports.apply()

MISSING_CATEGORY = "__missing__"


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
