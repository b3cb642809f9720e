"""The BentoML service: the champion model behind POST /predict.

Models live in `self.models` by role, so a shadow or canary challenger can be loaded beside the
champion later. All feature logic stays in the model's own scikit-learn Pipeline.
"""

from __future__ import annotations

from typing import Any

import bentoml
from pipelines import serving


@bentoml.service(name="tabular-mlops", traffic={"timeout": 30})
class Predictor:
    champion = bentoml.models.BentoModel(f"{serving.MODEL_NAME}:latest")

    def __init__(self) -> None:
        self.models = {"champion": serving.load(self.champion.path)}

    @bentoml.api(route="/predict")
    def predict(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Predict for 1..N records given in the raw data's column names."""
        return serving.predict(self.models["champion"], records)
