"""The naive hand-written baseline: FastAPI, one DataFrame per request, the same packaged model.

BENTOML_MODEL_DIR=<path> uvicorn bench.naive_fastapi:app --host 127.0.0.1 --port N
"""

import os
from typing import Any

import pandas as pd
from fastapi import FastAPI
from threadpoolctl import threadpool_limits

from pipelines.serving import bundle

threadpool_limits(1)
loaded = bundle.load(os.environ["BENTOML_MODEL_DIR"])
app = FastAPI()


@app.post("/predict")
def predict(body: dict[str, Any]) -> dict[str, Any]:
    X = pd.DataFrame.from_records(body["records"], columns=loaded.features)
    proba = loaded.model.predict_proba(X)
    return {"predictions": [loaded.classes[i] for i in proba.argmax(axis=1)], "probabilities": proba.tolist()}
