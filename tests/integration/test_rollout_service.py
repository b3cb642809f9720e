"""A running `bentoml serve` follows the registry (issue 12): shadow, canary, finish and rollback
reach it without a restart, while a load keeps it busy, and not one request fails.

One small project: v1 (x1 and x2 hidden: a weak model) is champion and served; v2 (all columns)
is registered beside it. The oracles are independent of pipelines.serving: the HTTP answers, the
prediction log's lines read as JSON, and the models' own predictions (the skops pipelines, loaded
with skops and called with scikit-learn).
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import yaml
from helpers import traffic
from helpers.champion import free_port, new_project, package_project, serve, server_env, stop, train_candidate
from helpers.support import PROJECT as REPO

from pipelines.core import stores
from pipelines.core.layout import Layout
from pipelines.release import artifacts, promotion, rollout

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BENTOML = str(Path(sys.executable).parent / "bentoml")
POLL = 0.5  # rollout.poll_seconds here: the service reads the registry twice a second
SWAP_BOUND_S = 30.0  # generous: a swap is a poll plus a model load on a loaded 2-core box


def post(port, records, headers=None):
    return traffic.post(port, "/predict", {"records": records}, headers)


def answered_by(body):
    return body.get("model_version"), body.get("role")


def wait_for(predicate, what, bound=SWAP_BOUND_S):
    end = time.monotonic() + bound
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"not within {bound} s: {what}")


def package(root, env):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "package"], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout-service")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = new_project(root)
        repo = yaml.safe_load((REPO / "params.yaml").read_text())
        params["rollout"] = {**repo["rollout"], "poll_seconds": POLL, "routing_field": "id"}
        name = params["promote"]["registered_model"]
        train_candidate(params, hide=["x1", "x2"])
        assert promotion.run_promotion(root, params)["promoted"]
        record = package_project(root, params, REPO)
        # v2: the full model, registered beside the champion with the digest the gate would record.
        train_candidate(params, hide=[])
        uri = Layout.from_paths(params["paths"]).read_run("cand")["model_uri"]
        digest = artifacts.load(uri, "v2").sha256
        client = mlflow.MlflowClient(stores.tracking_uri(Path(params["tracking"]["store"])))
        version = mlflow.register_model(
            uri, name, tags={artifacts.DIGEST_TAG: digest, "positive_class": "yes"}
        )
        assert str(version.version) == "2"
        holdout = pd.read_parquet(params["paths"]["holdout"])
        log_dir = root / "predlog"
        port = free_port()
        cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)]
        env = server_env(record, log_dir)
        proc = serve(cmd, root, env, port)
        try:
            yield SimpleNamespace(
                root=root,
                params=params,
                client=client,
                name=name,
                record=record,
                records=json.loads(holdout.drop(columns=["label"]).to_json(orient="records")),
                log_dir=log_dir,
                port=port,
                proc=proc,
                cmd=cmd,
                env=env,
                package_env={**env, "HOME": str(root)},
            )
        finally:
            stop(proc)


def skops_model(world, store_name, version):
    """A packaged version's own scikit-learn pipeline, read from the store with skops."""
    import skops.io as sio

    for folder in (Path(world.record["bentoml_home"]) / "models" / store_name).glob("*/"):
        labels = yaml.safe_load((folder / "model.yaml").read_text())["labels"]
        if labels["registry_version"] == version:
            data = (folder / "model.skops").read_bytes()
            return sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    raise AssertionError(f"v{version} is not packaged as {store_name}")


