"""Serving speed, side by side in one run on one machine and one champion.

What it serves, each measured with the same load (single-record requests from the holdout; then
1,000 records per request):

  in-process      the packaged champion called in this process, one row at a time  (the limit)
  mlflow          `mlflow models serve` of the registry's champion                  (the peer)
  fastapi         bench/naive_fastapi.py: one DataFrame per request                  (the naive baseline)
  service         `bentoml serve service:Predictor`                                  (what we ship)

The load of record is `wrk` (Debian; closed loop, keep-alive): 2 threads at 1, 8 and 32
connections, `--wrk-seconds` each, percentiles from its HDR histogram; errors are non-2xx answers
plus socket errors. wrk waits for each answer before it sends the next on a connection, so it
shows the tail at saturation but hides a stall behind the requests it did not send. The second
figure is therefore open loop: requests due at a fixed rate, half the highest saturated throughput
(and a quarter of it, for the shape of the curve), each sent when due whatever the others do, its
latency counted from when it was due. The client is bench/openloop.c, built with gcc here (timerfd
pacing, epoll, a few percent of a core); without gcc, `paced` in this file (Python, 1 ms timers).
Either reports its own send lag and CPU, to show that it is not the bottleneck, and the servers'
CPU per request over the run is read from /proc. For
the service, each worker's share of the answers (its prediction log's lines) is shown too. The
old Python aiohttp client is kept for the service as a comparison row only.

The load goes to 127.0.0.1 only.
Run from the project root after `make run`:  .venv/bin/python bench/serve.py
The serving tail alone (a minute):             .venv/bin/python bench/serve.py --tail
Two settings side by side, alternating:        .venv/bin/python bench/serve.py --tail \
                                                   --compare MAX_REQUESTS_PER_CONNECTION=0,100 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
LEVELS = (1, 8, 32)
BENCH_KEY = "bench-key-0123456789"  # the service needs a key; the other servers ignore the header
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 180) -> None:
    import urllib.request

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.args}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"not ready: {url}")


async def load(url: str, bodies: list[bytes], concurrency: int, total: int, max_seconds: float) -> dict:
    """`total` POSTs from `concurrency` clients (stops early at `max_seconds`); latency per request."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    issued = 0
    deadline = time.perf_counter() + max_seconds
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(offset: int) -> None:
            nonlocal issued, errors
            i = offset
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                body = bodies[i % len(bodies)]
                i += concurrency
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=HEADERS) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status != 200:
                            errors += 1
                except (TimeoutError, aiohttp.ClientError):
                    errors += 1
                    statuses[0] = statuses.get(0, 0) + 1
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": errors,
        "statuses": statuses,
    }


# --- the load generator of record: wrk (closed loop, saturating) and an open-loop paced client ---

WRK = shutil.which("wrk") or "/usr/bin/wrk"
# One-record POSTs cycling through the bodies file (one JSON body a line), to the path and with
# the key given as script arguments; the summary comes back as one WRKJSON line.
WRK_LUA = r"""
local bodies, i, path = {}, 0, "/"
local headers = {["Content-Type"] = "application/json"}
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  path = args[2]
  headers["Authorization"] = "Bearer " .. args[3]
  i = math.random(#bodies)
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", path, headers, bodies[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d,"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max))
end
"""


