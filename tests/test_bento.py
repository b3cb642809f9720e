"""Packaging: the registry's champion becomes a bento that serves the same answers.

`bentoml serve` runs for real on 127.0.0.1: once from the project's own environment, and once
from a fresh virtual environment holding only the bento's own requirements, which is what the
container would run (no container engine runs here).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from champion_support import project, train_candidate  # noqa: F401 - fixture
from pipelines import contract, promote, serving

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, records, timeout=5):
    body = json.dumps({"records": records}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def serve(cmd, cwd, env, port, deadline=120):
    """Start `bentoml serve`, wait until /readyz answers, and return the process."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"bentoml serve exited early:\n{proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise AssertionError("bentoml serve did not become ready in time")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def packaged(project, monkeypatch):
    """A promoted champion, packaged into a bento built from the project's bentofile."""
    root, params = project
    included = [p.lstrip("/") for p in yaml.safe_load((REPO / "bentofile.yaml").read_text())["include"]]
    for name in ("bentofile.yaml", *included):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    params["serving"] = {"bentoml_home": str(root / "bentoml")}
    params["paths"]["contract"] = str(root / "contract.yaml")
    frame = pd.read_parquet(params["paths"]["train"])
    contract.save_contract(contract.infer_contract(frame, "label", max_categories=50, null_tolerance=0.05), params["paths"]["contract"])
    params["paths"]["bento"] = str(root / "bento.json")
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "true")
    train_candidate(params, hide=[])
    assert promote.run_promotion(root, params)["promoted"]
    # In a subprocess, as `make package` runs it: BentoML fixes its home when first imported.
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "pipelines.package"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("PACKAGED tabular-mlops:")
    record = json.loads(Path(params["paths"]["bento"]).read_text())
    holdout = pd.read_parquet(params["paths"]["holdout"]).head(20)
    records = json.loads(holdout.drop(columns=["label", "id"]).to_json(orient="records"))
    # The champion in-process, loaded the way the service loads it.
    model_dir = Path(record["bentoml_home"]) / "models" / serving.MODEL_NAME / record["model"].split(":")[1]
    expected = serving.predict(serving.load(model_dir), records)
    return root, record, records, expected


def assert_same_answer(answer, expected):
    assert answer["model_version"] == expected["model_version"] == "1"
    assert answer["predictions"] == expected["predictions"]
    for got, want in zip(answer["probabilities"], expected["probabilities"], strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    assert len(answer["request_id"]) == 32


def test_package_labels_the_model_with_its_lineage(packaged):
    _, record, _, _ = packaged
    assert record["registry_version"] == "1" and record["bento"].startswith("tabular-mlops:")
    name, version = record["model"].split(":")
    model_yaml = Path(record["bentoml_home"]) / "models" / name / version / "model.yaml"
    labels = yaml.safe_load(model_yaml.read_text())["labels"]
    assert labels["registry_version"] == "1" and labels["run_id"] == record["run_id"]
    assert {"git_commit", "data_md5", "params_hash"} <= set(labels)


@pytest.mark.timeout(300)
def test_bentoml_serve_from_the_project_answers_like_the_champion(packaged):
    root, record, records, expected = packaged
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": record["bentoml_home"], "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = str(Path(sys.executable).parent / "bentoml")
    proc = serve([bentoml, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)], root, env, port)
    try:
        status, answer = post(port, records)
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
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r", str(requirements)], check=True)
    port = free_port()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    proc = serve([str(venv / "bin" / "bentoml"), "serve", record["bento"], "--host", "127.0.0.1", "--port", str(port)], tmp_path, env, port, deadline=180)
    try:
        status, answer = post(port, records)
    finally:
        stop(proc)
    assert status == 200
    assert_same_answer(answer, expected)
