"""Keep-alive connections spread over both workers of a real `bentoml serve` (issue 14).

The workers share one listening socket, and a worker woken by a burst of connections accepts all
that wait, so a pool opened at once can land on one worker. The service closes each connection
after about `max_requests_per_connection` requests; the client reconnects and the connections
spread out. Which worker answered is read from the prediction log (one file per worker).
"""

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.champion import new_project, package_project, serve, server_env, stop, train_candidate
from helpers.support import PROJECT as REPO

from pipelines.release import promotion
from pipelines.serving import affinity

pytestmark = pytest.mark.integration

BENTOML = str(Path(sys.executable).parent / "bentoml")
CONNECTIONS = 8
PER_CONNECTION = 120
RECYCLE = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("spread")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = new_project(root)
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    record = package_project(root, params, REPO)
    holdout = pd.read_parquet(params["paths"]["holdout"])
    records = json.loads(holdout.drop(columns=["label"]).head(40).to_json(orient="records"))
    log_dir = tmp_path_factory.mktemp("predlog")
    port = free_port()
    env = server_env(record, log_dir, MAX_REQUESTS_PER_CONNECTION=str(RECYCLE))
    cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(port)]
    proc = serve(cmd, root, env, port)
    yield {
        "port": port,
        "records": records,
        "log_dir": log_dir,
        "root": root,
        "record": record,
        "pid": proc.pid,
    }
    stop(proc)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answered_per_worker(log_dir: Path) -> dict[str, int]:
    return {
        f.name: sum(1 for _ in f.open("rb")) for f in (log_dir / "predictions").glob("predictions.*.jsonl")
    }


def both_workers_answering(port: int, body: bytes, log_dir: Path, deadline: float = 120.0) -> dict[str, int]:
    """Wait until both workers have answered, and return each worker's count so far.

    /readyz answers as soon as one worker is up: under load the other can still be loading its
    model when the burst comes, and then every connection lands on the one that is up (seen 0 of
    960 in CI). That is start-up, not the spread this file tests, so the burst waits for both.
    Each probe is its own connection, so the two workers race to accept it."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/predict", body, {"Content-Type": "application/json", "Connection": "close"})
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200
        counts = answered_per_worker(log_dir)
        if len(counts) == 2 and min(counts.values()) > 0:
            return counts
        time.sleep(0.05)
    raise AssertionError(f"one worker never answered in {deadline:.0f} s: {answered_per_worker(log_dir)}")


def test_a_pool_opened_at_once_spreads_over_both_workers_without_errors(server):
    port, records, log_dir = server["port"], server["records"], server["log_dir"]
    bodies = [json.dumps({"records": [r]}).encode() for r in records]
    before = both_workers_answering(port, bodies[0], log_dir)
    statuses: list[int] = []
    closes: list[int] = []
    connects: list[int] = []
    start = threading.Barrier(CONNECTIONS)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()  # the whole pool at once: the burst that lands on one worker
        connects.append(1)
        start.wait()
        for i in range(PER_CONNECTION):
            if conn.sock is None:  # closed by the server's `Connection: close`: reconnect
                conn.connect()
                connects.append(1)
            conn.request(
                "POST", "/predict", bodies[(k + i) % len(bodies)], {"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            if response.getheader("connection", "").lower() == "close":
                closes.append(1)
                conn.close()
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    total = CONNECTIONS * PER_CONNECTION
    assert statuses.count(200) == total  # every request answered, none refused
    # Each connection lives RECYCLE/2 .. 1.5*RECYCLE requests: at least this many closes.
    assert total // (RECYCLE + RECYCLE // 2) <= len(closes) <= total // (RECYCLE // 2)
    # A closed connection is opened again for the next request (not after its last one).
    assert len(closes) <= len(connects) <= CONNECTIONS + len(closes)
    per_worker = {name: n - before[name] for name, n in answered_per_worker(log_dir).items()}
    assert sum(per_worker.values()) == total
    assert len(per_worker) == 2, per_worker  # both workers answered
    # Without recycling the burst's worker keeps every connection (0 answers on the other). Even
    # balance is not promised: on a loaded box the worker that gets less CPU accepts fewer
    # reconnects (seen 140 of 960 beside a 1,000x benchmark), so the bound is well clear of 0.
    assert min(per_worker.values()) >= 0.1 * total, per_worker


def worker_cpus(parent: int) -> dict[int, set[str]]:
    """Each worker process of `bentoml serve` (its children) and the CPUs its threads may use, as
    the kernel lists them in /proc."""
    children = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    return {
        pid: {
            line.split(":", 1)[1].strip()
            for task in Path(f"/proc/{pid}/task").iterdir()
            for line in (task / "status").read_text().splitlines()
            if line.startswith("Cpus_allowed_list")
        }
        for pid in children
    }


def test_each_worker_runs_on_a_cpu_of_its_own(server):
    """params.yaml's `serving.pin_workers: auto`, packaged. On a host whose usable CPUs are the two
    workers' own and with no CPU quota (this machine's and CI's shape), each worker's every thread
    is on one CPU, and no two workers share one; anywhere else each keeps its parent's CPUs."""
    both_workers_answering(
        server["port"], json.dumps({"records": server["records"][:1]}).encode(), server["log_dir"]
    )
    usable = os.sched_getaffinity(0)
    per_worker = worker_cpus(server["pid"])
    assert len(per_worker) == 2, per_worker
    if len(usable) != 2 or affinity.host_cgroup_quota() is not None:  # auto does not pin here
        parent = {
            line.split(":", 1)[1].strip()
            for line in Path(f"/proc/{server['pid']}/status").read_text().splitlines()
            if line.startswith("Cpus_allowed_list")
        }
        assert all(cpus == parent for cpus in per_worker.values()), (parent, per_worker)
        return
    assert all(len(cpus) == 1 for cpus in per_worker.values()), per_worker  # all threads alike
    chosen = [next(iter(cpus)) for cpus in per_worker.values()]
    assert all(c.isdigit() and int(c) in usable for c in chosen), per_worker  # one usable CPU each
    assert len(set(chosen)) == 2, per_worker


def test_a_bad_pinning_setting_refuses_to_start_with_one_line(server, tmp_path):
    env = server_env(server["record"], tmp_path / "log", PIN_WORKERS="yes")
    cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(free_port())]
    done = subprocess.run(cmd, cwd=server["root"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("ERROR serve: ") and "PIN_WORKERS" in lines[-1], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_a_bad_recycling_setting_refuses_to_start_with_one_line(server, tmp_path, value):
    env = server_env(server["record"], tmp_path / "log", MAX_REQUESTS_PER_CONNECTION=value)
    cmd = [BENTOML, "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(free_port())]
    done = subprocess.run(cmd, cwd=server["root"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("ERROR serve: ") and "max_requests_per_connection" in lines[-1], done.stderr[
        -2000:
    ]
    assert "Traceback" not in done.stderr