def wrk(url: str, bodies_file: Path, connections: int, seconds: int, workdir: Path) -> dict:
    """wrk at `connections` keep-alive connections (2 threads, 1 for 1 connection) for `seconds`."""
    from urllib.parse import urlsplit

    script = workdir / "post.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    parts = urlsplit(url)
    cmd = [
        WRK, f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "--latency", "-s", str(script), f"{parts.scheme}://{parts.netloc}", "--",
        str(bodies_file), parts.path, BENCH_KEY,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr[-1000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    elapsed = raw["duration_us"] / 1e6
    socket_errors = sum(raw[k] for k in ("connect", "read", "write", "timeout"))
    return {
        "concurrency": connections,
        "requests": raw["requests"],
        "seconds": round(elapsed, 2),
        "rps": round(raw["requests"] / elapsed, 1),
        **{f"p{q}_ms": round(raw[f"p{q}_us"] / 1000, 2) for q in (50, 90, 95, 99)},
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": raw["status"] + socket_errors,
        "non_2xx": raw["status"],
        "socket_errors": socket_errors,
        "load": round(os.getloadavg()[0], 2),
    }


CLIENT_LAG_LIMIT_MS = 2.0  # p99 send lag past which the open-loop figures are void (its timers tick in 1 ms)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the paced client: one request in flight at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due = 0.0  # the scheduled send time of the request in flight (0: none)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.ready(self)

    def send(self, due: float, request: bytes) -> None:
        self.due = due
        self.transport.write(request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].decode("latin-1").lower()
        length = next(
            (int(x.split(":", 1)[1]) for x in head.split("\r\n") if x.startswith("content-length:")), None
        )
        if length is None or len(self.buffer) < head_end + 4 + length:
            return
        status = int(head.split(" ", 2)[1])
        self.buffer = self.buffer[head_end + 4 + length :]
        due, self.due = self.due, 0.0
        self.pool.answered(due, status)
        if "\r\nconnection: close" in head:
            self.transport.close()  # type: ignore[union-attr]  # connection_lost replaces it
        else:
            self.pool.ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.due:
            self.pool.answered(self.due, 0)
        self.pool.lost(self)


class _Pool:
    """Keep-alive connections; a request goes out on an idle one, else on a new one (up to
    `max_connections`), else waits; its latency runs from its scheduled time either way."""

    def __init__(self, host: str, port: int, requests: list[bytes], max_connections: int) -> None:
        self.host, self.port, self.requests = host, port, requests
        self.max_connections = max_connections
        self.idle: list[_Connection] = []
        self.waiting: collections.deque[float] = collections.deque()
        self.open = 0  # connecting or connected
        self.opened = 0
        self.sent = 0
        self.latencies: list[float] = []
        self.statuses: collections.Counter[int] = collections.Counter()

    def connect(self) -> None:
        self.open += 1
        self.opened += 1
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: _Connection(self), self.host, self.port))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        if task.exception() is not None:
            self.open -= 1
            if self.waiting:
                self.answered(self.waiting.popleft(), 0)

    def fire(self, due: float) -> None:
        if self.idle:
            self._send(self.idle.pop(), due)
            return
        self.waiting.append(due)
        if self.open < self.max_connections:
            self.connect()

    def _send(self, conn: _Connection, due: float) -> None:
        conn.send(due, self.requests[self.sent % len(self.requests)])
        self.sent += 1

    def ready(self, conn: _Connection) -> None:
        if self.waiting:
            self._send(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def answered(self, due: float, status: int) -> None:
        self.latencies.append(time.perf_counter() - due)
        self.statuses[status] += 1

    def lost(self, conn: _Connection) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and self.open < self.max_connections:
            self.connect()


async def _paced(url: str, bodies: list[bytes], rate: float, seconds: float, max_connections: int) -> dict:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {BENCH_KEY}\r\nContent-Length: {len(b)}\r\n\r\n"
        ).encode()
        + b
        for b in bodies
    ]
    pool = _Pool(host, port, requests, max_connections)
    for _ in range(min(8, max_connections)):
        pool.connect()
    await asyncio.sleep(0.5)
    total = int(rate * seconds)
    lags = []
    cpu = time.process_time()
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.perf_counter() - due)
        pool.fire(due)
    end = time.perf_counter() + 15
    while len(pool.latencies) < total and time.perf_counter() < end:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    cpu_share = (time.process_time() - cpu) / elapsed
    ms = np.array(pool.latencies) * 1000
    lag_ms = np.array(lags) * 1000
    missing = total - len(ms)
    errors = sum(n for s, n in pool.statuses.items() if not 200 <= s < 300) + missing
    return {
        "rate": round(rate, 1),
        "requests": total,
        "answered": len(ms),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)},
        "max_ms": round(float(ms.max()), 2),
        "errors": errors,
        "connections_opened": pool.opened,
        "client_send_lag_p99_ms": round(float(np.percentile(lag_ms, 99)), 2),
        "client_send_lag_max_ms": round(float(lag_ms.max()), 2),
        "client_cpu_share": round(cpu_share, 3),
        # A client that sent late (it did not get the CPU) measured itself: the figure is void.
        "client_bound": bool(np.percentile(lag_ms, 99) > CLIENT_LAG_LIMIT_MS),
        "load": round(os.getloadavg()[0], 2),
    }


def paced(url: str, bodies: list[bytes], rate: float, seconds: float, max_connections: int = 256) -> dict:
    """Open loop at `rate` requests/s for `seconds`: request i is due at start + i / rate and is sent
    then whatever the earlier ones are doing (on an idle keep-alive connection, else a new one);
    its latency runs from that due time, so a stall of the server (or of this client: see
    `client_send_lag_*`, and `client_cpu_share` of one core) is counted, not hidden."""
    try:
        import uvloop

        return uvloop.run(_paced(url, bodies, rate, seconds, max_connections))
    except ImportError:
        return asyncio.run(_paced(url, bodies, rate, seconds, max_connections))


