"""Each BentoML worker on a core of its own (`serving.pin_workers`), as nginx's
`worker_cpu_affinity auto` does.

Why: on the 2-core bench box, two workers that the kernel may move share a core now and then
while the other core runs the client or sits idle; a request that arrives at the worker waiting
for its turn waits a whole time slice. Pinned, the workers never queue behind each other: at half
the saturated rate the open-loop p99 halved (bench/README.md, "Workers pinned to cores").

Only when every worker can have its own CPU: with more workers than usable CPUs, two pinned
workers would share a core that they could never leave, so nothing is pinned.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("tabular_mlops.service")


def setting(service: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    """$PIN_WORKERS (0 or 1: bench/serve.py --compare) if set, else the packaged
    `serving.pin_workers`; a model packaged before the setting existed is not pinned."""
    raw = env.get("PIN_WORKERS")
    if raw is not None and raw != "":
        if raw not in ("0", "1"):
            raise ValueError("PIN_WORKERS must be 0 or 1")
        return raw == "1"
    value = service.get("pin_workers", False)
    if not isinstance(value, bool):
        raise ValueError("serving.pin_workers must be true or false")
    return value


def worker_cpu(worker_id: int, workers: int, allowed: Iterable[int]) -> int | None:
    """The CPU for worker `worker_id` (BentoML's, from 1) of `workers`: the i-th of the CPUs this
    process may use, in order; None when there are more workers than those CPUs."""
    cpus = sorted(allowed)
    if worker_id < 1 or workers < 1 or workers > len(cpus):
        return None
    return cpus[(worker_id - 1) % len(cpus)]


def pin(cpu: int, tasks: Path = Path("/proc/self/task")) -> int:
    """Pins every thread of this process to `cpu` (threads started later inherit it); the number
    of threads pinned. A thread that ended meanwhile is skipped."""
    pinned = 0
    for task in tasks.iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
            pinned += 1
        except ProcessLookupError:
            continue
    return pinned


def pin_worker(worker_id: int | None, workers: int, enabled: bool) -> int | None:
    """At a worker's start: pins it if `enabled` and it can have a CPU of its own; the CPU, or None."""
    if not enabled or worker_id is None or not hasattr(os, "sched_setaffinity"):
        return None
    cpu = worker_cpu(worker_id, workers, os.sched_getaffinity(0))
    if cpu is None:
        log.warning("serving.pin_workers: %d workers and fewer usable CPUs, so none is pinned", workers)
        return None
    pin(cpu)
    log.info("worker %d pinned to CPU %d", worker_id, cpu)
    return cpu
