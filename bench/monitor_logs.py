"""Reading the prediction log, operations figures and the label join, at the sizes of issue 11.

Writes N log lines with the real writer (PredictionLog: two workers, rotated and gzipped as the
service does), and labels for a share of them in the feedback format, then times each step three
ways, side by side in one run: without the cache of parsed rotated files (`cache=False`), cold
(cache emptied first: rotated files parsed and written to `<log dir>/cache/`) and warm (the same
step again: rotated files read from the cache; the active files are always parsed):

  read + operations   every line streamed (logs.iter_frames) into the per-version figures   ≤ 5 s
  join + live metrics labels read, joined to every prediction, metrics per window          ≤ 5 s
  the monitor's window  every field, the last rows kept (monitor.read_window)
  one pass            operations and the join from a single read of the log
  the monitor's reads the window, then the join, in the order monitor.run reads them

Run from the project root:  .venv/bin/python bench/monitor_logs.py [--lines 1000000] [--labels 100000]
`--baseline OLD_labels.py` also times an older copy of pipelines/monitoring/labels.py on the same
files, in the same run (the box is shared, so runs minutes apart are not comparable).
`--baseline-logs OLD_logs.py` does the same for pipelines/monitoring/logs.py: the three reads (read
+ operations, read alone with the join's fields, join + live metrics) are timed with the old and the
current reader (without its cache) in turn, `--rounds` times each, on the same files. Every figure
gives the process' CPU seconds beside the wall time and the load average, since other jobs share
the 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.monitoring import labels, logs, operations
from pipelines.serving.prediction_log import PredictionLog

RECORDS_PER_REQUEST = 10
EXAMPLES = 5  # example keys per problem, as monitor.examples
NUMERIC, CATEGORICAL = 15, 5  # 20 input columns, as in the drift targets


def write_log(root: Path, lines: int, seed: int) -> list[tuple[str, int, float]]:
    """`lines` records through the real writer; returns (request_id, record, p_yes) of each."""
    rng = np.random.default_rng(seed)
    workers = [PredictionLog(root, w, {"max_bytes": 64 << 20, "fsync": "none"}) for w in (0, 1)]
    keys = []
    for i in range(lines // RECORDS_PER_REQUEST):
        numbers = rng.normal(size=(RECORDS_PER_REQUEST, NUMERIC)).round(4)
        cities = rng.choice(["paris", "lyon", "nice", "lille"], size=(RECORDS_PER_REQUEST, CATEGORICAL))
        rows = [
            {**{f"n{c}": float(v) for c, v in enumerate(n)}, **{f"c{c}": str(v) for c, v in enumerate(k)}}
            for n, k in zip(numbers, cities, strict=True)
        ]
        p_yes = rng.uniform(size=RECORDS_PER_REQUEST).round(4)
        workers[i % 2](
            f"req{i}",
            str(i % 2 + 1),  # a worker serves one version for its life: worker 0 v1, worker 1 v2
            rows,
            ["yes" if p >= 0.5 else "no" for p in p_yes],
            [{"no": float(1 - p), "yes": float(p)} for p in p_yes],
            float(rng.lognormal(1.0, 0.5)),
        )
        keys.extend((f"req{i}", r, float(p)) for r, p in enumerate(p_yes))
    for worker in workers:
        worker.close()
    return keys


def write_labels(root: Path, keys: list[tuple[str, int, float]], count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(keys), size=count, replace=False)
    folder = root / "feedback"
    folder.mkdir(mode=0o700)
    received = datetime.now(UTC)
    with open(folder / "labels.bench.jsonl", "w") as out:
        for n, index in enumerate(chosen):
            request_id, record, p_yes = keys[index]
            label = "yes" if rng.uniform() < p_yes else "no"
            stamp = (received + timedelta(microseconds=n)).isoformat()
            line = {
                "request_id": request_id,
                "record": record,
                "label": label,
                "received_at": stamp,
                "source": "bulk",
            }
            out.write(json.dumps(line) + "\n")


def frames(reader, root: Path, only=None, cache: bool = False):
    """reader.iter_frames, with `cache` passed to readers that have one (a baseline may not)."""
    if "cache" in inspect.signature(reader.iter_frames).parameters:
        return reader.iter_frames(root, only=only, cache=cache)
    return reader.iter_frames(root, only=only)


def timed_join(module, root: Path, reader=logs, cache: bool = False) -> tuple[float, dict]:
    """read_labels + join + live_performance of one labels module, as `make monitor` runs them."""
    started = time.perf_counter()
    log = frames(reader, root, module.LOG_FIELDS, cache)
    # A baseline module from before `examples` was a parameter takes none.
    extra = {"examples": EXAMPLES} if "examples" in inspect.signature(module.join).parameters else {}
    joined = module.join(log, module.read_labels(root), timedelta(hours=1), **extra)
    live = module.live_performance(joined, "yes", 30)
    return time.perf_counter() - started, live


def one_pass(root: Path, cache: bool) -> tuple[dict, dict]:
    """What `make monitor` does: one pass over the log feeds the operations and the join."""
    traffic: dict = {}

    def counted():
        for frame in logs.iter_frames(root, only=labels.LOG_FIELDS, cache=cache):
            operations.add_frame(traffic, frame)
            yield frame

    joined = labels.join(counted(), labels.read_labels(root), timedelta(hours=1), examples=EXAMPLES)
    live = labels.live_performance(joined, "yes", 30)
    return live, operations.operations(traffic, logs.read_outcomes(root))


def steps(root: Path) -> dict[str, Callable[[bool], Any]]:
    """Each step as a function of `cache`, returning what it computed (compared across the ways)."""
    return {
        "read + operations (target 5 s)": lambda cache: operations.operations(
            operations.traffic_of(logs.iter_frames(root, only=operations.LOG_FIELDS, cache=cache)),
            logs.read_outcomes(root),
        ),
        "read alone, the join's fields": lambda cache: sum(
            len(frame) for frame in logs.iter_frames(root, only=labels.LOG_FIELDS, cache=cache)
        ),
        "join + live metrics (target 5 s)": lambda cache: timed_join(labels, root, cache=cache)[1],
        "the monitor's window (every field, last 10k rows)": lambda cache: logs.recent(
            logs.iter_frames(root, cache=cache), rows=10_000
        ),
        "one pass, operations + join + live metrics": lambda cache: one_pass(root, cache),
        # monitor.run reads the window first (every field), then joins: a cold run pays one full parse.
        "the monitor's reads: window, then join + live metrics": lambda cache: (
            logs.recent(logs.iter_frames(root, cache=cache), rows=10_000),
            timed_join(labels, root, cache=cache)[1],
        ),
    }


def line_count(path: Path) -> int:
    with open(path, "rb") as lines:
        return sum(1 for _ in lines)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b, strict=True))
    return a.equals(b) if hasattr(a, "equals") else a == b


def compare_cache(root: Path) -> None:
    """Every step without the cache, cold (cache emptied first) and warm, one after the other."""
    for name, step in steps(root).items():
        print(name)
        results = []
        for way, cache in (("no cache", False), ("cold", True), ("warm", True)):
            if way == "cold":
                shutil.rmtree(root / logs.CACHE_DIR, ignore_errors=True)
            figure, result = measured(step, cache)
            results.append(result)
            print(f"  {way:<9} {figure}")
        print(f"  same result all three ways: {all(same(results[0], r) for r in results[1:])}")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(step, *args) -> tuple[str, Any]:
    """Runs step(*args): a description (wall seconds, CPU seconds of the process, load average)
    and what the step returned."""
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = step(*args)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return f"{wall:5.2f} s (CPU {cpu:.2f} s, load {load:.1f}-{os.getloadavg()[0]:.1f})", result


def compare_readers(root: Path, old, rounds: int) -> None:
    """The three reads with the old and the current logs module (no cache) in turn, same files."""
    steps = {
        "read + operations": lambda reader: operations.operations(
            operations.traffic_of(frames(reader, root, operations.LOG_FIELDS)), reader.read_outcomes(root)
        ),
        "read alone, the join's fields": lambda reader: sum(
            len(frame) for frame in frames(reader, root, labels.LOG_FIELDS)
        ),
        "join + live metrics": lambda reader: timed_join(labels, root, reader),
    }
    for name, step in steps.items():
        for n in range(rounds):
            for label, reader in (("before", old), ("after ", logs)):
                print(f"  {name:<30} round {n + 1} {label}: {measured(step, reader)[0]}")
    _, before = timed_join(labels, root, old)
    _, after = timed_join(labels, root, logs)
    print(f"  same join report and metrics with both readers: {before == after}")


def load_module(path: str, name: str = "baseline_labels"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", help="an older labels.py to time beside the current one")
    parser.add_argument("--baseline-logs", help="an older logs.py to time beside the current one")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each reader with --baseline-logs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="monitor-logs-") as folder:
        root = Path(folder)
        started = time.perf_counter()
        keys = write_log(root, args.lines, args.seed)
        write_labels(root, keys, args.labels, args.seed + 1)
        files = sorted(p.name for p in (root / "predictions").iterdir())
        size = sum(p.stat().st_size for p in (root / "predictions").iterdir()) / 2**20
        print(f"wrote {args.lines:,} lines in {len(files)} files ({size:.0f} MB on disk) "
              f"and {args.labels:,} labels in {time.perf_counter() - started:.1f} s")  # fmt: skip

        active = [p for _, p in logs.log_files(root) if not logs.LOG_FILE.fullmatch(p.name)["stamp"]]
        active_lines = sum(map(line_count, active))
        print(f"of which {active_lines:,} lines in {len(active)} active files (parsed on every read)")
        compare_cache(root)
        cache = sum(p.stat().st_size for p in (root / logs.CACHE_DIR).iterdir()) / 2**20
        print(f"cache: {cache:.0f} MB on disk for the rotated files ({logs.CACHE_COMPRESSION})")
        if args.baseline:
            _, live = timed_join(labels, root)
            old_s, old_live = timed_join(load_module(args.baseline), root)
            again_s, _ = timed_join(labels, root)
            same_live = old_live["labels"] == live["labels"] and [
                {k: v for k, v in w.items() if k != "estimated_accuracy"} for w in old_live["windows"]
            ] == [{k: v for k, v in w.items() if k != "estimated_accuracy"} for w in live["windows"]]
            print(f"  baseline {args.baseline}: {old_s:.2f} s; current: {again_s:.2f} s (no cache); "
                  f"same report and metrics: {same_live}")  # fmt: skip
        if args.baseline_logs:
            print(f"old reader {args.baseline_logs} against the current one, alternating:")
            compare_readers(root, load_module(args.baseline_logs, "baseline_logs"), args.rounds)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the whole run (writing included): {peak:.0f} MB")


if __name__ == "__main__":
    main()