OPENLOOP_C = Path(__file__).with_name("openloop.c")


def openloop_binary(workdir: Path) -> Path | None:
    """bench/openloop.c built with gcc into `workdir`; None without gcc (then the Python client)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    binary = workdir / "openloop"
    if not binary.exists():
        subprocess.run([gcc, "-O2", "-o", str(binary), str(OPENLOOP_C)], check=True, capture_output=True)
    return binary


def realtime_prefix() -> list[str]:
    """`chrt -f 10` where this user may use it (root, or CAP_SYS_NICE), else nothing.

    On 2 cores the open-loop client shares the CPUs with the two workers it loads; at the default
    priority the scheduler sometimes left it waiting for a core for milliseconds (send lag p99 2.5-5 ms
    even at a quarter of the rate, so the figures were void). Real-time FIFO priority lets it send
    when due: it uses 5-16 % of a core, so it takes little from the workers."""
    chrt = shutil.which("chrt")
    if chrt is None:
        return []
    allowed = subprocess.run([chrt, "-f", "10", "true"], capture_output=True).returncode == 0
    return [chrt, "-f", "10"] if allowed else []


def paced_c(binary: Path, url: str, bodies_file: Path, rate: float, seconds: float) -> dict:
    """The open loop by bench/openloop.c (timerfd pacing, epoll; latency from each due time)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    cmd = [
        *realtime_prefix(),
        str(binary), parts.hostname or "127.0.0.1", str(parts.port or 80), f"{rate:.1f}", str(seconds),
        "8", "256", str(bodies_file), parts.path, BENCH_KEY,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"openloop failed: {done.stderr[-1000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "client": "openloop.c" + (" (chrt -f 10)" if cmd[0] != str(binary) else ""),
        "rate": round(rate, 1),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in raw.items()},
        "client_bound": raw["client_send_lag_p99_ms"] > CLIENT_LAG_LIMIT_MS,
        "load": round(os.getloadavg()[0], 2),
    }


