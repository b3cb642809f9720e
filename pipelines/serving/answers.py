"""Scores turned into answers: labels and probabilities per record, and the /predict body."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from pipelines.serving.bundle import LoadedModel


class PredictResponse(BaseModel):
    request_id: str
    model_version: str
    role: str = Field(description="the arm that answered: champion, or challenger during a canary")
    predictions: list[Any]
    probabilities: list[dict[str, float]] | None = Field(
        default=None, description="per record, each class's probability (classification only)"
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


PROBABILITY_DECIMALS = 6  # answers and the log carry probabilities rounded to this


def labels(loaded: LoadedModel, proba: np.ndarray) -> list[Any]:
    return [_plain(v) for v in np.asarray(loaded.classes, dtype=object)[proba.argmax(axis=1)]]


def answer(
    loaded: LoadedModel, records: list[dict[str, Any]]
) -> tuple[list[Any], list[dict[str, float]] | None]:
    """Predictions, and class probabilities for classification, one per record."""
    scores = loaded.record_scores(records)
    if loaded.task != "classification":
        return scores.astype(float).ravel().tolist(), None
    names = [str(c) for c in loaded.classes]
    rounded = np.round(scores.astype(float), PROBABILITY_DECIMALS).tolist()
    return labels(loaded, scores), [dict(zip(names, row, strict=True)) for row in rounded]


def answer_frame(loaded: LoadedModel, X: pd.DataFrame) -> tuple[list[Any], pd.DataFrame | None]:
    """Predictions for a frame, and for classification a frame of `probability_<class>` columns."""
    scores = loaded.frame_scores(X)
    if loaded.task != "classification":
        return scores.astype(float).ravel().tolist(), None
    columns = [f"probability_{c}" for c in loaded.classes]
    return labels(loaded, scores), pd.DataFrame(scores.astype(float), columns=columns).round(
        PROBABILITY_DECIMALS
    )


def response_body(
    request_id: str,
    version: str,
    predictions: list[Any],
    probabilities: list[dict] | None,
    role: str = "champion",
) -> dict[str, Any]:
    """The body of a /predict answer (PredictResponse's fields; probabilities for classification)."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "model_version": version,
        "role": role,
        "predictions": predictions,
    }
    if probabilities is not None:
        body["probabilities"] = probabilities
    return body
