"""`--engine spark`: the chunks of a batch run scored by Spark tasks (mapInPandas).

A demonstration engine, for teams that already run Spark: it shows the scoring path running in
Spark's Python workers, not a Spark-native pipeline. The driver (this process) reads IN chunk by
chunk and writes OUT and the rejects file through scoring.py, as the local engine does; Spark
only scores. A batch of chunks becomes a small Spark DataFrame (one row per chunk: its number
and the chunk as bytes), each chunk its own partition; `mapInPandas` scores each one with the
local engine's code (distributed.score_task: the model shipped as bytes, digest-verified and
loaded once per Python worker), and the driver collects the batch and puts it back in order.
So the files are the local engine's row for row.

Chunks travel as pickled frames, not as Spark columns: Arrow's round trip would change the
dtypes the rules and the writers see (text cells, nullable integers), and the answers must be
the local engine's. Pickle is safe here because both ends are this run's own processes.

Spark runs as `local[2]` unless SPARK_MASTER names another master; for a local master it binds
to 127.0.0.1 and starts no UI. Paths are local only (Spark here has no Hadoop AWS jars, so the
project does not promise `s3://` with it). The JVM's output goes to a log file, which is kept
and named in the error line when the run fails. Every Spark job is bounded by a timeout
(batch.timeout_seconds) and cancelled when it passes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pickle
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.batch import distributed, scoring, tables
from pipelines.core.errors import DataError, PipelineError
from pipelines.serving import trust

# The master when SPARK_MASTER is unset: two task slots, the cores of this kind of machine.
DEFAULT_MASTER = "local[2]"
# Chunks per Spark job, per task slot: enough for every slot to have work, few enough that the
# driver holds only a few chunks' results at once.
CHUNKS_PER_SLOT = 2
APP_NAME = "pipelines-batch"
LOG_NAME = "spark.log"
_JOB_GROUP = "pipelines-batch"
# One row per chunk: its number in the job, and the chunk (or its results) as pickled bytes.
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Untrusted): ")
_IN_SCHEMA = "chunk long, payload binary"
_OUT_SCHEMA = "chunk long, result binary"


def check_local_paths(*paths: str) -> None:
    """Spark reads and writes local files only here: an URL is one line before any JVM starts."""
    for path in paths:
        if tables.is_url(path):
            raise DataError(
                f"--engine spark takes local paths only, not '{path}' "
                "(no Hadoop AWS jars here); use --engine local or dask for s3://"
            )


def master() -> str:
    return os.environ.get("SPARK_MASTER") or DEFAULT_MASTER


def _pyspark() -> Any:
    # pyspark warns about pandas 3 on import and on each mapInPandas: not the command's output,
    # which stays one line when it fails. The equality tests are what vouch for pandas 3 here.
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
    try:
        import pyspark
    except ImportError:
        raise PipelineError("pyspark is not installed: run `make spark-env`") from None
    return pyspark


# --- in a Spark Python worker ---


def score_partition(shipped: Any, kind: str, typed: dict[str, str]) -> Callable[..., Iterator[pd.DataFrame]]:
    """The mapInPandas function: each chunk of a partition scored by the local engine's path."""

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            results = [
                pickle.dumps(distributed.score_task(shipped.value, pickle.loads(payload), kind, typed))
                for payload in batch["payload"]
            ]
            yield pd.DataFrame({"chunk": batch["chunk"].to_numpy(), "result": results})

    return score


