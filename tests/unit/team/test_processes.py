"""pipelines/team/processes.py: ports, PID files, and stopping only what is ours."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from pipelines.team import processes as procs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)", "team-test-marker"]


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = procs.free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_port_open_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert procs.port_open(port)
    assert not procs.port_open(port)


def test_read_pid_tolerates_missing_and_garbage(tmp_path: Path) -> None:
    assert procs.read_pid(tmp_path / "none.pid") is None
    (tmp_path / "bad.pid").write_text("not a pid")
    assert procs.read_pid(tmp_path / "bad.pid") is None


def test_alive_and_ours_needs_the_marker() -> None:
    assert procs.alive_and_ours(os.getpid(), "python")
    assert not procs.alive_and_ours(os.getpid(), "no-such-marker-in-my-cmdline")
    assert not procs.alive_and_ours(None, "python")
    assert not procs.alive_and_ours(0, "")


def test_stop_refuses_a_process_that_is_not_ours() -> None:
    # PID 1 is alive and not ours: nothing is sent to it.
    assert not procs.stop_by_pid(1, "team-test-marker")


def test_start_detached_then_stop_by_pid(tmp_path: Path) -> None:
    pid = procs.start_detached(SLEEPER, tmp_path, "sleeper")
    try:
        assert procs.read_pid(procs.pid_file(tmp_path, "sleeper")) == pid
        assert os.getpgid(pid) == pid  # its own session, so its group can be stopped as one
        assert procs.alive_and_ours(pid, "team-test-marker")
        assert procs.stop_by_pid(pid, "team-test-marker", timeout=10)
        os.waitpid(pid, os.WNOHANG)  # our child: reap it
        assert not procs.alive(pid)
    finally:
        if procs.alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
        "team-test-marker",
    ]
    pid = procs.start_detached(stubborn, tmp_path, "stubborn")
    assert procs.wait_for_tcp(1, 0.3, pid=pid) is False  # nothing listens on port 1
    assert procs.stop_by_pid(pid, "team-test-marker", timeout=0.5)
    os.waitpid(pid, os.WNOHANG)
    assert not procs.alive(pid)


def test_wait_for_http_gives_up_when_the_process_exits(tmp_path: Path) -> None:
    pid = procs.start_detached([sys.executable, "-c", "pass"], tmp_path, "quick")
    port = procs.free_port()
    assert procs.wait_for_http(f"http://127.0.0.1:{port}/", 30, pid=pid) is False
    assert (tmp_path / "quick.log").exists()
