"""Rollout figures for issue 12's closing note, side by side in one run on one machine.

  shadow cost   the same server, rollout off -> shadow -> off (A/B/A): wrk at saturation
                (requests/s, p50, p99), then an open-loop paced client at ~50 % of the first
                off run's rate (at saturation shadow's extra CPU shows as throughput, at a
                fixed rate as latency)
  swaps         wrk for ~30 s while the champion alias moves between two versions every ~3 s:
                wrk's non-2xx and socket errors, and the alias-change delay seen by a probe
                posting every ~20 ms on fresh connections (first answer with the new version,
                and the first of 20 consecutive such answers: both workers moved)
  canary split  share 0.1, 10,000 distinct X-Routing-Key keys: the challenger's share, the keys
                that kept their arm on a second pass, and again after a server restart

It never touches the project's registry or BentoML store: the MLflow store (`tracking.store`:
SQLite db and artifacts, whose paths are rewritten to the copy, since packaging logs the compile
record and the monitoring reference to the version's run) and the BentoML home
(reports/bento.json `bentoml_home`) are copied to a temporary folder; a second version (another
trained candidate's run, models/<candidate>/run.json) is registered there and packaged as
challenger into the copied home, in a subprocess (BentoML fixes its home at import). The bench
checks at the end that the originals did not change.

Run from the project root after `make run`:  .venv/bin/python bench/rollout.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.serve import free_port  # noqa: E402  (the path above makes `bench` importable as a script)

BIN = Path(sys.executable).parent
WRK = shutil.which("wrk") or "/usr/bin/wrk"
RESULTS = ROOT / "bench" / "results"
REWRITTEN = (  # (table, column) of the MLflow db that hold the store's absolute path
    ("runs", "artifact_uri"),
    ("experiments", "artifact_location"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
)
LUA = r"""
local bodies, i = {}, 0
local headers = {["Content-Type"] = "application/json"}
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", "/predict", headers, bodies[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# --- the copies -------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under `folder`, but BentoML's metrics and temp files."""
    found = {}
    for path in folder.rglob("*"):
        if path.is_file() and not {"prometheus_multiproc_dir", "tmp"} & set(path.parts):
            stat = path.stat()
            found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def copy_store(store: Path, work: Path) -> Path:
    """The MLflow store copied, its artifact paths pointing at the copy; returns the copy."""
    copy = work / "mlruns"
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("*.lock"))
    with sqlite3.connect(copy / "mlflow.db") as db:
        for table, column in REWRITTEN:
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (str(store), str(copy)))
    return copy


def copy_home(home: Path, work: Path) -> Path:
    copy = work / "bentoml"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("prometheus_multiproc_dir", "tmp"))
    return copy


def pick_candidate(params: dict, champion_run: str, wanted: str | None) -> str | None:
    """The candidate to register as v2: `wanted`, else the best other candidate by its holdout
    primary metric; None if the champion's is the only one."""
    from pipelines.core.layout import Layout
    from pipelines.modeling import metrics

    layout = Layout.from_paths(params["paths"])
    if wanted:
        return wanted
    others = [
        c
        for c in params["train"]["candidates"]
        if layout.run_record(c).is_file() and layout.read_run(c)["run_id"] != champion_run
    ]
    if not others:
        return None
    metric = params["promote"].get("primary_metric") or metrics.primary_metric(params["data"]["task"])
    scores = layout.read_holdout_scores(others)
    higher = metric not in ("log_loss", "rmse", "mae")
    return sorted(others, key=lambda c: scores[c][metric], reverse=higher)[0]


def register_second(client: Any, name: str, params: dict, wanted: str | None) -> tuple[str, str]:
    """v2 in the copied registry, with the digest tag the gate records; (version, candidate)."""
    from pipelines.core.layout import Layout
    from pipelines.release import artifacts, registry

    champion = registry.champion_version(client, name)
    candidate = pick_candidate(params, champion.run_id, wanted)
    if candidate is None:
        uri, positive, candidate = champion.source, champion.tags.get("positive_class"), "champion again"
    else:
        run = Layout.from_paths(params["paths"]).read_run(candidate)
        uri, positive = run["model_uri"], run.get("positive_class")
    digest = artifacts.load(uri, f"candidate {candidate}").sha256
    tags = {artifacts.DIGEST_TAG: digest, "candidate": candidate}
    if positive is not None:
        tags["positive_class"] = str(positive)
    return registry.register(client, name, uri, tags), candidate


