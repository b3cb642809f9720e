"""Packaging: the registry's champion becomes a bento that serves the same answers.

`bentoml serve` runs for real on 127.0.0.1: once from the project's own environment, and once
from a fresh virtual environment holding only the bento's own requirements, which is what the
container would run (no container engine runs here).
"""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers.champion import (  # noqa: F401 - fixture
    default_store_env,
    free_port,
    package_project,
    post,
    project,
    serve,
    stop,
    train_candidate,
)
from helpers.support import PROJECT as REPO

from pipelines.release import promotion

pytestmark = pytest.mark.integration


@pytest.fixture
def packaged(project, monkeypatch):
    """A promoted champion, packaged into a bento built from the project's bentofile."""
    root, params = project
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    record = package_project(root, params, REPO)
    holdout = pd.read_parquet(params["paths"]["holdout"]).head(20)
    records = json.loads(holdout.drop(columns=["label", "id"]).to_json(orient="records"))
    # The oracle: the packaged scikit-learn pipeline loaded with skops alone, none of the
    # service's code; the served (compiled) answers must match it within float32 rounding.
    import skops.io

    name, version = record["model"].split(":")
    path = Path(record["bentoml_home"]) / "models" / name / version / "model.skops"
    model = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    X = pd.DataFrame(records)[list(model.feature_names_in_)]
    expected = {
        "model_version": record["registry_version"],
        "predictions": model.predict(X).tolist(),
        "probabilities": [
            dict(zip(map(str, model.classes_), row, strict=True)) for row in model.predict_proba(X)
        ],
    }
    return root, record, records, expected


def assert_same_answer(answer, expected):
    assert answer["model_version"] == expected["model_version"] == "1"
    assert answer["predictions"] == expected["predictions"]
    for got, want in zip(answer["probabilities"], expected["probabilities"], strict=True):
        assert got == pytest.approx(want, abs=1e-5)  # compiled float32 graph, rounded to 6 places
    assert isinstance(answer["request_id"], str) and answer["request_id"]


def test_package_labels_the_model_with_its_lineage(packaged):
    _, record, _, _ = packaged
    assert record["registry_version"] == "1" and record["bento"].startswith("tabular-mlops:")
    name, version = record["model"].split(":")
    model_yaml = Path(record["bentoml_home"]) / "models" / name / version / "model.yaml"
    labels = yaml.safe_load(model_yaml.read_text())["labels"]
    assert labels["registry_version"] == "1" and labels["run_id"] == record["run_id"]
    assert {"git_commit", "data_md5", "params_hash"} <= set(labels)


def test_bentoml_lists_what_make_package_built(packaged):
    """A user's plain `bentoml list` / `bentoml models list` (BentoML's default store) show them."""
    root, record, _, _ = packaged
    bentoml = str(Path(sys.executable).parent / "bentoml")
    env = default_store_env(root)
    models = subprocess.run([bentoml, "models", "list"], cwd=root, env=env, capture_output=True, text=True)
    bentos = subprocess.run([bentoml, "list"], cwd=root, env=env, capture_output=True, text=True)
    assert record["model"] in models.stdout, models.stdout + models.stderr
    assert record["bento"] in bentos.stdout, bentos.stdout + bentos.stderr


@pytest.mark.timeout(300)
def test_plain_bentoml_serve_in_the_project_answers_like_the_champion(packaged):
    """`bentoml serve` typed in the project root, as the README says: no BENTOML_HOME, no target."""
    root, _record, records, expected = packaged
    port = free_port()
    bentoml = str(Path(sys.executable).parent / "bentoml")
    env = {**default_store_env(root), "API_KEY": "bento-test-key"}
    proc = serve([bentoml, "serve", "--host", "127.0.0.1", "--port", str(port)], root, env, port)
    try:
        status, answer = post(port, records, headers={"Authorization": "Bearer bento-test-key"})
    finally:
        stop(proc)
    assert status == 200
    assert_same_answer(answer, expected)


@pytest.mark.timeout(900)
def test_bento_serves_from_its_own_requirements_only(packaged, tmp_path):
    """What the container runs: a clean environment from the bento's requirements, `bentoml serve <tag>`."""
    _, record, records, expected = packaged
    home = Path(record["bentoml_home"])
    name, version = record["bento"].split(":")
    requirements = home / "bentos" / name / version / "env" / "python" / "requirements.txt"
    venv = tmp_path / "bento-venv"
    uv = str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r", str(requirements)],
        check=True,
    )
    port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "API_AUTH": "off",  # serving open takes this explicit setting
    }
    proc = serve(
        [str(venv / "bin" / "bentoml"), "serve", record["bento"], "--host", "127.0.0.1", "--port", str(port)],
        tmp_path,
        env,
        port,
        deadline=180,
    )
    try:
        status, answer = post(port, records)
    finally:
        stop(proc)
    assert status == 200
    assert_same_answer(answer, expected)
