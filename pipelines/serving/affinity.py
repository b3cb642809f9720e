"""Each BentoML worker on a core of its own (`serving.pin_workers`), as nginx's
`worker_cpu_affinity auto` does.

Why: on the 2-core bench box, two workers that the kernel may move share a core now and then
while the other core runs the client or sits idle; a request that arrives at the worker waiting
for its turn waits a whole time slice. Pinned, the workers never queue behind each other: at half
the saturated rate the open-loop p99 halved (bench/README.md, "Workers pinned to cores").

Only when every worker can have its own CPU: with more workers than usable CPUs, two pinned
workers would share a core that they could never leave, so nothing is pinned.

`auto` (the default) pins only where the host looks like the service's own: one worker for each
CPU this process may use, and no cgroup CPU quota below that many CPUs. A container with a CPU
limit but a node's whole CPU set (Kubernetes without the static CPU manager, `docker --cpus`)
sees many CPUs and a quota: every pod on the node would pin its workers to the same first CPUs,
so there nothing is pinned. `true` pins whenever each worker can have a CPU; `false` never.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("tabular_mlops.service")


MODES = ("auto", "true", "false")


def setting(service: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """ "auto", "true" or "false": $PIN_WORKERS (auto, 1 or 0: bench/serve.py --compare) if set,
    else the packaged `serving.pin_workers`; a model packaged before the setting existed: false."""
    raw = env.get("PIN_WORKERS")
    if raw is not None and raw != "":
        if raw not in ("auto", "0", "1"):
            raise ValueError("PIN_WORKERS must be auto, 0 or 1")
        return {"0": "false", "1": "true"}.get(raw, raw)
    value = service.get("pin_workers", False)
    if value == "auto" or isinstance(value, bool):
        return str(value).lower()
    raise ValueError("serving.pin_workers must be auto, true or false")


def cpu_quota(proc_cgroup: str, read: Callable[[str], str | None]) -> float | None:
    """The tightest CPU quota over this process's cgroups, in CPUs (None: no quota).

    `proc_cgroup` is /proc/self/cgroup's text; `read(path)` gives a file's text under
    /sys/fs/cgroup, or None if it is not there. cgroup v2 (`0::/a/b`: cpu.max of a/b, a and the
    root) and v1 (the `cpu` hierarchy's cpu.cfs_quota_us over cpu.cfs_period_us, same levels)."""
    quotas: list[float] = []
    for line in proc_cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        number, controllers, path = fields
        parts = [p for p in path.split("/") if p]
        levels = ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]  # own cgroup up to the root
        for level in levels:
            if number == "0" and controllers == "":  # v2: "max 100000", or "200000 100000"
                limit = (read("/".join(filter(None, (level, "cpu.max")))) or "").split()
                if len(limit) == 2 and limit[0] != "max":
                    quotas.append(int(limit[0]) / int(limit[1]))
            elif "cpu" in controllers.split(","):  # v1: a quota of -1 is none
                folder = "/".join(filter(None, (controllers, level)))
                quota, period = read(f"{folder}/cpu.cfs_quota_us"), read(f"{folder}/cpu.cfs_period_us")
                if quota and period and int(quota) > 0:
                    quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def host_cgroup_quota() -> float | None:
    """`cpu_quota` of this process, read from /proc and /sys/fs/cgroup (None where unreadable)."""
    root = Path("/sys/fs/cgroup")

    def read(path: str) -> str | None:
        try:
            return (root / path).read_text().strip()
        except (OSError, ValueError):
            return None

    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    return cpu_quota(text, read)


def should_pin(mode: str, workers: int, usable: int, quota: float | None) -> bool:
    """Whether to pin, for a setting, the worker count, the usable CPUs and the CPU quota."""
    if mode == "false" or workers > usable:
        return False
    if mode == "true":
        return True
    return workers == usable and (quota is None or quota >= usable)


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


def pin_worker(worker_id: int | None, workers: int, mode: str) -> int | None:
    """At a worker's start: pins it where `mode` says so (`should_pin`); the CPU, or None."""
    if mode == "false" or worker_id is None or not hasattr(os, "sched_setaffinity"):
        return None
    usable = os.sched_getaffinity(0)
    if not should_pin(mode, workers, len(usable), host_cgroup_quota() if mode == "auto" else None):
        log.info(
            "serving.pin_workers %s: %d workers on %d usable CPUs, not pinned", mode, workers, len(usable)
        )
        return None
    cpu = worker_cpu(worker_id, workers, usable)
    if cpu is None:
        return None
    pin(cpu)
    log.info("worker %d pinned to CPU %d", worker_id, cpu)
    return cpu
