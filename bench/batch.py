"""Batch scoring speed by engine, side by side in one run on one machine and one champion.

The file: the holdout resampled to --rows rows (1M by default), as Parquet. Each engine scores it
through `scoring.run`, the code `make batch-predict` runs, with the project's chunk size:

  local        --engine local: this process, chunk after chunk
  dask cold    --engine dask without a scheduler: a LocalCluster (one single-threaded worker
               process per core) started, shipped the model, and closed inside the timing
  dask warm    --engine dask --scheduler: a LocalCluster already running, whose workers already
               loaded the model (one run before the timed one)
  spark cold   --engine spark (when `make spark-env` installed pyspark): a local[N] session
               started, shipped the model, and stopped inside the timing

Memory: the peak resident memory of this process and its children (the cluster's workers),
sampled every 50 ms, above what they held before the run.

Run from the project root after `make package`:  .venv/bin/python bench/batch.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PeakMemory:
    """The peak RSS of this process tree above its level at the start, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self.base = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def tree_rss() -> int:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = self.tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def above_base_mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


def timed(name: str, source: Path, folder: Path, chunk_rows: int, model_dir: Path, engine: Any) -> dict:
    from pipelines.batch import scoring

    target, rejects = folder / f"{name}.parquet", folder / f"{name}.rejects.parquet"
    with PeakMemory() as memory:
        started = time.perf_counter()
        scored, refused = scoring.run(str(source), str(target), str(rejects), chunk_rows, model_dir, engine)
        seconds = time.perf_counter() - started
    rows = scored + refused
    return {
        "engine": name,
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_second": round(rows / seconds),
        "peak_memory_mb": memory.above_base_mb,
    }


def table(results: list[dict]) -> str:
    lines = [f"{'engine':<12} {'rows':>9} {'seconds':>8} {'rows/s':>10} {'vs local':>9} {'peak MB':>8}"]
    local = results[0]["rows_per_second"]
    for r in results:
        lines.append(
            f"{r['engine']:<12} {r['rows']:>9} {r['seconds']:>8} {r['rows_per_second']:>10} "
            f"{r['rows_per_second'] / local:>8.2f}x {r['peak_memory_mb']:>8}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, help="default: batch.chunk_rows in params.yaml")
    args = parser.parse_args()

    from distributed import LocalCluster

    from pipelines.batch import distributed, scoring
    from pipelines.core import config
    from pipelines.serving import bundle

    params = config.load_params(ROOT / "params.yaml")
    chunk_rows = args.chunk_rows or params["batch"]["chunk_rows"]
    model_dir = scoring.champion_path(ROOT, params)
    meta = bundle.read_meta(model_dir)
    holdout = pd.read_parquet(ROOT / params["paths"]["holdout"])
    columns = [c for c in holdout.columns if c in scoring.record_fields(meta)]
    folder = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    source = folder / "in.parquet"
    holdout[columns].sample(args.rows, replace=True, random_state=0).to_parquet(source, index=False)
    workers = distributed.worker_count()
    print(
        f"champion {model_dir.parent.name}:{model_dir.name}; {args.rows} rows x {len(columns)} columns, "
        f"chunks of {chunk_rows}; {workers} cores; files in {folder}",
        flush=True,
    )

    results = [timed("local", source, folder, chunk_rows, model_dir, scoring.local_engine)]
    print(table(results), flush=True)
    results.append(timed("dask cold", source, folder, chunk_rows, model_dir, distributed.dask_engine(None)))
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as cluster:
        warm = distributed.dask_engine(cluster.scheduler_address)
        timed("warm-up", source, folder, chunk_rows, model_dir, warm)  # imports and the model, on each worker
        results.append(timed("dask warm", source, folder, chunk_rows, model_dir, warm))
    print(table(results), flush=True)
    if importlib.util.find_spec("pyspark") is not None:
        from pipelines.batch import spark

        os.environ.setdefault("SPARK_MASTER", f"local[{workers}]")
        results.append(timed("spark cold", source, folder, chunk_rows, model_dir, spark.spark_engine()))
        print(table(results), flush=True)

    same = all(
        pd.read_parquet(folder / f"{r['engine']}.parquet").equals(pd.read_parquet(folder / "local.parquet"))
        for r in results[1:]
    )
    print(f"outputs identical to the local engine's: {same}", flush=True)
    record = {
        "rows": args.rows,
        "chunk_rows": chunk_rows,
        "cores": workers,
        "runtime": bundle.load(model_dir).runtime,
        "results": results,
        "ratios_vs_local": {
            r["engine"]: round(r["rows_per_second"] / results[0]["rows_per_second"], 2) for r in results
        },
        "identical_outputs": same,
    }
    out = ROOT / "bench" / "results" / f"batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)}")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
