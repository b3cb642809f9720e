"""Traffic against a real `bentoml serve` for the rollout tests: one POST, a background load, and
the prediction log read back (active and rotated files)."""

from __future__ import annotations

import gzip
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def post(port, path, payload, headers=None, timeout=30):
    """(status, JSON body) of one POST on a new connection; a refused or reset connection is a
    failed request all the same: status 0."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError as exc:
        return 0, {"error": type(exc).__name__}


class Load:
    """Threads sending 5-record requests back to back, each on a new connection (both workers).
    `sent` holds (monotonic time, status, body, records) per request."""

    def __init__(self, port, records, threads=2):
        self.port, self.records, self.sent = port, records, []
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, seed):
        rng = np.random.default_rng(seed)
        while not self._stop.is_set():
            start = int(rng.integers(0, len(self.records) - 5))
            status, body = post(self.port, "/predict", {"records": self.records[start : start + 5]})
            with self._lock:
                self.sent.append((time.monotonic(), status, body, 5))


def log_lines(log_dir: Path) -> list[dict]:
    """Every line of the prediction log: the active files and the rotated ones (gzipped)."""
    lines = []
    for path in sorted((log_dir / "predictions").glob("predictions.*.jsonl*")):
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        lines += [json.loads(line) for line in data.decode().splitlines() if line]
    return lines
