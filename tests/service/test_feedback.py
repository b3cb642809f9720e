"""Ground-truth labels in, against a real `bentoml serve` on 127.0.0.1 and the real CLI:
POST /feedback (auth first, durable lines, 422 naming the field) and `python -m pipelines feedback`.

The oracle for what was written is the answer the service gave (its request_id, its records) and
the labels the test sent, read back from the files; nothing is mocked.
"""

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers.champion import (
    default_store_env,
    free_port,
    new_project,
    package_project,
    private_home,
    serve,
    server_env,
    stop,
    train_candidate,
)
from helpers.support import PROJECT as REPO

from pipelines.release import promotion

pytestmark = pytest.mark.integration

KEY = "feedback-key-0123456789"
LIMITS = {"max_records": 20, "max_body_bytes": 20_000, "body_timeout_seconds": 2}
BENTOML = str(Path(sys.executable).parent / "bentoml")
SECRET = "SECRET-VALUE-5531"  # sent in bad labels; must never come back


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("feedback")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = new_project(root)
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    record = package_project(root, params, REPO, limits=LIMITS)
    return root, record, params


@pytest.fixture(scope="module")
def server(packaged, tmp_path_factory):
    root, record, params = packaged
    log_dir = tmp_path_factory.mktemp("predlog")
    home = private_home(record, tmp_path_factory.mktemp("home"))
    port = free_port()
    cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)]
    proc = serve(cmd, root, server_env(record, log_dir, home, API_KEY=KEY), port)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    )
    import pandas as pd

    holdout = pd.read_parquet(params["paths"]["holdout"])
    records = json.loads(holdout.drop(columns=["label"]).head(5).to_json(orient="records"))
    yield client, records, log_dir
    client.close()
    stop(proc)


def label_lines(log_dir):
    lines = []
    for path in sorted((log_dir / "feedback").glob("labels.*.jsonl")):
        data = path.read_bytes()
        assert data.endswith(b"\n"), "a labels file ends inside a line"
        lines += [json.loads(line) for line in data.splitlines()]
    return lines


def outcome_count(client, outcome):
    text = client.get("/metrics").text
    found = re.search(rf'tabular_predictions_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_a_keyless_post_is_refused_before_its_body_is_read(server):
    client, _, _ = server
    keyless = httpx.post(
        f"{client.base_url}/feedback", content=b'{"labels": [', headers={"Content-Type": "application/json"}
    )
    assert keyless.status_code == 401 and keyless.json()["error"] == "unauthorized"
    with socket.create_connection(("127.0.0.1", client.base_url.port), timeout=5) as raw:
        started = time.perf_counter()
        raw.sendall(
            b"POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1048576\r\n\r\n"
        )
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
        seconds = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert seconds < 1.0  # not the 2 s body deadline: nothing was waited for


def test_labels_for_answers_are_appended_durably_and_resubmissions_append_again(server):
    client, records, log_dir = server
    answer = client.post("/predict", json={"records": records[:3]}).json()
    before = outcome_count(client, "feedback_accepted")
    labels = [
        {"request_id": answer["request_id"], "record": i, "label": label}
        for i, label in enumerate(["yes", "no", "yes"])
    ]
    response = client.post("/feedback", json={"labels": labels})
    assert response.status_code == 200 and response.json() == {"accepted": 3}
    written = label_lines(log_dir)
    assert [{k: e[k] for k in ("request_id", "record", "label")} for e in written] == labels
    assert {e["source"] for e in written} == {"api"}
    folder = log_dir / "feedback"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    # One file per worker, named like the worker's prediction log (predictions.<w>.jsonl).
    workers = {p.name.split(".")[1] for p in (log_dir / "predictions").glob("predictions.*.jsonl")}
    assert {p.name for p in folder.iterdir()} <= {f"labels.api-{w}.jsonl" for w in workers}

    again = client.post("/feedback", json={"labels": labels})
    assert again.json() == {"accepted": 3}
    assert len(label_lines(log_dir)) == 6  # appended again; the monitor's join keeps one per record
    assert outcome_count(client, "feedback_accepted") == before + 2


@pytest.mark.parametrize(
    ("labels", "field"),
    [
        (
            [
                {"request_id": "r1", "record": 0, "label": "yes"},
                {"request_id": "r1", "record": 1, "label": SECRET},
            ],
            "labels.1.label",
        ),
        ([{"request_id": "r1", "record": 0, "label": 1}], "labels.0.label"),  # the classes are strings
        ([{"request_id": "r1", "record": 20, "label": "yes"}], "labels.0.record"),  # max_records 20
        ([{"request_id": "r1", "record": True, "label": "yes"}], "labels.0.record"),
        ([{"request_id": SECRET + " with a space", "record": 0, "label": "no"}], "labels.0.request_id"),
        ([{"request_id": "r1", "record": 0, "label": "no", SECRET: 1}], "labels.0"),
        ([{"request_id": "r1", "record": 0}], "labels.0.label"),
        ([{"request_id": "r1", "record": 0, "label": "no"}] * 21, "labels"),
    ],
)
def test_invalid_labels_are_422_naming_the_field_never_echoed_and_not_written(server, labels, field):
    client, _, log_dir = server
    before = len(label_lines(log_dir)) if (log_dir / "feedback").exists() else 0
    response = client.post("/feedback", json={"labels": labels})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request" and body["field"] == field and body["message"]
    assert SECRET not in response.text and "Traceback" not in response.text
    after = len(label_lines(log_dir)) if (log_dir / "feedback").exists() else 0
    assert after == before


def test_a_nan_label_is_refused(server):
    client, _, _ = server
    body = b'{"labels": [{"request_id": "r1", "record": 0, "label": NaN}]}'
    response = client.post("/feedback", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == "labels.0.label"


def cli(root, log_dir, source):
    env = {**default_store_env(root), "PREDICTION_LOG_DIR": str(log_dir)}
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "feedback", str(source)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )


def test_bulk_labels_are_judged_by_the_champions_classes_and_appended(packaged, tmp_path):
    root, _, _ = packaged
    log_dir = tmp_path / "logs"
    good = tmp_path / "labels.csv"
    good.write_text("request_id,record,label\nabc,0,yes\nabc,1,no\n")
    done = cli(root, log_dir, good)
    assert done.returncode == 0, done.stderr
    path = log_dir / "feedback" / "labels.bulk.jsonl"
    assert done.stdout == f"FEEDBACK 2 labels -> {path}\n"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["request_id"], e["record"], e["label"], e["source"]) for e in lines] == [
        ("abc", 0, "yes", "bulk"),
        ("abc", 1, "no", "bulk"),
    ]

    bad = tmp_path / "bad.csv"
    bad.write_text(f"request_id,record,label\nabc,0,yes\nabc,1,{SECRET}\n")
    refused = cli(root, log_dir, bad)
    assert refused.returncode == 1 and refused.stdout == ""
    assert (
        refused.stderr.startswith("ERROR feedback: row 2, column label: ") and refused.stderr.count("\n") == 1
    )
    assert SECRET not in refused.stderr
    assert len(path.read_text().splitlines()) == 2  # nothing of the bad file was appended
