"""The fleet behind HAProxy (pipelines/team/fleet.py) under wrk: what a second replica and HAProxy
itself cost or give on this machine, and the requests a blue-green switch fails under load.

  direct      wrk straight to one replica (no HAProxy): the floor HAProxy adds to
  1 replica   wrk through HAProxy to a fleet of 1
  2 replicas  wrk through HAProxy to a fleet of 2 (on 2 shared cores: expect sharing, not doubling)
  switch      wrk through HAProxy from 3 s before `fleet switch` (start green, move traffic) to 3 s
              after it, then the same around `fleet back`: wrk's non-2xx and socket errors

wrk: 2 threads, keep-alive connections, single-record POST /predict with the key, from a Lua
script (as bench/rollout.py drives it). Serves the bento `make package` built last, through the
fleet's own command line, with its state and logs in a temporary folder.

    .venv/bin/python bench/fleet.py [--seconds 15] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import rollout as rollout_bench  # noqa: E402  (the path above makes `bench` importable)
from bench.serve import free_port  # noqa: E402  (the path above makes `bench` importable as a script)

WRK = shutil.which("wrk") or "/usr/bin/wrk"
RESULTS = ROOT / "bench" / "results"
KEY = "bench-fleet-key-0123456789"
# bench/rollout.py's wrk script (one-record POSTs, a WRKJSON summary line), with the fleet's key.
LUA = rollout_bench.LUA.replace(
    '{["Content-Type"] = "application/json"}',
    f'{{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {KEY}"}}',
)
assert KEY in LUA, "bench/rollout.py's wrk script changed its headers line"


def wrk_args(url: str, script: Path, bodies: Path, seconds: int, connections: int) -> list[str]:
    return [
        WRK,
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(bodies),
    ]


def figures(stdout: str) -> dict[str, Any]:
    line = next(x for x in stdout.splitlines() if x.startswith("WRKJSON "))
    raw = json.loads(line.removeprefix("WRKJSON "))
    elapsed = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(elapsed, 2),
        "rps": round(raw["requests"] / elapsed, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "non_2xx": raw["status"],
        "socket_errors": sum(raw[k] for k in ("connect", "read", "write", "timeout")),
    }


def wrk(url: str, script: Path, bodies: Path, seconds: int, connections: int) -> dict[str, Any]:
    done = subprocess.run(
        wrk_args(url, script, bodies, seconds, connections),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr[-1000:]}")
    return figures(done.stdout)


class Fleet:
    """The fleet's command line with its state, port and logs in `work`."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.state = work / "state"
        self.env = {
            **os.environ,
            "FLEET_DIR": str(self.state),
            "FLEET_PORT": str(self.port),
            "PREDICTION_LOG_DIR": str(work / "log"),
            "API_KEY": KEY,
            "BENTOML_DO_NOT_TRACK": "true",
        }
        self.env.pop("API_KEY_FILE", None)
        self.env.pop("API_AUTH", None)

    def __call__(self, *args: str) -> tuple[float, str]:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.team.fleet", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"fleet {args[0]}: {done.stderr.strip()}")
        return time.monotonic() - started, done.stdout.strip()

    def replica_port(self, name: str) -> int:
        state = json.loads((self.state / "state.json").read_text())
        colour, index = name.split("-")
        return state["colours"][colour]["ports"][int(index)]


def under_load(fleet: Fleet, command: str, script: Path, bodies: Path, connections: int) -> dict[str, Any]:
    """wrk through HAProxy from 3 s before `command` until 3 s after it ends. wrk runs with a long
    duration and is stopped with SIGINT, after which it reports as usual (its Lua `done` runs)."""
    url = f"http://127.0.0.1:{fleet.port}"
    load = subprocess.Popen(
        wrk_args(url, script, bodies, 600, connections),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        took, _ = fleet(command)
        time.sleep(3)
    finally:
        load.send_signal(signal.SIGINT)
        stdout, stderr = load.communicate(timeout=60)
    if load.returncode != 0:
        raise RuntimeError(f"wrk failed: {stderr[-1000:]}")
    return {**figures(stdout), "command_seconds": round(took, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    source = params["data"]["source"]
    frame = pd.read_csv(ROOT / source) if source.endswith(".csv") else pd.read_parquet(ROOT / source)
    records = frame.drop(columns=[params["data"]["target"]]).head(200).to_dict(orient="records")
    results: dict[str, Any] = {}
    # Kept when a step fails (its state folder holds each process's log); removed on success.
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    script, bodies = work / "post.lua", work / "bodies.jsonl"
    script.write_text(LUA)
    bodies.write_text("".join(json.dumps({"records": [r]}, default=str) + "\n" for r in records))
    for replicas in (1, 2):
        fleet = Fleet(work / f"fleet{replicas}")
        took, line = fleet("up", "--replicas", str(replicas))
        print(f"{line} ({took:.1f} s)", flush=True)
        try:
            url = f"http://127.0.0.1:{fleet.port}"
            wrk(url, script, bodies, 3, args.connections)  # warm-up
            if replicas == 1:
                direct = f"http://127.0.0.1:{fleet.replica_port('blue-0')}"
                results["direct"] = wrk(direct, script, bodies, args.seconds, args.connections)
                print("direct     ", results["direct"], flush=True)
            key = f"{replicas} replica" + ("s" if replicas > 1 else "")
            results[key] = wrk(url, script, bodies, args.seconds, args.connections)
            results[key]["up_seconds"] = round(took, 2)
            print(f"{key:11}", results[key], flush=True)
            if replicas == 2:
                for command in ("switch", "back"):
                    results[command] = under_load(fleet, command, script, bodies, args.connections)
                    print(f"{command:11}", results[command], flush=True)
        finally:
            print(fleet("down")[1], flush=True)
    shutil.rmtree(work)
    ratios = {
        "haproxy_rps_over_direct": round(results["1 replica"]["rps"] / results["direct"]["rps"], 2),
        "haproxy_p50_added_ms": round(results["1 replica"]["p50_ms"] - results["direct"]["p50_ms"], 2),
        "two_over_one_replica_rps": round(results["2 replicas"]["rps"] / results["1 replica"]["rps"], 2),
        "switch_failed_requests": results["switch"]["non_2xx"] + results["switch"]["socket_errors"],
        "back_failed_requests": results["back"]["non_2xx"] + results["back"]["socket_errors"],
    }
    print(f"\n{'':12}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}")
    for name, row in results.items():
        print(
            f"{name:12}{row['rps']:8.1f}{row['p50_ms']:9.2f}{row['p99_ms']:9.2f}{row['non_2xx'] + row['socket_errors']:8d}"
        )
    print(json.dumps(ratios, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.json"
    setup = {
        "cores": os.cpu_count(),
        "wrk": {"threads": 2, "connections": args.connections, "seconds": args.seconds},
    }
    out.write_text(json.dumps({"setup": setup, "results": results, "ratios": ratios}, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
