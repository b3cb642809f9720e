"""The MLflow model registry: who is champion, promotion, rollback, and their crash repair.

Promotion changes shared state, so it runs outside the DVC graph (`make promote`): the run-cache
can never skip or replay it, and `dvc exp run` never reaches it.

The `champion` alias is the commit point. A promotion registers its version as
`promotion.state=pending`, moves `champion` (then `previous-champion`), writes `champion.history`,
and only then marks the version `done`. A crash between any two steps leaves a state `repair`
puts right on the next promote or rollback: a pending version that never became champion is
`abandoned` (and never counted in history), and the history follows the alias.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CHAMPION = "champion"
PREVIOUS = "previous-champion"
HISTORY_TAG = "champion.history"  # JSON list of versions, oldest first; the last is champion
STATE_TAG = "promotion.state"  # on a version: pending -> done, or abandoned (a crashed promotion)
PENDING, DONE, ABANDONED = "pending", "done", "abandoned"
LOCK_FILE = "promotions.lock"
DECISIONS_FILE = "promotions.jsonl"  # every promotion, rollback and rollout decision, one JSON line each


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def exclusive(store: Path) -> Iterator[None]:
    """Hold the store's promotion lock: one promote or rollback at a time on this machine.

    flock is released by the kernel when the holder exits, even on a crash, so a stale lock
    never blocks the next run. A waiting run blocks until the holder is done, then sees its result.
    """
    store.mkdir(parents=True, exist_ok=True)
    with open(store / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def history(client: Any, name: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    return json.loads(model.tags.get(HISTORY_TAG, "[]"))


def champion_version(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _point_previous(client: Any, name: str, versions: list[str]) -> None:
    if len(versions) > 1:
        client.set_registered_model_alias(name, PREVIOUS, versions[-2])
    else:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # the alias may simply not exist
            client.delete_registered_model_alias(name, PREVIOUS)


def _write_history(client: Any, name: str, versions: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(versions))


def repaired_history(chain: list[str], champion: str | None) -> list[str]:
    """The history that agrees with the champion alias (the alias is the commit point, so it wins).

    The alias one step back (a rollback that crashed before its history write) drops what
    follows it; an alias not in the history (a promotion that crashed after its alias move) is
    appended. Without a champion alias there is nothing to agree with: the history stays.
    """
    if champion is None:
        return chain
    if champion in chain:
        return chain[: len(chain) - chain[::-1].index(champion)]
    return [*chain, champion]


def repair(client: Any, name: str) -> list[str]:
    """Put right what a crashed promote or rollback left; returns what was done, for the record."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return []
    current = champion_version(client, name)
    champion = str(current.version) if current is not None else None
    done: list[str] = []
    for version in client.search_model_versions(f"name='{name}'"):
        if (version.tags or {}).get(STATE_TAG) != PENDING:
            continue
        number = str(version.version)
        state = DONE if number == champion else ABANDONED
        client.set_model_version_tag(name, number, STATE_TAG, state)
        done.append(f"v{number} left pending by a crashed promotion: {state}")
    chain = history(client, name)
    fixed = repaired_history(chain, champion)
    if fixed != chain:
        _write_history(client, name, fixed)
        done.append(f"{HISTORY_TAG} {chain} -> {fixed}, as the champion alias says")
    if champion is not None:
        _point_previous(client, name, fixed)
    return done


def _crown(client: Any, name: str, chain: list[str], version: str) -> None:
    """A pending `version` becomes champion after `chain`, in the order `repair` relies on: the
    champion alias (the commit point), previous-champion, the history, then done."""
    client.set_model_version_tag(name, version, "promoted_at", now())
    client.set_registered_model_alias(name, CHAMPION, version)  # the commit point
    chain = [*chain, version]
    _point_previous(client, name, chain)
    _write_history(client, name, chain)
    for old in chain[-2:-1]:
        client.set_model_version_tag(name, old, "former_champion", "true")
    client.set_model_version_tag(name, version, STATE_TAG, DONE)


