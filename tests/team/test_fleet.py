"""The fleet (pipelines/team/fleet.py): real `bentoml serve` replicas behind a real HAProxy 2.6.

One small packaged project; one fleet of 2 replicas per colour for the module, driven through its
own command line as a user would. Which replica answered is read from the replicas' own log
folders (a request id is logged only by the replica that answered it), never from the fleet code.
"""

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers.champion import new_project, package_project, train_candidate
from helpers.support import PROJECT as REPO
from helpers.support import subprocess_env

from pipelines.monitoring import logs
from pipelines.release import promotion
from pipelines.team import processes

pytestmark = pytest.mark.integration

KEY = "fleet-test-key-0123456789"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet-project")
    params = new_project(root)
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    package_project(root, params, REPO)
    holdout = pd.read_parquet(params["paths"]["holdout"])
    return root, json.loads(holdout.drop(columns=["label"]).head(50).to_json(orient="records"))


class Fleet:
    """The fleet's command line in the packaged project, with its state, port and logs in tmp."""

    def __init__(self, root, state, log_root):
        self.root, self.state, self.log_root = root, state, log_root
        self.port = processes.free_port()
        self.env = {
            **subprocess_env(),
            "FLEET_DIR": str(state),
            "FLEET_PORT": str(self.port),
            "PREDICTION_LOG_DIR": str(log_root),
            "API_KEY": KEY,
        }

    def __call__(self, *args, timeout=300):
        return subprocess.run(
            [sys.executable, "-m", "pipelines.team.fleet", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def fleet(packaged, tmp_path_factory):
    root, records = packaged
    base = tmp_path_factory.mktemp("fleet")
    fleet = Fleet(root, base / "state", base / "log")
    started = time.monotonic()
    done = fleet("up", "--replicas", "2")
    fleet.up_seconds = time.monotonic() - started
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.startswith("FLEET up: blue live (2 replicas")
        yield fleet, records
    finally:
        fleet("down")


def replica_of(log_root: Path) -> dict[str, str]:
    """request_id -> the replica folder whose log holds it, read as plain JSON lines."""
    owner = {}
    for folder in sorted(p for p in log_root.iterdir() if p.is_dir()):
        for path in (folder / "predictions").glob("predictions.*.jsonl"):
            for line in path.read_text().splitlines():
                if line:
                    owner[json.loads(line)["request_id"]] = folder.name
    return owner


class Load:
    """Back-to-back single-record POSTs through HAProxy: threads on new connections and threads on
    one keep-alive connection each. `sent` holds (monotonic start time, status, request_id, records)."""

    def __init__(self, port, records, fresh=1, kept=1):
        self.port, self.records, self.sent = port, records, []
        self._stop, self._lock = threading.Event(), threading.Lock()
        kinds = [False] * fresh + [True] * kept
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in kinds]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, keep_alive):
        connection = None
        index = 0
        while not self._stop.is_set():
            index += 1
            body = json.dumps({"records": [self.records[index % len(self.records)]]})
            began = time.monotonic()
            try:
                if connection is None or not keep_alive:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                connection.request("POST", "/predict", body, HEADERS)
                response = connection.getresponse()
                answer = json.loads(response.read() or b"{}")
                status, request_id = response.status, answer.get("request_id")
                if response.getheader("Connection", "").lower() == "close" or not keep_alive:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                status, request_id, connection = 0, type(exc).__name__, None
            with self._lock:
                self.sent.append((began, status, request_id, 1))


def post_many(port, records, count):
    """`count` POSTs on one keep-alive connection; their (status, request_id)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    answers = []
    for index in range(count):
        connection.request(
            "POST", "/predict", json.dumps({"records": [records[index % len(records)]]}), HEADERS
        )
        response = connection.getresponse()
        answers.append((response.status, json.loads(response.read()).get("request_id")))
    connection.close()
    return answers


def test_two_replicas_answer_and_both_get_traffic(fleet):
    fleet, records = fleet
    print(f"fleet up with 2 replicas: {fleet.up_seconds:.1f} s")
    answers = post_many(fleet.port, records, 40)  # one keep-alive client: HAProxy balances per request
    assert [status for status, _ in answers] == [200] * 40
    owner = replica_of(fleet.log_root)
    counts = pd.Series([owner[request_id] for _, request_id in answers]).value_counts().to_dict()
    assert set(counts) == {"blue-0", "blue-1"}, counts
    assert min(counts.values()) >= 10, counts  # round robin: about half each


def cpus_allowed(pid: int) -> str:
    """The CPUs a process may run on, as the kernel lists them."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(line.split(":", 1)[1].strip() for line in status if line.startswith("Cpus_allowed_list"))


