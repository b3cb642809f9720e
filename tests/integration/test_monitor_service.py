"""`make monitor` (`python -m pipelines monitor`) on the default data, against a real `bentoml serve`.

The default pipeline's champion is promoted and packaged in the shared project copy, served on
127.0.0.1, and sent the holdout (10 records a request); the monitor then reads the log the
service wrote. The oracles are independent of pipelines.monitoring: the answers the service gave
(scored against the holdout's labels with sklearn.metrics), its own /metrics (parsed with
prometheus_client's parser), the column the test shifted, and what a real HTTP receiver got.

Two servers: one for the holdout as it is (kept up while labels are posted, stopped before the
outcome counts are compared, since a worker writes them at shutdown), one for the shifted copy.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from helpers.champion import default_store_env, free_port, private_home, serve, server_env, stop
from helpers.project_copy import Project
from helpers.support import TRACEBACK, subprocess_env
from prometheus_client.parser import text_string_to_metric_families
from sklearn import metrics as skm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

KEY = "monitor-key-0123456789"
BENTOML = str(Path(sys.executable).parent / "bentoml")
PER_REQUEST = 10
SHIFTED = "monthly_charges"
LABEL_CHUNK = 500  # labels per POST /feedback (the packaged max_records is 1000)


@dataclass
class Packaged:
    root: Path
    params: dict
    record: dict  # reports/bento.json
    env: dict  # `make package`'s environment: BentoML's store is root/bentoml
    features: pd.DataFrame  # the holdout without its target, as the service takes it
    labels: pd.Series  # the holdout's target


@dataclass
class Replay:
    """A server that was sent the holdout, and what it answered."""

    log_dir: Path
    proc: Any
    client: httpx.Client
    answers: list[dict] = field(default_factory=list)  # one per request, in holdout order
    records: list[dict] = field(default_factory=list)  # the holdout's records, as sent
    refused: dict[str, int] = field(default_factory=dict)  # outcome -> requests refused on purpose
    metrics: str | None = None  # /metrics, scraped just before the server stopped


@pytest.fixture(scope="module")
def packaged(default_project: Project) -> Packaged:
    """The default run's champion, promoted and packaged (`make promote`, `make package`)."""
    root = default_project.root
    promoted = default_project.promote()
    # PROMOTED on a fresh run; KEPT or REFUSED if another test promoted already: a champion exists.
    assert promoted.returncode == 0 and promoted.stdout.startswith(("PROMOTED", "KEPT", "REFUSED")), (
        promoted.stdout + promoted.stderr
    )
    env = {**subprocess_env(), **default_store_env(root)}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "package"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    params = default_project.params
    record = json.loads((root / params["paths"]["bento"]).read_text())
    assert Path(record["bentoml_home"]) == root / "bentoml"
    holdout = pd.read_parquet(root / params["paths"]["holdout"])
    target = params["data"]["target"]
    return Packaged(root, params, record, env, holdout.drop(columns=[target]), holdout[target])


def as_records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))  # NaN -> null, as a JSON client sends it


def start(packaged: Packaged, log_dir: Path, home: Path) -> tuple[Any, httpx.Client]:
    port = free_port()
    cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)]
    proc = serve(cmd, packaged.root, server_env(packaged.record, log_dir, home, API_KEY=KEY), port)
    # No keep-alive: each request is a new connection, so both workers get traffic.
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
        limits=httpx.Limits(max_keepalive_connections=0),
    )
    return proc, client


def replay(client: httpx.Client, frame: pd.DataFrame, between: Any = None) -> list[dict]:
    """Every row once, PER_REQUEST a request, in order; `between(i)` runs after request i."""
    records = as_records(frame)
    answers = []
    for i, first in enumerate(range(0, len(records), PER_REQUEST)):
        response = client.post("/predict", json={"records": records[first : first + PER_REQUEST]})
        assert response.status_code == 200, response.text
        answers.append(response.json())
        if between is not None:
            between(i)
    return answers


def served_fields(packaged: Packaged) -> dict[str, dict]:
    """The field rules the service enforces: the packaged model's meta.json (from the contract)."""
    name, version = packaged.record["model"].split(":")
    meta = Path(packaged.record["bentoml_home"], "models", name, version, "meta.json")
    return json.loads(meta.read_text())["fields"]


def unknown_category(packaged: Packaged) -> tuple[str, str]:
    """A text field with a list of allowed values, and a value it does not allow."""
    for name, spec in sorted(served_fields(packaged).items()):
        if spec.get("allowed"):
            return name, "no-such-" + name
    raise AssertionError("the service allows any value in every text field")


