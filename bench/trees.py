"""Batch scoring by runtime, per candidate type: scikit-learn, ONNX and the native tree library.

    .venv/bin/python -m bench.trees [--rows 50000] [--rounds 3] [--candidates linear,forest,hgb]

Trains each candidate of params.yaml's `train.candidates` (the bench's settings: the project's
own) on the default data's training split (data/processed/train.parquet, after `make run`),
compiles it as `make package` does (ONNX: release/compilation.py; native: release/native.py),
and scores the same chunk (the holdout resampled to --rows, numbers as floats as batch scoring
feeds them) with each runtime, on one thread and on every core, side by side in one run: rounds
alternate the runtimes, and each figure is the median round. It also times the ColumnTransformer
alone, scikit-learn's and the numpy one (`runtimes.FastTransform`), to show where the time goes.
Prints a table of rows/s and ratios against scikit-learn's predict_proba, and saves
bench/results/trees-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def timed(call, rounds_out: list[float]) -> None:
    start = time.perf_counter()
    call()
    rounds_out.append(time.perf_counter() - start)


def candidates(params: dict, names: list[str] | None):
    from pipelines.modeling import models

    data = params["data"]
    train = pd.read_parquet(ROOT / params["paths"]["train"])
    holdout = pd.read_parquet(ROOT / params["paths"]["holdout"])
    features = [c for c in train.columns if c != data["target"] and c not in (data.get("ignore") or [])]
    for name, spec in params["train"]["candidates"].items():
        if names and name not in names:
            continue
        model = models.build_pipeline(
            name,
            spec,
            features=train[features],
            feature_params=params.get("features") or {},
            task=data["task"],
            seed=params["seed"],
        )
        yield name, model.fit(train[features], train[data["target"]]), holdout, features


def compiled(model, holdout: pd.DataFrame, params: dict) -> tuple[bytes | None, bytes | None, dict]:
    """(ONNX graph, native library, their records), as `make package` builds and verifies them."""
    from pipelines.modeling import metrics
    from pipelines.release import compilation, native

    data, task = params["data"], params["data"]["task"]
    positive = metrics.positive_label(holdout[data["target"]], data.get("positive_class"))
    common = {
        "target": data["target"],
        "task": task,
        "positive": positive,
        "metric": params["promote"].get("primary_metric") or metrics.primary_metric(task),
        "bounds": params["serving"]["parity"],
    }
    records = {}
    onnx, records["onnx"] = compilation.compile_model(model, holdout, **common)
    start = time.perf_counter()
    library, records["native"] = native.compile_native(model, holdout, **common)
    records["native"]["build_seconds"] = round(time.perf_counter() - start, 1)
    return onnx, library, records


def runtimes_of(model, task: str, onnx, library, records: dict, threads: int, chunk: pd.DataFrame) -> dict:
    """{runtime: (score a chunk)} for what compiled, plus the transforms alone and the native
    library alone (on `chunk`'s matrix, made once, outside the timing)."""
    from pipelines.serving.runtimes import CompiledRuntime, NativeRuntime, fast_transform

    found = {}
    if library is not None:
        lib = NativeRuntime(
            library,
            model,
            task,
            threads=threads,
            float32_input=records["native"]["input"] == "float32",
            fast=records["native"]["transform"] == "numpy",
        )
        found["native"] = lambda X: lib.run(lib.matrix_of_frame(X))
        matrix = lib.matrix_of_frame(chunk)
        found["(native library alone)"] = lambda X: lib.run(matrix)
    if onnx is not None:
        graph = CompiledRuntime(onnx, records["onnx"]["inputs"], task, threads=threads)
        found["onnx"] = lambda X: graph.run(graph.frame_feeds(X))
    fast = fast_transform(model)
    if fast is not None:
        found["numpy transform + scikit-learn estimator"] = lambda X: model[-1].predict_proba(fast.frame(X))
        found["(numpy transform alone)"] = fast.frame
    found["(scikit-learn transform alone)"] = model[0].transform
    return found


def measure(model, chunk: pd.DataFrame, found: dict, rounds: int, threads: int) -> dict[str, float]:
    from threadpoolctl import threadpool_limits

    times: dict[str, list[float]] = {"scikit-learn": [], **{k: [] for k in found}}
    estimator = model[-1]
    if "n_jobs" in estimator.get_params():
        estimator.set_params(n_jobs=1 if threads == 1 else -1)
    with threadpool_limits(1 if threads == 1 else None):
        for _ in range(rounds):
            timed(lambda: model.predict_proba(chunk), times["scikit-learn"])
            for name, call in found.items():
                timed(lambda call=call: call(chunk), times[name])
    return {name: len(chunk) / statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--candidates", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    os.chdir(ROOT)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    names = [n for n in args.candidates.split(",") if n]
    results = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": args.rows,
        "load": {},
        "candidates": {},
    }
    results["load"]["start"] = os.getloadavg()
    for name, model, holdout, features in candidates(params, names):
        chunk = (
            holdout[features]
            .sample(args.rows, replace=True, random_state=params["seed"])
            .reset_index(drop=True)
        )
        chunk = chunk.astype({c: "float64" for c in chunk.select_dtypes("number").columns})
        entry = {"model": type(model[-1]).__name__, "threads": {}}
        onnx, library, records = compiled(model, holdout, params)
        entry["records"] = {
            k: {x: v.get(x) for x in ("runtime", "engine", "reason", "build_seconds", "transform")}
            for k, v in records.items()
        }
        for threads, label in ((1, "one thread"), (0, "every core")):
            found = runtimes_of(model, params["data"]["task"], onnx, library, records, threads, chunk)
            rates = measure(model, chunk, found, args.rounds, threads)
            entry["threads"][label] = {"rows_per_s": rates, "load": os.getloadavg()}
        results["candidates"][name] = entry
        print_entry(name, entry)
    results["load"]["end"] = os.getloadavg()
    out = ROOT / "bench" / "results" / f"trees-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"saved {out.relative_to(ROOT)}")


def print_entry(name: str, entry: dict) -> None:
    print(f"\n{name} ({entry['model']}): rows/s (x scikit-learn's predict_proba on the same chunk)")
    for label, figures in entry["threads"].items():
        rates = figures["rows_per_s"]
        base = rates["scikit-learn"]
        load = ", ".join(f"{x:.2f}" for x in figures["load"])
        print(f"  {label} (load {load})")
        for runtime, rate in rates.items():
            print(f"    {runtime:<42} {rate:>12,.0f}  {rate / base:5.2f}x")
    for runtime, record in entry["records"].items():
        print(f"  {runtime}: {record}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
