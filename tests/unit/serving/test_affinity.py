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
        ({"pin_workers": True}, {}, True),
        ({"pin_workers": False}, {}, False),
        ({}, {}, False),  # packaged before the setting existed
        ({"pin_workers": True}, {"PIN_WORKERS": "0"}, False),
        ({"pin_workers": False}, {"PIN_WORKERS": "1"}, True),
        ({"pin_workers": True}, {"PIN_WORKERS": ""}, True),
    ],
)
def test_the_environment_overrides_the_packaged_setting(service, env, expected):
    assert affinity.setting(service, env) is expected


@pytest.mark.parametrize(
    ("service", "env", "named"),
    [
        ({"pin_workers": True}, {"PIN_WORKERS": "yes"}, "PIN_WORKERS"),
        ({"pin_workers": "true"}, {}, "serving.pin_workers"),
        ({"pin_workers": 1}, {}, "serving.pin_workers"),
    ],
)
def test_a_bad_setting_is_refused_by_name(service, env, named):
    with pytest.raises(ValueError, match=named):
        affinity.setting(service, env)


def test_not_enabled_or_outside_bentoml_pins_nothing():
    before = os.sched_getaffinity(0)
    assert affinity.pin_worker(1, 1, enabled=False) is None
    assert affinity.pin_worker(None, 1, enabled=True) is None
    assert affinity.pin_worker(1, len(before) + 1, enabled=True) is None
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
cpu = affinity.pin_worker(int(sys.argv[1]), int(sys.argv[2]), enabled=True)
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