@pytest.fixture(scope="module")
def live(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory):
    """The holdout replayed once against a real server, with a few requests refused on purpose
    (an unknown category value: 422 `invalid`; no key: 401 `unauthorized`) spread over the replay."""
    log_dir = tmp_path_factory.mktemp("monitor-log")
    home = private_home(packaged.record, tmp_path_factory.mktemp("monitor-home"))
    column, bad = unknown_category(packaged)  # before the server starts: nothing to stop if it fails
    wrong = {**as_records(packaged.features.head(1))[0], column: bad}
    proc, client = start(packaged, log_dir, home)
    state = Replay(log_dir, proc, client, records=as_records(packaged.features))
    keyless = httpx.Client(base_url=client.base_url, timeout=30)

    def refuse(i: int) -> None:
        if i % 40 == 5:  # four of each over the replay's 141 requests
            invalid = client.post("/predict", json={"records": [wrong]})
            assert invalid.status_code == 422 and invalid.json()["field"] == f"records.0.{column}", (
                invalid.text
            )
            unauthorized = keyless.post("/predict", json={"records": [wrong]})
            assert unauthorized.status_code == 401, unauthorized.text
            state.refused["invalid"] = state.refused.get("invalid", 0) + 1
            state.refused["unauthorized"] = state.refused.get("unauthorized", 0) + 1

    try:
        state.answers = replay(client, packaged.features, refuse)
        yield state
    finally:
        keyless.close()
        client.close()
        stop(proc)


@pytest.fixture(scope="module")
def stopped(live: Replay) -> Replay:
    """The `live` server after one last answer (so the monitor's window reaches every outcome
    window of the labels posted meanwhile), its /metrics scraped, then stopped: the workers write
    their outcome counts at shutdown."""
    if live.proc.poll() is None:
        last = live.client.post("/predict", json={"records": live.records[:1]})
        assert last.status_code == 200, last.text
        live.answers.append(last.json())
        live.metrics = live.client.get("/metrics").text
        stop(live.proc)
    assert live.metrics is not None, "the server stopped before /metrics was scraped"
    return live


@pytest.fixture(scope="module")
def shifted_log(packaged: Packaged, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The holdout with SHIFTED moved up by one standard deviation (clipped to the contract's
    range, which the service enforces), replayed into a fresh log folder by a second server."""
    bounds = served_fields(packaged)[SHIFTED]
    frame = packaged.features.copy()
    moved = frame[SHIFTED] + frame[SHIFTED].std()
    frame[SHIFTED] = moved.clip(bounds.get("minimum"), bounds.get("maximum")).round(2)
    assert (frame[SHIFTED] - packaged.features[SHIFTED]).mean() > 0.5 * packaged.features[SHIFTED].std()
    log_dir = tmp_path_factory.mktemp("monitor-shifted-log")
    proc, client = start(packaged, log_dir, packaged.record["bentoml_home"])
    try:
        replay(client, frame)
    finally:
        client.close()
        stop(proc)
    return log_dir


def run_monitor(packaged: Packaged, log_dir: Path, **extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m pipelines monitor --log-dir DIR` in the project, as `make monitor` runs it; the
    result, and reports/monitor.json as it left it."""
    env = {k: v for k, v in packaged.env.items() if k not in ("MONITOR_WEBHOOK_URL", "PREDICTION_LOG_DIR")}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "monitor", "--log-dir", str(log_dir)],
        cwd=packaged.root,
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((packaged.root / packaged.params["paths"]["monitor"]).read_text())
    return done, report


def only_version(report: dict) -> str:
    (version,) = report["window"]["versions"]
    return version


# 1. The holdout as it is


