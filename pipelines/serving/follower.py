"""A worker follows the registry: champion and challenger swapped in without a restart.

Each worker polls the registry's roles (`registry_view.read_roles`: the `champion` and `challenger`
aliases and the rollout's mode, share and salt) every `poll_seconds`, in a thread of its own. When
they change, it finds the packaged model of each version in the BentoML store (by its
`registry_version` label), loads and verifies it as at start-up (`bundle.load`: every file against
its digest), warms it on probe records, and only then swaps one reference, `Follower.serving`. A
request reads that reference once, so requests in flight finish on the models they started with;
the swapped-out batcher is closed once it has nothing left to answer.

The registry is untrusted and may be unreachable. Whatever goes wrong (no registry, values out of
domain, a version not packaged here, a file that fails its digest, a model that needs another
request schema) leaves the worker serving what it serves, and `status()` (in /metadata) and the
log say why. A challenger that cannot be loaded is simply absent: the champion answers everything.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from pipelines.serving import answers, bundle, routing
from pipelines.serving.batcher import Batcher
from pipelines.serving.bundle import LoadedModel
from pipelines.serving.registry_view import Roles
from pipelines.serving.schema import probe_records

log = logging.getLogger("tabular_mlops.follower")
STORE_NAMES = (bundle.MODEL_NAME, bundle.CHALLENGER_NAME)  # where `make package` puts each role
DEFAULT_POLL_SECONDS = 5.0  # for a model packaged before `rollout.poll_seconds` was packaged
WARM_CALLS = 3  # probe calls before a model takes traffic: the first ONNX runs allocate
RETIRED_GRACE_S = 30.0  # a swapped-out batcher is closed once idle and this much older
# What a swapped-in model must share with the one the app was built for: the request schema and
# its limits are fixed when the worker starts (FastAPI's model), so a model that needs others
# waits for a restart rather than answering requests validated for another.
SAME_REQUEST = ("fields", "optional_fields", "limits", "task", "registered_model")


@dataclass(frozen=True, eq=False)  # compared by identity: the same loaded arm, not equal fields
class Arm:
    """One loaded model and the batcher in front of it."""

    loaded: LoadedModel
    batcher: Batcher

    @property
    def version(self) -> str:
        return self.loaded.version


@dataclass(frozen=True)
class Serving:
    """What answers now: one immutable snapshot, swapped whole."""

    champion: Arm
    challenger: Arm | None = None
    mode: str = "off"
    share: float = 0.0
    salt: str = ""

    def route(self, key: str | None) -> tuple[str, Arm, Arm | None]:
        """(role, answering arm, shadow arm or None) for a request with this routing key."""
        if self.challenger is None or self.mode == "off":
            return routing.CHAMPION, self.champion, None
        if self.mode == "canary" and routing.arm_of(key, self.share, self.salt) == routing.CHALLENGER:
            return routing.CHALLENGER, self.challenger, self.champion
        return routing.CHAMPION, self.champion, self.challenger


INLINE_RUNTIMES = ("onnx", "native")  # ~0.05-0.2 ms a record: cheaper on the loop than a thread hop


def make_arm(loaded: LoadedModel) -> Arm:
    return Arm(
        loaded,
        Batcher(
            functools.partial(answers.answer, loaded),
            loaded.meta["limits"]["max_queue_rows"],
            inline=loaded.runtime in INLINE_RUNTIMES,
        ),
    )


def _created(model_yaml: Path) -> str:
    try:
        return str((yaml.safe_load(model_yaml.read_text()) or {}).get("creation_time") or "")
    except (OSError, yaml.YAMLError, AttributeError):
        return ""


def packaged(store: Path, registered_model: str, version: str) -> Path | None:
    """The newest packaged model of this registry version in the BentoML model store, or None."""
    found = []
    for name in STORE_NAMES:
        for folder in (store / name).glob("*/"):
            labels = bundle.labels(folder)
            if (
                labels.get("registered_model") == registered_model
                and labels.get("registry_version") == version
            ):
                found.append((_created(folder / bundle.MODEL_YAML), folder))
    return max(found)[1] if found else None


def warm(loaded: LoadedModel) -> None:
    rows = probe_records(loaded.meta["fields"])
    for _ in range(WARM_CALLS):
        loaded.record_scores(rows)


def _mismatch(meta: Mapping[str, Any], base: Mapping[str, Any]) -> str | None:
    for key in SAME_REQUEST:
        if meta.get(key) != base.get(key):
            return (
                f"its {key.replace('_', ' ')} differ from the served model's: restart the service to serve it"
            )
    return None


class Follower:
    """Keeps `serving` in step with the registry's roles (see the module's docstring)."""

    def __init__(
        self,
        initial: LoadedModel,
        store: Path,
        read: Callable[[], Roles],
        poll_seconds: float,
        arm: Callable[[LoadedModel], Arm] = make_arm,
        load: Callable[[Path], LoadedModel] = bundle.load,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.read, self.poll_seconds = store, read, poll_seconds
        self._arm, self._load, self._clock = arm, load, clock
        self.base = initial.meta  # the request schema this worker's app was built for
        self.serving = Serving(arm(initial))
        self.name = str(initial.meta.get("registered_model"))
        self._problems: dict[str, str] = {}
        self._checked: str | None = None
        self._swaps = 0
        self._retired: list[tuple[float, Arm]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync_lock = threading.Lock()

    # -- the loop -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="registry-follower")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.sync()

    # -- one poll -------------------------------------------------------------------------------
    def sync(self) -> bool:
        """Reads the roles and swaps if they changed; True when `serving` changed. Never raises."""
        with self._sync_lock:
            try:
                return self._sync()
            except Exception as exc:  # a bug here must not stop the loop, nor the worker
                log.exception("following the registry failed")
                self._problem("follower", f"following the registry failed: {type(exc).__name__}")
                return False
            finally:
                self._close_idle()

    def _sync(self) -> bool:
        try:
            roles = self.read()
        except Exception as exc:
            # The message may hold registry text: only its kind is kept.
            self._problem(
                "registry", f"the registry cannot be read ({type(exc).__name__}): serving what was loaded"
            )
            return False
        self._checked = datetime.now(UTC).isoformat(timespec="seconds")
        self._problems.pop("registry", None)
        current = self.serving
        champion = current.champion
        if roles.champion is not None and roles.champion != champion.version:
            champion = self._arm_for(roles.champion, "champion", current) or champion
        challenger = None
        if roles.challenger is not None and roles.mode != "off":
            challenger = self._arm_for(roles.challenger, "challenger", current)
        else:
            self._problems.pop("challenger", None)
        if challenger is not None and challenger.version == champion.version:
            challenger = None
        mode = roles.mode if challenger is not None else "off"
        share = roles.share if mode == "canary" else 0.0
        salt = roles.salt if challenger is not None else ""
        wanted = Serving(champion, challenger, mode, share, salt)
        if wanted == current:
            return False
        self.serving = wanted  # the swap: one reference; requests in flight keep their snapshot
        self._swaps += 1
        for arm in (current.champion, current.challenger):
            if arm is not None and arm not in (wanted.champion, wanted.challenger):
                self._retired.append((self._clock(), arm))
        log.info(
            "serving champion v%s%s",
            champion.version,
            f", challenger v{challenger.version} in {mode} (share {share:g})" if challenger else "",
        )
        return True

    def _arm_for(self, version: str, role: str, current: Serving) -> Arm | None:
        """The arm of `version`: already loaded, or loaded, verified and warmed now; None if not."""
        for arm in (current.champion, current.challenger):
            if arm is not None and arm.version == version:
                self._problems.pop(role, None)
                return arm
        path = packaged(self.store, self.name, version)
        if path is None:
            self._problem(role, f"{role} v{version} is not packaged here (make package): not served")
            return None
        try:
            loaded = self._load(path)
        except Exception as exc:  # trust.Untrusted, a damaged file: never served
            self._problem(
                role, f"{role} v{version} failed to load or verify ({type(exc).__name__}): not served"
            )
            return None
        if loaded.version != version or loaded.meta.get("registered_model") != self.name:
            self._problem(role, f"the model packaged as {role} v{version} is another version: not served")
            return None
        problem = _mismatch(loaded.meta, self.base)
        if problem is not None:
            self._problem(role, f"{role} v{version}: {problem}")
            return None
        try:
            warm(loaded)
        except Exception as exc:
            self._problem(
                role, f"{role} v{version} failed on probe records ({type(exc).__name__}): not served"
            )
            return None
        self._problems.pop(role, None)
        return self._arm(loaded)

    def _problem(self, key: str, message: str) -> None:
        if self._problems.get(key) != message:
            log.warning("%s", message)
        self._problems[key] = message

    def _close_idle(self) -> None:
        """Swapped-out batchers, closed once idle and past the grace period (a request that took
        the old snapshot just before the swap still gets its answer)."""
        now, kept = self._clock(), []
        for since, arm in self._retired:
            if now - since >= RETIRED_GRACE_S and arm.batcher.pending_rows == 0:
                arm.batcher.close()
            else:
                kept.append((since, arm))
        self._retired = kept

    # -- what /metadata shows -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        serving = self.serving
        return {
            "champion_version": serving.champion.version,
            "challenger_version": serving.challenger.version if serving.challenger else None,
            "mode": serving.mode,
            "share": serving.share,
            "poll_seconds": self.poll_seconds,
            "checked": self._checked,
            "swaps": self._swaps,
            "problems": sorted(self._problems.values()),
        }
