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
]


def ratios(results: dict, batch_rows: dict, scoring: dict) -> dict[str, float]:
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
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000, help="requests per level")
    parser.add_argument("--seconds", type=float, default=20, help="time bound per level")
    parser.add_argument("--only", default="mlflow,fastapi,service")
    parser.add_argument("--batch-rows", type=int, default=200_000, help="rows of the batch-scoring file")
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args = parser.parse_args()
    only = args.only.split(",")

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

    for name, spec in servers(model_dir, params, workdir).items():
        if name not in only:
            continue
        proc = start(spec["cmd"], spec["env"], spec["ready"], workdir / f"{name}.log")
        try:
            bodies = [json.dumps(spec["wrap"]([r])).encode() for r in records]
            asyncio.run(load(spec["url"], bodies[:50], 4, 200, 10))  # warm-up
            results[name] = [
                asyncio.run(load(spec["url"], bodies, c, args.requests, args.seconds)) for c in LEVELS
            ]
            if name == "service":  # the HTTP floor: an endpoint that does nothing, same server
                empty = spec["url"].replace("/predict", "/empty")
                results["service /empty"] = [
                    asyncio.run(load(empty, bodies, c, args.requests, args.seconds)) for c in LEVELS
                ]
            big = [json.dumps(spec["wrap"](batch)).encode()]
            run = asyncio.run(load(spec["url"], big, 1, 20, args.seconds))
            batch_rows[name] = round(run["rps"] * len(batch), 1) if run["errors"] == 0 else 0.0
        finally:
            stop(proc)
        print(table({k: v for k, v in results.items() if k.startswith(name)}), flush=True)

    print("\n" + table(results))
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
    }
    if "service" in results:
        figures = ratios(results, batch_rows, scoring)
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
