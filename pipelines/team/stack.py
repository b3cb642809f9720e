"""`python -m pipelines.team.stack up|down|status|env|migrate`: the team stack as plain processes.

PostgreSQL (the tracking store), SeaweedFS `weed mini` (the S3 store: MLflow artifacts and the DVC
remote) and `mlflow server` (proxying artifacts, so clients hold no S3 keys for them), each on a
free 127.0.0.1 port, with its PID file and log in the state folder (`.stack/`, or $STACK_DIR).
Migrations are their own step (`mlflow db upgrade`), never a side effect of the server starting.

Credentials come from $STACK_PG_PASSWORD, $STACK_S3_ACCESS_KEY, $STACK_S3_SECRET_KEY, or are made
once into `.stack/credentials` (0600). They never reach stdout, nor a command line: PostgreSQL's
password travels in $PGPASSWORD and on psql's stdin, the S3 keys in files and environments.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core import config
from pipelines.core.errors import PipelineError
from pipelines.team import processes as procs

PARTS = ("postgres", "seaweed", "mlflow")  # start order; `down` stops them in reverse
PORT_ENV = {"postgres": "STACK_PG_PORT", "seaweed": "STACK_S3_PORT", "mlflow": "STACK_MLFLOW_PORT"}
# weed mini opens about ten listeners, and each defaults to a fixed, possibly taken, port.
SEAWEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
BUCKETS = ("mlflow", "dvc")
DVC_REMOTE = "s3"
DB_NAME = DB_USER = "mlflow"
REGION = "us-east-1"  # SigV4 signs a region; SeaweedFS accepts any, botocore wants one
START_TIMEOUT = {"postgres": 30.0, "seaweed": 60.0, "mlflow": 120.0}  # seconds; measured 0.1-6 s idle
MIGRATE_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0
# How long `down` lets an exiting process's listening ports close before it calls them left open.
PORT_CLOSE_GRACE = 5.0


@dataclass(frozen=True)
class Credentials:
    pg_password: str
    s3_access_key: str
    s3_secret_key: str


CREDENTIAL_ENV = {
    "pg_password": "STACK_PG_PASSWORD",
    "s3_access_key": "STACK_S3_ACCESS_KEY",
    "s3_secret_key": "STACK_S3_SECRET_KEY",
}


# --- pure pieces ------------------------------------------------------------------------------


def state_dir(root: Path, environ: Mapping[str, str]) -> Path:
    return Path(environ.get("STACK_DIR") or root / ".stack").resolve()


def credentials_from(environ: Mapping[str, str], stored: Mapping[str, str]) -> Credentials:
    """The environment wins over the stored file; a key in neither is made (and must be stored)."""
    return Credentials(
        **{
            field: environ.get(var) or stored.get(field) or secrets.token_urlsafe(24)
            for field, var in CREDENTIAL_ENV.items()
        }
    )


def backend_uri(pg_port: int) -> str:
    """No password in the URI: it would show in `ps`; libpq reads it from $PGPASSWORD."""
    return f"postgresql+psycopg://{DB_USER}@{procs.LOOPBACK}:{pg_port}/{DB_NAME}"


def postgres_args(bindir: Path, data: Path, port: int, sockets: Path) -> list[str]:
    return [
        str(bindir / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(sockets),
        "-c",
        f"listen_addresses={procs.LOOPBACK}",
    ]


def bootstrap_sql(password: str) -> str:
    """The `mlflow` role (its password set on every `up`, so a changed one takes) and database."""
    quoted = password.replace("'", "''")
    return (
        "SET log_statement = 'none';\n"
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_USER}') THEN "
        f"CREATE ROLE {DB_USER} LOGIN; END IF; END $$;\n"
        f"ALTER ROLE {DB_USER} WITH LOGIN PASSWORD '{quoted}';\n"
        f"SELECT 'CREATE DATABASE {DB_NAME} OWNER {DB_USER}' "
        f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DB_NAME}')\\gexec\n"
    )


def s3_config(creds: Credentials) -> dict[str, Any]:
    """SeaweedFS's identities file: one identity, SigV4 with the stack's keys."""
    return {
        "identities": [
            {
                "name": "stack",
                "credentials": [{"accessKey": creds.s3_access_key, "secretKey": creds.s3_secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def seaweed_args(weed: Path, state: Path, s3_port: int, ports: Mapping[str, int]) -> list[str]:
    data = state / "s3"
    return [
        str(weed),
        "mini",
        f"-dir={data}",
        f"-ip={procs.LOOPBACK}",
        f"-ip.bind={procs.LOOPBACK}",
        "-master.telemetry=false",
        f"-s3.port={s3_port}",
        "-s3.port.iceberg=0",  # 0 turns these catalogue listeners off
        "-s3.port.lance=0",
        "-admin.ui=false",
        "-webdav=false",  # on by default, on a fixed port (7333)
        f"-s3.config={state / 's3.json'}",
        f"-filer.localSocket={state / 'filer.sock'}",  # default: /tmp/seaweedfs-filer-<port>.sock
        f"-s3.localSocket={state / 's3.sock'}",
        *(f"-{name}={ports[name]}" for name in SEAWEED_PORTS),
    ]


def mlflow_args(mlflow: Path, pg_port: int, port: int) -> list[str]:
    return [
        str(mlflow),
        "server",
        "--backend-store-uri",
        backend_uri(pg_port),
        "--artifacts-destination",
        f"s3://{BUCKETS[0]}",
        "--serve-artifacts",
        "--host",
        procs.LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def mlflow_marker(port: int) -> str:
    """What /proc/<pid>/cmdline of our server holds (see mlflow_args)."""
    return f"--host {procs.LOOPBACK} --port {port}"


def s3_url(port: int) -> str:
    return f"http://{procs.LOOPBACK}:{port}"


def server_env(base: Mapping[str, str], creds: Credentials, s3_port: int) -> dict[str, str]:
    """Only the server holds the S3 keys of the artifact store; clients go through it."""
    env = {k: v for k, v in base.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        {
            "PGPASSWORD": creds.pg_password,
            "MLFLOW_S3_ENDPOINT_URL": s3_url(s3_port),
            "AWS_ACCESS_KEY_ID": creds.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": creds.s3_secret_key,
            "AWS_DEFAULT_REGION": REGION,
            # Otherwise the server starts about 7 job-runner processes we do not use.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "true",
        }
    )
    return env


def env_file_text(mlflow_port: int, s3_port: int, creds: Credentials) -> str:
    """`source .stack/env`: the tracking server, and S3 keys for batch s3:// IO (DVC reads its own
    from .dvc/config.local). MLflow artifacts need none: they go through the server."""
    values = {
        "MLFLOW_TRACKING_URI": f"http://{procs.LOOPBACK}:{mlflow_port}",
        "AWS_ENDPOINT_URL": s3_url(s3_port),
        "AWS_ACCESS_KEY_ID": creds.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": creds.s3_secret_key,
        "AWS_DEFAULT_REGION": REGION,
    }
    return "".join(f"export {k}={v}\n" for k, v in values.items())


def parse_env_file(text: str) -> dict[str, str]:
    """The variables of an env file as env_file_text writes it."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def pinned_ports(environ: Mapping[str, str]) -> dict[str, int]:
    """Ports a user pinned with $STACK_*_PORT; the others are picked free at start."""
    pinned = {}
    for part, var in PORT_ENV.items():
        if environ.get(var):
            try:
                pinned[part] = int(environ[var])
            except ValueError:
                raise PipelineError(f"{var}={environ[var]!r} is not a port number") from None
    return pinned


