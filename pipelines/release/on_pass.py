"""`rollout.on_pass: rollout`: a version that passed the gate, registered without moving champion,
becomes challenger in shadow through pipelines/release/rollout.py's `start`.

This runs after the promotion's lock is released (`start` takes the same lock), so another
command may slip in between: if a rollout is already under way by then, or the registry changed,
`start` refuses and the decision says so; `make rollout START=<version>` starts it by hand later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.core import stores
from pipelines.core.errors import PipelineError


def apply(root: Path, params: dict[str, Any], decision: dict[str, Any], reason: str) -> dict[str, Any]:
    """The decision, with `rollout_started` (and `rollout_error` when `start` refused) when a
    passing gate registered a version for a rollout; any other decision comes back unchanged."""
    if not (decision.get("promoted") and decision.get("on_pass") == "rollout"):
        return decision
    import mlflow

    from pipelines.release import rollout

    client = mlflow.MlflowClient()
    name = decision["registered_model"]
    store = stores.mlflow_store(root, params)
    try:
        rollout.start(client, name, decision["version"], params, store, reason=reason)
    except PipelineError as exc:
        return {**decision, "rollout_started": False, "rollout_error": str(exc).splitlines()[0]}
    return {**decision, "rollout_started": True}
