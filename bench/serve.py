"""Serving speed, side by side in one run on one machine and one champion.

What it serves, each measured with the same load (single-record requests from the holdout, at
1, 8 and 32 concurrent clients; then 1,000 records per request):

  in-process      the packaged champion called in this process, one row at a time  (the limit)
  mlflow          `mlflow models serve` of the registry's champion                  (the peer)
  fastapi         bench/naive_fastapi.py: one DataFrame per request                  (the naive baseline)
  service         `bentoml serve service:Predictor`                                  (what we ship)

The load goes to 127.0.0.1 only; each level is bounded by a request count and a time limit.
Run from the project root after `make run`:  .venv/bin/python bench/serve.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
LEVELS = (1, 8, 32)


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
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
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


def in_process(loaded, records: list[dict], seconds: float = 10.0) -> dict:
    """The limit: the champion called in this process, one DataFrame row at a time."""
    from pipelines import serving

    latencies = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end and i < 5000:
        start = time.perf_counter()
        serving.answer_frame(loaded, pd.DataFrame.from_records([records[i % len(records)]], columns=loaded.features))
        latencies.append(time.perf_counter() - start)
        i += 1
    ms = np.array(latencies) * 1000
    return {
        "concurrency": 1, "requests": len(ms), "rps": round(len(ms) / (sum(latencies)), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3), "errors": 0,
    }


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
    from pipelines import tracking
    from pipelines.package import bentoml_home

    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("API_KEY", None)
    env.pop("API_KEY_FILE", None)
    uri = tracking.tracking_uri(tracking.store_dir(ROOT, params["tracking"]["store"]))
    name = params["promote"]["registered_model"]
    ports = {k: free_port() for k in ("mlflow", "fastapi", "service")}
    return {
        "mlflow": {
            "cmd": [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion", "--env-manager", "local",
                    "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1"],
            "env": {**env, "MLFLOW_TRACKING_URI": uri},
            "ready": f"http://127.0.0.1:{ports['mlflow']}/ping",
            "url": f"http://127.0.0.1:{ports['mlflow']}/invocations",
            "wrap": lambda recs: {"dataframe_records": recs},
        },
        "fastapi": {
            "cmd": [str(BIN / "uvicorn"), "bench.naive_fastapi:app", "--host", "127.0.0.1", "--port", str(ports["fastapi"]),
                    "--log-level", "warning"],
            "env": {**env, "BENTOML_MODEL_DIR": str(model_dir), "PYTHONPATH": str(ROOT)},
            "ready": f"http://127.0.0.1:{ports['fastapi']}/docs",
            "url": f"http://127.0.0.1:{ports['fastapi']}/predict",
            "wrap": lambda recs: {"records": recs},
        },
        "service": {
            "cmd": [str(BIN / "bentoml"), "serve", "service:Predictor", "--host", "127.0.0.1", "--port", str(ports["service"])],
            "env": {**env, "BENTOML_HOME": str(bentoml_home(ROOT, params)), "PREDICTION_LOG_DIR": str(workdir / "predlog")},
            "ready": f"http://127.0.0.1:{ports['service']}/readyz",
            "url": f"http://127.0.0.1:{ports['service']}/predict",
            "wrap": lambda recs: {"records": recs},
        },
    }


def table(results: dict) -> str:
    lines = [f"{'served by':<11} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"{name:<11} {r['concurrency']:>7} {r['rps']:>9} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['p99_ms']:>8} {r['errors']:>6}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="requests per level")
    parser.add_argument("--seconds", type=float, default=20, help="time bound per level")
    parser.add_argument("--only", default="in-process,mlflow,fastapi,service")
    args = parser.parse_args()
    only = args.only.split(",")

    from threadpoolctl import threadpool_limits

    from pipelines import config, serving
    from pipelines.batch import champion_path

    threadpool_limits(1)
    params = config.load_params(ROOT / "params.yaml")
    model_dir = champion_path(ROOT, params)
    loaded = serving.load(model_dir)
    holdout = pd.read_parquet(ROOT / params["paths"]["holdout"])
    records = json.loads(holdout[loaded.features].to_json(orient="records"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"champion v{loaded.version} ({loaded.meta.get('candidate')}), {len(records)} holdout records; logs in {workdir}")

    results: dict[str, list[dict]] = {}
    batch_rows: dict[str, float] = {}
    batch = records[:1000]
    if "in-process" in only:
        results["in-process"] = [in_process(loaded, records)]
        X = pd.DataFrame.from_records(batch, columns=loaded.features)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            serving.answer_frame(loaded, X)
            times.append(time.perf_counter() - t)
        batch_rows["in-process"] = round(len(batch) / statistics.median(times), 1)

    for name, spec in servers(model_dir, params, workdir).items():
        if name not in only:
            continue
        proc = start(spec["cmd"], spec["env"], spec["ready"], workdir / f"{name}.log")
        try:
            bodies = [json.dumps(spec["wrap"]([r])).encode() for r in records]
            asyncio.run(load(spec["url"], bodies[:50], 4, 100, 10))  # warm-up
            results[name] = [asyncio.run(load(spec["url"], bodies, c, args.requests, args.seconds)) for c in LEVELS]
            big = [json.dumps(spec["wrap"](batch)).encode()]
            run = asyncio.run(load(spec["url"], big, 1, 20, args.seconds))
            batch_rows[name] = round(run["rps"] * len(batch), 1) if run["errors"] == 0 else 0.0
        finally:
            stop(proc)
        print(table({name: results[name]}), flush=True)

    print("\n" + table(results))
    print("\n1,000 records per request, rows/s:", batch_rows)
    report = {"results": results, "batch_rows_per_s": batch_rows}
    if {"service", "mlflow", "in-process"} <= results.keys():
        svc32 = results["service"][-1]["rps"]
        ratios = {
            "service_vs_mlflow_at_32": round(svc32 / results["mlflow"][-1]["rps"], 2),
            "service_vs_in_process_single_row": round(svc32 / results["in-process"][0]["rps"], 2),
            "service_p99_ms_at_8": results["service"][1]["p99_ms"],
            "service_errors_up_to_32": sum(r["errors"] for r in results["service"]),
            "batch_1000_service_vs_in_process": round(batch_rows.get("service", 0) / batch_rows["in-process"], 2),
        }
        targets = {"service_vs_mlflow_at_32": (">=", 3), "service_vs_in_process_single_row": (">=", 0.8),
                   "service_p99_ms_at_8": ("<=", 25), "service_errors_up_to_32": ("<=", 0)}
        print("\ntarget                              figure    target  verdict")
        for key, value in ratios.items():
            op, goal = targets.get(key, ("", None))
            verdict = "" if goal is None else ("PASS" if (value >= goal if op == ">=" else value <= goal) else "FAIL")
            print(f"{key:<35} {value:>7} {op:>4}{'' if goal is None else goal:>5}  {verdict}")
        report["ratios"] = ratios
    out = ROOT / "bench" / "results" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