# --- state files ------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, created so (no window with wider rights)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def load_credentials(state: Path, environ: Mapping[str, str]) -> Credentials:
    path = state / "credentials"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    creds = credentials_from(environ, stored)
    missing = {
        f: getattr(creds, f) for f in CREDENTIAL_ENV if f not in stored and not environ.get(CREDENTIAL_ENV[f])
    }
    if missing:
        _write_private(path, json.dumps({**stored, **missing}, indent=1))
    return creds


def read_state(state: Path) -> dict[str, Any]:
    path = state / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def marker(part: str, state: Path, record: Mapping[str, Any]) -> str:
    if part == "postgres":
        return str(state / "pg")
    if part == "seaweed":
        return f"-dir={state / 's3'}"
    return mlflow_marker(int(record.get("mlflow", {}).get("port", 0)))


def running(part: str, state: Path, record: Mapping[str, Any]) -> int | None:
    """The part's PID when the PID file names a live process of ours, else None."""
    pid = procs.read_pid(procs.pid_file(state, part))
    return pid if procs.alive_and_ours(pid, marker(part, state, record)) else None


# --- the parts --------------------------------------------------------------------------------


def _tool(name: str) -> Path:
    """A program of the venv this runs in (weed, mlflow, dvc), or else on PATH."""
    local = Path(sys.executable).parent / name
    found = local if local.exists() else shutil.which(name)
    if not found:
        raise PipelineError(f"`{name}` is not installed; run `make env`")
    return Path(found)


