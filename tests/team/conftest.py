"""The team stack, brought up once for the session by the project's own command, always taken down.

`stack`: `python -m pipelines.team.stack up` in a copy of the project (so `.dvc/config.local` of
the copy, not of the working project, gets the S3 remote's keys), with STACK_DIR in a fresh /tmp
folder (PostgreSQL runs as the `postgres` user, who cannot enter pytest's 0700 tmp folders).
Teardown runs `down` even when a test failed, then checks that no process from the PID files is
alive and that every port of the stack is closed.

To run a command against it: `subprocess.run(..., env=stack.client_env())` (the tracking URI, no
AWS variables); `stack.client_env(s3=True)` adds the S3 endpoint and keys for s3:// batch IO;
`stack.write_dvc_local(root)` points another project copy's `s3` DVC remote at the stack.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.support import copy_project, subprocess_env

PARTS = ("postgres", "seaweed", "mlflow")
UP_TIMEOUT = 240  # seconds; ~15-25 s on an idle machine


@dataclass
class Stack:
    state: Path
    project: Path
    env: dict[str, str]  # the variables of the stack's env file
    credentials: dict[str, str]
    up_stdout: str
    pids: dict[str, int] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)

    @property
    def tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def s3_endpoint(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]

    def client_env(self, *, s3: bool = False) -> dict[str, str]:
        """The test subprocess environment, aimed at the stack. Without `s3`, no AWS variable at
        all: an MLflow client must not need S3 keys (its artifacts go through the server)."""
        env = {k: v for k, v in subprocess_env().items() if not k.startswith("AWS_")}
        env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        if s3:
            env.update({k: v for k, v in self.env.items() if k.startswith("AWS_")})
        return env

    def write_dvc_local(self, root: Path) -> None:
        """The `s3` remote's endpoint and keys into `root/.dvc/config.local`, as `up` does."""
        for option, value in (
            ("endpointurl", self.s3_endpoint),
            ("access_key_id", self.credentials["s3_access_key"]),
            ("secret_access_key", self.credentials["s3_secret_key"]),
            ("region", self.env["AWS_DEFAULT_REGION"]),
        ):
            run_stack_tool(["dvc", "remote", "modify", "--local", "s3", option, value], root)

    def s3_client(self):
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=self.credentials["s3_access_key"],
            aws_secret_access_key=self.credentials["s3_secret_key"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )


def run_stack_tool(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    result = subprocess.run(
        args, cwd=cwd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args[:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def stack_command(command: str, project: Path, state: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m pipelines.team.stack <command>` in `project`, with no STACK_* setting of the
    caller's shell leaking in: only STACK_DIR and `extra`."""
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("STACK_")}
    env.update({"STACK_DIR": str(state), **extra})
    return subprocess.run(
        [sys.executable, "-m", "pipelines.team.stack", command],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT,
    )


def make_state_dir() -> Path:
    """A fresh folder the postgres user can walk into (mode 0711 on a 1777 /tmp)."""
    path = Path(tempfile.mkdtemp(prefix="stack-", dir="/tmp"))
    path.chmod(0o711)
    return path / "state"


def read_pids(state: Path) -> dict[str, int]:
    return {p: int((state / f"{p}.pid").read_text()) for p in PARTS if (state / f"{p}.pid").is_file()}


def stack_ports(state: Path) -> list[int]:
    record = json.loads((state / "state.json").read_text())
    return [p for part in record.values() for p in [part["port"], *part.get("ports", {}).values()]]


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (read from /proc here, independently of pipelines.team.processes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def group_alive(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and pid_alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def port_listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def bring_up(project: Path, state: Path) -> Stack:
    result = stack_command("up", project, state)
    assert result.returncode == 0, f"stack up failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    env_path = Path(stack_command("env", project, state).stdout.strip())
    env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in env_path.read_text().splitlines()
        if "=" in line
    )
    return Stack(
        state=state,
        project=project,
        env=env,
        credentials=json.loads((state / "credentials").read_text()),
        up_stdout=result.stdout,
        pids=read_pids(state),
        ports=stack_ports(state),
    )


def take_down(stack: Stack) -> None:
    """`down`, then the proof: no process of the PID files or their groups, no open port."""
    result = stack_command("down", stack.project, stack.state)
    assert result.returncode == 0, f"stack down failed:\n{result.stdout}\n{result.stderr}"
    left = {part: pid for part, pid in stack.pids.items() if pid_alive(pid) or group_alive(pid)}
    assert not left, f"processes left after down: {left}"
    open_ports = [p for p in stack.ports if port_listening(p)]
    assert not open_ports, f"ports still open after down: {open_ports}"


class StackKit:
    """The conftest's helpers, handed to tests as the `stack_kit` fixture (test modules do not
    import conftest: under importlib imports that would load it twice)."""

    command = staticmethod(stack_command)
    bring_up = staticmethod(bring_up)
    take_down = staticmethod(take_down)
    make_state_dir = staticmethod(make_state_dir)
    read_pids = staticmethod(read_pids)
    pid_alive = staticmethod(pid_alive)
    group_alive = staticmethod(group_alive)
    port_listening = staticmethod(port_listening)
    run = staticmethod(run_stack_tool)


@pytest.fixture(scope="session")
def stack_kit() -> type[StackKit]:
    return StackKit


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    project = copy_project(tmp_path_factory.mktemp("stack") / "project")
    state = make_state_dir()
    up: Stack | None = None
    try:
        up = bring_up(project, state)
        yield up
    finally:
        if up is None:  # a failed `up` stops what it started; make sure, by the PID files
            stack_command("down", project, state)
        else:
            take_down(up)
        shutil.rmtree(state.parent, ignore_errors=True)