def promote(client: Any, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register a new version and make it champion; the old one becomes previous-champion.

    The steps' order is what `repair` relies on (see the module note)."""
    import mlflow

    chain = history(client, name)
    version = str(mlflow.register_model(model_uri, name, tags={**tags, STATE_TAG: PENDING}).version)
    _crown(client, name, chain, version)
    return version


def rollback(client: Any, name: str, reason: str) -> tuple[str, str]:
    """Move champion one step back along the history; no version is deleted."""
    from pipelines.core.errors import PipelineError

    chain = history(client, name)
    if len(chain) < 2:
        raise PipelineError(f"'{name}' has no previous champion to roll back to")
    current, chain = chain[-1], chain[:-1]
    client.set_model_version_tag(name, current, "rolled_back_at", now())
    client.set_model_version_tag(name, current, "rollback_reason", reason)
    client.set_registered_model_alias(name, CHAMPION, chain[-1])  # the commit point
    _point_previous(client, name, chain)
    _write_history(client, name, chain)
    return current, chain[-1]


# --- Rollout roles: the challenger and the rollout state (issue 12) ---
#
# A rollout is the `challenger` alias plus registered-model tags, so every process reads one state
# from one place. Writes are ordered so that a crash between two of them never routes traffic to a
# model without a challenger alias: a rollout goes on by writing `rollout.mode` last, and off by
# writing it first (pipelines/release/rollout.py).

CHALLENGER = "challenger"
MODES = ("off", "shadow", "canary")
MODE_TAG = "rollout.mode"  # off | shadow | canary
SHARE_TAG = "rollout.share"  # the challenger's canary share, 0-1, as text
STEP_TAG = "rollout.step"  # index into params.yaml rollout.steps
SALT_TAG = "rollout.salt"  # the challenger's version: a new rollout reshuffles the canary keys
STARTED_TAG = "rollout.started_at"
UPDATED_TAG = "rollout.updated_at"
MAX_SALT_LENGTH = 64


def challenger_version(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHALLENGER)
    except MlflowException:
        return None


def _share(text: str, name: str) -> float:
    from pipelines.core.errors import PipelineError

    try:
        share = float(text)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:  # NaN fails this too
        raise PipelineError(f"'{name}' tag {SHARE_TAG} is {text[:40]!r}, not a number from 0 to 1")
    return share


def _step(text: str, name: str) -> int:
    from pipelines.core.errors import PipelineError

    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        raise PipelineError(f"'{name}' tag {STEP_TAG} is {text[:40]!r}, not a step number")
    return int(text)


def rollout_state(client: Any, name: str) -> dict[str, Any]:
    """The rollout as the registry states it; no tags mean no rollout (mode off, share 0).

    The tags are untrusted input (anyone with registry access can write them): a value that is
    malformed, or a state no rollout command writes (a rollout on without a challenger alias, a
    canary at share 0, a salt that is not the challenger's version), is refused with one line."""
    from mlflow.exceptions import MlflowException

    from pipelines.core.errors import PipelineError

    try:
        tags = dict(client.get_registered_model(name).tags or {})
    except MlflowException:
        tags = {}
    mode = tags.get(MODE_TAG, "off")
    if mode not in MODES:
        raise PipelineError(f"'{name}' tag {MODE_TAG} is {mode[:40]!r}, not one of {', '.join(MODES)}")
    share = _share(tags.get(SHARE_TAG, "0"), name)
    step = _step(tags.get(STEP_TAG, "0"), name)
    found = challenger_version(client, name)
    challenger = str(found.version) if found is not None else None
    salt = tags.get(SALT_TAG)
    if mode != "off":
        if challenger is None:
            raise PipelineError(f"'{name}' is in {mode} mode without a '{CHALLENGER}' alias")
        if mode == "canary" and share == 0.0:
            raise PipelineError(f"'{name}' is in canary mode with a share of 0")
        if salt != challenger:
            raise PipelineError(
                f"'{name}' tag {SALT_TAG} is {str(salt)[:MAX_SALT_LENGTH]!r}, not the challenger's version {challenger}"
            )
    return {
        "mode": mode,
        "share": share if mode == "canary" else 0.0,  # a share left by an earlier canary means nothing
        "step": step,
        "salt": salt,
        "challenger": challenger,
        "started_at": tags.get(STARTED_TAG),
        "updated_at": tags.get(UPDATED_TAG),
    }


def write_rollout(client: Any, name: str, tags: dict[str, str]) -> None:
    """Write rollout tags in the order given (callers put `rollout.mode` where their commit point is)."""
    for key, value in tags.items():
        client.set_registered_model_tag(name, key, value)


def set_challenger(client: Any, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHALLENGER, version)


def clear_challenger(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # the alias may simply not exist
        client.delete_registered_model_alias(name, CHALLENGER)


def promote_version(client: Any, name: str, version: str) -> str | None:
    """Make an EXISTING version champion (a rollout's challenger); returns the former champion.

    The same steps, in the same order, as `promote`, so `repair` puts a crash right the same way:
    pending, the champion alias (the commit point), previous-champion, the history, done. A version
    already in the history is refused: the alias moving back onto it would read as a crashed
    rollback (repair would cut the history), and `rollback` is the way back to a former champion."""
    from pipelines.core.errors import PipelineError

    version = str(version)
    chain = history(client, name)
    if version in chain:
        raise PipelineError(f"'{name}' v{version} is in the champion history {chain}: use rollback")
    client.set_model_version_tag(name, version, STATE_TAG, PENDING)
    _crown(client, name, chain, version)
    return chain[-1] if chain else None


# --- Registered without crowning (params.yaml rollout.on_pass: rollout) ---

REGISTERED = "registered"  # STATE_TAG of a version that passed the gate and waits as challenger


def register(client: Any, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register a new version WITHOUT moving champion: a passing gate under `rollout.on_pass:
    rollout` (the rollout's start makes it challenger). Never pending, so `repair` leaves it be;
    `promote_version` crowns it later in the usual order."""
    import mlflow

    return str(mlflow.register_model(model_uri, name, tags={**tags, STATE_TAG: REGISTERED}).version)
