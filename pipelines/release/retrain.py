"""`make retrain`: new labelled rows -> a new DVC data version -> `dvc repro` -> the gate.

python -m pipelines retrain [--in FILE] [--trigger labels|drift|performance|schedule]

The rows come from FILE (the source's columns, the target among them, freshest last) or, without
it, from the service's log: the labels posted to /feedback joined to the answered predictions
(pipelines/release/retrain_rows.py). In order, a retrain is refused, in one line, when:
- the rows are the same as the last retrain's (their digest), or none of them is new (every row
  is already in the source or in a batch): unchanged data never retrains;
- they break the data contract (nothing is written);
- fewer than `retrain.min_new_rows` are new;
- the last retrain that made a data version is less than `retrain.cooldown_hours` old;
- the pipeline is not up to date with its committed data (`dvc status`), or dvc.lock holds
  uncommitted changes: the retrain's commit must hold its own data version and nothing else.
Then the new rows become `<paths.labelled_batches>/<UTC stamp>.parquet`, tracked by `dvc add`; `dvc repro`
rebuilds what depends on them (a failure takes the batch out again and restores dvc.lock); the
data-version files are committed (retrain.commit); and the gate decides (promotion.py), with the
trigger and the data versions (DVC md5 of paths.labelled_batches before and after) in its record.
docs/retraining.md has the whole policy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines.core import files, stores
from pipelines.core.errors import ContractViolation, ParamsError, PipelineError
from pipelines.data import contract, labelled
from pipelines.release import on_pass, promotion, registry, retrain_rows

TRIGGERS = ("labels", "drift", "performance", "schedule")
LOCK = "dvc.lock"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check(params: dict[str, Any]) -> dict[str, Any]:
    """params.yaml `retrain:` and the paths it needs, refused in one line when they make no sense."""
    rules = params.get("retrain")
    if not isinstance(rules, dict):
        raise ParamsError("params.yaml has no retrain section")
    if not _number(rules.get("fresh_share")) or not 0 < rules["fresh_share"] < 1:
        raise ParamsError("retrain.fresh_share must be a share between 0 and 1")
    if not _number(rules.get("fresh_min_delta")):
        raise ParamsError("retrain.fresh_min_delta must be a number")
    if (
        not isinstance(rules.get("min_new_rows"), int)
        or isinstance(rules["min_new_rows"], bool)
        or rules["min_new_rows"] < 1
    ):
        raise ParamsError("retrain.min_new_rows must be a positive integer")
    if not _number(rules.get("cooldown_hours")) or rules["cooldown_hours"] < 0:
        raise ParamsError("retrain.cooldown_hours must be a number of hours, 0 or more")
    if not isinstance(rules.get("commit"), bool):
        raise ParamsError("retrain.commit must be true or false")
    if not params.get("paths", {}).get("labelled_batches"):
        raise ParamsError("paths.labelled_batches must name the folder of labelled batches")
    for key in ("labelled", "fresh_holdout"):
        if not params.get("paths", {}).get(key):
            raise ParamsError(f"paths.{key} is missing from params.yaml")
    return rules


def last_retrain(store: Path) -> dict[str, Any] | None:
    """The newest retrain that made a data version, from the store's decision log."""
    path = store / registry.DECISIONS_FILE
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        info = entry.get("retrain") if isinstance(entry, dict) else None
        if isinstance(info, dict) and info.get("data_version_new"):
            found = info
    return found


def unchanged(rows: pd.DataFrame, known: pd.DataFrame, last: dict | None) -> str | None:
    """Why these rows are no new data (one line), or None. `known` is every row the data already
    holds (source and batches), `last` the last retrain's record."""
    if last is not None and last.get("input_digest") == labelled.digest(rows):
        return f"unchanged data: the same {len(rows)} rows as the last retrain ({last.get('at')})"
    if not len(new_rows(rows, known)):
        return f"unchanged data: all {len(rows)} rows are already in the source or a labelled batch"
    return None


def premature(new: pd.DataFrame, last: dict | None, rules: dict, now: datetime) -> str | None:
    """Why these new rows must not retrain yet (one line), or None: too few, or too soon."""
    if len(new) < rules["min_new_rows"]:
        return f"{len(new)} new labelled rows, fewer than retrain.min_new_rows ({rules['min_new_rows']})"
    if last is not None:
        since = now - datetime.fromisoformat(last["at"])
        if since < timedelta(hours=rules["cooldown_hours"]):
            return (
                f"cool-down: the last retrain ({last['at']}) was {since.total_seconds() / 3600:.1f} h ago, "
                f"retrain.cooldown_hours is {rules['cooldown_hours']}"
            )
    return None


