"""The whole workflow, unchanged, against the team stack's tracking server.

In a copy of the project whose shell has only MLFLOW_TRACKING_URI set (no AWS variable: artifacts
go through the server): `dvc repro` logs every candidate's run to the server, `promote` moves the
server's registry, `package` loads the champion from it, and `bentoml serve` answers with that
version and follows the server's registry. Then two queued experiments run with two jobs, and
both land on the server. The oracle is the server itself, read with MlflowClient over HTTP, and
the project's local store, which must stay empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers.champion import free_port, post, serve, stop
from helpers.support import copy_project, read_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

REPRO_TIMEOUT = 900
QUEUE_TIMEOUT = 600


def sh(args: list[str], root: Path, env: dict[str, str], timeout: float = REPRO_TIMEOUT):
    result = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(args[:4])} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def on_server(stack, tmp_path_factory):
    """A project copy, its environment aimed at the server, and a client of that server."""
    import mlflow

    root = copy_project(tmp_path_factory.mktemp("server") / "project")
    env = {**stack.client_env(), "BENTOML_HOME": str(root / "bentoml")}
    assert not any(k.startswith("AWS_") for k in env)
    return root, env, mlflow.MlflowClient(tracking_uri=stack.tracking_uri)


def experiment_runs(client, name: str):
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name!r} on the server"
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_pipeline_registry_package_and_serve_on_the_server(on_server, stack):
    root, env, client = on_server
    params = read_yaml(root / "params.yaml")
    candidates = set(params["train"]["candidates"])

    sh(["dvc", "repro"], root, env)
    runs = experiment_runs(client, params["tracking"]["experiment"])
    logged = {r.info.run_name for r in runs}
    assert candidates <= logged, f"candidates {candidates} not all on the server: {logged}"
    # The artifacts are the server's (proxied), and nothing was written to a local store.
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)
    assert not (root / params["tracking"]["store"] / "mlflow.db").exists()
    some_run = runs[0].info.run_id
    assert client.list_artifacts(some_run), "a run's artifacts cannot be listed through the server"

    promoted = sh([sys.executable, "-m", "pipelines", "promote"], root, env, timeout=300)
    assert promoted.stdout.startswith("PROMOTED"), promoted.stdout
    name = params["promote"]["registered_model"]
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.run_id in {r.info.run_id for r in runs}

    packaged = sh([sys.executable, "-m", "pipelines", "package"], root, env, timeout=600)
    assert packaged.stdout.startswith("PACKAGED"), packaged.stdout
    record = json.loads((root / params["paths"]["bento"]).read_text())
    assert str(record["registry_version"]) == str(champion.version)

    port = free_port()
    serve_env = {**env, "API_AUTH": "off", "PREDICTION_LOG_DIR": str(root / "monitoring")}
    proc = serve(
        ["bentoml", "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)],
        root,
        serve_env,
        port,
    )
    try:
        holdout = pd.read_parquet(root / params["paths"]["holdout"])
        features = holdout.drop(columns=[params["data"]["target"]]).head(3)
        status, answer = post(port, json.loads(features.to_json(orient="records")))
        assert status == 200
        assert str(answer["model_version"]) == str(champion.version)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metadata", timeout=5) as response:
            metadata = json.loads(response.read())
        # The service reads the server's registry (REST): its champion is the server's.
        assert str(metadata["serving"]["champion_version"]) == str(champion.version)
        assert metadata["serving"]["problems"] == []
        assert metadata["registry"]["served_is_champion"] is True, metadata["registry"]
    finally:
        stop(proc)


def queue_state(root: Path, env: dict[str, str]) -> str:
    return sh(["dvc", "queue", "status"], root, env, timeout=120).stdout


def test_queued_experiments_with_two_jobs_all_land_on_the_server(on_server, stack):
    root, env, client = on_server
    params = read_yaml(root / "params.yaml")
    experiment = params["tracking"]["experiment"]
    if not (root / "dvc.lock").exists() or "train" not in (root / "dvc.lock").read_text():
        sh(["dvc", "repro"], root, env)
    before = {r.info.run_id for r in experiment_runs(client, experiment)}

    depths = (4, 7)
    for depth in depths:
        sh(
            ["dvc", "exp", "run", "--queue", "-S", f"train.candidates.forest.params.max_depth={depth}",
             "-S", "train.cv_folds=2"],
            root, env, timeout=120,
        )  # fmt: skip
    # `dvc queue start` forks its workers, which keep its stdout and stderr open: with pipes
    # (capture_output) the call would return only when every queued experiment had finished.
    log = root / "queue-start.log"
    with log.open("wb") as out:
        started = subprocess.run(
            ["dvc", "queue", "start", "--jobs", "2"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=120,
        )  # fmt: skip
    status = ""
    try:
        assert started.returncode == 0, log.read_text()
        deadline = time.monotonic() + QUEUE_TIMEOUT
        status = queue_state(root, env)
        while time.monotonic() < deadline and ("Queued" in status or "Running" in status):
            time.sleep(5)
            status = queue_state(root, env)
    finally:
        # Workers left running would hold the repository's lock for the next tests of this copy.
        if not status or "Queued" in status or "Running" in status:
            subprocess.run(
                ["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True, timeout=120
            )
    assert status.count("Success") == len(depths), f"the queue did not finish cleanly:\n{status}"

    new = [r for r in experiment_runs(client, experiment) if r.info.run_id not in before]
    forest_depths = sorted(
        int(r.data.params["max_depth"])
        for r in new
        if r.info.run_name == "forest" and "max_depth" in r.data.params
    )
    assert forest_depths == list(depths), f"queued forest runs on the server: {forest_depths}"
    assert len(new) == len(depths) * len(params["train"]["candidates"])
    # Nothing landed in a throwaway local store of a temporary copy either.
    assert not (root / params["tracking"]["store"] / "mlflow.db").exists()