def test_shadow_canary_finish_and_rollback_reach_the_running_service_with_no_failed_request(world):
    port, records = world.port, world.records
    probe = records[:10]
    status, before = post(port, probe)
    assert status == 200 and (before["model_version"], before["role"]) == ("1", "champion")

    with traffic.Load(port, records, threads=3) as load:
        # --- shadow: v2 scores every request off the path; answers do not change --------------
        rollout.run(world.root, world.params, start_version="2", reason="test")
        package(world.root, world.package_env)
        packaged_at = time.monotonic()
        wait_for(
            lambda: {e["request_id"] for e in traffic.log_lines(world.log_dir) if e["role"] == "shadow"},
            "shadow lines in the log",
        )
        shadow_delay = time.monotonic() - packaged_at
        status, during = post(port, probe)
        assert status == 200
        assert {k: v for k, v in during.items() if k != "request_id"} == {
            k: v for k, v in before.items() if k != "request_id"
        }

        # --- canary: half the keys go to v2, each key always to the same arm ------------------
        rollout.run(world.root, world.params, mode="canary", share=0.5, reason="test")
        wait_for(
            lambda: any(
                post(port, probe, {"X-Routing-Key": f"wait-{i}"})[1].get("role") == "challenger"
                for i in range(20)
            ),
            "a challenger answer",
        )
        time.sleep(3 * POLL)  # both workers past their next poll
        arms = {}
        for key in (f"user-{i}" for i in range(300)):
            answers = {post(port, probe[:1], {"X-Routing-Key": key})[1]["role"] for _ in range(2)}
            assert len(answers) == 1, f"key {key} moved between arms: {answers}"
            arms[key] = answers.pop()
        share = sum(a == "challenger" for a in arms.values()) / len(arms)
        assert 0.4 <= share <= 0.6, share
        # Without the header, the record's id routes: the same id, the same arm, every time.
        by_id = {}
        for record in records[:60]:
            roles = {post(port, [record])[1]["role"] for _ in range(2)}
            assert len(roles) == 1
            by_id[record["id"]] = roles.pop()
        assert set(by_id.values()) == {"champion", "challenger"}

        # --- finish: v2 is champion everywhere; rollback: v1 again ----------------------------
        rollout.run(world.root, world.params, finish_it=True, reason="test")
        finished = time.monotonic()
        # Both fields: during the canary this probe may already be answered by v2, as challenger.
        wait_for(
            lambda: all(answered_by(post(port, probe)[1]) == ("2", "champion") for _ in range(8)),
            "v2 answering as champion",
        )
        finish_delay = time.monotonic() - finished
        after_finish = post(port, probe)[1]
        assert after_finish["role"] == "champion"
        decision = promotion.run_rollback(world.root, world.params, "test rollback")
        assert decision["champion_version"] == "1"
        rolled = time.monotonic()
        wait_for(
            lambda: all(post(port, probe)[1].get("model_version") == "1" for _ in range(8)),
            "v1 answering again after the rollback",
        )
        rollback_delay = time.monotonic() - rolled
        time.sleep(1)

    statuses = [s[1] for s in load.sent]
    assert len(statuses) > 200 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    print(
        f"\nswap delays: shadow after package {shadow_delay:.2f} s, finish {finish_delay:.2f} s, "
        f"rollback {rollback_delay:.2f} s; {len(statuses)} load requests, none failed; canary share {share:.3f}"
    )

    # The answers each model gave are its own: v2's are the full model's predictions.
    x = pd.DataFrame(probe).drop(columns=["id"])
    v2 = skops_model(world, "tabular-challenger", "2")
    assert after_finish["predictions"] == list(v2.predict(x))
    v1 = skops_model(world, "tabular-champion", "1")
    assert before["predictions"] == list(v1.predict(x))

    # Every answered load request is in the log exactly once (answered lines; shadow lines apart).
    stop(world.proc)  # flushes the logs
    lines = traffic.log_lines(world.log_dir)
    answered = {}
    for line in lines:
        if line["role"] != "shadow":
            key = (line["request_id"], line["record"])
            answered[key] = answered.get(key, 0) + 1
    assert set(answered.values()) == {1}
    roles_of = {}
    for e in lines:
        if e["role"] != "shadow":
            roles_of.setdefault(e["request_id"], set()).add(e["role"])
    for _, _, body, n in load.sent:
        assert all(answered.get((body["request_id"], i)) == 1 for i in range(n))
        assert roles_of[body["request_id"]] == {body["role"]}  # the log names the arm the answer named
    shadow = [e for e in lines if e["role"] == "shadow"]
    keys = [(e["request_id"], e["record"]) for e in shadow]
    assert shadow and len(keys) == len(set(keys))  # never twice
    assert all(key in answered for key in keys)  # always beside an answer
    by_request = {(e["request_id"], e["record"]): e["model_version"] for e in lines if e["role"] != "shadow"}
    assert all(by_request[(e["request_id"], e["record"])] != e["model_version"] for e in shadow)
