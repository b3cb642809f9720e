"""`make batch-predict ENGINE=dask`: a real `dask scheduler` and `dask worker`, and S3 on the stack.

One champion is trained and packaged per module (as tests/integration/test_batch.py does). The
local engine's files are the oracle for the Dask engine's, row for row; the processes are
started here on free loopback ports and proven stopped (no process left, port closed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.champion import (
    default_store_env,
    free_port,
    make_frame,
    new_project,
    package_project,
    train_candidate,
)
from helpers.support import PROJECT as REPO

from pipelines.release import promotion

pytestmark = pytest.mark.integration

DASK = str(Path(sys.executable).parent / "dask")
TIMEOUT = 60  # batch.timeout_seconds: a cold worker imports scikit-learn and loads the model
SHORT_TIMEOUT = 8  # for the no-worker scheduler, which must fail fast


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-dask")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = new_project(root)
    train_candidate(params, hide=[])
    assert promotion.run_promotion(root, params)["promoted"]
    package_project(root, params, REPO)
    set_timeout(root, TIMEOUT)
    return root


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(args: list[str], log: Path, port: int | None = None, ready: str | None = None) -> subprocess.Popen:
    """A process in its own session, its output in `log`; waits for `port` or a line in the log."""
    handle = log.open("w")
    proc = subprocess.Popen(
        args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{args[1]} exited early:\n{log.read_text()[-2000:]}")
        if (port and port_open(port)) or (ready and ready in log.read_text()):
            return proc
        time.sleep(0.2)
    stop(proc)
    raise AssertionError(f"{args[1]} did not start:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, then SIGKILL after a grace period; the group must be gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    deadline = time.monotonic() + 10
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(proc.pid) == [], "a process of the group outlived its stop"


def group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return found


def scheduler(folder: Path, name: str) -> tuple[subprocess.Popen, str, int]:
    port = free_port()
    args = [
        DASK,
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dashboard-address",
        "127.0.0.1:0",
    ]
    return start(args, folder / f"{name}.log", port=port), f"tcp://127.0.0.1:{port}", port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real scheduler and one single-threaded worker process, each started as a program."""
    folder = tmp_path_factory.mktemp("dask")
    sched, address, port = scheduler(folder, "scheduler")
    worker = None
    try:
        worker = start(
            [
                DASK,
                "worker",
                address,
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--death-timeout",
                "30",
            ],
            folder / "worker.log",
            ready="Registered to",
        )
        yield address
    finally:
        if worker is not None:
            stop(worker)
        stop(sched)
        assert not port_open(port)


def with_refusals(n: int) -> pd.DataFrame:
    frame = make_frame(n, 5)
    frame.loc[[7, (2 * n) // 5, n - 1], "x1"] = np.nan  # not nullable in the inferred contract
    frame.loc[[30, (2 * n) // 3], "color"] = "purple"  # not an allowed value
    return frame


def batch(root: Path, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "batch", *map(str, args)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env or default_store_env(root),
        timeout=timeout,
    )


def test_dask_on_a_real_scheduler_writes_the_local_engines_files(packaged, cluster, tmp_path):
    source = tmp_path / "in.csv"
    with_refusals(3000).to_csv(source, index=False)
    local = batch(packaged, source, tmp_path / "local.parquet", "--chunk-rows", "500")
    assert local.returncode == 0, local.stderr[-2000:]
    remote = batch(
        packaged,
        source,
        tmp_path / "dask.parquet",
        "--chunk-rows",
        "500",
        "--engine",
        "dask",
        "--scheduler",
        cluster,
    )
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert remote.stdout.replace("dask.", "local.") == local.stdout  # the same counts
    for name in ("{}.parquet", "{}.rejects.parquet"):
        expected = pd.read_parquet(tmp_path / name.format("local"))
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name.format("dask")), expected)
    rejects = pd.read_parquet(tmp_path / "dask.rejects.parquet")  # the CSV's rows as read: text
    reasons = dict(zip(rejects["id"].astype(int), rejects["reason"], strict=True))
    assert {i: reasons.get(i) for i in (7, 30, 1200, 2000, 2999)} == {
        7: "x1: missing, and the contract says not nullable",
        30: "color: not an allowed value",
        1200: "x1: missing, and the contract says not nullable",
        2000: "color: not an allowed value",
        2999: "x1: missing, and the contract says not nullable",
    }
    assert len(pd.read_parquet(tmp_path / "dask.parquet")) + len(reasons) == 3000


def set_timeout(root: Path, seconds: float) -> None:
    settings = yaml.safe_load((root / "params.yaml").read_text())
    settings["batch"]["timeout_seconds"] = seconds
    (root / "params.yaml").write_text(yaml.safe_dump(settings))


def test_a_scheduler_without_workers_fails_within_the_timeout_and_writes_nothing(packaged, tmp_path):
    sched, address, port = scheduler(tmp_path, "lonely")
    set_timeout(packaged, SHORT_TIMEOUT)
    try:
        source, target = tmp_path / "in.csv", tmp_path / "out.csv"
        make_frame(100, 5).to_csv(source, index=False)
        started = time.monotonic()
        done = batch(packaged, source, target, "--engine", "dask", "--scheduler", address, timeout=120)
        took = time.monotonic() - started
    finally:
        set_timeout(packaged, TIMEOUT)
        stop(sched)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"ERROR batch: dask: no worker joined the scheduler at '{address}' within {SHORT_TIMEOUT} s"
    ]
    assert took < SHORT_TIMEOUT + 30  # the timeout, plus start-up and the champion's checks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "lonely.log"]
    assert not port_open(port)


def test_s3_in_and_out_through_the_stack(packaged, stack, tmp_path):
    bucket = "batch-dask-test"
    s3 = stack.s3_client()
    s3.create_bucket(Bucket=bucket)
    source = tmp_path / "in.csv"
    with_refusals(2000).to_csv(source, index=False)
    s3.put_object(Bucket=bucket, Key="in/in.csv", Body=source.read_bytes())
    env = {**default_store_env(packaged), **{k: v for k, v in stack.env.items() if k.startswith("AWS_")}}
    local = batch(packaged, source, tmp_path / "local.csv", "--chunk-rows", "300")
    assert local.returncode == 0, local.stderr[-2000:]
    done = batch(
        packaged,
        f"s3://{bucket}/in/in.csv",
        f"s3://{bucket}/out/scored.csv",
        "--chunk-rows",
        "300",
        "--engine",
        "dask",
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["in/in.csv", "out/scored.csv", "out/scored.rejects.csv"]  # no temporary key left
    for name, key in (("local.csv", "out/scored.csv"), ("local.rejects.csv", "out/scored.rejects.csv")):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == (tmp_path / name).read_bytes()  # byte for byte the local engine's file
    # A failing run (a missing input column) leaves the bucket as it was.
    (tmp_path / "bad.csv").write_text("id,x1\n1,0.5\n")
    s3.put_object(Bucket=bucket, Key="in/bad.csv", Body=(tmp_path / "bad.csv").read_bytes())
    failed = batch(
        packaged, f"s3://{bucket}/in/bad.csv", f"s3://{bucket}/out/bad.csv", "--engine", "dask", env=env
    )
    assert failed.returncode == 1 and failed.stderr.startswith("ERROR batch: input lacks model inputs")
    assert len(s3.list_objects_v2(Bucket=bucket)["Contents"]) == 4
