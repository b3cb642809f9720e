"""A day in production (issue 12), on loopback against a real `bentoml serve`, in a copy of the
project with its own git, DVC and MLflow store:

1. new customers' traffic (the holdout's rows with new ids) is replayed; then the same traffic
   with one column shifted, and `make monitor` alerts on that column;
2. their true labels are posted to /feedback;
3. `make retrain TRIGGER=drift` makes a new data version from the log and the labels, retrains
   with `dvc repro`, and the gate passes a challenger, which (`rollout.on_pass: rollout`) starts in
   shadow and is packaged;
4. under load, `make rollout ANALYZE=1 WATCH=1` takes it through shadow and each canary step to
   champion;
5. then a deliberately worse challenger (trained on flipped labels) is started by hand in canary,
   and the analysis fails it: the rollout is aborted and the champion answers everything again.

Not one request fails throughout, and every answered record is in the prediction log exactly once.
The oracles are independent of the code under test: HTTP status codes and bodies, the log's JSON
lines, the registry read with MlflowClient, the git history, and the shifted column's name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.champion import free_port, serve, stop
from helpers.support import copy_project, read_yaml, retrain_ready, run, subprocess_env, write_yaml
from helpers.traffic import Load, log_lines, post

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BENTOML = str(Path(sys.executable).parent / "bentoml")
SHIFTED = "monthly_charges"
PER_REQUEST = 10


def cli(root, env, *args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "pipelines", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client_of(root, params):
    """An MlflowClient on the copy's own SQLite store. Not stores.tracking_uri: that honours
    MLFLOW_TRACKING_URI, which `mlflow.set_tracking_uri` in an earlier test of this process set."""
    import mlflow

    from pipelines.core import stores

    uri = f"sqlite:///{stores.mlflow_store(root, params) / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def registry(root, params):
    """The registered model's aliases (alias -> version as text) and tags, read with MlflowClient."""
    client = client_of(root, params)
    model = client.get_registered_model(params["promote"]["registered_model"])
    return {alias: str(version) for alias, version in model.aliases.items()}, model.tags


def champion_tag(root, params, key):
    client = client_of(root, params)
    return client.get_model_version_by_alias(params["promote"]["registered_model"], "champion").tags[key]


WORSE = """
import sys, yaml, mlflow, pandas as pd
from pathlib import Path
from pipelines.modeling import models, runs
from pipelines.release import artifacts
params = yaml.safe_load(open("params.yaml"))
runs.use_project_experiment(Path("."), params)
data, target = params["data"], params["data"]["target"]
train = pd.read_parquet(params["paths"]["train"])
X, y = train.drop(columns=[target, *data["ignore"]]), train[target]
a, b = sorted(y.unique())
flipped = y.map({a: b, b: a})  # every label the wrong way round: a model that is confidently wrong
spec = params["train"]["candidates"]["linear"]
model = models.fit(models.build_pipeline("linear", spec, features=X, feature_params=params["features"],
                   task=data["task"], seed=0), X, flipped, "linear")
with mlflow.start_run():
    uri = runs.log_model(model, X.head(3))
digest = artifacts.load(uri, "worse").sha256
version = mlflow.register_model(uri, params["promote"]["registered_model"],
                                tags={artifacts.DIGEST_TAG: digest, "positive_class": sys.argv[1]})
print(version.version)
"""


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    base = tmp_path_factory.mktemp("day")
    root = copy_project(base / "project")
    params = retrain_ready(read_yaml(root / "params.yaml"))
    params["rollout"].update(on_pass="rollout", poll_seconds=0.5, steps=[0.25, 1.0])
    # The p99 of 60 requests is their slowest one: on a shared 2-core box that is noise (a good
    # challenger failed at 1.20x once). The latency rule has its own tests; here the arms are
    # judged on errors, agreement and labels.
    params["rollout"]["analysis"].update(min_requests=60, min_agreement=0.8, max_p99_ratio=3.0)
    write_yaml(params, root / "params.yaml")
    env = {**subprocess_env(), "HOME": str(root), "PREDICTION_LOG_DIR": str(root / "monitoring")}
    env.pop("BENTOML_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    run(["dvc", "repro"], root, timeout=900, check=True)
    run(["git", "add", "-A"], root, check=True)
    run(["git", "commit", "-q", "-m", "baseline"], root, check=True)
    for command in (("promote",), ("package",)):
        done = cli(root, env, *command)
        assert done.returncode == 0, done.stderr[-3000:]
    bento = json.loads((root / params["paths"]["bento"]).read_text())
    assert bento["registry_version"] == "1"
    port = free_port()
    cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)]
    proc = serve(cmd, root, {**env, "API_AUTH": "off", "BENTOML_HOME": bento["bentoml_home"]}, port)
    holdout = pd.read_parquet(root / params["paths"]["holdout"])
    target = params["data"]["target"]
    try:
        yield root, params, env, port, proc, holdout, target
    finally:
        stop(proc)


