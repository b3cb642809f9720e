"""`python -m pipelines.team.fleet up --replicas N | switch | back | status | down`.

A fleet of `bentoml serve` replicas of the packaged bento behind HAProxy (Debian's, as a plain
process on 127.0.0.1), in two colours. `up` starts blue and makes it live; `switch` starts the idle
colour on the bento packaged now, waits until each replica is ready, then moves traffic to it
through HAProxy's runtime API and keeps the old colour running, so `back` is one command.
`down` stops HAProxy and every replica by PID. docs/team.md "Fleet" has the how and why.

State lives in `.fleet/` (FLEET_DIR overrides): state.json, haproxy.cfg, the admin socket, one
PID file and one log per process, and each replica's BentoML home (links to the packaged store,
since every `bentoml serve` empties its home's metrics folder: one home per server). Each replica
writes its prediction log to `<log root>/<replica>/` (log root: PREDICTION_LOG_DIR, else
monitoring/), which `make monitor` reads together (pipelines/monitoring/logs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipelines.core import config
from pipelines.core.errors import PipelineError
from pipelines.team import haproxy, processes

COLOURS = ("blue", "green")
DEFAULT_PORT = 8080  # HAProxy's port unless FLEET_PORT says otherwise (docs/team.md "Fleet")
DEFAULT_STATE_DIR = ".fleet"
DEFAULT_LOG_ROOT = "monitoring"  # the service's own default PREDICTION_LOG_DIR (service.py)
HAPROXY = "/usr/sbin/haproxy"
MAX_REPLICAS = 16  # a sanity bound: each replica runs serving.workers processes
READY_TIMEOUT_S = 180.0  # a replica took ~3 s alone and ~13 s on the loaded 2-core machine
UP_TIMEOUT_S = 15.0  # HAProxy's health check sees a ready replica within one interval (0.5 s)
STOP_TIMEOUT_S = 20.0  # a replica finishes its in-flight requests on SIGTERM (docs/serving.md)
SOCKET_TIMEOUT_S = 5.0
KEY_VARS = ("API_KEY", "API_KEY_FILE", "API_AUTH")
LOCAL_KEYS = ".secrets/api-keys"  # the Makefile's `serve` key file, reused when no key is set


# --- pure helpers ---


def other(colour: str) -> str:
    return COLOURS[1 - COLOURS.index(colour)]


def servers_of(state: dict[str, Any]) -> list[haproxy.Server]:
    """Every slot as HAProxy should hold it now: the live colour ready, the other drained when
    running (so `back` is instant) and in maintenance when not."""
    servers = []
    for colour in COLOURS:
        ports = (state["colours"].get(colour) or {}).get("ports") or []
        for index, name in enumerate(haproxy.slot_names(colour, state["replicas"])):
            if index < len(ports):
                mode = "ready" if colour == state["live"] else "drain"
                servers.append(haproxy.Server(name, ports[index], mode))
            else:
                servers.append(haproxy.Server(name, haproxy.PLACEHOLDER_PORT, "maint"))
    return servers


def replica_marker(port: int) -> str:
    """What a replica's command line ends with: its port is unique on the machine while it runs."""
    return f"--port {port}"


def key_settings(environ: dict[str, str], root: Path, state_dir: Path) -> dict[str, str]:
    """The replicas' key variables, fixed at `up` so that a later `switch` serves the same keys.
    API_KEY's value is written to a private file in the state folder, not into state.json."""
    if environ.get("API_KEY_FILE"):
        return {"API_KEY_FILE": str(Path(environ["API_KEY_FILE"]).resolve())}
    if environ.get("API_KEY"):
        path = state_dir / "api-keys"
        path.touch(mode=0o600)
        path.write_text(environ["API_KEY"].replace(",", "\n") + "\n")
        return {"API_KEY_FILE": str(path)}
    if environ.get("API_AUTH") == "off":
        return {"API_AUTH": "off"}
    local = root / LOCAL_KEYS
    if not local.is_file() or not local.read_text().strip():
        import secrets

        local.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        local.touch(mode=0o600)
        local.write_text(secrets.token_urlsafe(32) + "\n")
        print(f"API key: the line in {LOCAL_KEYS}; send it as 'Authorization: Bearer <key>'", file=sys.stderr)
    return {"API_KEY_FILE": str(local)}


# --- the edges: paths, state, bento ---


def state_dir(root: Path) -> Path:
    folder = Path(os.environ.get("FLEET_DIR") or DEFAULT_STATE_DIR)
    return folder if folder.is_absolute() else root / folder