def package_challenger(env: dict[str, str]) -> str:
    """pipelines.release.package.import_challenger into the copied home, in a subprocess."""
    code = (
        "import mlflow, yaml\n"
        "from pathlib import Path\n"
        "from pipelines.modeling import runs\n"
        "from pipelines.release import package\n"
        "params = yaml.safe_load(Path('params.yaml').read_text())\n"
        "runs.use_project_experiment(Path('.').resolve(), params)\n"
        "model = package.import_challenger(mlflow.MlflowClient(), params['promote']['registered_model'], params)\n"
        "print('PACKAGED', model.tag if model is not None else None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0 or "PACKAGED tabular-challenger" not in done.stdout:
        raise RuntimeError(f"packaging the challenger failed:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1].split()[-1]


# --- the server -------------------------------------------------------------------------------


class Server:
    """`bentoml serve service:Predictor` from the project root, on the copies; its own session."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, deadline: float = 180) -> None:
        self.port = free_port()
        cmd = [
            str(BIN / "bentoml"),
            "serve",
            "service:Predictor",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"bentoml serve not ready in {deadline} s:\n{self.log_path.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM to the server (it stops its workers), SIGKILL to its process group if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/predict", body, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError as exc:
        return 0, {"error": type(exc).__name__}


def wait_following(url: str, want: dict[str, Any], bound: float = 60, needed: int = 16) -> float:
    """Seconds until `needed` consecutive /metadata answers (fresh connections, so both workers)
    report the wanted serving state."""
    start = time.monotonic()
    streak = 0
    while time.monotonic() - start < bound:
        try:
            serving = get_json(f"{url}/metadata")["serving"]
            ok = all(serving.get(k) == v for k, v in want.items())
        except (OSError, KeyError, ValueError):
            ok = False
        streak = streak + 1 if ok else 0
        if streak >= needed:
            return time.monotonic() - start
        time.sleep(0.05)
    raise RuntimeError(f"the service did not follow the registry to {want} in {bound} s")


# --- load -------------------------------------------------------------------------------------


def wrk_cmd(url: str, script: Path, bodies: Path, seconds: int, threads: int, connections: int) -> list[str]:
    return [
        WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
        url, "--", str(bodies),
    ]  # fmt: skip


def wrk_figures(stdout: str) -> dict[str, Any]:
    line = next(x for x in stdout.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(seconds, 2),
        "rps": round(raw["requests"] / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "non_2xx": raw["status"],
        "socket_errors": {k: raw[k] for k in ("connect", "read", "write", "timeout")},
    }


def run_wrk(cmd: list[str], seconds: int) -> dict[str, Any]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr[-1000:]}")
    return wrk_figures(done.stdout)


async def paced(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: request i is sent at start + i / rate whatever the others do; its latency runs
    from that scheduled moment, so a stalled server or client is not hidden."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int, due: float) -> None:
            try:
                async with session.post(
                    f"{url}/predict",
                    data=bodies[i % len(bodies)],
                    headers={"Content-Type": "application/json"},
                ) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            except (TimeoutError, aiohttp.ClientError):
                statuses[0] = statuses.get(0, 0) + 1
            latencies.append(time.perf_counter() - due)

        start = time.perf_counter() + 0.1
        total = int(rate * seconds)
        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "rate": round(rate, 1),
        "requests": len(ms),
        "p50_ms": round(statistics.quantiles(ms, n=100)[49], 2),
        "p99_ms": round(statistics.quantiles(ms, n=100)[98], 2),
        "max_ms": round(ms[-1], 2),
        "failed": sum(n for s, n in statuses.items() if s != 200),
    }


async def keyed(url: str, bodies: list[bytes], keys: list[str], concurrency: int = 8) -> dict[str, Any]:
    """One single-record request per key (X-Routing-Key); the role that answered each."""
    import aiohttp

    roles: dict[str, str] = {}
    failed = 0
    queue = list(enumerate(keys))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def client() -> None:
            nonlocal failed
            while queue:
                i, key = queue.pop()
                headers = {"Content-Type": "application/json", "X-Routing-Key": key}
                try:
                    async with session.post(
                        f"{url}/predict", data=bodies[i % len(bodies)], headers=headers
                    ) as r:
                        answer = await r.json() if r.status == 200 else {}
                except (TimeoutError, aiohttp.ClientError):
                    answer = {}
                if "role" in answer:
                    roles[key] = answer["role"]
                else:
                    failed += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"roles": roles, "failed": failed}


# --- the three measurements ---------------------------------------------------------------------


def shadow_cost(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.release import registry, rollout

    client, name, params, store, v1, v2 = (ctx[k] for k in ("client", "name", "params", "store", "v1", "v2"))
    server = ctx["server"]
    phases = [{"phase": label} for label in ("off", "shadow", "off again")]

    def switch(label: str) -> float:
        if label == "shadow":
            rollout.start(client, name, v2, params, store, reason="bench: shadow cost")
            return wait_following(
                server.url, {"mode": "shadow", "challenger_version": v2, "champion_version": v1}
            )
        if registry.rollout_state(client, name)["mode"] != "off":
            rollout.set_mode(client, name, "off", None, params, store, reason="bench: shadow cost")
        return wait_following(server.url, {"mode": "off", "challenger_version": None, "champion_version": v1})

    # First the A/B/A at saturation, then an A/B/A at half the lowest saturated rate: a rate taken
    # from one run alone overloads the server when the shared box gets busier afterwards.
    for phase in phases:
        phase["followed_s"] = round(switch(phase["phase"]), 2)
        run_wrk(
            wrk_cmd(server.url, ctx["lua"], ctx["bodies_file"], 3, args.threads, args.connections), 3
        )  # warm
        sat = run_wrk(
            wrk_cmd(server.url, ctx["lua"], ctx["bodies_file"], args.seconds, args.threads, args.connections),
            args.seconds,
        )
        phase["saturation"] = sat
        print(f"  {phase['phase']:10} wrk {sat['rps']:7.1f} req/s p50 {sat['p50_ms']:6.2f} p99 {sat['p99_ms']:6.2f} ms", flush=True)  # fmt: skip
    # The paced client is Python on the same 2 cores: at half the saturated rate it competes with
    # the server and overloads every state alike; a quarter measures the server, not the client.
    rate = args.paced_fraction * min(p["saturation"]["rps"] for p in phases)
    for phase in phases:
        switch(phase["phase"])
        fixed = phase["paced"] = asyncio.run(paced(server.url, ctx["bodies"], rate, args.paced_seconds))
        print(f"  {phase['phase']:10} paced {fixed['rate']:.0f}/s p50 {fixed['p50_ms']:6.2f} p99 {fixed['p99_ms']:6.2f} ms", flush=True)  # fmt: skip
    off = [p for p in phases if p["phase"] != "shadow"]
    shadow = phases[1]

    def ratio(kind: str, key: str) -> float:
        return round(shadow[kind][key] / statistics.mean(p[kind][key] for p in off), 3)

    return {
        "phases": phases,
        "shadow_over_off": {
            "saturation_p99": ratio("saturation", "p99_ms"),
            "saturation_p50": ratio("saturation", "p50_ms"),
            "saturation_rps": ratio("saturation", "rps"),
            "paced_p99": ratio("paced", "p99_ms"),
            "paced_p50": ratio("paced", "p50_ms"),
        },
    }


class Probe(threading.Thread):
    """A fresh connection every ~20 ms: (monotonic time of the answer, model_version or None)."""

    def __init__(self, url: str, body: bytes, every: float = 0.02):
        super().__init__(daemon=True)
        self.url, self.body, self.every = url, body, every
        self.seen: list[tuple[float, str | None]] = []
        self.ids: list[str | None] = []  # request_id of each answer, to find its worker in the log
        self.failed = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            status, answer = post(self.url, self.body)
            if status != 200:
                self.failed += 1
            self.seen.append((time.monotonic(), answer.get("model_version") if status == 200 else None))
            self.ids.append(answer.get("request_id") if status == 200 else None)
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


def swap_delays(seen: list[tuple[float, str | None]], at: float, version: str, run: int = 20) -> tuple:
    """(first answer with `version` after `at`, first of `run` consecutive ones), in seconds."""
    after = [(t, v) for t, v in seen if t > at]
    first = next((t - at for t, v in after if v == version), None)
    streak = None
    for i in range(len(after) - run + 1):
        if all(v == version for _, v in after[i : i + run]):
            streak = after[i][0] - at
            break
    return first, streak


def workers_of(log_dir: Path, wanted: set[str]) -> dict[str, str]:
    """request_id -> the worker whose prediction log holds it (one os.write per request, so the
    active files are complete while the server runs)."""
    found: dict[str, str] = {}
    pattern = re.compile(r'"request_id":\s*"([^"]+)"')
    for path in (log_dir / "predictions").glob("predictions.*.jsonl*"):
        worker = path.name.split(".")[1]
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as lines:
            for line in lines:
                match = pattern.search(line)
                if match and match.group(1) in wanted:
                    found[match.group(1)] = worker
    return found


def per_worker(probe: Probe, writes: list[tuple[float, str]], log_dir: Path) -> dict[str, Any]:
    """For each swap and each worker, from the alias write to the first of that worker's probe
    answers from which all its answers (until the next write) carry the new version."""
    workers = workers_of(log_dir, {i for i in probe.ids if i})
    seen = [(t, v, workers.get(i or "")) for (t, v), i in zip(probe.seen, probe.ids, strict=True)]
    ends = [at for at, _ in writes[1:]] + [float("inf")]
    names = sorted({w for _, _, w in seen if w})
    swaps = []
    for (at, version), end in zip(writes, ends, strict=True):
        moved = {}
        for name in names:
            mine = [(t, v) for t, v, w in seen if w == name and at < t < end]
            stale = [t for t, v in mine if v != version]
            after = [t for t, v in mine if v == version and (not stale or t > stale[-1])]
            moved[name] = round(after[0] - at, 3) if after else None
        swaps.append(moved)
    complete = [max(m.values()) for m in swaps if m and None not in m.values()]
    return {
        "workers": names,
        "probes_per_worker": {n: sum(w == n for _, _, w in seen) for n in names},
        "per_swap": swaps,
        "last_worker_s": spread(complete),
    }


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}  # fmt: skip


def swaps(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.release import registry, rollout

    client, name, params, store, v1, v2 = (ctx[k] for k in ("client", "name", "params", "store", "v1", "v2"))
    server = ctx["server"]
    if registry.rollout_state(client, name)["mode"] != "off":
        rollout.set_mode(client, name, "off", None, params, store, reason="bench: swaps")
    wait_following(server.url, {"mode": "off", "champion_version": v1})
    cmd = wrk_cmd(
        server.url, ctx["lua"], ctx["bodies_file"], args.swap_seconds, args.threads, args.connections
    )
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    probe = Probe(server.url, ctx["bodies"][0])
    writes: list[tuple[float, str]] = []
    try:
        probe.start()
        time.sleep(2)
        current = v1
        end = time.monotonic() + args.swap_seconds - 4
        while time.monotonic() < end:
            current = v2 if current == v1 else v1
            client.set_registered_model_alias(name, "champion", current)
            at = time.monotonic()
            writes.append((at, current))
            # ~every swap_every s, but never before this swap reached both workers (bounded)
            while time.monotonic() < at + args.swap_every or (
                time.monotonic() < at + 15 and swap_delays(probe.seen, at, current)[1] is None
            ):
                time.sleep(0.05)
        out, err = load.communicate(timeout=args.swap_seconds + 60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
        probe.stop()
        client.set_registered_model_alias(name, "champion", v1)  # the copy as it was
    if load.returncode != 0:
        raise RuntimeError(f"wrk failed: {err[-1000:]}")
    figures = wrk_figures(out)
    delays = [swap_delays(probe.seen, at, version) for at, version in writes]
    firsts = [d[0] for d in delays if d[0] is not None]
    streaks = [d[1] for d in delays if d[1] is not None]

    return {
        "swaps": len(writes),
        "wrk": figures,
        "probe_requests": len(probe.seen),
        "probe_failed": probe.failed,
        "first_answer_s": spread(firsts),
        "all_workers_s": spread(streaks),
        "by_worker": per_worker(probe, writes, ctx["log_dir"]),
        "swaps_not_seen": sum(d[0] is None for d in delays),
        "swaps_not_complete": sum(d[1] is None for d in delays),
        "per_swap": [
            {"to": v, "first_s": d[0], "all_s": d[1]} for (_, v), d in zip(writes, delays, strict=True)
        ],
    }


def canary(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.release import registry, rollout

    client, name, params, store, v1, v2 = (ctx[k] for k in ("client", "name", "params", "store", "v1", "v2"))
    server = ctx["server"]
    if registry.rollout_state(client, name)["mode"] == "off":
        rollout.start(client, name, v2, params, store, reason="bench: canary")
    rollout.set_mode(client, name, "canary", args.share, params, store, reason="bench: canary")
    want = {"mode": "canary", "share": args.share, "challenger_version": v2, "champion_version": v1}
    wait_following(server.url, want)
    keys = [f"bench-key-{i}" for i in range(args.keys)]
    passes = []
    for label in ("first", "again", "after restart"):
        if label == "after restart":
            server.stop()
            server.start()
            wait_following(server.url, want)
        started = time.monotonic()
        passes.append({"label": label, **asyncio.run(keyed(server.url, ctx["bodies"], keys))})
        print(f"  canary pass {label}: {time.monotonic() - started:.1f} s", flush=True)
    first = passes[0]["roles"]

    def kept(roles: dict[str, str]) -> float:
        both = [k for k in roles if k in first]
        return round(sum(roles[k] == first[k] for k in both) / max(len(both), 1), 5)

    return {
        "share": args.share,
        "keys": len(keys),
        "challenger_share": round(sum(r == "challenger" for r in first.values()) / max(len(first), 1), 5),
        "failed": [p["failed"] for p in passes],
        "kept_arm_again": kept(passes[1]["roles"]),
        "kept_arm_after_restart": kept(passes[2]["roles"]),
        "answered": [len(p["roles"]) for p in passes],
    }


# --- report -------------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    rows = ["| what | figure |", "|---|---|"]
    for p in result["shadow"]["phases"]:
        s, f = p["saturation"], p["paced"]
        rows.append(
            f"| {p['phase']}: wrk -t{result['args']['threads']} -c{result['args']['connections']} "
            f"| {s['rps']} req/s, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms ({s['non_2xx']} non-2xx) |"
        )
        rows.append(
            f"| {p['phase']}: paced {f['rate']} req/s | p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms ({f['failed']} failed) |"
        )
    r = result["shadow"]["shadow_over_off"]
    rows.append(
        f"| shadow / off (mean of the two off runs) | saturation p99 x{r['saturation_p99']}, rps "
        f"x{r['saturation_rps']}; paced p99 x{r['paced_p99']}, p50 x{r['paced_p50']} |"
    )
    w = result["swaps"]
    errors = sum(w["wrk"]["socket_errors"].values())
    rows.append(
        f"| swaps under load: {w['swaps']} alias moves in {w['wrk']['seconds']} s of wrk "
        f"| {w['wrk']['requests']} requests, {w['wrk']['non_2xx']} non-2xx, {errors} socket errors; "
        f"probe {w['probe_requests']} requests, {w['probe_failed']} failed |"
    )
    for key, what in (("first_answer_s", "first answer"), ("all_workers_s", "20 consecutive answers")):
        d = w[key]
        rows.append(f"| alias write -> {what} with the new version (min / median / max) | {d['min']} / {d['median']} / {d['max']} s |")  # fmt: skip
    d = w["by_worker"]["last_worker_s"]
    rows.append(f"| alias write -> the last worker answers the new version (from the log; {w['by_worker']['probes_per_worker']} probes) | {d['min']} / {d['median']} / {d['max']} s |")  # fmt: skip
    c = result["canary"]
    rows.append(
        f"| canary share {c['share']}, {c['keys']} keys: answered by the challenger | {c['challenger_share']:.2%} |"
    )
    rows.append(f"| same keys again: kept their arm | {c['kept_arm_again']:.2%} |")
    rows.append(f"| same keys after a restart: kept their arm | {c['kept_arm_after_restart']:.2%} |")
    rows.append(f"| canary requests failed (per pass) | {c['failed']} |")
    return "\n".join(rows)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15, help="each wrk run of the shadow A/B/A")
    parser.add_argument("--paced-seconds", type=float, default=15, help="each paced run of the A/B/A")
    parser.add_argument(
        "--paced-fraction",
        type=float,
        default=0.25,
        help="the paced rate, as a share of the lowest saturated rate",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--swap-seconds", type=int, default=30)
    parser.add_argument("--swap-every", type=float, default=3.0)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--candidate", help="the candidate registered as v2 (default: the best other one)")
    parser.add_argument("--quick", action="store_true", help="5 s runs, 12 s of swaps, 2,000 keys")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.paced_seconds, args.swap_seconds, args.keys = 5, 5, 12, 2000
    return args


def runtimes(home: Path) -> dict[str, str]:
    """registry version -> the runtime it is packaged with (onnx or sklearn), in the copied home."""
    found = {}
    for path in (home / "models").glob("tabular-*/*/model.yaml"):
        labels = yaml.safe_load(path.read_text()).get("labels") or {}
        found[f"{path.parts[-3]} v{labels.get('registry_version')}"] = labels.get("runtime", "sklearn")
    return found


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Copies, v2 registered and packaged as challenger, the load's bodies; the env to serve."""
    import pandas as pd

    from pipelines.core import stores

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    store = stores.mlflow_store(ROOT, params).resolve()
    home = Path(json.loads((ROOT / params["paths"]["bento"]).read_text())["bentoml_home"]).resolve()
    originals = {"store": snapshot(store), "home": snapshot(home)}
    store_copy, home_copy = copy_store(store, work), copy_home(home, work)
    uri = f"sqlite:///{store_copy / 'mlflow.db'}"  # never an inherited MLFLOW_TRACKING_URI
    os.environ.update(MLFLOW_TRACKING_URI=uri, BENTOML_HOME=str(home_copy), BENTOML_DO_NOT_TRACK="true")
    import mlflow

    from pipelines.release import registry

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    name = params["promote"]["registered_model"]
    v1 = str(registry.champion_version(client, name).version)
    v2, candidate = register_second(client, name, params, args.candidate)
    from pipelines.release import rollout

    rollout.start(client, name, v2, params, store_copy, reason="bench: package the challenger")
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "API_KEY_FILE")}
    env.update(API_AUTH="off", PREDICTION_LOG_DIR=str(work / "predlog"), PYTHONUNBUFFERED="1")
    started = time.monotonic()
    challenger_tag = package_challenger(env)
    package_s = time.monotonic() - started
    rollout.set_mode(client, name, "off", None, params, store_copy, reason="bench: start off")
    holdout = pd.read_parquet(ROOT / params["paths"]["holdout"]).drop(columns=[params["data"]["target"]])
    bodies = [json.dumps({"records": [r]}).encode() for r in json.loads(holdout.to_json(orient="records"))]
    (work / "bodies.jsonl").write_bytes(b"\n".join(bodies) + b"\n")
    (work / "post.lua").write_text(LUA)
    return {
        "params": params,
        "name": name,
        "client": client,
        "store": store_copy,
        "v1": v1,
        "v2": v2,
        "candidate": candidate,
        "challenger_tag": challenger_tag,
        "package_s": round(package_s, 1),
        "env": env,
        "bodies": bodies,
        "log_dir": work / "predlog",
        "runtimes": runtimes(home_copy),
        "bodies_file": work / "bodies.jsonl",
        "lua": work / "post.lua",
        "originals": originals,
        "original_paths": (store, home),
    }


