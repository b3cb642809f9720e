"""Reading the prediction log, operations figures and the label join, at the sizes of issue 11.

Writes N log lines with the real writer (PredictionLog: two workers, rotated and gzipped as the
service does), and labels for a share of them in the feedback format, then times:

  read + operations   every line streamed (logs.iter_frames) into the per-version figures   ≤ 5 s
  join + live metrics labels read, joined to every prediction, metrics per window          ≤ 5 s
  one pass            both from a single read of the log, as the monitor does

Run from the project root:  .venv/bin/python bench/monitor_logs.py [--lines 1000000] [--labels 100000]
`--baseline OLD_labels.py` also times an older copy of pipelines/monitoring/labels.py on the same
files, in the same run (the box is shared, so runs minutes apart are not comparable).
`--baseline-logs OLD_logs.py` does the same for pipelines/monitoring/logs.py: the three reads (read
+ operations, read alone with the join's fields, join + live metrics) are timed with the old and the
current reader in turn, `--rounds` times each, on the same files. Every figure gives the process' CPU
seconds beside the wall time and the load average, since other jobs share the 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


def timed_join(module, root: Path, reader=logs) -> tuple[float, dict]:
    """read_labels + join + live_performance of one labels module, as `make monitor` runs them."""
    started = time.perf_counter()
    frames = reader.iter_frames(root, only=module.LOG_FIELDS)
    # A baseline module from before `examples` was a parameter takes none.
    extra = {"examples": EXAMPLES} if "examples" in inspect.signature(module.join).parameters else {}
    joined = module.join(frames, module.read_labels(root), timedelta(hours=1), **extra)
    live = module.live_performance(joined, "yes", 30)
    return time.perf_counter() - started, live


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(step, *args) -> str:
    """Runs step(*args) and describes it: wall seconds, CPU seconds of the process, load average."""
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), cpu_seconds()
    step(*args)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return f"{wall:5.2f} s (CPU {cpu:.2f} s, load {load:.1f}-{os.getloadavg()[0]:.1f})"


def compare_readers(root: Path, old, rounds: int) -> None:
    """The three reads with the old and the current logs module in turn, on the same files."""
    steps = {
        "read + operations": lambda reader: operations.operations(
            operations.traffic_of(reader.iter_frames(root, only=operations.LOG_FIELDS)),
            reader.read_outcomes(root),
        ),
        "read alone, the join's fields": lambda reader: sum(
            len(frame) for frame in reader.iter_frames(root, only=labels.LOG_FIELDS)
        ),
        "join + live metrics": lambda reader: timed_join(labels, root, reader),
    }
    for name, step in steps.items():
        for n in range(rounds):
            for label, reader in (("before", old), ("after ", logs)):
                print(f"  {name:<30} round {n + 1} {label}: {measured(step, reader)}")
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

        started = time.perf_counter()
        traffic = operations.traffic_of(logs.iter_frames(root, only=operations.LOG_FIELDS))
        figures = operations.operations(traffic, logs.read_outcomes(root))
        read_ops = time.perf_counter() - started
        requests = sum(f.get("requests", 0) for f in figures.values())
        print(
            f"read + operations: {read_ops:.2f} s for {args.lines:,} lines ({requests:,} requests; target 5 s)"
        )
        for version, f in figures.items():
            print(f"  version {version}: latency ms {f.get('latency_ms')}, outcomes {f['outcomes']}")

        started = time.perf_counter()
        rows = sum(len(frame) for frame in logs.iter_frames(root, only=labels.LOG_FIELDS))
        print(f"read alone, with the join's fields: {time.perf_counter() - started:.2f} s for {rows:,} lines")

        join_s, live = timed_join(labels, root)
        report = live["labels"]
        print(f"join + live metrics: {join_s:.2f} s for {args.lines:,} predictions and "
              f"{args.labels:,} labels ({report['joined']:,} joined, {report['unknown']} unknown; target 5 s)")  # fmt: skip
        if args.baseline:
            old_s, old_live = timed_join(load_module(args.baseline), root)
            again_s, _ = timed_join(labels, root)
            same = old_live["labels"] == live["labels"] and [
                {k: v for k, v in w.items() if k != "estimated_accuracy"} for w in old_live["windows"]
            ] == [{k: v for k, v in w.items() if k != "estimated_accuracy"} for w in live["windows"]]
            print(f"  baseline {args.baseline}: {old_s:.2f} s; current again: {again_s:.2f} s; "
                  f"same report and metrics: {same}")  # fmt: skip
        # What `make monitor` does: one pass over the log feeds the operations and the join.
        started = time.perf_counter()
        traffic = {}

        def counted():
            for frame in logs.iter_frames(root, only=labels.LOG_FIELDS):
                operations.add_frame(traffic, frame)
                yield frame

        joined = labels.join(counted(), labels.read_labels(root), timedelta(hours=1), examples=EXAMPLES)
        labels.live_performance(joined, "yes", 30)
        operations.operations(traffic, logs.read_outcomes(root))
        print(f"one pass, operations + join + live metrics: {time.perf_counter() - started:.2f} s")
        if args.baseline_logs:
            print(f"old reader {args.baseline_logs} against the current one, alternating:")
            compare_readers(root, load_module(args.baseline_logs, "baseline_logs"), args.rounds)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the whole run (writing included): {peak:.0f} MB")


if __name__ == "__main__":
    main()