def new_rows(rows: pd.DataFrame, known: pd.DataFrame) -> pd.DataFrame:
    """The rows not already in `known`, once each, in their order (freshest last)."""
    hashes = labelled.row_hashes(rows)
    seen = set(labelled.row_hashes(known).tolist())
    fresh = pd.Series([h not in seen for h in hashes.tolist()], index=rows.index)
    unique = ~pd.Series(hashes, index=rows.index).duplicated()
    return rows[fresh & unique].reset_index(drop=True)


def _run(args: list[str], root: Path, what: str) -> str:
    done = subprocess.run(args, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise PipelineError(f"{what} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout


def dvc(root: Path, *args: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], root, f"dvc {args[0]}")


def git(root: Path, *args: str) -> str:
    return _run(["git", *args], root, f"git {args[0]}")


def data_version(root: Path, folder: str) -> str | None:
    """The DVC md5 of the labelled folder, as dvc.lock's ingest stage recorded it."""
    path = root / LOCK
    if not path.is_file():
        return None
    lock = yaml.safe_load(path.read_text()) or {}
    for stage in (lock.get("stages") or {}).values():
        for dep in stage.get("deps") or []:
            if dep.get("path") == folder:
                return dep.get("md5")
    return None


def _require_up_to_date(root: Path, commit: bool) -> None:
    status = dvc(root, "status", "--json")
    if json.loads(status or "{}"):
        raise PipelineError(
            "the pipeline is not up to date with its data (dvc status): run `make repro` first"
        )
    if commit and (root / ".git").exists() and git(root, "status", "--porcelain", "--", LOCK).strip():
        raise PipelineError(
            f"{LOCK} has uncommitted changes: commit them first, so the retrain commits only its data"
        )


def _known(root: Path, params: dict, like: pd.DataFrame) -> pd.DataFrame:
    batches = labelled.read_batches(root / params["paths"]["labelled_batches"], like)
    return pd.concat([like, batches], ignore_index=True)


def _snapshot(root: Path, params: dict) -> pd.DataFrame:
    path = root / params["paths"]["raw"]
    if not path.is_file():
        raise PipelineError(f"no source snapshot at {path}: run `make run` first")
    return pd.read_parquet(path)


def _rows(root: Path, params: dict, source: str | None, like: pd.DataFrame) -> pd.DataFrame:
    data = params["data"]
    if source:
        rows = retrain_rows.from_file(source)
    else:
        rows = retrain_rows.from_log(retrain_rows.log_dir(root), data["target"], data.get("ignore") or [])
    if not len(rows):
        raise PipelineError("no labelled rows: no label matches an answered prediction")
    return labelled.conform(rows, like)


def _validate(rows: pd.DataFrame, root: Path, params: dict) -> None:
    schema = contract.load_contract(root / params["paths"]["contract"])
    try:
        contract.check_frame(rows, schema)
    except ContractViolation as exc:
        raise ContractViolation(f"new labelled rows break the data contract: {exc}") from None


def _add_batch(root: Path, folder: Path, rows: pd.DataFrame, now: datetime) -> Path:
    batch = folder / f"{now.strftime('%Y%m%dT%H%M%S%fZ')}{labelled.BATCH_SUFFIX}"
    files.write_parquet(rows, batch)
    dvc(root, "add", "--quiet", str(batch.relative_to(root)))
    return batch


def _take_out(root: Path, batch: Path, lock: bytes | None) -> None:
    """Undo a batch whose `dvc repro` failed: the files, its .gitignore line, dvc.lock, the outputs."""
    for path in (batch, batch.with_name(batch.name + ".dvc")):
        path.unlink(missing_ok=True)
    ignore = batch.parent / ".gitignore"
    if ignore.is_file():
        kept = [line for line in ignore.read_text().splitlines() if line.strip() != f"/{batch.name}"]
        ignore.write_text("".join(f"{line}\n" for line in kept))
    if lock is not None:
        (root / LOCK).write_bytes(lock)
    subprocess.run(
        [sys.executable, "-m", "dvc", "checkout", "--force", "--quiet"], cwd=root, capture_output=True
    )


def _repro(root: Path, batch: Path) -> None:
    lock = (root / LOCK).read_bytes() if (root / LOCK).is_file() else None
    try:
        dvc(root, "repro")
    except PipelineError as exc:
        _take_out(root, batch, lock)
        raise PipelineError(f"{exc}; the new batch was taken out again, {LOCK} restored") from None


def commit_paths(root: Path, batch: Path) -> list[str]:
    """The data-version files: the batch's .dvc and .gitignore, dvc.lock, and the pipeline's
    git-tracked outputs (metrics, plots, reports) that changed. Nothing else, whatever else changed."""
    lock = yaml.safe_load((root / LOCK).read_text()) or {}
    outs = {out["path"] for stage in (lock.get("stages") or {}).values() for out in stage.get("outs") or []}
    fixed = {batch.with_name(batch.name + ".dvc"), batch.parent / ".gitignore", root / LOCK}
    wanted = {p.relative_to(root).as_posix() for p in fixed if p.exists()}
    status = git(root, "status", "--porcelain", "-z", "--untracked-files=all")
    for entry in status.split("\0"):
        path = entry[3:]
        if path and any(path == out or path.startswith(out.rstrip("/") + "/") for out in outs):
            wanted.add(path)
    return sorted(wanted)


def commit(root: Path, batch: Path, info: dict[str, Any]) -> str | None:
    """Commit the data version (git), with a message that says what it holds; None without git."""
    if not (root / ".git").exists():
        return None
    paths = commit_paths(root, batch)
    message = (
        f"retrain ({info['trigger']}): +{info['new_rows']} labelled rows in {info['batch']}\n\n"
        f"New data version: DVC md5 of {info['labelled']} {info['data_version_old']} -> "
        f"{info['data_version_new']}; `dvc repro` rebuilt what depends on it.\n"
        f"Rows from {info['source']}; {info['rows']} read, {info['new_rows']} new.\n"
        "The gate's decision follows in the store's promotions.jsonl (not in this commit)."
    )
    git(root, "add", "--", *paths)
    git(root, "commit", "--quiet", "-m", message, "--", *paths)
    return git(root, "rev-parse", "HEAD").strip()


def run(
    root: Path, params: dict, source: str | None = None, trigger: str = "labels", now: datetime | None = None
) -> dict[str, Any]:
    """One retrain, from new rows to the gate's decision (recorded); raises PipelineError on refusal."""
    rules = check(params)
    if trigger not in TRIGGERS:
        raise ParamsError(f"--trigger must be one of {', '.join(TRIGGERS)}")
    if stores.main_root(root) != root:
        raise PipelineError("retraining never runs inside a DVC experiment's temporary workspace")
    now = now or datetime.now(UTC)
    like = _snapshot(root, params)
    rows = _rows(root, params, source, like)
    store = stores.mlflow_store(root, params)
    last = last_retrain(store)
    known = _known(root, params, like)
    why = unchanged(rows, known, last)
    if why:
        raise PipelineError(why)
    _validate(rows, root, params)
    new = new_rows(rows, known)
    why = premature(new, last, rules, now)
    if why:
        raise PipelineError(why)
    _require_up_to_date(root, rules["commit"])
    folder = params["paths"]["labelled_batches"]
    old_version = data_version(root, folder)
    batch = _add_batch(root, root / folder, new, now)
    _repro(root, batch)
    info = {
        "at": now.isoformat(timespec="seconds"),
        "trigger": trigger,
        "source": source or f"log {retrain_rows.log_dir(root)}",
        "rows": len(rows),
        "new_rows": len(new),
        "input_digest": labelled.digest(rows),
        "batch": batch.relative_to(root).as_posix(),
        "labelled": folder,
        "data_version_old": old_version,
        "data_version_new": data_version(root, folder),
    }
    info["commit"] = commit(root, batch, info) if rules["commit"] else None
    # The data version exists now, whatever the gate says: recorded first, for the cool-down.
    files.append_jsonl(
        {"at": registry.now(), "retrain": info, "event": "data_version"}, store / registry.DECISIONS_FILE
    )
    decision = promotion.run_promotion(root, params, {"retrain": info})
    decision = on_pass.apply(root, params, decision, reason=f"retrain ({trigger})")
    promotion.record(decision, params, root)
    return decision


def summary(decision: dict[str, Any]) -> str:
    info = decision["retrain"]
    return (
        f"RETRAINED ({info['trigger']}) on +{info['new_rows']} rows, data {info['data_version_old']} -> "
        f"{info['data_version_new']}: {promotion.summary(decision)}"
    )
