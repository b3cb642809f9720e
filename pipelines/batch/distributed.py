"""`--engine dask`: the chunks of a batch run scored on a Dask cluster.

The driver (this process) reads IN chunk by chunk and writes OUT and the rejects file through
scoring.py, exactly as the local engine does; the workers only score. So the files are the
local engine's row for row, IN and the outputs may be anywhere the driver reaches (`s3://`
included), and the workers need nothing of the driver's filesystem:
  - the packaged model travels as its files' bytes, broadcast once; each worker rebuilds the
    folder, checks meta.json against the digest the driver verified, and loads it through
    `bundle.load`, which verifies every other file (the trust rules of the service);
  - each chunk travels as a frame, and at most a few per worker are in flight, so the driver's
    memory stays flat as the file grows.

Every call to the cluster has a timeout: connecting, starting and closing a cluster, shipping
the model, waiting for a worker, and each chunk's result. A cluster with no worker, or one that
dies or hangs, fails the run with one line instead of hanging it (docs/team.md "Batch scoring on Dask").

Task functions are top-level functions of this importable module: Dask hung for over ten
minutes on a scoring function its workers could not unpickle (PITFALLS.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.batch import scoring
from pipelines.core.errors import PipelineError
from pipelines.serving import bundle, trust

# The default of every distributed call's timeout, until params.yaml has batch.timeout_seconds.
TIMEOUT_SECONDS = 120.0
# Chunks in flight per worker: one scoring, one queued behind it, so no worker waits on the driver.
IN_FLIGHT_PER_WORKER = 2
# The files `bundle.load` reads; the monitoring reference is not served, so it stays behind.
SHIPPED_FILES = (
    bundle.MODEL_YAML,
    bundle.META_FILE,
    bundle.MODEL_FILE,
    bundle.COMPILED_FILE,
    bundle.NATIVE_FILE,
)


@dataclass(frozen=True)
class ShippedModel:
    """A packaged model as bytes: what a worker rebuilds it from. `meta_sha256` is meta.json's
    digest as the driver verified it, so a worker trusts no label that came with the bytes."""

    name: str
    files: dict[str, bytes]
    meta_sha256: str


def shipped_model(model_path: Path) -> ShippedModel:
    """The model's files, read once; meta.json and model.skops verified here, before any cluster."""
    meta = bundle.read_meta(model_path)  # raises trust.Untrusted on any mismatch
    files = {
        name: (model_path / name).read_bytes() for name in SHIPPED_FILES if (model_path / name).is_file()
    }
    what = bundle.describe(model_path)
    for name, data in files.items():
        expected = meta["digests"].get(name)
        if expected is not None and trust.sha256_bytes(data) != expected:
            raise trust.Untrusted(
                f"{what}: {name} does not match its recorded SHA-256 (tampered or replaced)"
            )
    return ShippedModel(
        name=f"{model_path.parent.name}:{model_path.name}",
        files=files,
        meta_sha256=bundle.labels(model_path)[bundle.META_LABEL],
    )


# --- on a worker ---

_LOADED: dict[str, bundle.LoadedModel] = {}  # per worker process, by meta digest: loaded once


def worker_model(shipped: ShippedModel) -> bundle.LoadedModel:
    """The shipped model, rebuilt in a private folder, verified and loaded once per process."""
    if shipped.meta_sha256 not in _LOADED:
        if trust.sha256_bytes(shipped.files[bundle.META_FILE]) != shipped.meta_sha256:
            raise trust.Untrusted(
                f"packaged model {shipped.name}: meta.json changed on its way to the worker"
            )
        with tempfile.TemporaryDirectory(prefix="batch-model-") as folder:
            for name, data in shipped.files.items():
                Path(folder, name).write_bytes(data)
            # The local engine's thread setting: the compiled graph sums its trees in an order
            # that depends on its thread count, and a different order moves ~3% of the rounded
            # probabilities by 1e-6. Same setting, same machine: the same files, row for row.
            _LOADED[shipped.meta_sha256] = bundle.load(folder, threads=scoring.COMPILED_THREADS)
    return _LOADED[shipped.meta_sha256]


def describe_task(shipped: ShippedModel) -> tuple[str, list[Any]]:
    """(task, classes): OUT's header when no row is accepted; it also loads the model early."""
    loaded = worker_model(shipped)
    return loaded.task, loaded.classes