def describe_partition(shipped: Any) -> Callable[..., Iterator[pd.DataFrame]]:
    """(task, classes) from a worker: OUT's header when nothing is accepted; it proves the load."""

    def describe(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            info = pickle.dumps(distributed.describe_task(shipped.value))
            yield pd.DataFrame({"chunk": batch["chunk"].to_numpy(), "result": [info] * len(batch)})

    return describe


# --- on the driver ---


def _error(exc: BaseException, doing: str, log: Path) -> PipelineError:
    """Whatever Spark raised, as one line naming the JVM's log (never a Java stack)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, trust.Untrusted):
        return PipelineError(str(exc))
    # A worker's exception comes as a Python traceback inside Spark's message: its last line
    # ("ModuleNotFoundError: …") says what went wrong; the first only that something did.
    raised = [line for line in lines if _RAISED.match(line)]
    if raised and "Untrusted: " in raised[-1]:
        return PipelineError(raised[-1].split("Untrusted: ", 1)[1])
    what = raised[-1] if raised else (lines[0] if lines else type(exc).__name__)
    return PipelineError(f"spark: failed while {doing}: {what} (log: {log})")


class SparkScorer:
    """A session and the broadcast model: a batch of chunks per job, results put back in order."""

    def __init__(self, session: Any, model: Any, header: tuple[str, list[Any]], timeout: float, log: Path):
        self.session, self.model, self.timeout, self.log = session, model, timeout, log
        self.task, self.classes = header
        self.batch = max(1, session.sparkContext.defaultParallelism) * CHUNKS_PER_SLOT

    def results(
        self, chunks: Iterator[pd.DataFrame], kind: str, typed: dict[str, str]
    ) -> Iterator[scoring.Scored]:
        pending: list[pd.DataFrame] = []
        for raw in chunks:
            pending.append(raw)
            if len(pending) >= self.batch:
                yield from self._score(pending, kind, typed)
                pending = []
        if pending:
            yield from self._score(pending, kind, typed)

    def _score(self, raws: list[pd.DataFrame], kind: str, typed: dict[str, str]) -> Iterator[scoring.Scored]:
        rows = [(i, pickle.dumps(raw)) for i, raw in enumerate(raws)]
        frame = self.session.createDataFrame(rows, _IN_SCHEMA).repartition(len(rows), "chunk")
        scored = frame.mapInPandas(score_partition(self.model, kind, typed), _OUT_SCHEMA)
        collected = _bounded(self.session, scored.collect, self.timeout, "scoring a chunk", self.log)
        by_chunk = {row["chunk"]: pickle.loads(row["result"]) for row in collected}
        for i, raw in enumerate(raws):
            good, bad = by_chunk[i]
            yield len(raw), good, bad

    def output_columns(self, columns: list[str]) -> list[str]:
        return scoring.header(self.task, self.classes, columns)


def _bounded(session: Any, action: Callable[[], Any], timeout: float, doing: str, log: Path) -> Any:
    """`action` (a Spark job) within `timeout`: past it, the job is cancelled and the run fails."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def run() -> Any:
        # The job group is per thread: set where the job is submitted, so cancelling finds it.
        session.sparkContext.setJobGroup(_JOB_GROUP, doing, interruptOnCancel=True)
        return action()

    try:
        return pool.submit(run).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        with contextlib.suppress(Exception):
            session.sparkContext.cancelJobGroup(_JOB_GROUP)
        raise PipelineError(f"spark: no result within {timeout:g} s while {doing} (log: {log})") from None
    except PipelineError:
        raise
    except Exception as exc:
        raise _error(exc, doing, log) from None
    finally:
        pool.shutdown(wait=False)


def _conf(pyspark: Any, where: str) -> Any:
    conf = pyspark.SparkConf().setMaster(where).setAppName(APP_NAME)
    conf.set("spark.ui.enabled", "false")
    conf.set("spark.ui.showConsoleProgress", "false")  # the bar is tqdm's, on a terminal only
    conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    conf.set("spark.pyspark.python", sys.executable)  # workers import this project from this venv
    conf.set("spark.pyspark.driver.python", sys.executable)
    if where.startswith("local"):  # no network: every port on loopback
        conf.set("spark.driver.host", "127.0.0.1")
        conf.set("spark.driver.bindAddress", "127.0.0.1")
    return conf


def _package_root() -> str:
    """Where this process imported this module from: Spark's Python workers import it there too.
    (This module's, not `pipelines`': a partial `pipelines/` beside a bento may shadow the top.)"""
    return str(Path(__file__).resolve().parents[2])


def _start(pyspark: Any, timeout: float, folder: Path) -> Any:
    """A session whose JVM runs in `folder` and writes its log there, started within `timeout`."""
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    where, log = master(), folder / LOG_NAME
    conf = _conf(pyspark, where)
    # Workers start in the JVM's folder, which is on their sys.path first: a fresh one, so no
    # `pipelines/` of the user's working folder shadows this project's package.
    path = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p)
    conf.set("spark.executorEnv.PYTHONPATH", path)
    env = {**os.environ, "PYTHONPATH": path, "PYSPARK_PYTHON": sys.executable}
    # SparkContext takes the workers' interpreter from this process's environment, not its conf
    # (pyspark 4.3), and `python3` on PATH may be another environment: this one, unless chosen.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if where.startswith("local"):
        env["SPARK_LOCAL_IP"] = "127.0.0.1"

    def start() -> Any:
        with log.open("ab") as handle:
            popen = {"stdout": handle, "stderr": handle, "env": env, "cwd": folder}
            gateway = launch_gateway(conf, popen_kwargs=popen)
        context = pyspark.SparkContext(conf=conf, gateway=gateway)
        context.setLogLevel("ERROR")
        return SparkSession(context)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(start).result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        raise PipelineError(f"spark: the session did not start within {timeout:g} s (log: {log})") from None
    except Exception as exc:
        raise _error(exc, "starting the session", log) from None
    finally:
        pool.shutdown(wait=False)


def spark_engine(timeout: float = distributed.TIMEOUT_SECONDS) -> scoring.Engine:
    """An engine for scoring.run: Spark at SPARK_MASTER, or `local[2]` in this machine's JVM."""

    @contextlib.contextmanager
    def engine(model_path: Path, meta: dict[str, Any]) -> Iterator[scoring.Scorer]:
        pyspark = _pyspark()
        try:
            shipped = distributed.shipped_model(model_path)  # verified before any JVM starts
        except trust.Untrusted as exc:
            raise PipelineError(str(exc)) from None
        # The JVM's folder (its log, Spark's scratch files): removed after a run that succeeded,
        # kept for the log after one that failed.
        folder, failed = Path(tempfile.mkdtemp(prefix="spark-batch-")), True
        log = folder / LOG_NAME
        session = _start(pyspark, timeout, folder)
        try:
            model = session.sparkContext.broadcast(shipped)
            probe = session.createDataFrame([(0, b"")], _IN_SCHEMA).mapInPandas(
                describe_partition(model), _OUT_SCHEMA
            )
            rows = _bounded(session, probe.collect, timeout, "loading the model on a worker", log)
            yield SparkScorer(session, model, pickle.loads(rows[0]["result"]), timeout, log)
            failed = False
        finally:
            with contextlib.suppress(Exception):
                session.stop()
            if not failed:
                shutil.rmtree(folder, ignore_errors=True)

    return engine