def test_a_day_in_production(day):
    root, params, env, port, proc, holdout, target = day
    log_dir = root / "monitoring"
    new = holdout.copy()
    new["customer_id"] = [f"D{i:05d}" for i in range(len(new))]  # new customers, the same kind of rows
    records = json.loads(new.drop(columns=[target]).to_json(orient="records"))
    shifted = new.copy()
    std = shifted[SHIFTED].std()
    shifted[SHIFTED] = (shifted[SHIFTED] + std).clip(new[SHIFTED].min(), new[SHIFTED].max()).round(2)
    shifted["customer_id"] = [f"S{i:05d}" for i in range(len(new))]
    shifted_records = json.loads(shifted.drop(columns=[target]).to_json(orient="records"))

    # 1. Traffic, then drift; the monitor alerts on the shifted column.
    labels = []
    for frame, sent in ((new, records), (shifted, shifted_records)):
        truth = frame[target].tolist()
        for first in range(0, len(sent), PER_REQUEST):
            status, body = post(port, "/predict", {"records": sent[first : first + PER_REQUEST]})
            assert status == 200, body
            labels += [
                {"request_id": body["request_id"], "record": i, "label": truth[first + i]}
                for i in range(len(body["predictions"]))
            ]
    monitored = cli(root, env, "monitor", "--log-dir", str(log_dir), timeout=600)
    assert monitored.returncode in (1, 2), monitored.stdout + monitored.stderr
    report = json.loads((root / params["paths"]["monitor"]).read_text())
    assert SHIFTED in {a.get("column") for a in report["alerts"] if a["kind"] == "drift"}

    # 2. Labels.
    for first in range(0, len(labels), 500):
        status, body = post(port, "/feedback", {"labels": labels[first : first + 500]})
        assert status == 200 and body == {"accepted": len(labels[first : first + 500])}

    with Load(port, records) as load:
        # 3. Retrain on the labelled log: a new data version, a commit, a challenger in shadow.
        head = run(["git", "rev-parse", "HEAD"], root, check=True).stdout.strip()
        retrained = cli(root, env, "retrain", "--trigger", "drift")
        assert retrained.returncode == 0, retrained.stderr[-3000:]
        assert retrained.stdout.startswith("RETRAINED (drift)")
        assert run(["git", "rev-parse", "HEAD~1"], root, check=True).stdout.strip() == head
        aliases, tags = registry(root, params)
        assert (
            aliases["champion"] == "1" and aliases["challenger"] == "2" and tags["rollout.mode"] == "shadow"
        )
        decision = json.loads((root / params["paths"]["promotion"]).read_text())
        assert decision["retrain"]["trigger"] == "drift"

        # 4. Shadow, then the canary steps, to champion, judged on the traffic itself.
        watched = cli(root, env, "rollout", "--analyze", "--watch", "--max-seconds", "300", timeout=400)
        assert watched.returncode == 0, watched.stdout + watched.stderr
        aliases, tags = registry(root, params)
        assert aliases["champion"] == "2" and "challenger" not in aliases and tags["rollout.mode"] == "off"
        deadline = time.monotonic() + 30
        while post(port, "/predict", {"records": records[:5]})[1].get("model_version") != "2":
            assert time.monotonic() < deadline, "the service did not follow the finished rollout"
            time.sleep(0.2)

        # 5. A worse challenger, started by hand in canary: the analysis fails it and aborts.
        made = subprocess.run(
            [sys.executable, "-c", WORSE, champion_tag(root, params, "positive_class")],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert made.returncode == 0, made.stderr[-3000:]
        worse = made.stdout.strip().splitlines()[-1]
        for step in (("--start", worse), ("--mode", "canary", "--share", "0.5")):
            done = cli(root, env, "rollout", *step, "--reason", "worse on purpose")
            assert done.returncode == 0, done.stderr[-3000:]
        # Wait until the service answers with the worse challenger, so the analysis sees its arm.
        deadline = time.monotonic() + 60
        while not any(
            post(port, "/predict", {"records": records[i : i + 1]})[1].get("role") == "challenger"
            for i in range(20)
        ):
            assert time.monotonic() < deadline, "the canary never answered"
        failed = cli(root, env, "rollout", "--analyze", "--watch", "--max-seconds", "300", timeout=400)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        aliases, tags = registry(root, params)
        assert aliases["champion"] == "2" and "challenger" not in aliases and tags["rollout.mode"] == "off"
        deadline = time.monotonic() + 30
        while any(
            post(port, "/predict", {"records": records[i : i + 1]})[1].get("role") != "champion"
            for i in range(20)
        ):
            assert time.monotonic() < deadline, "the challenger kept answering after the abort"
        time.sleep(1)

    # Not one failed request, and every answered record in the log exactly once.
    statuses = [status for _, status, _, _ in load.sent]
    assert len(statuses) > 500 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    roles = {(body["model_version"], body["role"]) for _, _, body, _ in load.sent}
    assert {("1", "champion"), ("2", "challenger"), ("2", "champion"), (worse, "challenger")} <= roles
    stop(proc)
    answered = {}
    for line in log_lines(log_dir):
        if line["role"] != "shadow":
            key = (line["request_id"], line["record"])
            answered[key] = answered.get(key, 0) + 1
    assert set(answered.values()) == {1}
    for _, _, body, n in load.sent:
        assert all((body["request_id"], i) in answered for i in range(n))
    history = [json.loads(line) for line in (root / "mlruns" / "promotions.jsonl").read_text().splitlines()]
    outcomes = [
        (h.get("rollout"), (h.get("analysis") or {}).get("outcome")) for h in history if h.get("rollout")
    ]
    assert ("finish", "pass") in outcomes and ("off", "fail") in outcomes, outcomes
