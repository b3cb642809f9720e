"""The process the `steps` part runs inside a project copy (cwd):

    python -m bench.pipeline.worker DATA OUT.jsonl reduced|default

Each stage's library calls, as the notebooks make them, timed (wall and CPU of this process, all
threads) and appended to OUT as JSON lines, so a killed run keeps the steps it finished.
Cross-validation runs as the train notebook runs it: on at most `train.cv_max_rows` training rows.
Step names are `module.function` of the package `pipelines`."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import IO, Any

import matplotlib
import matplotlib.pyplot as plt
import psutil
import yaml

import pipelines
from pipelines.core import files
from pipelines.data import contract, profiling
from pipelines.data.splitting import features_and_target, split_frame, text_as_categories
from pipelines.modeling import evaluation, metrics, models, plots, runs
from pipelines.modeling.preprocessing import build_preprocessor

from .env import MB
from .scale import scaling_params


class Steps:
    """Times calls and writes one JSON line per call to `sink`, flushed at once."""

    def __init__(self, sink: IO[str]) -> None:
        self.sink = sink

    def __call__(self, stage: str, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn(*args, **kwargs)
        record = {
            "stage": stage,
            "step": name,
            "wall_s": round(time.perf_counter() - wall, 3),
            "cpu_s": round(time.process_time() - cpu, 3),
            "rss_mb": round(psutil.Process().memory_info().rss / MB, 1),
        }
        self.sink.write(json.dumps(record) + "\n")
        self.sink.flush()
        return value


def ingest(step: Steps, data: str, params: dict[str, Any], tmp: Path) -> Any:
    raw = step("ingest", "files.read_table", files.read_table, data)
    step("ingest", "files.write_parquet", files.write_parquet, raw, tmp / "raw.parquet")
    schema = contract.load_contract(params["paths"]["contract"])
    result = step("ingest", "contract.check_frame", contract.check_frame, raw, schema)
    step("ingest", "contract.report", contract.report, result, raw, "contract", False)
    return raw


def explore(step: Steps, raw: Any, X: Any, y: Any, params: dict[str, Any], positive: Any) -> None:
    task = params["data"]["task"]
    step("explore", "profiling.overview", profiling.overview, raw)
    step("explore", "profiling.numeric_summary", profiling.numeric_summary, X)
    step(
        "explore",
        "profiling.numeric_correlation",
        profiling.numeric_correlation,
        X,
        y,
        task=task,
        positive=positive,
    )
    top = params["explore"]["top_categories"]
    step(
        "explore",
        "profiling.category_effect",
        profiling.category_effect,
        X,
        y,
        task=task,
        positive=positive,
        top=top,
    )

    def histograms(frame: Any) -> None:
        numeric = frame.select_dtypes("number").columns
        frame[numeric].hist(bins=30, figsize=(12, 2.2 * ((len(numeric) + 3) // 4)), layout=(-1, 4))
        plt.close("all")

    step("explore", "DataFrame.hist (notebook cell)", histograms, X)


def train(step: Steps, train_rows: Any, holdout: Any, params: dict[str, Any], positive: Any) -> None:
    d, seed = params["data"], params["seed"]
    task = d["task"]
    Xt, yt = features_and_target(train_rows, d["target"], d["ignore"])
    Xh, yh = features_and_target(holdout, d["target"], d["ignore"])
    Xt = step("train", "splitting.text_as_categories (train)", text_as_categories, Xt)
    Xh = step("train", "splitting.text_as_categories (holdout)", text_as_categories, Xh)

    def preprocess() -> None:
        build_preprocessor(Xt, params["features"]).fit_transform(Xt)

    step("train", "preprocessing.build_preprocessor().fit_transform", preprocess)
    for name, spec in params["train"]["candidates"].items():
        stage = f"train@{name}"
        model = models.build_pipeline(
            name, spec, features=Xt, feature_params=params["features"], task=task, seed=seed
        )
        model = step(stage, "models.fit (preprocess + estimator)", models.fit, model, Xt, yt, name)
        step(
            stage,
            "metrics.cross_validated_scores",
            metrics.cross_validated_scores,
            model,
            Xt,
            yt,
            task=task,
            positive=positive,
            folds=params["train"]["cv_folds"],
            seed=seed,
            max_rows=params["train"].get("cv_max_rows"),
        )
        scores = step(stage, "metrics.evaluate (holdout)", metrics.evaluate, model, Xh, yh, task, positive)
        frames = step(
            stage,
            "evaluation.plot_frames (holdout)",
            evaluation.plot_frames,
            model,
            Xh,
            yh,
            task=task,
            positive=positive,
            importance=params["evaluate"],
            seed=seed,
        )
        step(stage, "plots.figures", plots.figures, frames, scores, name)
        plt.close("all")
        step(
            stage, "plot CSVs: DataFrame.to_csv", lambda f=frames: [v.to_csv(index=False) for v in f.values()]
        )


def steps_worker(data: str, out: str, reduced: str) -> int:
    """Every stage's steps on `data`, in pipeline order, appended to `out`."""
    warnings.filterwarnings("ignore")
    matplotlib.use("Agg")
    if not Path(pipelines.__file__).resolve().is_relative_to(Path.cwd().resolve()):
        raise SystemExit(f"bench worker: pipelines imports from {pipelines.__file__}, not from the copy")
    text, _ = scaling_params(Path("params.yaml").read_text(), data, reduced == "reduced")
    params = yaml.safe_load(text)
    d, seed = params["data"], params["seed"]
    tmp = Path(tempfile.mkdtemp(prefix=".bench-steps-", dir="."))
    with open(out, "a") as sink:
        step = Steps(sink)
        raw = ingest(step, data, params, tmp)
        X, y = features_and_target(raw, d["target"], d["ignore"])
        positive = (
            metrics.positive_label(y, d.get("positive_class")) if d["task"] == "classification" else None
        )
        explore(step, raw, X, y, params, positive)
        split = params["split"]["holdout_size"]
        train_rows, holdout = step(
            "split",
            "splitting.split_frame",
            split_frame,
            raw,
            target=d["target"],
            task=d["task"],
            holdout_size=split,
            seed=seed,
        )
        del raw, X, y
        train(step, train_rows, holdout, params, positive)
        step("train", "runs.file_md5 (raw snapshot)", runs.file_md5, tmp / "raw.parquet")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(steps_worker(*sys.argv[1:]))