def main() -> None:
    args = parse_args()
    began, load_before = time.monotonic(), loadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    server = None
    ctx: dict[str, Any] = {}
    try:
        ctx.update(prepare(args, work))
        print(f"v{ctx['v1']} champion, v{ctx['v2']} ({ctx['candidate']}) packaged as {ctx['challenger_tag']} "
              f"in {ctx['package_s']} s; copies in {work}", flush=True)  # fmt: skip
        server = ctx["server"] = Server(ctx["env"], work / "serve.log")
        server.start()
        print("shadow cost (A/B/A):", flush=True)
        shadow = shadow_cost(ctx, args)
        load_mid = loadavg()
        print("swaps under load:", flush=True)
        swapped = swaps(ctx, args)
        print("canary split:", flush=True)
        split = canary(ctx, args)
    except BaseException:
        print(f"failed: the copies and the server's log stay in {work}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
    store, home = ctx["original_paths"]
    # Other sessions may write the project's stores meanwhile (a `make run`): the changed files are
    # listed, and the bench's own fingerprint is its "bench:" reasons in the decision log.
    touched = changed(ctx["originals"]["store"], snapshot(store)) + changed(
        ctx["originals"]["home"], snapshot(home)
    )
    decisions = store / "promotions.jsonl"
    ours = decisions.read_text().count('"bench: ') if decisions.is_file() else 0
    result = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "loadavg": [load_before, load_mid, loadavg()]},
        "args": vars(args),
        "champion_version": ctx["v1"],
        "challenger_version": ctx["v2"],
        "challenger_candidate": ctx["candidate"],
        "poll_seconds": ctx["params"]["rollout"]["poll_seconds"],
        "runtimes": ctx["runtimes"],
        "originals_changed_meanwhile": touched,
        "bench_decisions_in_original_log": ours,
        "shadow": shadow,
        "swaps": swapped,
        "canary": split,
        "wall_s": round(time.monotonic() - began, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"rollout-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"load {result['machine']['loadavg']}; wall {result['wall_s']} s; runtimes {ctx['runtimes']}")
    print(
        f"original stores: {len(touched)} files changed meanwhile (by others?); bench decisions there: {ours}"
    )
    print(f"saved {out.relative_to(ROOT)}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
