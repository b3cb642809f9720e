"""Running one measured command: wall time, CPU time, the load other processes put on the box
meanwhile, peak memory of the process tree and of each stage process, and a timeout that kills the
whole tree."""

from __future__ import annotations

import contextlib
import re
import resource
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from .env import MB, SETTINGS
from .notebooks import stage_of_report

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)


class TreeMonitor(threading.Thread):
    """Polls the process tree under `pid`: the summed RSS (peak), and each stage process
    (`python -m pipelines.core.nbrun ... OUT.ipynb`): when it lived, its own subtree's peak RSS
    (nbrun + its Jupyter kernel) and the CPU seconds that subtree used. CPU time is much less
    disturbed than wall time by other processes on a shared box (OpenMP spin-waiting aside)."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.done = threading.Event()
        self.peak_tree_rss = 0
        self.stages: dict[str, dict[str, float]] = {}
        self._labels: dict[int, str | None] = {}

    def _label(self, proc: psutil.Process) -> str | None:
        if proc.pid not in self._labels:
            try:
                cmd = proc.cmdline()
            except (*GONE, psutil.AccessDenied):
                return None
            label = None
            if "pipelines.core.nbrun" in cmd:
                i = cmd.index("pipelines.core.nbrun")
                if len(cmd) > i + 2:
                    label = stage_of_report(cmd[i + 2])
            self._labels[proc.pid] = label
        return self._labels[proc.pid]

    def _stage(self, label: str, proc: psutil.Process, rss: dict[int, int], now: float) -> None:
        """One sample of a stage process' subtree: its RSS and the CPU seconds it used so far."""
        try:
            kids = proc.children(recursive=True)
            sub = rss[proc.pid] + sum(rss.get(c.pid, 0) for c in kids)
            started = proc.create_time()
            t = proc.cpu_times()
            # reaped children (the finished kernel) move into children_user/system
            cpu = t.user + t.system + t.children_user + t.children_system
            for kid in kids:
                with contextlib.suppress(*GONE):
                    k = kid.cpu_times()
                    cpu += k.user + k.system
        except GONE:
            return
        stage = self.stages.setdefault(
            label, {"start": started, "end": now, "peak_rss_mb": 0.0, "cpu_s": 0.0}
        )
        stage["end"] = now
        stage["peak_rss_mb"] = max(stage["peak_rss_mb"], sub / MB)
        stage["cpu_s"] = max(stage["cpu_s"], cpu)

    def run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss: dict[int, int] = {}
            for proc in procs:
                with contextlib.suppress(*GONE, psutil.AccessDenied):
                    rss[proc.pid] = proc.memory_info().rss
            self.peak_tree_rss = max(self.peak_tree_rss, sum(rss.values()))
            for proc in procs:
                label = self._label(proc)
                if label is not None and proc.pid in rss:
                    self._stage(label, proc, rss, now)
            self.done.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        """The figures `run` reports: peak tree RSS, and per stage its lifetime, peak RSS and CPU."""
        return {
            "peak_tree_rss_mb": round(self.peak_tree_rss / MB, 1),
            "stages_monitored": {
                k: {
                    "wall_s": round(v["end"] - v["start"], 2),
                    "peak_rss_mb": round(v["peak_rss_mb"], 1),
                    "cpu_s": round(v["cpu_s"], 2),
                }
                for k, v in self.stages.items()
            },
        }


def kill_tree(pid: int) -> None:
    """Kill the process `pid` started, and its descendants (Jupyter kernels run in their own
    session, so a process-group kill would miss them), each by its id."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def cpu_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def own_cpu_s() -> float:
    """CPU seconds of this process and of its waited-for descendants."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def other_load(seconds: float = 3.0) -> float:
    """Cores kept busy by processes that are not ours, averaged over `seconds`."""
    b0, o0 = cpu_busy_s(), own_cpu_s()
    time.sleep(seconds)
    return max(0.0, ((cpu_busy_s() - b0) - (own_cpu_s() - o0)) / seconds)


def wait_for_idle(max_wait: float, threshold: float = 0.3) -> dict[str, float] | None:
    """On a shared box, wait (up to `max_wait` s) until other processes use < `threshold` cores."""
    if max_wait <= 0:
        return None
    start = time.time()
    while True:
        load = other_load()
        waited = time.time() - start
        if load < threshold or waited >= max_wait:
            if load >= threshold:
                print(f"  (box still busy after {waited:.0f} s: {load:.2f} cores)", flush=True)
            return {"waited_s": round(waited, 1), "other_load_cores": round(load, 2)}
        time.sleep(5)


def run(
    cmd: list[str],
    cwd: Path,
    *,
    env: dict[str, str],
    log: Path,
    timeout: float | None = None,
    monitor: float | None = None,
    time_v: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """Run `cmd` and time it. With `monitor`, poll the process tree every `monitor` seconds; with
    `time_v`, wrap it in /usr/bin/time -v for the kernel's view of the largest process' max RSS;
    with `wait`, first wait for the box to be idle (--wait-idle)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    time_file = log.with_suffix(".time")
    full = ["/usr/bin/time", "-v", "-o", str(time_file), *cmd] if time_v else cmd
    idle = wait_for_idle(SETTINGS.wait_idle) if wait else None
    busy0, own0 = cpu_busy_s(), own_cpu_s()
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            full, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        mon = TreeMonitor(proc.pid, monitor) if monitor else None
        if mon:
            mon.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_tree(proc.pid)
            proc.wait()
        wall = time.perf_counter() - start
        if mon:
            mon.done.set()
            mon.join()
    own = own_cpu_s() - own0
    result: dict[str, Any] = {
        "cmd": shlex.join(cmd),
        "wall_s": round(wall, 3),
        "cpu_s": round(own, 2),
        # Cores other processes kept busy meanwhile: the box is shared (killed kernels of a
        # timed-out run are not waited for by us, so they count as other load).
        "other_load_cores": round(max(0.0, (cpu_busy_s() - busy0) - own) / wall, 2),
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "log": str(log),
    }
    if idle:
        result["idle_wait"] = idle
    if mon:
        result.update(mon.summary())
    if time_v and time_file.exists():
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_file.read_text())
        if found:
            result["max_rss_largest_process_mb"] = round(int(found.group(1)) / 1024, 1)
    if proc.returncode and not timed_out:
        result["log_tail"] = log.read_text()[-2000:]
    return result


def finished(res: dict[str, Any]) -> bool:
    """The command ran to the end and succeeded."""
    return res["returncode"] == 0 and not res["timed_out"]


def outcome(res: dict[str, Any]) -> str:
    """done, TIMED OUT or FAILED, for the progress lines."""
    if finished(res):
        return "done"
    return "TIMED OUT" if res["timed_out"] else "FAILED"