def test_replicas_leave_their_workers_unpinned(fleet):
    """Replicas share the host: pinned (serving.pin_workers), every replica's first worker would
    sit on the same CPU. Each worker keeps its replica's CPUs."""
    fleet, _ = fleet
    replicas = [processes.read_pid(p) for p in fleet.state.glob("blue-*.pid")]
    assert len(replicas) == 2, replicas
    for replica in replicas:
        workers = _children(replica)
        assert len(workers) == 2, workers  # serving.workers
        assert {cpus_allowed(w) for w in workers} == {cpus_allowed(replica)}, workers


def test_a_request_without_the_key_is_refused_through_haproxy(fleet):
    fleet, records = fleet
    connection = http.client.HTTPConnection("127.0.0.1", fleet.port, timeout=30)
    connection.request(
        "POST", "/predict", json.dumps({"records": records[:1]}), {"Content-Type": "application/json"}
    )
    assert connection.getresponse().status == 401
    connection.close()


def switch_under_load(fleet, records, command):
    with Load(fleet.port, records) as load:
        time.sleep(1.0)
        started = time.monotonic()
        done = fleet(command)
        finished = time.monotonic()
        time.sleep(1.5)
    assert done.returncode == 0, done.stderr[-3000:]
    return load.sent, started, finished, done.stdout


def test_blue_green_switch_and_back_under_load_fail_no_request(fleet):
    fleet, records = fleet
    sent, started, finished, line = switch_under_load(fleet, records, "switch")
    print(f"switch: {finished - started:.1f} s, {len(sent)} requests under load")
    assert line.startswith("FLEET switched: green live")
    assert [s for s in sent if s[1] != 200] == []
    owner = replica_of(fleet.log_root)
    after = [owner[s[2]] for s in sent if s[0] > finished]  # requests sent after the switch
    assert after and all(name.startswith("green-") for name in after), pd.Series(after).value_counts()
    before = [owner[s[2]] for s in sent if s[0] < started]
    assert before and all(name.startswith("blue-") for name in before)

    sent, started, finished, line = switch_under_load(fleet, records, "back")
    print(f"back: {finished - started:.1f} s, {len(sent)} requests under load")
    assert line.startswith("FLEET back: blue live")
    assert finished - started < 10  # blue kept running: no start-up on the way back
    assert [s for s in sent if s[1] != 200] == []
    owner = replica_of(fleet.log_root)
    after = [owner[s[2]] for s in sent if s[0] > finished]
    assert after and all(name.startswith("blue-") for name in after)


def test_the_monitor_reads_every_replica_folder(fleet):
    fleet, records = fleet
    answers = post_many(fleet.port, records, 20)
    assert {status for status, _ in answers} == {200}
    expected = replica_of(fleet.log_root)  # every logged request id, by plain JSON reading
    assert len({name for name in expected.values()}) >= 3  # blue and green replicas hold lines
    frames = list(logs.iter_frames(fleet.log_root, only=()))
    read = pd.concat(frames)
    assert len(read) == len(expected)  # one record per request here
    assert set(read["request_id"]) == set(expected)
    # Workers are told apart per replica (each replica numbers its own from 1).
    assert {w.split("/")[0] for w in read["worker"]} == set(expected.values())


def test_down_stops_every_process_and_port(fleet):
    fleet, _ = fleet
    state = json.loads((fleet.state / "state.json").read_text())
    pids = [processes.read_pid(p) for p in fleet.state.glob("*.pid")]
    assert len(pids) == 5  # HAProxy and 2 replicas of each colour
    family = pids + [child for pid in pids for child in _children(pid)]
    ports = [fleet.port] + [p for c in state["colours"].values() if c for p in c["ports"]]
    assert all(processes.port_open(port) for port in ports)
    done = fleet("down")
    assert done.returncode == 0 and done.stdout.startswith("FLEET down"), done.stderr
    deadline = time.monotonic() + 10
    while any(processes.alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in family if processes.alive(pid)] == []
    assert [port for port in ports if processes.port_open(port)] == []
    assert list(fleet.state.glob("*.pid")) == []
    assert fleet("status").stdout.strip() == "FLEET down"
    again = fleet("down")
    assert again.returncode == 0 and "nothing was running" in again.stdout


def test_user_errors_are_one_line(packaged, tmp_path):
    root, _ = packaged
    fleet = Fleet(root, tmp_path / "state", tmp_path / "log")
    for args, words in ((("switch",), "no fleet is up"), (("up", "--replicas", "0"), "--replicas must be")):
        done = fleet(*args)
        assert done.returncode == 1
        assert done.stderr.startswith(f"ERROR fleet {args[0]}: ") and words in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def _children(pid):
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found
