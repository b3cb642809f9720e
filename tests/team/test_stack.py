"""The team stack as its users meet it: each part healthy, runs and artifacts through the server
with no S3 keys on the client, concurrent writers, an idempotent `up`, a clean `down`, secrets
kept out of output and git, and one readable line for a bad state."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.support import PROJECT, TRACEBACK, git_tracked_files

pytestmark = pytest.mark.integration

CLIENT = """
import json, sys, mlflow
mlflow.set_experiment("stack-client")
with mlflow.start_run() as run:
    mlflow.log_param("p", "x")
    mlflow.log_metric("m", 0.25)
    mlflow.log_text(sys.argv[1], "notes/hello.txt")
got = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/hello.txt")
print(json.dumps({"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri, "text": got,
                  "experiment_id": run.info.experiment_id}))
"""

# The experiment exists before the writers start: what is tested is the server under concurrent
# writes. (mlflow.set_experiment(name) racing to create one returns without activating it, and that
# writer's runs land in Default; pipelines/modeling/runs.py guards against that race.)
WRITER = """
import json, sys, mlflow
worker, n = int(sys.argv[1]), int(sys.argv[2])
mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_experiment_by_name("stack-concurrent").experiment_id)
errors = 0
for i in range(n):
    try:
        with mlflow.start_run(run_name=f"w{worker}-{i}"):
            mlflow.log_params({"worker": worker, "i": i})
            mlflow.log_metric("value", worker * 100 + i)
    except Exception as exc:  # counted, not raised: the test reports how many failed
        errors += 1
        print(repr(exc), file=sys.stderr)
