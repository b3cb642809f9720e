"""A rollout on a real project registry, driven as an operator drives it: the gate promotes a
champion, then `make rollout` (the Makefile's target, running `python -m pipelines rollout` in a
subprocess) starts, steps and finishes a rollout, and a rollback walks the history back.

The oracle is the registry read through MlflowClient and the store's decision log read as JSON.
"""

import json

import mlflow
import pytest
import yaml
from helpers.champion import champion, new_project, train_candidate
from helpers.support import PROJECT, VENV_BIN, run

from pipelines.core.layout import Layout
from pipelines.release import promotion

pytestmark = pytest.mark.integration


def make(root, target, *args):
    """The project's Makefile in `root`: the venv is the running one, its stamp is not rebuilt."""
    return run(
        ["make", "-s", "-f", str(PROJECT / "Makefile"), target, *args, "ENV_STAMP=", f"BIN={VENV_BIN}"], root
    )


def test_make_rollout_starts_steps_and_finishes_a_rollout(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = new_project(tmp_path)
    params["rollout"] = yaml.safe_load((PROJECT / "params.yaml").read_text())["rollout"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    name = params["promote"]["registered_model"]

    train_candidate(params, hide=["x1", "x2"])
    decision = promotion.run_promotion(tmp_path, params)
    promotion.record(decision, params, tmp_path)
    assert decision["promoted"] and champion(params) == "1"
    train_candidate(params, hide=[])  # a better model, registered without the gate (not wired yet)
    mlflow.register_model(Layout.from_paths(params["paths"]).read_run("cand")["model_uri"], name)

    steps = [  # make's arguments, then the line the command prints (stdout; stderr when refused)
        (("START=2",), "ROLLOUT shadow: challenger v2 beside champion v1"),
        (
            ("MODE=canary",),
            "ROLLOUT canary: challenger v2 answers 5% of traffic, champion v1 the rest (step 1 of 4)",
        ),
        (("MODE=canary", "SHARE=2"), "ERROR rollout: a canary share must be above 0 and at most 1, not 2.0"),
        (("FINISH=1",), "ROLLOUT finished: challenger v2 is champion (was v1); the rollout is off"),
    ]
    for args, line in steps:
        done = make(tmp_path, "rollout", *args)
        if line.startswith("ERROR"):
            assert done.returncode == 2 and done.stdout == ""  # make's own exit, after the command's 1
            assert done.stderr.splitlines()[0] == line
        else:
            assert done.returncode == 0, done.stderr[-2000:]
            assert done.stdout == line + "\n"
    assert make(tmp_path, "rollout").returncode == 2  # usage: no MODE, START or FINISH

    client = mlflow.MlflowClient()
    model = client.get_registered_model(name)
    assert json.loads(model.tags["champion.history"]) == ["1", "2"]
    assert model.tags["rollout.mode"] == "off" and "challenger" not in model.aliases
    assert str(client.get_model_version_by_alias(name, "previous-champion").version) == "1"

    rolled = promotion.run_rollback(tmp_path, params, "canary regret")  # the history a finish wrote
    promotion.record(rolled, params, tmp_path)
    assert (rolled["from_version"], rolled["champion_version"]) == ("2", "1") and champion(params) == "1"

    log = [json.loads(line) for line in (tmp_path / "store" / "promotions.jsonl").read_text().splitlines()]
    assert [d.get("rollout") or ("rollback" if d.get("rollback") else "gate") for d in log] == [
        "gate",
        "start",
        "canary",
        "finish",
        "rollback",
    ]
    assert [d["reasons"][0] for d in log[1:4]] == ["manual rollout"] * 3
    assert log[2]["share"] == 0.05 and log[2]["step"] == 0
    assert log[3]["champion_version"] == "2" and log[3]["from_version"] == "1"
