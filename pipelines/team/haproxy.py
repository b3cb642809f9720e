"""HAProxy for the fleet: its configuration and its runtime-API commands, as pure text functions.

One backend holds every replica slot of both colours (`blue-0`, `green-0`, ...). The live colour's
servers are `ready`; the idle colour's are in maintenance (`disabled`), and the switch moves them
through the runtime API (`set server ... addr/state`), so HAProxy never restarts and no
connection is cut: new requests go to the servers that are `ready`, and `drain` lets those in
flight on the old ones finish. fleet.py does the I/O (socket, files, processes).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BACKEND = "replicas"
FRONTEND = "fleet"
PLACEHOLDER_PORT = 1  # an idle slot's address until its replica starts: nothing listens there
STATES = ("ready", "drain", "maint")
# Health checks: a replica that stops answering /readyz 200 leaves rotation after FALL failed
# checks (~1 s); one passing check brings it back. /readyz needs no key (docs/serving.md).
CHECK_INTERVAL_MS = 500
CHECK_FALL = 2
CHECK_RISE = 1
# Timeouts: the service's own request timeout is 30 s (service.py), so the server's here is above it.
TIMEOUTS = {"connect": "2s", "client": "60s", "server": "35s", "http-keep-alive": "10s", "check": "2s"}
MAXCONN = 4096


@dataclass(frozen=True)
class Server:
    """One replica slot: its name, the port its replica listens on, and its state in HAProxy."""

    name: str
    port: int
    state: str = "ready"  # ready | drain | maint


def slot_names(colour: str, replicas: int) -> list[str]:
    return [f"{colour}-{index}" for index in range(replicas)]


def render(port: int, socket_path: str, servers: Sequence[Server]) -> str:
    """The whole configuration: a frontend on 127.0.0.1:`port`, the admin socket, one backend.

    `balance roundrobin` in HTTP mode picks a server per request, not per connection, so
    keep-alive clients (wrk, a browser) are spread over the replicas too. A request whose TCP
    connection to a replica fails is retried on another one (`redispatch`): a POST is never sent
    twice, since the retry happens only when nothing reached the replica."""
    lines = [
        "# Written by `python -m pipelines.team.fleet`; the live state is changed through the socket.",
        "global",
        f"    stats socket {socket_path} mode 600 level admin",
        f"    maxconn {MAXCONN}",
        "",
        "defaults",
        "    mode http",
        *(f"    timeout {name} {value}" for name, value in TIMEOUTS.items()),
        "    retries 3",
        "    option redispatch 1",
        "",
        f"frontend {FRONTEND}",
        f"    bind 127.0.0.1:{port}",
        f"    default_backend {BACKEND}",
        "",
        f"backend {BACKEND}",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        f"    default-server check inter {CHECK_INTERVAL_MS}ms fall {CHECK_FALL} rise {CHECK_RISE}",
        *(_server_line(server) for server in servers),
    ]
    return "\n".join(lines) + "\n"


def _server_line(server: Server) -> str:
    if server.state not in STATES:
        raise ValueError(f"unknown server state {server.state!r}")
    flag = {"ready": "", "drain": " weight 0", "maint": " disabled"}[server.state]
    return f"    server {server.name} 127.0.0.1:{server.port}{flag}"


def point_commands(servers: Iterable[Server]) -> list[str]:
    """Runtime commands that point slots at their replicas' ports and put them in service."""
    commands = []
    for server in servers:
        commands.append(f"set server {BACKEND}/{server.name} addr 127.0.0.1 port {server.port}")
        commands.append(f"set server {BACKEND}/{server.name} state ready")
    return commands


def state_commands(names: Iterable[str], state: str) -> list[str]:
    """Runtime commands that set slots to `state` (drain: no new requests, in-flight ones finish)."""
    if state not in STATES:
        raise ValueError(f"unknown server state {state!r}")
    return [f"set server {BACKEND}/{name} state {state}" for name in names]


def parse_stat(text: str) -> dict[str, str]:
    """Server name -> status (UP, DOWN, DRAIN, MAINT, `UP 1/2`...) from `show stat` CSV output."""
    body = text.lstrip("# ")
    statuses = {}
    for row in csv.DictReader(io.StringIO(body)):
        if row.get("pxname") == BACKEND and row.get("svname") not in (None, "BACKEND"):
            statuses[row["svname"]] = row.get("status", "")
    return statuses


def all_up(statuses: Mapping[str, str], names: Iterable[str]) -> bool:
    """Every named server passes its health check and takes traffic (exactly `UP`)."""
    return all(statuses.get(name) == "UP" for name in names)