def worker_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (bentoml serve's workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[int, int]:
    """(all, steal) ticks of the whole machine so far, from /proc/stat's first line."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the machine's CPU time the hypervisor gave to others meanwhile (steal): on a
    shared VM, time in which neither the service nor the client could run, however they were set."""
    total = after[0] - before[0]
    return round((after[1] - before[1]) / total, 3) if total > 0 else 0.0


OPEN_LOOP_SHARES = (0.5, 0.25)  # of the highest saturated throughput: the target's, and a lighter load


def worker_counts(log_dir: Path) -> dict[str, int]:
    """Requests answered so far by each worker: the lines of its prediction log (one per record)."""
    files = sorted((log_dir / "predictions").glob("predictions.*.jsonl"))
    return {f.name.split(".")[1]: sum(1 for _ in f.open("rb")) for f in files}


def tail(
    url: str,
    bodies: list[bytes],
    workdir: Path,
    log_dir: Path | None,
    args: argparse.Namespace,
    server_pid: int | None = None,
) -> dict:
    """wrk at each level (with each worker's share of the answers, when the log is known), then
    the open loop at half the highest saturated throughput, and at a quarter of it (the C client
    when gcc is there, else the Python one), with the workers' CPU per request when known."""
    bodies_file = workdir / f"bodies-{abs(hash(bodies[0]))}.jsonl"
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    wrk(url, bodies_file, 8, 3, workdir)  # warm-up
    levels = []
    for connections in LEVELS:
        before = worker_counts(log_dir) if log_dir else {}
        row = wrk(url, bodies_file, connections, args.wrk_seconds, workdir)
        if log_dir:
            after = worker_counts(log_dir)
            row["per_worker"] = {w: n - before.get(w, 0) for w, n in after.items()}
        levels.append(row)
    binary = openloop_binary(workdir)
    workers = (worker_pids(server_pid) or [server_pid]) if server_pid else []
    open_loops = {}
    for share in OPEN_LOOP_SHARES:
        rate = max(r["rps"] for r in levels) * share
        used = cpu_seconds(workers) if workers else 0.0
        machine = cpu_times()
        answered_before = worker_counts(log_dir) if log_dir else {}
        if binary is not None:
            run = paced_c(binary, url, bodies_file, rate, args.open_seconds)
        else:
            run = paced(url, bodies, rate, args.open_seconds)
        run["steal"] = steal_share(machine, cpu_times())
        if log_dir:
            answered = worker_counts(log_dir)
            run["per_worker"] = {w: n - answered_before.get(w, 0) for w, n in answered.items()}
        if workers:
            run["worker_cpu_ms_per_request"] = round(
                (cpu_seconds(workers) - used) * 1000 / run["requests"], 3
            )
        open_loops[share] = run
    return {"levels": levels, "open_loop": open_loops[0.5], "open_loop_quarter": open_loops[0.25]}


def tail_table(results: dict[str, dict]) -> str:
    lines = [
        f"{'served by':<34} {'load':>5} {'conns':>5} {'req/s':>8} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>7} {'errors':>6}  per worker"
    ]
    for name, run in results.items():
        for r in run["levels"]:
            share = " / ".join(str(n) for n in r.get("per_worker", {}).values())
            lines.append(
                f"{name:<34} {r['load']:>5} {r['concurrency']:>5} {r['rps']:>8} {r['p50_ms']:>6} {r['p90_ms']:>6} {r['p99_ms']:>6} {r['max_ms']:>7} {r['errors']:>6}  {share}"
            )
        for key, label in (("open_loop", "open loop"), ("open_loop_quarter", "open 1/4")):
            o = run.get(key)
            if o is None:
                continue
            cpu = o.get("worker_cpu_ms_per_request")
            lines.append(
                f"{name + ' ' + label:<34} {o['load']:>5} {'-':>5} {o['rate']:>8} {o['p50_ms']:>6} {o['p90_ms']:>6} {o['p99_ms']:>6} {o['max_ms']:>7} {o['errors']:>6}"
                f"  {o.get('client', 'python')} lag p99 {o['client_send_lag_p99_ms']} ms, cpu {o['client_cpu_share']:.0%} of a core, {o['connections_opened']} conns"
                + (f", workers {cpu} ms cpu/request" if cpu is not None else "")
                + (f", steal {o['steal']:.1%}" if "steal" in o else "")
                + (
                    f", per worker {' / '.join(str(n) for n in o['per_worker'].values())}"
                    if o.get("per_worker")
                    else ""
                )
                + ("  VOID: the client was late" if o["client_bound"] else "")
            )
    return "\n".join(lines)


def latency_figures(latencies: list[float], concurrency: int = 1) -> dict:
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "rps": round(len(ms) / sum(latencies), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "errors": 0,
    }


def repeat(fn, items: list, seconds: float, limit: int) -> list[float]:
    """Per-call latencies of fn(item), cycling through items, bounded in count and time."""
    latencies = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end and i < limit:
        item = items[i % len(items)]
        start = time.perf_counter()
        fn(item)
        latencies.append(time.perf_counter() - start)
        i += 1
    return latencies


def in_process(loaded, records: list[dict], seconds: float) -> dict[str, dict]:
    """The limits, one row at a time in this process: the scikit-learn pipeline on a one-row
    DataFrame (what a hand-written server pays), and the served path, records in, answer out."""
    from pipelines.serving import answers, runtimes

    sklearn = repeat(
        lambda r: runtimes.model_outputs(
            loaded.model, pd.DataFrame.from_records([r], columns=loaded.features), loaded.task
        ),
        records,
        seconds,
        5000,
    )
    served = repeat(lambda r: answers.answer(loaded, [r]), records, seconds, 50_000)
    return {"in-process sklearn": latency_figures(sklearn), "in-process served": latency_figures(served)}


def breakdown(loaded, records: list[dict], workdir: Path) -> dict[str, float]:
    """Median microseconds of each step a single-record request takes inside the service."""
    from fastapi.responses import JSONResponse

    from pipelines.serving import answers, prediction_log, schema

    limits = loaded.meta["limits"]
    record_model = schema.record_model(
        loaded.meta["fields"], loaded.meta.get("optional_fields", {}), limits["max_string_length"]
    )
    body_model = schema.request_model(record_model, limits["max_records"])
    bodies = [json.dumps({"records": [r]}).encode() for r in records[:500]]
    log = prediction_log.PredictionLog(workdir / "breakdown-log")
    steps: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        steps.setdefault(name, []).append(time.perf_counter() - start)
        return out

    for _ in range(4):
        for body in bodies:
            obj = timed("decode JSON", json.loads, body)
            parsed = timed("validate (pydantic)", body_model.model_validate, obj)
            rows = timed("records to dicts", lambda p: [r.model_dump() for r in p.records], parsed)
            if loaded.compiled is not None:
                feeds = timed("feature arrays", loaded.compiled.record_feeds, rows)
                timed("model (onnxruntime)", loaded.compiled.run, feeds)
            predictions, probabilities = timed("whole answer()", answers.answer, loaded, rows)
            answer = answers.response_body("x" * 32, loaded.version, predictions, probabilities)
            timed(
                "prediction log write",
                log,
                "x" * 32,
                loaded.version,
                rows,
                predictions,
                probabilities,
                1.0,
            )
            timed("encode JSON", lambda a: JSONResponse(a).body, answer)
    medians = {name: round(statistics.median(values) * 1e6, 1) for name, values in steps.items()}
    if loaded.compiled is not None:
        medians["labels and probabilities"] = round(
            medians["whole answer()"] - medians["feature arrays"] - medians["model (onnxruntime)"], 1
        )
    return medians


def timed_runs(contenders: dict, chunks: list[pd.DataFrame], repeats: int = 3) -> dict[str, float]:
    """Rows/s of each contender over the same chunks: median of `repeats`, run alternately so
    that a noisy neighbour hurts every contender alike."""
    rows = sum(len(c) for c in chunks)
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for chunk in chunks:
                fn(chunk)
            runs.setdefault(name, []).append(time.perf_counter() - start)
    return {name: round(rows / statistics.median(times), 1) for name, times in runs.items()}


def batch_scoring(
    loaded, holdout: pd.DataFrame, rows: int, chunk_rows: int, workdir: Path, model_dir: Path
) -> dict:
    """Batch scoring, rows/s.

    - `score_chunk` (validation, model, output columns) through the compiled graph and through
      the scikit-learn pipeline, on the same chunks, one thread each: the champion, then every
      candidate in models/ compiled the way `make package` compiles the champion;
    - `make batch-predict`'s whole run (read Parquet, score, write Parquet; the compiled graph
      on every core) against in-process `predict_proba` of the same rows, one thread and every core.
    """
    from dataclasses import replace

    import joblib
    from threadpoolctl import threadpool_limits

    from pipelines.batch import scoring
    from pipelines.modeling import metrics
    from pipelines.release import compilation
    from pipelines.serving import bundle, runtimes

    columns = [c for c in holdout.columns if c in loaded.features]
    frame = pd.concat([holdout[columns]] * (rows // len(holdout) + 1), ignore_index=True).iloc[:rows]
    chunks = [frame.iloc[i : i + chunk_rows] for i in range(0, rows, chunk_rows)]
    limits = loaded.meta["limits"]

    def chunk_scorer(model):
        # Parquet chunks: the values are the frame itself (only CSV cells are re-read as JSON values).
        return lambda chunk: scoring.score_chunk(model, chunk, chunk, limits["max_string_length"])

    every_core = os.cpu_count() or 1
    figures: dict[str, Any] = {
        "champion": timed_runs(
            {"compiled": chunk_scorer(loaded), "sklearn": chunk_scorer(replace(loaded, compiled=None))},
            chunks,
        )
    }
    # As batch-predict runs it: the compiled graph on every core; scikit-learn given every core too.
    wide = replace(loaded, compiled=bundle.compiled_runtime(model_dir, loaded.meta, threads=0))
    with threadpool_limits(every_core):
        figures["champion, every core"] = timed_runs(
            {"compiled": chunk_scorer(wide), "sklearn": chunk_scorer(replace(loaded, compiled=None))}, chunks
        )
    target, task = loaded.meta["target"], loaded.meta["task"]
    positive = None
    if task == "classification" and len(loaded.classes) == 2:
        positive = metrics.positive_label(holdout[target], loaded.meta.get("positive_class"))
    for path in sorted((ROOT / "models").glob("*/model.joblib")):
        model = joblib.load(path)
        onnx_bytes, record = compilation.compile_model(
            model, holdout, target=target, task=task, positive=positive,
            metric=metrics.primary_metric(task), bounds={"min_label_agreement": 0.0, "max_metric_delta": 1.0, "max_relative_error": 1.0},
        )  # fmt: skip
        if onnx_bytes is None:
            figures[f"candidate {path.parent.name}"] = {"not compiled": record["reason"]}
            continue
        candidate = replace(
            loaded,
            model=model,
            compiled=runtimes.CompiledRuntime(onnx_bytes, record["inputs"], task),
            arrays=None,
        )
        figures[f"candidate {path.parent.name}"] = timed_runs(
            {"compiled": chunk_scorer(candidate), "sklearn": chunk_scorer(replace(candidate, compiled=None))},
            chunks[:2],
        )

    def predict_only(chunk: pd.DataFrame) -> None:
        runtimes.model_outputs(loaded.model, chunk, task)

    with threadpool_limits(every_core):  # as batch-predict's compiled graph has
        all_cores = timed_runs({"every core": predict_only}, chunks)["every core"]
    figures["in-process sklearn predict"] = {
        "one thread": timed_runs({"one thread": predict_only}, chunks)["one thread"],
        "every core": all_cores,
    }
    source = workdir / "batch-input.parquet"
    frame.to_parquet(source)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        scoring.run(
            str(source), str(workdir / "out.parquet"), str(workdir / "rejects.parquet"), chunk_rows, model_dir
        )
        times.append(time.perf_counter() - start)
    figures["batch-predict end to end"] = round(rows / statistics.median(times), 1)
    return figures


def start(cmd: list[str], env: dict, ready_url: str, log: Path) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    wait_ready(ready_url, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def servers(model_dir: Path, params: dict, workdir: Path) -> dict[str, dict]:
    """How to start each server and what body it takes."""
    from pipelines.core import stores

    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    env.pop("API_KEY", None)
    env.pop("API_KEY_FILE", None)
    uri = stores.tracking_uri(stores.mlflow_store(ROOT, params))
    name = params["promote"]["registered_model"]
    ports = {k: free_port() for k in ("mlflow", "fastapi", "service")}
    return {
        "mlflow": {
            "cmd": [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{name}@champion",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "1",
            ],
            "env": {**env, "MLFLOW_TRACKING_URI": uri},
            "ready": f"http://127.0.0.1:{ports['mlflow']}/ping",
            "url": f"http://127.0.0.1:{ports['mlflow']}/invocations",
            "wrap": lambda recs: {"dataframe_records": recs},
        },
        "fastapi": {
            "cmd": [
                str(BIN / "uvicorn"),
                "bench.naive_fastapi:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["fastapi"]),
                "--log-level",
                "warning",
            ],
            "env": {**env, "BENTOML_MODEL_DIR": str(model_dir), "PYTHONPATH": str(ROOT)},
            "ready": f"http://127.0.0.1:{ports['fastapi']}/docs",
            "url": f"http://127.0.0.1:{ports['fastapi']}/predict",
            "wrap": lambda recs: {"records": recs},
        },
        "service": {
            "cmd": [
                str(BIN / "bentoml"),
                "serve",
                "service:Predictor",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["service"]),
            ],
            "env": {
                **env,
                "PREDICTION_LOG_DIR": str(workdir / "predlog"),
                "API_KEY": BENCH_KEY,
            },
            "ready": f"http://127.0.0.1:{ports['service']}/readyz",
            "url": f"http://127.0.0.1:{ports['service']}/predict",
            "wrap": lambda recs: {"records": recs},
            "log_dir": workdir / "predlog",
        },
    }


def table(results: dict) -> str:
    lines = [
        f"{'served by':<19} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"{name:<19} {r['concurrency']:>7} {r['rps']:>9} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['p99_ms']:>8} {r['errors']:>6}"
            )
    return "\n".join(lines)


# (figure, comparison, goal, issue): the targets of issues 4 (serving) and 5 (compiled champion)
TARGETS = [
    ("service_vs_mlflow_at_32", ">=", 3, 4),
    ("service_vs_mlflow_at_32", ">=", 10, 5),
    ("service_vs_in_process_sklearn_single_row_at_32", ">=", 0.8, 4),
    ("service_vs_in_process_sklearn_single_row_at_32", ">=", 5, 5),
    ("service_p99_ms_at_8", "<=", 25, 4),
    ("service_p99_ms_at_8", "<=", 10, 5),
    ("service_errors_up_to_32", "<=", 0, 4),
    ("in_process_served_single_row_ms", "<=", 0.5, 5),
    ("sklearn_vs_served_single_row_speedup", ">=", 20, 5),
    ("batch_scoring_compiled_vs_sklearn_same_chunks", ">=", 2, 5),
    ("batch_predict_vs_in_process_predict", ">=", 0.8, 4),
    ("batch_1000_per_request_service_vs_in_process_predict", None, None, 4),
    # issue 14: under wrk (the load generator of record), and open loop at half the saturated rate
    ("service_p99_ms_at_8", "<=", 10, 14),
    ("service_errors_up_to_32", "<=", 0, 14),
    ("service_open_loop_p99_ms_at_half", "<=", 5, 14),
    ("service_open_loop_errors", "<=", 0, 14),
]


def ratios(results: dict, batch_rows: dict, scoring: dict, tails: dict) -> dict[str, float]:
    service, mlflow = results["service"], results.get("mlflow")
    sklearn_row = results["in-process sklearn"][0]
    return {
        "service_vs_mlflow_at_32": round(service[-1]["rps"] / mlflow[-1]["rps"], 2)
        if mlflow
        else float("nan"),
        "service_vs_in_process_sklearn_single_row_at_32": round(service[-1]["rps"] / sklearn_row["rps"], 2),
        "service_p99_ms_at_8": service[1]["p99_ms"],
        "service_errors_up_to_32": sum(r["errors"] for r in service),
        "in_process_served_single_row_ms": results["in-process served"][0]["p50_ms"],
        "sklearn_vs_served_single_row_speedup": round(
            sklearn_row["p50_ms"] / results["in-process served"][0]["p50_ms"], 1
        ),
        "batch_scoring_compiled_vs_sklearn_same_chunks": round(
            scoring["champion, every core"]["compiled"] / scoring["champion, every core"]["sklearn"], 2
        ),
        "batch_predict_vs_in_process_predict": round(
            scoring["batch-predict end to end"] / scoring["in-process sklearn predict"]["every core"], 2
        ),
        "batch_1000_per_request_service_vs_in_process_predict": round(
            batch_rows.get("service", 0) / batch_rows["in-process sklearn predict"], 2
        ),
        "service_open_loop_p99_ms_at_half": tails["service"]["open_loop"]["p99_ms"],
        "service_open_loop_errors": tails["service"]["open_loop"]["errors"],
    }


def tail_only(args: argparse.Namespace) -> int:
    """The service alone under wrk and the open-loop client; with --compare, once per value of an
    environment variable, alternating, each start with its own prediction log."""
    from pipelines.batch.scoring import champion_path
    from pipelines.core import config
    from pipelines.serving import bundle

    params = config.load_params(ROOT / "params.yaml")
    model_dir = champion_path(ROOT, params)
    features = bundle.load(model_dir).features
    holdout = pd.read_parquet(ROOT / params["paths"]["holdout"])
    bodies = [
        json.dumps({"records": [r]}).encode() for r in json.loads(holdout[features].to_json(orient="records"))
    ]
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-tail-"))
    var, values = (
        (args.compare.split("=", 1)[0], args.compare.split("=", 1)[1].split(","))
        if args.compare
        else (None, [None])
    )
    print(
        f"the service under wrk ({LEVELS} connections, {args.wrk_seconds} s each) and open loop; logs in {workdir}",
        flush=True,
    )
    tails: dict[str, dict] = {}
    for round_ in range(args.rounds if var else 1):
        for value in values:
            label = f"service {var}={value}" if var else "service"
            label += f" #{round_ + 1}" if var and args.rounds > 1 else ""
            run_dir = workdir / label.replace(" ", "_").replace("#", "")
            run_dir.mkdir()
            spec = servers(model_dir, params, run_dir)["service"]
            env = {**spec["env"], **({var: value} if var else {})}
            proc = start(spec["cmd"], env, spec["ready"], run_dir / "service.log")
            try:
                tails[label] = tail(spec["url"], bodies, run_dir, spec["log_dir"], args, proc.pid)
            finally:
                stop(proc)
            print(tail_table({label: tails[label]}), flush=True)
    print("\n" + tail_table(tails))
    out = ROOT / "bench" / "results" / f"serve-tail-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"compare": args.compare, "tail": tails}, indent=2))
    print(f"\nwritten: {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000, help="requests per level")
    parser.add_argument("--seconds", type=float, default=20, help="time bound per level")
    parser.add_argument("--only", default="mlflow,fastapi,service")
    parser.add_argument("--batch-rows", type=int, default=200_000, help="rows of the batch-scoring file")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--wrk-seconds", type=int, default=8, help="each wrk level")
    parser.add_argument("--open-seconds", type=float, default=10, help="the open-loop run")
    parser.add_argument(
        "--tail", action="store_true", help="only the service under wrk and the open-loop client"
    )
    parser.add_argument(
        "--compare",
        metavar="VAR=A,B",
        help="with --tail: the service once per value of environment variable VAR, side by side",
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --compare: rounds of A, B, ...")
    args = parser.parse_args()
    only = args.only.split(",")
    if args.tail:
        return tail_only(args)

    from threadpoolctl import threadpool_limits

    from pipelines.batch.scoring import champion_path
    from pipelines.core import config
    from pipelines.serving import bundle, runtimes

    threadpool_limits(1)
    params = config.load_params(ROOT / "params.yaml")
    model_dir = champion_path(ROOT, params)
    loaded = bundle.load(model_dir)
    holdout = pd.read_parquet(ROOT / params["paths"]["holdout"])
    records = json.loads(holdout[loaded.features].to_json(orient="records"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(
        f"champion v{loaded.version} ({loaded.meta.get('candidate')}), served by {loaded.runtime}; "
        f"{len(records)} holdout records; logs in {workdir}",
        flush=True,
    )

    results: dict[str, list[dict]] = {}
    for name, figures in in_process(loaded, records, seconds=10).items():
        results[name] = [figures]
    print(table(results), flush=True)
    steps = breakdown(loaded, records, workdir)
    scoring = batch_scoring(loaded, holdout, args.batch_rows, args.chunk_rows, workdir, model_dir)
    print("batch scoring, rows/s:", scoring, flush=True)

    batch = records[:1000]
    X = pd.DataFrame.from_records(batch, columns=loaded.features)
    times = []
    for _ in range(5):
        start_time = time.perf_counter()
        runtimes.model_outputs(loaded.model, X, loaded.task)
        times.append(time.perf_counter() - start_time)
    batch_rows = {"in-process sklearn predict": round(len(batch) / statistics.median(times), 1)}

    tails: dict[str, dict] = {}
    (workdir / "empty-bodies.jsonl").write_text("{}\n")
    for name, spec in servers(model_dir, params, workdir).items():
        if name not in only:
            continue
        proc = start(spec["cmd"], spec["env"], spec["ready"], workdir / f"{name}.log")
        try:
            bodies = [json.dumps(spec["wrap"]([r])).encode() for r in records]
            # wrk is the load of record (closed loop, saturating); then the open-loop client.
            tails[name] = tail(spec["url"], bodies, workdir, spec.get("log_dir"), args, proc.pid)
            results[name] = tails[name]["levels"]
            if name == "service":
                # The HTTP floor: an endpoint that does nothing, same server.
                empty = spec["url"].replace("/predict", "/empty")
                results["service /empty"] = [
                    wrk(empty, workdir / "empty-bodies.jsonl", c, args.wrk_seconds, workdir) for c in LEVELS
                ]
                # For comparison only: the Python client this bench used before wrk, which
                # cannot load the service hard enough to show its tail.
                results["service (aiohttp client)"] = [
                    asyncio.run(load(spec["url"], bodies, c, args.requests, args.seconds)) for c in LEVELS
                ]
            big = [json.dumps(spec["wrap"](batch)).encode()]
            run = asyncio.run(load(spec["url"], big, 1, 20, args.seconds))
            batch_rows[name] = round(run["rps"] * len(batch), 1) if run["errors"] == 0 else 0.0
        finally:
            stop(proc)
        print(table({k: v for k, v in results.items() if k.startswith(name)}), flush=True)

    print("\n" + table(results))
    print("\n" + tail_table(tails))
    print("\n1,000 records per request, rows/s:", batch_rows)
    print("batch scoring, rows/s:", json.dumps(scoring, indent=1))
    for name, value in scoring.items():
        if isinstance(value, dict) and "compiled" in value:
            print(
                f"  {name}: compiled / sklearn on the same chunks = {value['compiled'] / value['sklearn']:.2f}"
            )
    if "service" in results:
        c1 = results["service"][0]["p50_ms"] * 1000
        floor = results["service /empty"][0]["p50_ms"] * 1000
        # The steps above, without their total answer() (its parts are listed), leave the rest.
        measured = sum(v for k, v in steps.items() if k != "whole answer()")
        steps["HTTP, ASGI, BentoML and batcher (the rest of p50 at 1 client)"] = round(c1 - measured, 1)
        steps["for reference: /empty p50 at 1 client"] = round(floor, 1)
        steps["for reference: /predict p50 at 1 client"] = round(c1, 1)
    print("\nwhere a single-record request spends its time (median µs):")
    for name, value in steps.items():
        print(f"  {name:<62} {value:>9}")
    report = {
        "runtime": loaded.runtime,
        "results": results,
        "batch_rows_per_s": batch_rows,
        "batch_scoring": scoring,
        "breakdown_us": steps,
        "tail": tails,
    }
    if "service" in results:
        figures = ratios(results, batch_rows, scoring, tails)
        print(f"\n{'figure':<55} {'value':>8}  target  issue  verdict")
        for key, op, goal, issue in TARGETS:
            value = figures[key]
            verdict = (
                ""
                if goal is None
                else ("PASS" if (value >= goal if op == ">=" else value <= goal) else "FAIL")
            )
            target = "" if goal is None else f"{op} {goal}"
            print(f"{key:<55} {value:>8}  {target:<7} #{issue}     {verdict}")
        report["ratios"] = figures
    out = ROOT / "bench" / "results" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