def pg_bindir() -> Path:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise PipelineError("PostgreSQL is not installed (no pg_config on PATH)") from None
    return Path(out.stdout.strip())


def pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run its programs as `postgres`."""
    return "postgres" if os.geteuid() == 0 else None


def _as_pg_user(paths: list[Path], user: str | None) -> None:
    if user is None:
        return
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        shutil.chown(path, user, user)
        path.chmod(0o700)
    for parent in paths[0].parents:  # the postgres user must be able to walk down to its folder
        if parent.stat().st_uid != 0 or parent.stat().st_mode & 0o001:
            continue
        raise PipelineError(
            f"the postgres user cannot enter {parent} (chmod o+x it, or set STACK_DIR elsewhere)"
        )


def init_postgres(state: Path, bindir: Path, creds: Credentials) -> bool:
    """initdb once; True when it ran. Local (socket) logins are the OS user's own (peer), TCP ones
    need a password (scram-sha-256)."""
    data, user = state / "pg", pg_user()
    _as_pg_user([data, state / "pg-socket"], user)
    if (data / "PG_VERSION").is_file():
        return False
    args = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=peer"]
    args += ["--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]
    result = subprocess.run(args, capture_output=True, text=True, user=user, cwd="/")
    if result.returncode != 0:
        raise PipelineError(f"initdb failed: {(result.stderr or result.stdout).strip().splitlines()[-1]}")
    return True


def wait_postgres(bindir: Path, port: int, pid: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT["postgres"]
    args = [str(bindir / "pg_isready"), "-q", "-h", procs.LOOPBACK, "-p", str(port)]
    while time.monotonic() < deadline and procs.alive(pid):
        if subprocess.run(args, capture_output=True).returncode == 0:
            return True
        time.sleep(procs.POLL_SECONDS)
    return False


def bootstrap_postgres(state: Path, bindir: Path, port: int, creds: Credentials) -> None:
    args = [str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(state / "pg-socket")]
    args += ["-p", str(port), "-U", "postgres", "-d", "postgres"]
    result = subprocess.run(
        args, input=bootstrap_sql(creds.pg_password), capture_output=True, text=True, user=pg_user(), cwd="/"
    )
    if result.returncode != 0:
        raise PipelineError(f"could not create the mlflow role and database: {result.stderr.strip()[:200]}")


def s3_client(port: int, creds: Credentials) -> Any:
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=s3_url(port),
        aws_access_key_id=creds.s3_access_key,
        aws_secret_access_key=creds.s3_secret_key,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def ensure_buckets(port: int, creds: Credentials, pid: int) -> None:
    """Create the buckets, signed with the stack's keys: this is also the check that S3 is up
    and takes them. weed opens its S3 port before its filer is ready, so retry until the timeout."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(port, creds)
    deadline, last = time.monotonic() + START_TIMEOUT["seaweed"], ""
    while time.monotonic() < deadline and procs.alive(pid):
        try:
            have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in BUCKETS:
                if bucket not in have:
                    client.create_bucket(Bucket=bucket)
            return
        except (BotoCoreError, ClientError) as exc:
            last = str(exc).splitlines()[0]
            time.sleep(0.25)
    raise PipelineError(f"the S3 store did not accept the stack's keys: {last or 'it exited'}")


