"""Plain processes the team scripts start and stop: detached, logged, known by a PID file.

Each process runs in its own session (its PID is its process-group id), writes to `<name>.log`
in the state folder, and is named by `<name>.pid` there. Nothing is ever stopped on a PID alone:
the PID must be alive and its /proc cmdline must hold a marker of ours (a PID is reused once its
process is gone, and the machine is shared).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
POLL_SECONDS = 0.1  # how often a wait looks again: start-ups here take 0.1 s (postgres) to ~6 s (mlflow)


def free_port(host: str = LOOPBACK, taken: Sequence[int] = ()) -> int:
    """A port nobody listens on now, other than those in `taken` (ports already handed out but
    not bound yet: asking the kernel twice in a row may give the same one back)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct free ports."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(free_port(host, taken=ports))
    return ports


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.pid"


def log_file(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.log"


def read_pid(path: Path) -> int | None:
    """The PID a PID file holds; None when the file is missing or does not hold a number."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def start_detached(
    args: Sequence[str],
    state_dir: Path,
    name: str,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start `args` in a new session, output appended to `<name>.log`, PID written to `<name>.pid`.

    `user` runs it as that user (Popen's setuid in the child: the PID is the program itself, where
    `runuser` would put a watching parent in between). The log is opened by us, before the switch.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(log_file(state_dir, name), "ab") as log:
        process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            user=user,
            start_new_session=True,
        )
    pid_file(state_dir, name).write_text(f"{process.pid}\n")
    return process.pid


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces; "" when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _state(pid: int) -> str:
    """The one-letter state of /proc/<pid>/stat ("" when gone); after the name, which may hold spaces."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie, waiting to be reaped, has exited)."""
    return _state(pid) not in ("", "Z", "X")


def alive_and_ours(pid: int | None, marker: str) -> bool:
    """The PID is alive and its command line holds `marker` (e.g. our state folder, or a port)."""
    return pid is not None and pid > 0 and alive(pid) and marker in cmdline(pid)


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid` (a detached process's children stay in its group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def stop_by_pid(
    pid: int | None,
    marker: str,
    *,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 20.0,
    group: bool = True,
) -> bool:
    """Stop a process we started: `sig` (to its whole process group when `group`), wait up to
    `timeout`, then SIGKILL the group. Returns False, and does nothing, when the PID is not alive
    and ours; True once the process and its group are gone."""
    if not alive_and_ours(pid, marker):
        return False
    assert pid is not None
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return True
    if not _wait_until(lambda: not alive(pid) and not group_members(pid), timeout):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _wait_until(lambda: not alive(pid) and not group_members(pid), 5.0)
    return True


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


def wait_for_tcp(port: int, timeout: float, *, host: str = LOOPBACK, pid: int | None = None) -> bool:
    """True once host:port accepts connections; False after `timeout`, or as soon as `pid` (the
    process expected to listen) has exited, rather than waiting out the timeout for a dead process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return True
        if pid is not None and not alive(pid):
            return False
        time.sleep(POLL_SECONDS)
    return False


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def wait_for_http(url: str, timeout: float, *, status: int = 200, pid: int | None = None) -> bool:
    """True once a GET of `url` answers `status`; False after `timeout` or once `pid` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_status(url) == status:
            return True
        if pid is not None and not alive(pid):
            return False
        time.sleep(POLL_SECONDS)
    return False


def log_tail(state_dir: Path, name: str, lines: int = 5) -> str:
    """The last lines of a process's log, for an error message that says why it did not start."""
    try:
        text = log_file(state_dir, name).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