def score_task(
    shipped: ShippedModel, raw: pd.DataFrame, kind: str, typed: dict[str, str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One chunk, through the local engine's own path (scoring.score_raw)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return scoring.score_raw(worker_model(shipped), raw, kind, typed)


# --- on the driver ---


def worker_count() -> int:
    """A LocalCluster's workers: one single-threaded process per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cluster_error(exc: BaseException, timeout: float, doing: str) -> PipelineError:
    """Whatever the cluster raised, as one line (never a traceback, never a worker's log)."""
    from distributed import KilledWorker

    if isinstance(exc, trust.Untrusted):
        return PipelineError(str(exc))
    if isinstance(exc, TimeoutError):
        return PipelineError(
            f"dask: no answer from the cluster within {timeout:g} s (workers gone or stuck?)"
        )
    if isinstance(exc, KilledWorker):
        return PipelineError(f"dask: a worker died while {doing} (see the worker's log)")
    first = str(exc).splitlines()[0] if str(exc) else ""
    return PipelineError(f"dask: failed while {doing}: {type(exc).__name__}: {first}".rstrip(": "))


class DaskScorer:
    """A connected client and the broadcast model: chunks go out, results come back in order."""

    def __init__(self, client: Any, model: Any, task: str, classes: list[Any], timeout: float) -> None:
        self.client, self.model, self.timeout = client, model, timeout
        self.task, self.classes = task, classes
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        self.window = max(1, workers) * IN_FLIGHT_PER_WORKER

    def results(
        self, chunks: Iterator[pd.DataFrame], kind: str, typed: dict[str, str]
    ) -> Iterator[scoring.Scored]:
        pending: deque[tuple[int, Any]] = deque()
        try:
            for raw in chunks:
                pending.append((len(raw), self._submit(raw, kind, typed)))
                if len(pending) >= self.window:
                    yield self._gather(*pending.popleft())
            while pending:
                yield self._gather(*pending.popleft())
        finally:
            with contextlib.suppress(Exception):  # what is left of a failed run; the client closes next
                self.client.cancel([future for _, future in pending])

    def _submit(self, raw: pd.DataFrame, kind: str, typed: dict[str, str]) -> Any:
        # Scattered, not embedded: a chunk is megabytes, which the task graph should not carry.
        try:
            data = self.client.scatter(raw, hash=False, timeout=self.timeout)
            return self.client.submit(score_task, self.model, data, kind, typed, pure=False)
        except Exception as exc:
            raise _cluster_error(exc, self.timeout, "sending a chunk") from None

    def _gather(self, read: int, future: Any) -> scoring.Scored:
        try:
            good, bad = future.result(timeout=self.timeout)
        except Exception as exc:
            raise _cluster_error(exc, self.timeout, "scoring a chunk") from None
        finally:
            future.release()
        return read, good, bad

    def output_columns(self, columns: list[str]) -> list[str]:
        return scoring.header(self.task, self.classes, columns)


def _start_local_cluster(timeout: float) -> Any:
    """A LocalCluster of single-threaded worker processes, one per core, within `timeout`."""
    import concurrent.futures

    from distributed import LocalCluster

    def start() -> Any:
        return LocalCluster(
            n_workers=worker_count(),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            # The scheduler's HTTP server always starts (health, metrics): on a free loopback
            # port, not the default 8787, which another cluster on a shared box may hold.
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,  # a worker's log lines are not the command's output
        )

    # LocalCluster has no timeout of its own: start it in a thread and stop waiting at the deadline.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(start).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise PipelineError(f"dask: the local cluster did not start within {timeout:g} s") from None
    finally:
        pool.shutdown(wait=False)


@contextlib.contextmanager
def _client(scheduler: str | None, timeout: float) -> Iterator[Any]:
    """A client of `scheduler`, or of a LocalCluster started (and closed) here."""
    from distributed import Client

    cluster = _start_local_cluster(timeout) if scheduler is None else None
    try:
        try:
            client = Client(
                cluster if cluster is not None else scheduler, timeout=timeout, set_as_default=False
            )
        except (OSError, TimeoutError):
            where = f"at '{scheduler}'" if scheduler else "of the local cluster"
            raise PipelineError(f"dask: no scheduler answered {where} within {timeout:g} s") from None
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=timeout)
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close(timeout=timeout)


def dask_engine(scheduler: str | None = None, timeout: float = TIMEOUT_SECONDS) -> scoring.Engine:
    """An engine for scoring.run: a Dask cluster at `scheduler`, or a LocalCluster of this machine."""

    @contextlib.contextmanager
    def engine(model_path: Path, meta: dict[str, Any]) -> Iterator[scoring.Scorer]:
        try:
            shipped = shipped_model(model_path)  # verified before any cluster is started or reached
        except trust.Untrusted as exc:
            raise PipelineError(str(exc)) from None
        where = f"at '{scheduler}'" if scheduler else "(local cluster)"
        with _client(scheduler, timeout) as client:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise PipelineError(
                    f"dask: no worker joined the scheduler {where} within {timeout:g} s"
                ) from None
            try:
                model = client.scatter(shipped, broadcast=True, hash=False, timeout=timeout)
                task, classes = client.submit(describe_task, model, pure=False).result(timeout=timeout)
            except Exception as exc:
                raise _cluster_error(exc, timeout, "loading the model on a worker") from None
            yield DaskScorer(client, model, task, classes, timeout)

    return engine