def migrate(root: Path, state: Path, record: Mapping[str, Any], creds: Credentials) -> float:
    """`mlflow db upgrade`: the schema, as an explicit step; seconds it took."""
    started = time.monotonic()
    env = {**os.environ, "PGPASSWORD": creds.pg_password}
    args = [str(_tool("mlflow")), "db", "upgrade", backend_uri(record["postgres"]["port"])]
    try:
        result = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=MIGRATE_TIMEOUT, cwd=root
        )
    except subprocess.TimeoutExpired:
        raise PipelineError(f"`mlflow db upgrade` took over {MIGRATE_TIMEOUT:.0f} s") from None
    (state / "migrate.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PipelineError(f"`mlflow db upgrade` failed ({last[0][:200]}); see {state / 'migrate.log'}")
    return time.monotonic() - started


def configure_dvc(root: Path, s3_port: int, creds: Credentials) -> bool:
    """The S3 remote's endpoint and keys into .dvc/config.local (git-ignored by DVC); False when
    the project has no such remote in .dvc/config."""
    shared = root / ".dvc" / "config"
    if not shared.is_file() or f'remote "{DVC_REMOTE}"' not in shared.read_text():
        return False
    for option, value in (
        ("endpointurl", s3_url(s3_port)),
        ("access_key_id", creds.s3_access_key),
        ("secret_access_key", creds.s3_secret_key),
        ("region", REGION),
    ):
        result = subprocess.run(
            [str(_tool("dvc")), "remote", "modify", "--local", DVC_REMOTE, option, value],
            cwd=root,
            capture_output=True,
            text=True,
            env={**os.environ, "DVC_NO_ANALYTICS": "1"},
        )
        if result.returncode != 0:
            # dvc's own message is not echoed: it may carry the value, a secret here.
            locked = "lock" in result.stderr.lower()
            why = (
                ": the repository is locked by another DVC process (a running experiment?)" if locked else ""
            )
            raise PipelineError(f"`dvc remote modify --local {DVC_REMOTE} {option}` failed{why}")
    return True


# --- commands ---------------------------------------------------------------------------------


def _check_ports(wanted: Mapping[str, int]) -> None:
    for part, port in wanted.items():
        if procs.port_open(port):
            raise PipelineError(f"port {port} for {part} is in use by another process (set {PORT_ENV[part]})")


def up(root: Path, environ: Mapping[str, str], say: Callable[[str], None]) -> dict[str, float]:
    """Start what is not running; returns seconds per step. On failure, stops what it started."""
    state = state_dir(root, environ)
    state.mkdir(parents=True, exist_ok=True)
    creds = load_credentials(state, environ)
    record = read_state(state)
    live = {part: running(part, state, record) for part in PARTS}
    down_parts = [p for p in PARTS if live[p] is None]
    if live["postgres"] is None and live["mlflow"] is not None:
        down_parts.append("mlflow")  # it would point at the old database port
    pinned = pinned_ports(environ)
    _check_ports({p: pinned[p] for p in down_parts if p in pinned})
    for part in down_parts:
        record[part] = {"port": pinned.get(part) or procs.free_port()}
    _write_private(state / "s3.json", json.dumps(s3_config(creds)))
    started: list[str] = []
    timings: dict[str, float] = {}
    try:
        _start_parts(root, state, record, creds, down_parts, started, timings, say)
        (state / "state.json").write_text(json.dumps(record, indent=1))
        _write_private(
            state / "env", env_file_text(record["mlflow"]["port"], record["seaweed"]["port"], creds)
        )
        # Inside the try: a DVC that refuses (its repository locked by a running experiment) must
        # not leave the servers just started running with nothing to say so.
        if configure_dvc(root, record["seaweed"]["port"], creds):
            say(f"dvc: remote '{DVC_REMOTE}' endpoint and keys written to .dvc/config.local")
    except BaseException:
        for part in reversed(started):
            _stop(part, state, record)
        raise
    (state / "timings.json").write_text(json.dumps(timings, indent=1))
    for part in PARTS:
        if part not in down_parts:
            say(f"{part}: already running (pid {live[part]}, port {record[part]['port']})")
    return timings


def _start_parts(
    root: Path,
    state: Path,
    record: dict[str, Any],
    creds: Credentials,
    parts: list[str],
    started: list[str],
    timings: dict[str, float],
    say: Callable[[str], None],
) -> None:
    bindir = pg_bindir() if "postgres" in parts else None
    if "mlflow" in parts:
        _stop("mlflow", state, record)  # a live server on a stale database port (see up)
        # MLflow's S3 artifact store imports boto3 only when a client uploads: without it the
        # server starts healthy and every artifact upload fails (the client retries for minutes).
        if importlib.util.find_spec("boto3") is None:
            raise PipelineError(
                "the MLflow server needs boto3 for its S3 artifact store; it is not installed"
            )
    if bindir is not None:
        t0 = time.monotonic()
        if init_postgres(state, bindir, creds):
            timings["postgres_init"] = time.monotonic() - t0
            say(f"postgres: initdb in {timings['postgres_init']:.1f} s")
    if "seaweed" in parts:  # started first: its ~1 s start-up overlaps PostgreSQL's
        record["seaweed"]["ports"] = dict(
            zip(SEAWEED_PORTS, procs.free_ports(len(SEAWEED_PORTS) + 1)[1:], strict=True)
        )
        t_s3 = time.monotonic()
        args = seaweed_args(_tool("weed"), state, record["seaweed"]["port"], record["seaweed"]["ports"])
        s3_pid = procs.start_detached(args, state, "seaweed", cwd=state)
        started.append("seaweed")
    if bindir is not None:
        t0 = time.monotonic()
        port = record["postgres"]["port"]
        args = postgres_args(bindir, state / "pg", port, state / "pg-socket")
        pid = procs.start_detached(args, state, "postgres", user=pg_user(), cwd=Path("/"))
        started.append("postgres")
        if not wait_postgres(bindir, port, pid):
            raise PipelineError(f"postgres did not start: {procs.log_tail(state, 'postgres', 2)}")
        bootstrap_postgres(state, bindir, port, creds)
        timings["postgres_start"] = time.monotonic() - t0
        say(f"postgres: ready on port {port} in {timings['postgres_start']:.1f} s")
    if "seaweed" in parts:
        ensure_buckets(record["seaweed"]["port"], creds, s3_pid)
        timings["seaweed"] = time.monotonic() - t_s3
        say(f"seaweed: S3 ready on port {record['seaweed']['port']} in {timings['seaweed']:.1f} s")
    timings["migrate"] = migrate(root, state, record, creds)
    say(f"migrate: `mlflow db upgrade` done in {timings['migrate']:.1f} s")
    if "mlflow" in parts:
        t0 = time.monotonic()
        port = record["mlflow"]["port"]
        args = mlflow_args(_tool("mlflow"), record["postgres"]["port"], port)
        env = server_env(os.environ, creds, record["seaweed"]["port"])
        pid = procs.start_detached(args, state, "mlflow", env=env, cwd=state)
        started.append("mlflow")
        if not procs.wait_for_http(
            f"http://{procs.LOOPBACK}:{port}/health", START_TIMEOUT["mlflow"], pid=pid
        ):
            raise PipelineError(f"mlflow server did not become healthy: {procs.log_tail(state, 'mlflow', 2)}")
        timings["mlflow"] = time.monotonic() - t0
        say(f"mlflow: healthy on port {port} in {timings['mlflow']:.1f} s")


def _stop(part: str, state: Path, record: Mapping[str, Any]) -> None:
    pid = procs.read_pid(procs.pid_file(state, part))
    # PostgreSQL: SIGINT to the postmaster alone is its "fast" shutdown; it stops its children.
    sig, group = (signal.SIGINT, False) if part == "postgres" else (signal.SIGTERM, True)
    procs.stop_by_pid(pid, marker(part, state, record), sig=sig, timeout=STOP_TIMEOUT, group=group)
    if pid is not None and not procs.alive_and_ours(pid, marker(part, state, record)):
        procs.pid_file(state, part).unlink(missing_ok=True)


def part_ports(part: str, record: Mapping[str, Any]) -> list[int]:
    found = record.get(part, {})
    return [p for p in [found.get("port"), *found.get("ports", {}).values()] if p]


def _still_open(ports: list[int], grace: float = PORT_CLOSE_GRACE) -> list[int]:
    """The ports still accepting after `grace` seconds. A process that is exiting already shows an
    empty cmdline (so it no longer counts as ours) while the kernel still tears its sockets down:
    SeaweedFS's dozen listeners stayed open for a moment after it, and `down` failed on one."""
    deadline = time.monotonic() + grace
    while (open_ := [p for p in ports if procs.port_open(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return open_


def down(root: Path, environ: Mapping[str, str]) -> list[str]:
    """Stop mlflow, seaweed, postgres by PID; idempotent. Raises if a process or port is left."""
    state = state_dir(root, environ)
    record = read_state(state)
    left = []
    for part in reversed(PARTS):
        pid = procs.read_pid(procs.pid_file(state, part))
        _stop(part, state, record)
        if pid is not None and (
            procs.alive_and_ours(pid, marker(part, state, record)) or procs.group_members(pid)
        ):
            left.append(f"{part} (pid {pid})")
        if running(part, state, record) is None:
            left += [f"{part} port {p}" for p in _still_open(part_ports(part, record))]
    if left:
        raise PipelineError(f"still running after down: {', '.join(left)}")
    return [part for part in PARTS]


def status_lines(root: Path, environ: Mapping[str, str]) -> list[str]:
    state = state_dir(root, environ)
    record = read_state(state)
    timings_file = state / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    keys = {"postgres": "postgres_start", "seaweed": "seaweed", "mlflow": "mlflow"}
    lines = []
    for part in PARTS:
        pid, port = running(part, state, record), record.get(part, {}).get("port")
        healthy = pid is not None and port is not None and procs.port_open(port)
        if part == "mlflow" and healthy:
            healthy = procs.http_status(f"http://{procs.LOOPBACK}:{port}/health") == 200
        took = f"{timings[keys[part]]:.1f} s" if keys[part] in timings else "-"
        lines.append(
            f"{part:<9} {'up' if healthy else 'down':<5} pid {pid or '-'} port {port or '-'} start-up {took}"
        )
    return lines


def main(argv: list[str]) -> int:
    command = argv[0] if len(argv) == 1 else ""
    if command not in ("up", "down", "status", "env", "migrate"):
        print("usage: python -m pipelines.team.stack up|down|status|env|migrate", file=sys.stderr)
        return 2
    try:
        root = config.project_root()
        if command == "up":
            timings = up(root, os.environ, lambda line: print(line, flush=True))
            total = sum(timings.values())
            print(f"UP in {total:.1f} s; `source {state_dir(root, os.environ) / 'env'}` to use it")
        elif command == "down":
            down(root, os.environ)
            print("DOWN: no stack process left, ports closed")
        elif command == "status":
            print("\n".join(status_lines(root, os.environ)))
        elif command == "env":
            print(state_dir(root, os.environ) / "env")
        else:
            state = state_dir(root, os.environ)
            record = read_state(state)
            if running("postgres", state, record) is None:
                raise PipelineError("postgres is not running; run `make stack-up`")
            took = migrate(root, state, record, load_credentials(state, os.environ))
            print(f"migrate: `mlflow db upgrade` done in {took:.1f} s")
    except PipelineError as exc:
        print(f"ERROR stack {command}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