print(json.dumps({"errors": errors}))
"""


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_each_part_is_healthy(stack: Any, stack_kit: Any) -> None:
    record = json.loads((stack.state / "state.json").read_text())
    pg_port = record["postgres"]["port"]
    # PostgreSQL: password logins over TCP only with the right password; the schema was migrated.
    with psycopg.connect(
        host="127.0.0.1",
        port=pg_port,
        user="mlflow",
        dbname="mlflow",
        password=stack.credentials["pg_password"],
    ) as conn:
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version and version[0]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=pg_port, user="mlflow", dbname="mlflow", password="wrong")
    # S3: an unsigned request is refused, a signed one sees both buckets.
    assert _get(stack.s3_endpoint + "/")[0] == 403
    buckets = {b["Name"] for b in stack.s3_client().list_buckets()["Buckets"]}
    assert {"mlflow", "dvc"} <= buckets
    # MLflow: healthy, on loopback.
    assert _get(stack.tracking_uri + "/health")[0] == 200
    assert stack.tracking_uri.startswith("http://127.0.0.1:")
    status = stack_kit.command("status", stack.project, stack.state)
    assert status.returncode == 0
    assert [line.split()[:2] for line in status.stdout.splitlines()] == [
        ["postgres", "up"],
        ["seaweed", "up"],
        ["mlflow", "up"],
    ]


def test_client_logs_run_and_artifact_without_s3_keys(stack: Any) -> None:
    env = stack.client_env()
    assert not [k for k in env if k.startswith("AWS_")]
    text = "hello through the tracking server"
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, text], env=env, capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["artifact_uri"].startswith("mlflow-artifacts:/")
    assert out["text"] == text
    # The server stored it in the S3 bucket: read it there directly, with the server's keys.
    client = stack.s3_client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="mlflow").get("Contents", [])]
    wanted = [k for k in keys if out["run_id"] in k and k.endswith("notes/hello.txt")]
    assert len(wanted) == 1, keys
    assert client.get_object(Bucket="mlflow", Key=wanted[0])["Body"].read().decode() == text
    # And the run is in the server's store, read over its REST API.
    run = json.loads(_get(f"{stack.tracking_uri}/api/2.0/mlflow/runs/get?run_id={out['run_id']}")[1])
    assert run["run"]["data"]["metrics"][0]["value"] == 0.25


def test_four_concurrent_writers_lose_nothing(stack: Any) -> None:
    per_writer = 5
    _post_json(f"{stack.tracking_uri}/api/2.0/mlflow/experiments/create", {"name": "stack-concurrent"})
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(w), str(per_writer)],
            env=stack.client_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        for w in range(4)
    ]
    outs = [w.communicate(timeout=180) for w in writers]
    assert [w.returncode for w in writers] == [0] * 4, [e[-2000:] for _, e in outs]
    assert [json.loads(o.strip().splitlines()[-1])["errors"] for o, _ in outs] == [0] * 4
    found = _post_json(
        f"{stack.tracking_uri}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [_experiment_id(stack, "stack-concurrent")], "max_results": 100},
    )
    values = sorted(r["data"]["metrics"][0]["value"] for r in found["runs"])
    assert values == sorted(float(w * 100 + i) for w in range(4) for i in range(per_writer))


def _experiment_id(stack: Any, name: str) -> str:
    status, body = _get(f"{stack.tracking_uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}")
    assert status == 200, body
    return json.loads(body)["experiment"]["experiment_id"]


def test_second_up_starts_no_duplicates(stack: Any, stack_kit: Any) -> None:
    before = stack_kit.read_pids(stack.state)
    again = stack_kit.command("up", stack.project, stack.state)
    assert again.returncode == 0, again.stderr
    assert stack_kit.read_pids(stack.state) == before == stack.pids
    assert again.stdout.count("already running") == 3
    # No second copy of any part: count the processes that name this state folder or its ports.
    ours = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _names(p, stack)]
    assert len({pid.name for pid in ours if "weed" in _cmd(pid)}) == 1
    assert len([pid for pid in ours if "mlflow server" in _cmd(pid)]) == 1


def _cmd(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _names(proc: Path, stack: Any) -> bool:
    cmd = _cmd(proc)
    return str(stack.state) in cmd or stack.tracking_uri.rsplit(":", 1)[1] in cmd


def test_credentials_stay_out_of_output_git_and_command_lines(stack: Any, stack_kit: Any) -> None:
    secrets = list(stack.credentials.values())
    assert len(secrets) == 3 and all(len(s) >= 16 for s in secrets)
    status = stack_kit.command("status", stack.project, stack.state).stdout
    for secret in secrets:
        assert secret not in stack.up_stdout and secret not in status
    for root in (PROJECT, stack.project):
        for name in git_tracked_files(root, untracked=True) if root == PROJECT else _tracked(root):
            path = root / name
            if path.is_file():
                data = path.read_bytes()
                assert not any(s.encode() in data for s in secrets), f"a credential is in {root / name}"
    # ... and off every process's command line (other users of the machine can read /proc).
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            assert not any(s in _cmd(proc) for s in secrets), (
                f"a credential is on pid {proc.name}'s command line"
            )
    assert oct((stack.state / "credentials").stat().st_mode & 0o777) == "0o600"
    assert oct((stack.state / "env").stat().st_mode & 0o777) == "0o600"
    # DVC's keys live in the git-ignored config.local, not in the shared .dvc/config.
    assert stack.credentials["s3_secret_key"] in (stack.project / ".dvc" / "config.local").read_text()
    assert stack.credentials["s3_secret_key"] not in (stack.project / ".dvc" / "config").read_text()


def _tracked(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    return [n for n in out.split("\0") if n]


def test_taken_port_is_one_readable_line(stack: Any, stack_kit: Any) -> None:
    state = stack_kit.make_state_dir()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = stack_kit.command("up", stack.project, state, STACK_MLFLOW_PORT=str(port))
    assert result.returncode == 1
    assert TRACEBACK not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR stack up: "), result.stderr
    assert str(port) in lines[0] and "STACK_MLFLOW_PORT" in lines[0]
    assert stack_kit.read_pids(state) == {}, "nothing may start when a port is taken"
    shutil.rmtree(state.parent, ignore_errors=True)


def test_down_leaves_no_orphans(stack: Any, stack_kit: Any) -> None:
    """Its own stack (the session one must stay up): up, note every process and port, down."""
    other = stack_kit.bring_up(stack.project, stack_kit.make_state_dir())
    try:
        groups = {pid: stack_kit.group_alive(pid) for pid in other.pids.values()}
        assert all(stack_kit.pid_alive(pid) for pid in other.pids.values())
        assert all(stack_kit.port_listening(p) for p in other.ports)
    finally:
        stack_kit.take_down(other)  # asserts no process of the PID files or their groups, no port open
        stack.write_dvc_local(stack.project)  # its `up` aimed the copy's DVC remote at `other`
        shutil.rmtree(other.state.parent, ignore_errors=True)
    assert not [p for members in groups.values() for p in members if stack_kit.pid_alive(p)]
    again = stack_kit.command("down", other.project, other.state)
    assert again.returncode == 0, "down is idempotent"
