"""The registered champion works through MLflow's own API, on data as users read it.

`mlflow.pyfunc.load_model("models:/<name>@champion").predict(frame)` on the source CSV read with
`pandas.read_csv`: integer columns arrive as int64, which the model's signature must accept.
"""

from __future__ import annotations

import joblib
import pandas as pd
import pytest
from helpers.project_copy import Project, mlflow_store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


def test_champion_predicts_the_source_csv_through_pyfunc(default_project: Project) -> None:
    import mlflow

    root, params = default_project.root, default_project.params
    promoted = default_project.promote()
    # PROMOTED on a fresh run; KEPT or REFUSED if another test promoted already: a champion exists.
    assert promoted.returncode == 0 and promoted.stdout.startswith(("PROMOTED", "KEPT", "REFUSED")), (
        promoted.stdout + promoted.stderr
    )
    data = params["data"]
    frame = pd.read_csv(root / data["source"]).drop(columns=[data["target"], *data["ignore"]])
    integers = list(frame.select_dtypes("integer"))
    assert "tenure" in integers  # the case that failed: int64 columns as pandas reads them

    registered = params["promote"]["registered_model"]
    with mlflow_store(root) as client:
        version = client.get_model_version_by_alias(registered, "champion")
        candidate = client.get_run(version.run_id).data.tags["candidate"]
        inputs = {
            c.name: c.type.name for c in mlflow.models.get_model_info(version.source).signature.inputs.inputs
        }
        predicted = mlflow.pyfunc.load_model(f"models:/{registered}@champion").predict(frame)
        from pipelines.release import artifacts  # the project's trust rules, not the artifact's

        same_version = artifacts.load_version(registered, version, require_digest=True).model

    assert {inputs[c] for c in integers} == {"long"}
    assert inputs["monthly_charges"] == "double"
    expected = same_version.predict(frame)
    assert len(predicted) == len(frame) == len(expected)
    assert list(pd.Series(predicted)) == list(expected)
    # The pipeline DVC tracks for that candidate, trained the same way, answers the same.
    tracked = joblib.load(root / "models" / candidate / "model.joblib")
    assert list(tracked.predict(frame)) == list(expected)
