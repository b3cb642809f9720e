"""The automatic analysis on a real project registry (SQLite MLflow store): each pass advances a
step until the challenger is champion, an unknown step waits, and a challenger that disagrees is
aborted by `python -m pipelines rollout --analyze --watch` in a subprocess (exit 1).

The traffic is log lines written here in the contract's format (docs/rollout.md), stamped after
each step's start; the oracle is the registry read through MlflowClient, the store's decision
log and the report read as JSON."""

import json
from datetime import UTC, datetime

import mlflow
import pytest
import yaml
from helpers.champion import champion, new_project, train_candidate
from helpers.support import PROJECT, VENV_BIN, run

from pipelines.core.layout import Layout
from pipelines.release import promotion
from pipelines.release import rollout as rollouts

pytestmark = pytest.mark.integration


def lines(n, versions, canary_share, flip=False):
    """n requests: a `canary_share` of them answered by the challenger, the rest by the champion;
    the other arm writes a shadow line for each. With `flip`, the challenger says the opposite."""
    at = datetime.now(UTC).isoformat()
    found = []
    for i in range(n):
        canary = i < round(n * canary_share)
        p = {"champion": 0.3 + 0.4 * (i % 2), "challenger": 0.3 + 0.4 * (i % 2)}
        if flip:
            p["challenger"] = 1 - p["champion"]
        for arm in ("champion", "challenger"):
            answered = (arm == "challenger") == canary
            role = arm if answered else "shadow"
            entry = {"request_id": f"{at}-{i}", "record": 0, "timestamp": at, "model_version": versions[arm]}
            entry |= {"role": role, "latency_ms": 2.0, "inputs": {"x1": 0.0}}
            entry |= {"prediction": "yes" if p[arm] >= 0.5 else "no"}
            found.append({**entry, "probabilities": {"no": 1 - p[arm], "yes": p[arm]}})
    return found


def write(folder, found):
    (folder / "predictions").mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions" / "predictions.0.jsonl", "a") as out:
        out.writelines(json.dumps(x) + "\n" for x in found)


def decisions(root):
    return [json.loads(x) for x in (root / "store" / "promotions.jsonl").read_text().splitlines()]


def test_passes_advance_each_step_to_the_end_and_a_disagreeing_challenger_is_aborted(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = new_project(tmp_path)
    params["rollout"] = yaml.safe_load((PROJECT / "params.yaml").read_text())["rollout"]
    params["rollout"]["analysis"]["min_requests"] = 20
    params["paths"]["rollout"] = "reports/rollout.json"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    name, folder = params["promote"]["registered_model"], tmp_path / "log"
    train_candidate(params, hide=["x1", "x2"])
    promotion.record(promotion.run_promotion(tmp_path, params), params, tmp_path)
    for hide in ([], ["x2"]):  # v2 and v3, registered without the gate
        train_candidate(params, hide=hide)
        mlflow.register_model(Layout.from_paths(params["paths"]).read_run("cand")["model_uri"], name)
    client = mlflow.MlflowClient()

    rollouts.run(tmp_path, params, start_version="2")
    seen = []
    for _ in range(5):  # shadow, then the canary steps 5, 25, 50 and 100 %
        state = rollouts.registry.rollout_state(client, name)
        write(
            folder,
            lines(
                100 if state["mode"] == "shadow" else 400,
                {"champion": "1", "challenger": "2"},
                state["share"],
            ),
        )
        result = rollouts.run_analysis(tmp_path, params, folder)
        assert result["decision"]["outcome"] == "pass", result["decision"]
        seen.append((state["mode"], state["share"], result["record"]["rollout"], result["record"]["share"]))
    assert seen == [
        ("shadow", 0.0, "canary", 0.05),
        ("canary", 0.05, "canary", 0.25),
        ("canary", 0.25, "canary", 0.5),
        ("canary", 0.5, "canary", 1.0),
        ("canary", 1.0, "finish", 0.0),
    ]
    assert champion(params) == "2" and "challenger" not in client.get_registered_model(name).aliases
    automatic = decisions(tmp_path)[2:]
    assert [d["rollout"] for d in automatic] == ["canary"] * 4 + ["finish"]
    assert all(
        d["analysis"]["outcome"] == "pass" and d["reasons"][0] == "automatic analysis: pass"
        for d in automatic
    )
    assert client.get_model_version(name, "2").tags["rollout.analysis_outcome"] == "pass"
    report = json.loads((tmp_path / "reports" / "rollout.json").read_text())
    assert report["decision"]["outcome"] == "pass" and report["record"]["rollout"] == "finish"
    assert report["agreement"]["rate"] == 1.0 and (tmp_path / "reports" / "rollout.html").is_file()

    rollouts.run(tmp_path, params, start_version="3")
    before = len(decisions(tmp_path))
    waits = rollouts.run_analysis(tmp_path, params, folder)  # no line of v3 yet: inconclusive
    assert waits["decision"]["outcome"] == "inconclusive" and waits["record"] is None
    assert len(decisions(tmp_path)) == before  # waiting changes nothing and records nothing
    assert rollouts.registry.rollout_state(client, name)["mode"] == "shadow"
    assert (
        json.loads((tmp_path / "reports" / "rollout.json").read_text())["decision"]["outcome"]
        == "inconclusive"
    )

    write(folder, lines(100, {"champion": "2", "challenger": "3"}, 0.0, flip=True))
    done = run(
        [
            str(VENV_BIN / "python"),
            "-m",
            "pipelines",
            "rollout",
            "--analyze",
            "--watch",
            "--max-seconds",
            "60",
            "--log-dir",
            str(folder),
        ],
        tmp_path,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 1  # --watch stops at the abort
    assert done.stdout.startswith("ANALYSIS fail at shadow: ROLLOUT off: champion v2 answers all traffic")
    model = client.get_registered_model(name)
    assert (
        model.tags["rollout.mode"] == "off" and "challenger" not in model.aliases and champion(params) == "2"
    )
    last = decisions(tmp_path)[-1]
    assert (last["rollout"], last["analysis"]["outcome"], last["challenger_version"]) == ("off", "fail", "3")
    assert any(r.startswith("agreement: the arms agree on 0.0%") for r in last["reasons"])
    assert client.get_model_version(name, "3").tags["rollout.analysis_outcome"] == "fail"

    again = run(
        [str(VENV_BIN / "python"), "-m", "pipelines", "rollout", "--analyze", "--share", "0.1"], tmp_path
    )
    assert again.returncode == 2 and "--share does not go with --analyze" in again.stderr
