"""serving.pin_workers: which CPU each worker gets, and that pinning reaches every thread."""

import json
import os
import subprocess
import sys

import pytest

from pipelines.serving import affinity


@pytest.mark.parametrize(
    ("worker_id", "workers", "allowed", "expected"),
    [
        (1, 2, {0, 1}, 0),
        (2, 2, {0, 1}, 1),
        (1, 2, {5, 2}, 2),  # the i-th usable CPU in order, not CPU i
        (2, 2, {5, 2}, 5),
        (1, 1, {0, 1, 2, 3}, 0),
        (3, 3, {0, 1}, None),  # more workers than CPUs: nobody is pinned
        (1, 3, {0, 1}, None),
        (0, 2, {0, 1}, None),  # not a BentoML worker id
    ],
)
def test_each_worker_gets_its_own_usable_cpu_or_none(worker_id, workers, allowed, expected):
    assert affinity.worker_cpu(worker_id, workers, allowed) == expected


def test_distinct_workers_never_share_a_cpu():
    cpus = [affinity.worker_cpu(i, 4, {3, 7, 8, 9}) for i in range(1, 5)]
    assert sorted(cpus) == [3, 7, 8, 9]


@pytest.mark.parametrize(
    ("service", "env", "expected"),
    [
        ({"pin_workers": "auto"}, {}, "auto"),
        ({"pin_workers": True}, {}, "true"),
        ({"pin_workers": False}, {}, "false"),
        ({}, {}, "false"),  # packaged before the setting existed
        ({"pin_workers": "auto"}, {"PIN_WORKERS": "0"}, "false"),
        ({"pin_workers": False}, {"PIN_WORKERS": "1"}, "true"),
        ({"pin_workers": False}, {"PIN_WORKERS": "auto"}, "auto"),
        ({"pin_workers": True}, {"PIN_WORKERS": ""}, "true"),
    ],
)
def test_the_environment_overrides_the_packaged_setting(service, env, expected):
    assert affinity.setting(service, env) == expected


@pytest.mark.parametrize(
    ("service", "env", "named"),
    [
        ({"pin_workers": True}, {"PIN_WORKERS": "yes"}, "PIN_WORKERS"),
        ({"pin_workers": True}, {"PIN_WORKERS": "true"}, "PIN_WORKERS"),
        ({"pin_workers": "true"}, {}, "serving.pin_workers"),
        ({"pin_workers": 1}, {}, "serving.pin_workers"),
        ({"pin_workers": None}, {}, "serving.pin_workers"),
    ],
)
def test_a_bad_setting_is_refused_by_name(service, env, named):
    with pytest.raises(ValueError, match=named):
        affinity.setting(service, env)


@pytest.mark.parametrize(
    ("mode", "workers", "usable", "quota", "expected"),
    [
        ("auto", 2, 2, None, True),  # the service's own 2-core host
        ("auto", 2, 2, 2.0, True),  # a container with both CPUs as its own and a quota of two
        ("auto", 2, 2, 1.5, False),  # a quota below one CPU a worker
        ("auto", 2, 16, None, False),  # a node's CPUs: other services would pin to the same ones
        ("auto", 2, 16, 2.0, False),  # Kubernetes' CPU limit without the static CPU manager
        ("auto", 4, 2, None, False),
        ("true", 2, 16, 2.0, True),  # asked for: pinned whenever each worker can have a CPU
        ("true", 3, 2, None, False),
        ("false", 2, 2, None, False),
    ],
)
def test_auto_pins_only_a_host_that_looks_like_the_services_own(mode, workers, usable, quota, expected):
    assert affinity.should_pin(mode, workers, usable, quota) is expected


CGROUP_FILES = {
    "kubepods/pod1/c1/cpu.max": "150000 100000",
    "kubepods/pod1/cpu.max": "max 100000",
    "kubepods/cpu.max": "400000 100000",
    "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1",
    "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
    "cpu,cpuacct/docker/cpu.cfs_quota_us": "250000",
    "cpu,cpuacct/docker/cpu.cfs_period_us": "100000",
    "cpu/cpu.cfs_quota_us": "-1",
    "cpu/cpu.cfs_period_us": "100000",
}


@pytest.mark.parametrize(
    ("proc_cgroup", "expected"),
    [
        ("0::/kubepods/pod1/c1\n", 1.5),  # v2: the tightest level, its own here
        ("0::/kubepods/pod1\n", 4.0),  # "max" is no quota; the parent's 4 CPUs is
        ("0::/\n", None),  # no cpu.max at the root
        ("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n", 2.5),  # v1: -1 is none; the parent's
        ("1:cpu:/\n0::/\n", None),  # this machine's shape: v1 with no quota
        ("garbage\n", None),
    ],
)
def test_the_cpu_quota_is_the_tightest_over_the_cgroup_levels(proc_cgroup, expected):
    assert affinity.cpu_quota(proc_cgroup, CGROUP_FILES.get) == expected


def test_not_enabled_or_outside_bentoml_pins_nothing():
    before = os.sched_getaffinity(0)
    assert affinity.pin_worker(1, 1, "false") is None
    assert affinity.pin_worker(None, 1, "true") is None
    assert affinity.pin_worker(1, len(before) + 1, "true") is None
    assert affinity.pin_worker(1, len(before) + 1, "auto") is None
    assert os.sched_getaffinity(0) == before


CHILD = """
import json, sys, threading
from pathlib import Path
from pipelines.serving import affinity

def allowed():  # the kernel's own view of each thread, not the call under test
    return {t.name: [l.split(":", 1)[1].strip() for l in (t / "status").read_text().splitlines()
            if l.startswith("Cpus_allowed_list")][0] for t in Path("/proc/self/task").iterdir()}

stop = threading.Event()
early = threading.Thread(target=stop.wait)
early.start()
cpu = affinity.pin_worker(int(sys.argv[1]), int(sys.argv[2]), "true")
late = threading.Thread(target=stop.wait)
late.start()
print(json.dumps({"cpu": cpu, "threads": allowed()}))
stop.set()
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_a_pinned_worker_has_every_thread_on_its_cpu_including_later_ones():
    usable = sorted(os.sched_getaffinity(0))
    worker = len(usable)  # the last worker gets the last usable CPU
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(worker), str(len(usable))],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["cpu"] == usable[-1]
    assert len(result["threads"]) == 3  # main, one started before and one after pinning
    assert set(result["threads"].values()) == {str(usable[-1])}