def test_the_holdout_replayed_is_ok_with_no_drift_and_an_html_report(packaged, live):
    done, report = run_monitor(packaged, live.log_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK: ") and done.stdout.count("\n") == 1, done.stdout
    assert report["status"] == "ok" and report["exit_code"] == 0
    assert [a for a in report["alerts"] if a["kind"] == "drift"] == []
    version = only_version(report)
    assert version == str(packaged.record["registry_version"])
    assert report["window"]["records"] == len(packaged.features)
    assert report["window"]["requests"] == len(live.answers)
    features = report["drift"][version]["features"]
    assert {name: r["status"] for name, r in features.items()} == dict.fromkeys(features, "ok")
    html = (packaged.root / Path(packaged.params["paths"]["monitor"]).with_suffix(".html")).read_text()
    assert "data:image/png;base64" in html


# 2. One column shifted


def receiver_of(received: list[dict]) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler that records each POST (path, headers, JSON body) in `received` and answers 204."""

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Receiver


@pytest.fixture(scope="module")
def receiver():
    """A real HTTP receiver on 127.0.0.1, in a thread: its URL and the requests it got."""
    received: list[dict] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), receiver_of(received))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@dataclass
class Runs:
    """The monitor run twice over the shifted log with MONITOR_WEBHOOK_URL set, and what the
    receiver got."""

    results: list[tuple[subprocess.CompletedProcess, dict]]
    received: list[dict]


@pytest.fixture(scope="module")
def shifted_runs(packaged, shifted_log, receiver) -> Runs:
    url, received = receiver
    results = []
    for _ in range(2):
        results.append(run_monitor(packaged, shifted_log, MONITOR_WEBHOOK_URL=url))
        assert len(received) == len(results), (received, results[-1][0].stderr)
    return Runs(results, received)


def test_a_shifted_column_is_the_one_drift_alert_names(shifted_runs):
    done, report = shifted_runs.results[0]
    assert done.returncode in (1, 2), done.stdout + done.stderr
    assert report["status"] in ("warning", "critical") and report["exit_code"] == done.returncode
    assert done.stdout.startswith(report["status"].upper() + ": ")
    named = {a["column"] for a in report["alerts"] if a["kind"] == "drift" and "column" in a}
    assert named == {SHIFTED}
    version = only_version(report)
    drifted = {n for n, r in report["drift"][version]["features"].items() if r["status"] == "drift"}
    assert drifted == {SHIFTED}


# 3. Labels


def labels_for(live: Replay, packaged: Packaged) -> list[dict]:
    """The holdout's true label for every record answered in the replay, by request_id and index."""
    truth = packaged.labels.tolist()
    labels = []
    for n, answer in enumerate(live.answers[: -(-len(truth) // PER_REQUEST)]):
        for i in range(len(answer["predictions"])):
            labels.append(
                {"request_id": answer["request_id"], "record": i, "label": truth[n * PER_REQUEST + i]}
            )
    assert len(labels) == len(truth)
    return labels


def post_labels(client: httpx.Client, labels: list[dict]) -> None:
    for first in range(0, len(labels), LABEL_CHUNK):
        chunk = labels[first : first + LABEL_CHUNK]
        response = client.post("/feedback", json={"labels": chunk})
        assert response.status_code == 200 and response.json() == {"accepted": len(chunk)}, response.text


def expected_scores(live: Replay, packaged: Packaged, positive: str) -> dict[str, float]:
    """The training metrics, from the service's answers and the true labels, by scikit-learn."""
    answers = live.answers[: -(-len(packaged.labels) // PER_REQUEST)]
    predicted = np.array([p for a in answers for p in a["predictions"]], dtype=object)
    probabilities = [p for a in answers for p in a["probabilities"]]
    classes = sorted(probabilities[0])
    proba = np.array([[p[c] for c in classes] for p in probabilities])
    truth = packaged.labels.to_numpy(dtype=object)
    return {
        "accuracy": skm.accuracy_score(truth, predicted),
        "log_loss": skm.log_loss(truth, proba, labels=classes),
        "roc_auc": skm.roc_auc_score(truth == positive, proba[:, classes.index(positive)]),
        "f1": skm.f1_score(truth, predicted, pos_label=positive),
    }


def test_live_metrics_are_sklearns_on_the_answers_and_resubmissions_change_nothing(packaged, live):
    if live.proc.poll() is not None:
        pytest.skip("the server was stopped (this test runs before the operations test)")
    positive = live.client.get("/metadata").json()["positive_class"]
    assert positive is not None and positive in live.answers[0]["probabilities"][0]
    expected = expected_scores(live, packaged, positive)
    labels = labels_for(live, packaged)
    post_labels(live.client, labels)

    done, report = run_monitor(packaged, live.log_dir)
    assert done.returncode in (0, 1, 2), done.stdout + done.stderr
    version = only_version(report)
    first = report["performance"]["versions"][version]
    assert first["labelled"] == len(labels) and first["label_coverage"] == 1.0
    assert set(first["live"]) == set(expected)
    for name, value in expected.items():
        assert first["live"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    before = report["performance"]["labels"]
    assert before["lines"] == before["keys"] == before["joined"] == len(labels)
    assert before["resubmitted"] == before["conflicting"] == before["unknown"] == before["invalid"] == 0

    # The same labels again, then one that contradicts the first label of the first answer.
    post_labels(live.client, labels)
    flipped = next(c for c in live.answers[0]["probabilities"][0] if c != labels[0]["label"])
    post_labels(live.client, [{**labels[0], "label": flipped}])
    done, report = run_monitor(packaged, live.log_dir)
    assert done.returncode in (0, 1, 2), done.stdout + done.stderr
    again = report["performance"]["versions"][version]
    assert again["live"] == first["live"]  # the first label received wins
    assert again["label_coverage"] == 1.0
    after = report["performance"]["labels"]
    assert after["resubmitted"] == before["resubmitted"] + len(labels)
    assert after["conflicting"] == 1
    assert after["lines"] == 2 * len(labels) + 1 and after["keys"] == len(labels)


# 4. Operations against /metrics


def scraped(text: str) -> dict[str, Any]:
    """Outcome counts, records and cumulative latency buckets from /metrics, by Prometheus' parser."""
    outcomes: dict[str, int] = {}
    buckets: dict[str, int] = {}
    records = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tabular_predictions_total":
                outcomes[sample.labels["outcome"]] = int(sample.value)
            elif sample.name == "tabular_predict_latency_seconds_bucket":
                buckets[sample.labels["le"]] = int(sample.value)
            elif sample.name == "tabular_predicted_records_total":
                records = int(sample.value)
    return {"outcomes": outcomes, "buckets": buckets, "records": records}


def test_operations_and_refusals_equal_the_services_metrics(packaged, stopped):
    served = scraped(stopped.metrics)
    assert served["buckets"] and served["records"], stopped.metrics[-2000:]
    for outcome, n in stopped.refused.items():
        assert served["outcomes"][outcome] == n, served["outcomes"]
    done, report = run_monitor(packaged, stopped.log_dir)
    assert done.returncode in (0, 1, 2), done.stdout + done.stderr
    version = only_version(report)
    assert set(report["operations"]) == {version}, "outcomes fell to no single version"
    operations = report["operations"][version]
    assert operations["outcomes"] == served["outcomes"]
    assert operations["requests"] == served["outcomes"]["ok"] == len(stopped.answers)
    assert operations["records"] == served["records"] == len(packaged.features) + 1
    # Exactly equal: the log holds the latency /metrics observed. The service's latency sits
    # around the first bound, 1 ms; a log rounded to 1 µs once put a request in the next bucket.
    assert operations["latency_buckets"] == served["buckets"]
    assert report["quality"][version]["refusals"] == stopped.refused


# 5. Failures


def assert_unknown(packaged: Packaged, log_dir: Path) -> str:
    done, report = run_monitor(packaged, log_dir)
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR monitor: UNKNOWN"), done.stderr
    assert TRACEBACK not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert report["status"] == "unknown" and report["exit_code"] == 3 and report["error"]
    return lines[0]


def test_a_missing_an_empty_and_a_corrupt_log_are_unknown(packaged, live, tmp_path):
    line = assert_unknown(packaged, tmp_path / "absent")
    assert "no prediction log folder" in line

    (tmp_path / "empty" / "predictions").mkdir(parents=True)
    line = assert_unknown(packaged, tmp_path / "empty")
    assert "holds no records" in line

    logs = sorted(p for p in (live.log_dir / "predictions").glob("predictions.*.jsonl") if p.stat().st_size)
    corrupt = tmp_path / "corrupt" / "predictions"
    corrupt.mkdir(parents=True)
    copy = corrupt / logs[0].name
    shutil.copyfile(logs[0], copy)
    lines = len(copy.read_bytes().splitlines())
    with copy.open("a") as out:
        out.write("{not json\n")
    line = assert_unknown(packaged, tmp_path / "corrupt")
    assert copy.name in line and f"line {lines + 1}" in line, line


# 6. Webhook


def test_the_webhook_gets_the_alerts_once_with_the_same_key_on_a_rerun(shifted_runs):
    (done, report), (again, _) = shifted_runs.results
    first, second = shifted_runs.received  # one POST a run: the first attempt was answered 204
    assert first["path"] == "/hook"
    key = first["headers"].get("Idempotency-Key")
    assert key
    assert first["body"]["status"] == report["status"] and first["body"]["exit_code"] == done.returncode
    assert first["body"]["alerts"] == report["alerts"]
    assert any(a.get("column") == SHIFTED for a in first["body"]["alerts"])
    found = re.search(
        r"alerts delivered to http://127\.0\.0\.1:\d+/… \(HTTP 204, attempt 1, ([\d.]+) s\)", done.stderr
    )
    assert found, done.stderr
    assert float(found.group(1)) <= 2.0
    # A rerun over the same log: the same window and findings, so the same key.
    assert again.returncode == done.returncode
    assert second["headers"].get("Idempotency-Key") == key