def read_state(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "state.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PipelineError(
            f"{folder / 'state.json'} cannot be read ({exc}); run `make fleet-down`"
        ) from None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    temp = folder / "state.json.tmp"
    temp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(temp, folder / "state.json")
    (folder / "haproxy.cfg").write_text(haproxy.render(state["port"], state["socket"], servers_of(state)))


def packaged_bento(root: Path, params: dict[str, Any]) -> dict[str, str]:
    """The bento `make package` built last (paths.bento), with the store that holds it."""
    path = root / params["paths"]["bento"]
    try:
        record = json.loads(path.read_text())
        return {"bento": str(record["bento"]), "bentoml_home": str(record["bentoml_home"])}
    except FileNotFoundError:
        raise PipelineError(f"no packaged bento ({params['paths']['bento']}); run `make package`") from None
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(
            f"{params['paths']['bento']} cannot be read ({exc}); run `make package`"
        ) from None


def fleet_port() -> int:
    raw = os.environ.get("FLEET_PORT") or str(DEFAULT_PORT)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise PipelineError(f"FLEET_PORT must be a port number, not {raw!r}")
    return int(raw)


def log_root(root: Path) -> Path:
    folder = Path(os.environ.get("PREDICTION_LOG_DIR") or DEFAULT_LOG_ROOT)
    return folder if folder.is_absolute() else root / folder


# --- HAProxy's runtime API ---


def runtime(socket_path: str, command: str) -> str:
    """One command on HAProxy's admin socket; its answer (empty when the command succeeded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SOCKET_TIMEOUT_S)
        sock.connect(socket_path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def apply(socket_path: str, commands: list[str]) -> None:
    for command in commands:
        answer = runtime(socket_path, command).strip()
        # `set server ... addr` answers with what it changed; everything else answers nothing.
        if answer and not answer.startswith(("no need to change", "IP changed", "port changed")):
            raise PipelineError(f"HAProxy refused `{command}`: {answer.splitlines()[0]}")


def statuses(socket_path: str) -> dict[str, str]:
    try:
        return haproxy.parse_stat(runtime(socket_path, "show stat"))
    except OSError:
        return {}


def wait_up(state: dict[str, Any], names: list[str], timeout: float = UP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not haproxy.all_up(found := statuses(state["socket"]), names):
        if not haproxy_alive(state):
            raise PipelineError(f"HAProxy exited: {processes.log_tail(Path(state['dir']), 'haproxy', 3)}")
        if time.monotonic() > deadline:
            if not found:
                raise PipelineError(f"HAProxy's admin socket {state['socket']} does not answer `show stat`")
            down = [f"{n} {found.get(n, 'unknown')}" for n in names if found.get(n) != "UP"]
            raise PipelineError(f"HAProxy does not see {', '.join(down)} as UP after {timeout:.0f} s")
        time.sleep(processes.POLL_SECONDS)


# --- replicas ---


def replica_home(folder: Path, name: str, store: str) -> Path:
    """A BentoML home of its own for one replica, whose bentos and models are the packaged store's."""
    home = folder / "homes" / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    for part in ("bentos", "models"):
        (home / part).symlink_to(Path(store) / part, target_is_directory=True)
    return home


