"""The MLflow model registry: who is champion, promotion, rollback, and the decision records.

Promotion changes shared state, so it runs outside the DVC graph (`make promote`): the run-cache
can never skip or replay it, and `dvc exp run` never reaches it.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

CHAMPION = "champion"
PREVIOUS = "previous-champion"
HISTORY_TAG = "champion.history"  # JSON list of versions, oldest first; the last is champion


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


def _point_aliases(client: Any, name: str, versions: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(versions))
    client.set_registered_model_alias(name, CHAMPION, versions[-1])
    if len(versions) > 1:
        client.set_registered_model_alias(name, PREVIOUS, versions[-2])
    else:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # the alias may simply not exist
            client.delete_registered_model_alias(name, PREVIOUS)


def promote(client: Any, name: str, model_uri: str, tags: dict[str, str]) -> str:
    """Register a new version and make it champion; the old one becomes previous-champion."""
    import mlflow

    chain = history(client, name)
    version = mlflow.register_model(model_uri, name, tags=tags).version
    for old in chain[-1:]:
        client.set_model_version_tag(name, old, "former_champion", "true")
    client.set_model_version_tag(name, version, "promoted_at", now())
    _point_aliases(client, name, [*chain, str(version)])
    return str(version)


def rollback(client: Any, name: str, reason: str) -> tuple[str, str]:
    """Move champion one step back along the history; no version is deleted."""
    from pipelines.core.errors import PipelineError

    chain = history(client, name)
    if len(chain) < 2:
        raise PipelineError(f"'{name}' has no previous champion to roll back to")
    current, chain = chain[-1], chain[:-1]
    client.set_model_version_tag(name, current, "rolled_back_at", now())
    client.set_model_version_tag(name, current, "rollback_reason", reason)
    _point_aliases(client, name, chain)
    return current, chain[-1]
