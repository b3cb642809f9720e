"""bench/openloop.c, the open-loop client of bench/serve.py: it sends what it says it sent, counts
what the server refused, reconnects when told to close, and counts latency from the due time.

The oracle is a small HTTP server in this test that counts what it receives and answers 503 to a
known share of the requests, `Connection: close` to another, and holds some answers for a while.
"""

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

OPENLOOP = Path(__file__).resolve().parents[2] / "bench" / "openloop.c"
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


class Server:
    """HTTP/1.1 keep-alive: the n-th request overall gets 503 if n % 10 == 0, `Connection: close`
    if n % 7 == 0, and its answer after `hold` seconds if n % 50 == 1."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.count = 0
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(
                    next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))[15:]
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                buffer = rest[length:]
                with self.lock:
                    self.count += 1
                    n = self.count
                if n % 50 == 1:
                    time.sleep(self.hold)
                status = b"503 Service Unavailable" if n % 10 == 0 else b"200 OK"
                close = n % 7 == 0
                body = b'{"ok": true}'
                conn.sendall(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode() + (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + body
                )  # fmt: skip
                if close:
                    return


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    out = tmp_path_factory.mktemp("openloop") / "openloop"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(out), str(OPENLOOP)], check=True)
    return out


def run(binary: Path, port: int, rate: float, seconds: float, bodies: Path) -> dict:
    cmd = [
        str(binary),
        "127.0.0.1",
        str(port),
        str(rate),
        str(seconds),
        "4",
        "64",
        str(bodies),
        "/predict",
        "k",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_it_sends_every_request_counts_refusals_and_reconnects(binary, tmp_path):
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text('{"records": [1]}\n{"records": [2]}\n')
    server = Server(hold=0.0)
    result = run(binary, server.port, rate=400, seconds=2, bodies=bodies)
    assert result["requests"] == 800 == server.count
    assert result["answered"] == 800
    assert result["non_2xx"] == 800 // 10
    assert result["errors"] == result["non_2xx"]  # no socket errors
    # Every 7th answer closed its connection, and the client opened new ones as it needed them.
    assert server.connections == result["connections_opened"]
    assert result["connections_opened"] >= 800 // 7  # each closed connection had been opened


def test_latency_runs_from_the_due_time_through_a_stall(binary, tmp_path):
    """Every 50th request is held 60 ms. A closed-loop client would send nothing meanwhile on that
    connection; this one keeps sending on others, and the held answers show in the tail."""
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text('{"records": [1]}\n')
    server = Server(hold=0.06)
    result = run(binary, server.port, rate=500, seconds=2, bodies=bodies)
    assert result["requests"] == 1000 == server.count
    assert result["max_ms"] >= 60
    assert result["p50_ms"] < 60  # the others were not held behind them
    assert result["p99_ms"] >= 60  # 2 % of the requests were held