def start_colour(root: Path, state: dict[str, Any], colour: str, bento: dict[str, str]) -> list[int]:
    """Starts the colour's replicas together, waits until each answers /readyz; their ports."""
    folder = Path(state["dir"])
    names = haproxy.slot_names(colour, state["replicas"])
    ports = processes.free_ports(len(names))
    binary = str(Path(sys.executable).parent / "bentoml")
    base = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    state["colours"][colour] = {"bento": bento["bento"], "ports": ports}
    write_state(folder, state)  # before starting: whatever starts is then stopped by `down`
    pids = []
    for name, port in zip(names, ports, strict=True):
        env = {
            **base,
            **state["keys"],
            "BENTOML_HOME": str(replica_home(folder, name, bento["bentoml_home"])),
            "BENTOML_DO_NOT_TRACK": "true",
            "PREDICTION_LOG_DIR": str(Path(state["log_root"]) / name),
            # Replicas share this host's CPUs: pinned, every replica's first worker would sit on
            # the same CPU (serving.pin_workers), so the kernel places them.
            "PIN_WORKERS": "0",
        }
        args = [binary, "serve", bento["bento"], "--host", processes.LOOPBACK, "--port", str(port)]
        pids.append(processes.start_detached(args, folder, name, env=env, cwd=root))

    def ready(item: tuple[str, int, int]) -> str | None:
        name, port, pid = item
        url = f"http://{processes.LOOPBACK}:{port}/readyz"
        if processes.wait_for_http(url, READY_TIMEOUT_S, pid=pid):
            return None
        return f"{name} is not ready: {processes.log_tail(folder, name, 3) or 'no output'}"

    with ThreadPoolExecutor(len(names)) as pool:
        problems = [p for p in pool.map(ready, zip(names, ports, pids, strict=True)) if p]
    if problems:
        stop_colour(state, colour)
        write_state(folder, state)
        raise PipelineError(problems[0])
    return ports


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`: BentoML's workers run in sessions of their own, so a
    signal to the arbiter's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_replica(folder: Path, name: str, port: int) -> None:
    pid = processes.read_pid(processes.pid_file(folder, name))
    if pid is not None and processes.cmdline(pid).endswith(replica_marker(port)):
        workers = descendants(pid)
        processes.stop_by_pid(pid, replica_marker(port), timeout=STOP_TIMEOUT_S)
        for worker in workers:  # the arbiter stops them on SIGTERM; a SIGKILLed one could not
            if processes.alive(worker):
                os.kill(worker, signal.SIGKILL)
    processes.pid_file(folder, name).unlink(missing_ok=True)


def stop_colour(state: dict[str, Any], colour: str) -> None:
    folder = Path(state["dir"])
    ports = (state["colours"].get(colour) or {}).get("ports") or []
    for name, port in zip(haproxy.slot_names(colour, state["replicas"]), ports, strict=False):
        stop_replica(folder, name, port)
        shutil.rmtree(folder / "homes" / name, ignore_errors=True)
    state["colours"][colour] = None


def colour_alive(state: dict[str, Any], colour: str) -> bool:
    folder = Path(state["dir"])
    ports = (state["colours"].get(colour) or {}).get("ports") or []
    names = haproxy.slot_names(colour, state["replicas"])
    return bool(ports) and all(
        processes.alive_and_ours(processes.read_pid(processes.pid_file(folder, n)), replica_marker(p))
        for n, p in zip(names, ports, strict=False)
    )


def haproxy_alive(state: dict[str, Any]) -> bool:
    pid = processes.read_pid(processes.pid_file(Path(state["dir"]), "haproxy"))
    return processes.alive_and_ours(pid, str(Path(state["dir"]) / "haproxy.cfg"))


# --- commands ---


def up(root: Path, params: dict[str, Any], replicas: int) -> str:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise PipelineError(f"--replicas must be 1 to {MAX_REPLICAS}, not {replicas}")
    folder = state_dir(root)
    found = read_state(folder)
    if found is not None and (haproxy_alive(found) or any(colour_alive(found, c) for c in COLOURS)):
        return f"FLEET already up: {describe(found)} (make fleet-down first to change it)"
    if found is not None:
        down(root, params)  # what a crashed fleet left: its dead processes' files
    bento = packaged_bento(root, params)
    port = fleet_port()
    if processes.port_open(port):
        raise PipelineError(f"port {port} is taken; set FLEET_PORT to a free port")
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        "dir": str(folder),
        "port": port,
        "socket": str(folder / "haproxy.sock"),
        "replicas": replicas,
        "live": "blue",
        "log_root": str(log_root(root)),
        "keys": key_settings(dict(os.environ), root, folder),
        "colours": {"blue": None, "green": None},
    }
    try:
        # HAProxy first, with every slot in maintenance: it holds the port from now on, rather than
        # leaving it free (and open to any process asking for a free port) while replicas start.
        start_haproxy(state)
        start_colour(root, state, "blue", bento)
        names = haproxy.slot_names("blue", replicas)
        apply(
            state["socket"],
            haproxy.point_commands(map(haproxy.Server, names, state["colours"]["blue"]["ports"])),
        )
        wait_up(state, names)
    except BaseException:
        down(root, params)
        raise
    return f"FLEET up: {describe(state)}"


def start_haproxy(state: dict[str, Any]) -> None:
    folder = Path(state["dir"])
    cfg = folder / "haproxy.cfg"
    write_state(folder, state)
    Path(state["socket"]).unlink(missing_ok=True)
    # -db: stay in the foreground, so the PID is HAProxy's own and it logs to our file.
    pid = processes.start_detached([HAPROXY, "-db", "-f", str(cfg)], folder, "haproxy", cwd=folder)
    deadline = time.monotonic() + UP_TIMEOUT_S
    # Up once HAProxy itself answers on its socket (a stale socket file refuses) and the port is open.
    while not (processes.port_open(state["port"]) and statuses(state["socket"])):
        if time.monotonic() > deadline or not processes.alive(pid):
            raise PipelineError(f"HAProxy did not start: {processes.log_tail(folder, 'haproxy', 3)}")
        time.sleep(processes.POLL_SECONDS)


def running_state(root: Path) -> dict[str, Any]:
    state = read_state(state_dir(root))
    if state is None or not haproxy_alive(state):
        raise PipelineError("no fleet is up; run `make fleet-up`")
    return state


def move_traffic(state: dict[str, Any], to: str) -> None:
    """Puts `to`'s replicas in service, waits until HAProxy's checks pass, then drains the live
    colour: new requests go to `to`, requests in flight on the old one finish there."""
    ports = state["colours"][to]["ports"]
    names = haproxy.slot_names(to, state["replicas"])
    apply(
        state["socket"],
        haproxy.point_commands(haproxy.Server(n, p) for n, p in zip(names, ports, strict=True)),
    )
    wait_up(state, names)
    apply(
        state["socket"], haproxy.state_commands(haproxy.slot_names(state["live"], state["replicas"]), "drain")
    )
    state["live"] = to
    write_state(Path(state["dir"]), state)


def switch(root: Path, params: dict[str, Any]) -> str:
    state = running_state(root)
    idle = other(state["live"])
    bento = packaged_bento(root, params)
    if state["colours"].get(idle):  # the previous colour: restarted on the bento packaged now
        apply(state["socket"], haproxy.state_commands(haproxy.slot_names(idle, state["replicas"]), "maint"))
        stop_colour(state, idle)
        write_state(Path(state["dir"]), state)
    start_colour(root, state, idle, bento)
    move_traffic(state, idle)
    return f"FLEET switched: {describe(state)}; `make fleet-back` returns to {other(idle)}"


def back(root: Path, params: dict[str, Any]) -> str:
    state = running_state(root)
    previous = other(state["live"])
    if not colour_alive(state, previous):
        raise PipelineError(f"{previous} is not running; `make fleet-switch` starts it on the packaged bento")
    move_traffic(state, previous)
    return f"FLEET back: {describe(state)}"


def down(root: Path, params: dict[str, Any]) -> str:
    folder = state_dir(root)
    state = read_state(folder)
    if state is None:
        return "FLEET down: nothing was running"
    pid = processes.read_pid(processes.pid_file(folder, "haproxy"))
    # SIGUSR1 is HAProxy's soft stop: it stops listening and lets the requests in flight finish.
    processes.stop_by_pid(pid, str(folder / "haproxy.cfg"), sig=signal.SIGUSR1, timeout=10.0)
    processes.pid_file(folder, "haproxy").unlink(missing_ok=True)
    Path(state["socket"]).unlink(missing_ok=True)
    for colour in COLOURS:
        stop_colour(state, colour)
    (folder / "state.json").unlink(missing_ok=True)
    shutil.rmtree(folder / "homes", ignore_errors=True)
    return f"FLEET down: HAProxy and every replica stopped (logs kept in {folder})"


def describe(state: dict[str, Any]) -> str:
    live = state["live"]
    bento = (state["colours"].get(live) or {}).get("bento", "?")
    idle = other(live)
    spare = f", {idle} running idle" if state["colours"].get(idle) else ""
    count = f"{state['replicas']} replica{'s' if state['replicas'] > 1 else ''}"
    return f"{live} live ({count} of {bento}) on http://127.0.0.1:{state['port']}{spare}"


def status(root: Path, params: dict[str, Any]) -> str:
    state = read_state(state_dir(root))
    if state is None:
        return "FLEET down"
    found = statuses(state["socket"]) if haproxy_alive(state) else {}
    lines = [f"FLEET {describe(state)}; HAProxy {'running' if found else 'NOT running'}"]
    folder = Path(state["dir"])
    for colour in COLOURS:
        entry = state["colours"].get(colour) or {}
        for name, port in zip(
            haproxy.slot_names(colour, state["replicas"]), entry.get("ports") or [], strict=False
        ):
            pid = processes.read_pid(processes.pid_file(folder, name))
            alive = processes.alive_and_ours(pid, replica_marker(port))
            lines.append(
                f"  {name:<9} port {port:<5} pid {pid} {'alive' if alive else 'DEAD'}"
                f"  haproxy {found.get(name, '-')}  {entry.get('bento')}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.team.fleet", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start blue with N replicas behind HAProxy")
    start.add_argument("--replicas", type=int, default=2)
    for name in ("switch", "back", "status", "down"):
        commands.add_parser(name)
    args = parser.parse_args(argv)
    try:
        root = config.project_root()
        params = config.load_params(root / config.PARAMS_FILE)
        if args.command == "up":
            line = up(root, params, args.replicas)
        else:
            line = {"switch": switch, "back": back, "status": status, "down": down}[args.command](
                root, params
            )
    except PipelineError as exc:
        print(f"ERROR fleet {args.command}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except OSError as exc:  # HAProxy's socket or the state folder: the user's machine, not a bug
        print(f"ERROR fleet {args.command}: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
