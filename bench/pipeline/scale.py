"""The `scaling` part, and the N x data it shares with the steps part: the default data repeated
N times (unique ids, Parquet), `data.source` pointed at it in a fresh project copy, `dvc repro -f`
watched, the executed notebooks kept."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .env import MB, REPO, make_copy
from .process import finished, outcome
from .repro import forced_repro

# Scaling runs only (--scaling-params reduced): fewer trees / boosting rounds, so that 100x and
# 1000x finish on a 2-core box. The pipeline's own params.yaml is never changed.
REDUCED = {
    "random_forest": {"n_estimators": 20},
    "hist_gradient_boosting": {"max_iter": 50},
}


def upsampled(source: Path, factor: int, dest: Path) -> dict[str, Any]:
    """The source table repeated `factor` times, with unique ids, as Parquet (made once)."""
    import pandas as pd

    info_file = dest.with_suffix(".json")
    if dest.exists() and info_file.exists():
        return json.loads(info_file.read_text())
    start = time.perf_counter()
    frame = pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)
    n = len(frame)
    big = frame.iloc[list(range(n)) * factor].reset_index(drop=True) if factor > 1 else frame
    if "customer_id" in big.columns:
        width = len(str(n * factor))
        big["customer_id"] = "C" + pd.Series(range(1, len(big) + 1)).astype(str).str.zfill(width)
    dest.parent.mkdir(parents=True, exist_ok=True)
    big.to_parquet(dest, index=False)
    make_s = time.perf_counter() - start
    del big, frame
    info = {
        "rows": n * factor,
        "factor": factor,
        "bytes": dest.stat().st_size,
        # The table as the pipeline reads it (text as pandas reads Parquet): the memory target's unit.
        "memory_bytes": int(pd.read_parquet(dest).memory_usage(deep=True).sum()),
        "make_s": round(make_s, 1),
    }
    info_file.write_text(json.dumps(info))
    return info


def upsampled_default(work: Path, factor: int) -> tuple[Path, dict[str, Any]]:
    """The real project's `data.source` repeated `factor` times, under work/data/; path and info."""
    default_params = yaml.safe_load((REPO / "params.yaml").read_text())
    source = REPO / default_params["data"]["source"]
    data = work / "data" / f"{source.stem}_x{factor}.parquet"
    return data, upsampled(source, factor, data)


def scaling_params(params_text: str, source: str, reduced: bool) -> tuple[str, dict[str, Any]]:
    """params.yaml with `data.source` replaced and, if `reduced`, smaller candidates; the changes."""
    params = yaml.safe_load(params_text)
    params["data"]["source"] = source
    changes: dict[str, Any] = {}
    if reduced:
        for name, spec in params["train"]["candidates"].items():
            for key, value in REDUCED.get(spec.get("model"), {}).items():
                old = (spec.get("params") or {}).get(key)
                if old is None or old > value:
                    spec.setdefault("params", {})[key] = value
                    changes[f"train.candidates.{name}.params.{key}"] = f"{old} -> {value}"
    return yaml.safe_dump(params, sort_keys=False), changes


def scaled_copy(work: Path, factor: int, data: Path, reduced: bool) -> tuple[Path, dict[str, Any]]:
    """A fresh project copy whose params.yaml reads `data` (hard-linked in); the param changes."""
    project = make_copy(work / f"scale-x{factor}")
    local = Path("data/source") / data.name
    os.link(data, project / local)
    text, changes = scaling_params((project / "params.yaml").read_text(), str(local), reduced)
    (project / "params.yaml").write_text(text)
    return project, changes


def part_scaling(
    result: dict[str, Any],
    work: Path,
    logs: Path,
    out_dir: Path,
    sizes: list[int],
    timeout: float,
    reduced: bool,
    keep: bool,
    save: Callable[[], None],
) -> None:
    """Fills `result` size by size, calling `save` after each, so a long run keeps what it has."""
    result.update({"reduced_params": reduced, "sizes": {}})
    for factor in sizes:
        data, info = upsampled_default(work, factor)
        project, result["param_changes"] = scaled_copy(work, factor, data, reduced)
        print(
            f"  scaling x{factor}: {info['rows']:,} rows ({info['bytes'] / MB:.1f} MB parquet),"
            f" timeout {timeout:.0f} s ...",
            flush=True,
        )
        res = forced_repro(project, logs / f"scale-x{factor}.log", timeout, monitor=0.5)
        res["rows"] = info["rows"]
        res["data"] = info
        res["finished"] = finished(res)
        print(
            f"  scaling x{factor}: {outcome(res)} in {res['wall_s']:.0f} s,"
            f" peak tree RSS {res.get('peak_tree_rss_mb', 0):.0f} MB,"
            f" other load {res['other_load_cores']:.2f} cores",
            flush=True,
        )
        keep_dir = out_dir / f"x{factor}"
        keep_dir.mkdir(parents=True, exist_ok=True)
        for nb in (project / "reports").glob("*.ipynb"):
            shutil.copy2(nb, keep_dir / nb.name)
        result["sizes"][str(factor)] = res
        if not keep:
            shutil.rmtree(project, ignore_errors=True)
        save()
