"""What the BentoML service needs: load a packaged model, turn records into predictions.

Kept free of MLflow and DVC so that a bento carries only scikit-learn, pandas and skops.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MODEL_NAME = "tabular-champion"  # the champion's name in the BentoML model store
MODEL_FILE = "model.skops"
META_FILE = "meta.json"


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    version: str
    task: str
    features: list[str]
    classes: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def load(path: str | Path) -> LoadedModel:
    """A packaged model: skops file plus meta.json. skops only trusts the listed types."""
    import skops.io

    path = Path(path)
    meta = json.loads((path / META_FILE).read_text())
    model = skops.io.load(path / MODEL_FILE, trusted=meta["trusted_types"])
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    return LoadedModel(
        model=model,
        version=str(meta["version"]),
        task=meta["task"],
        features=list(model.feature_names_in_),
        classes=classes,
        meta=meta,
    )


def frame(records: list[dict[str, Any]], features: list[str]) -> pd.DataFrame:
    """Records as the model's input frame, in the model's column order."""
    return pd.DataFrame.from_records(records, columns=features)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def predict(loaded: LoadedModel, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Predictions (and class probabilities for classification) with the model version."""
    X = frame(records, loaded.features)
    result: dict[str, Any] = {"model_version": loaded.version, "request_id": uuid.uuid4().hex}
    if loaded.task == "classification":
        proba = loaded.model.predict_proba(X)
        labels = np.asarray(loaded.classes, dtype=object)[proba.argmax(axis=1)]
        result["predictions"] = [_plain(v) for v in labels]
        result["probabilities"] = [
            {str(c): round(float(p), 6) for c, p in zip(loaded.classes, row, strict=True)} for row in proba
        ]
    else:
        result["predictions"] = [float(v) for v in loaded.model.predict(X)]
    return result
