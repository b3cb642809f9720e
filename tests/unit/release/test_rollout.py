"""Rollout roles against a real MLflow registry (one SQLite store for the module, one model a test).

The oracle reads the registry directly through MlflowClient (aliases, tags, the history tag) and
the decision log as JSON lines, never through `registry.rollout_state` or `rollout` themselves.
"""

import itertools
import json
import math
import threading

import mlflow
import pytest
import yaml
from helpers.champion import new_project, train_candidate
from helpers.support import PROJECT
from mlflow.exceptions import MlflowException

from pipelines.core.errors import ParamsError, PipelineError
from pipelines.core.layout import Layout
from pipelines.release import registry, rollout

RULES = yaml.safe_load((PROJECT / "params.yaml").read_text())["rollout"]
PARAMS = {"rollout": RULES}
STEPS = RULES["steps"]
_names = itertools.count(1)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One real logged model in a real store; each test registers versions of it."""
    root = tmp_path_factory.mktemp("rollout")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = new_project(root)
        train_candidate(params, hide=[])  # points MLflow at root/store
        yield mlflow.get_tracking_uri(), Layout.from_paths(params["paths"]).read_run("cand")["model_uri"]


class Registry:
    """A fresh registered model: v1 champion (through registry.promote), v2 and v3 registered only."""

    def __init__(self, uri, model_uri, folder):
        self.client = mlflow.MlflowClient(uri)
        self.name = f"rollout-test-{next(_names)}"
        self.store = folder
        registry.promote(self.client, self.name, model_uri, {"run_id": "r"})
        for _ in range(2):
            mlflow.register_model(model_uri, self.name)

    def tags(self):
        return dict(self.client.get_registered_model(self.name).tags)

    def alias(self, alias):
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def version_tags(self, version):
        return dict(self.client.get_model_version(self.name, version).tags)

    def log(self):
        path = self.store / rollout.LOG_FILE
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def start(self, version="2"):
        return rollout.start(self.client, self.name, version, PARAMS, self.store)

    def mode(self, mode, share=None):
        return rollout.set_mode(self.client, self.name, mode, share, PARAMS, self.store)


@pytest.fixture
def reg(logged, tmp_path):
    return Registry(*logged, tmp_path)


def test_start_makes_a_challenger_in_shadow_and_records_it(reg):
    assert reg.tags().get(registry.MODE_TAG) is None
    decision = reg.start("2")
    assert reg.alias("challenger") == "2" and reg.alias("champion") == "1"
    tags = reg.tags()
    assert (tags["rollout.mode"], tags["rollout.share"], tags["rollout.step"], tags["rollout.salt"]) == (
        "shadow",
        "0",
        "0",
        "2",
    )
    assert decision["rollout"] == "start" and decision["challenger_version"] == "2"
    assert decision["champion_version"] == "1" and decision["mode"] == "shadow"
    assert reg.log() == [json.loads(json.dumps(decision))]
    assert reg.version_tags("2")["rollout.start_at"] == decision["at"]
    assert rollout.summary(decision) == "ROLLOUT shadow: challenger v2 beside champion v1"


def test_canary_steps_follow_the_share_and_shadow_resets_it(reg):
    reg.start("2")
    first = reg.mode("canary")  # no share: the first step
    assert (first["share"], first["step"]) == (STEPS[0], 0)
    assert reg.tags()["rollout.mode"] == "canary" and float(reg.tags()["rollout.share"]) == STEPS[0]
    for share in (0.1, 0.3, 1.0):
        decision = reg.mode("canary", share)
        expected_step = max(i for i, s in enumerate(STEPS) if s <= share)  # the last step at or below
        assert float(reg.tags()["rollout.share"]) == share
        assert int(reg.tags()["rollout.step"]) == decision["step"] == expected_step
    assert rollout.summary(reg.mode("canary", 0.1)) == (
        f"ROLLOUT canary: challenger v2 answers 10% of traffic, champion v1 the rest (step 1 of {len(STEPS)})"
    )
    shadow = reg.mode("shadow")
    assert reg.tags()["rollout.mode"] == "shadow" and reg.tags()["rollout.share"] == "0"
    assert shadow["share"] == 0 and reg.alias("challenger") == "2"
    assert [d["rollout"] for d in reg.log()] == [
        "start",
        "canary",
        "canary",
        "canary",
        "canary",
        "canary",
        "shadow",
    ]
    assert "rollout.canary_at" in reg.version_tags("2") and "rollout.shadow_at" in reg.version_tags("2")


def test_off_takes_the_challenger_out_and_is_idempotent(reg):
    reg.start("2")
    reg.mode("canary", 0.5)
    decision = reg.mode("off")
    assert reg.alias("challenger") is None and reg.alias("champion") == "1"
    assert reg.tags()["rollout.mode"] == "off" and reg.tags()["rollout.share"] == "0"
    assert "rollout.off_at" in reg.version_tags("2")
    assert (
        rollout.summary(decision) == "ROLLOUT off: champion v1 answers all traffic (challenger v2 taken out)"
    )
    again = reg.mode("off")
    assert again["challenger_version"] is None and "no challenger was set" in rollout.summary(again)
    reg.start("3")  # a new rollout after off, with a new salt
    assert reg.tags()["rollout.salt"] == "3"


def test_finish_makes_the_challenger_champion_with_a_consistent_history(reg):
    reg.start("2")
    reg.mode("canary", 0.5)
    decision = rollout.finish(reg.client, reg.name, PARAMS, reg.store)
    assert reg.alias("champion") == "2" and reg.alias("previous-champion") == "1"
    assert reg.alias("challenger") is None and reg.tags()["rollout.mode"] == "off"
    assert json.loads(reg.tags()[registry.HISTORY_TAG]) == ["1", "2"]
    assert reg.version_tags("2")[registry.STATE_TAG] == registry.DONE
    assert reg.version_tags("1")["former_champion"] == "true"
    assert "rollout.finish_at" in reg.version_tags("2")
    assert (decision["from_version"], decision["finished_from"], decision["finished_share"]) == (
        "1",
        "canary",
        0.5,
    )
    assert (
        rollout.summary(decision)
        == "ROLLOUT finished: challenger v2 is champion (was v1); the rollout is off"
    )
    # the history a finish writes is the one rollback walks
    assert registry.rollback(reg.client, reg.name, "bad") == ("2", "1")
    assert reg.alias("champion") == "1" and reg.alias("previous-champion") is None


def test_a_finish_that_crashed_after_its_alias_move_only_ends_the_rollout(reg):
    reg.start("3")
    registry.promote_version(reg.client, reg.name, "3")  # the alias moved, then the crash
    decision = rollout.finish(reg.client, reg.name, PARAMS, reg.store)
    assert reg.alias("champion") == "3" and reg.alias("challenger") is None
    assert json.loads(reg.tags()[registry.HISTORY_TAG]) == ["1", "3"]
    assert decision["from_version"] == "3"


REFUSALS = [
    (lambda r: r.mode("canary", 0.1), "no rollout under way"),
    (lambda r: r.mode("shadow"), "no rollout under way"),
    (lambda r: rollout.finish(r.client, r.name, PARAMS, r.store), "no rollout under way to finish"),
    (lambda r: r.start("1"), "v1 is champion"),
    (lambda r: r.start("9"), "has no version 9"),
    (lambda r: r.start("2; drop"), "is not a version number"),
    (lambda r: r.mode("shadow", 0.1), "a share applies to canary only"),
    (lambda r: r.mode("live"), "a rollout mode is one of"),
]


def test_refusals_without_a_rollout_change_nothing(reg):
    before = (reg.tags(), reg.alias("champion"), reg.alias("challenger"))
    for action, message in REFUSALS:
        with pytest.raises(PipelineError, match=message):
            action(reg)
        assert (reg.tags(), reg.alias("champion"), reg.alias("challenger")) == before, message
    assert reg.log() == []


def test_a_canary_share_out_of_range_is_refused(reg):
    reg.start("2")
    before = reg.tags()
    for share in (0, 0.0, -0.1, 1.5, math.nan, math.inf, True, "0.5"):
        with pytest.raises(PipelineError, match="a canary share must be above 0 and at most 1"):
            reg.mode("canary", share)
        assert reg.tags() == before, share
    assert len(reg.log()) == 1


def test_a_second_start_and_a_former_champion_are_refused(reg, logged):
    reg.start("2")
    with pytest.raises(PipelineError, match=r"a rollout of v2 is under way \(shadow\)"):
        reg.start("3")
    reg.mode("off")
    registry.promote(reg.client, reg.name, logged[1], {"run_id": "r"})  # v4 champion; v1 in the history
    with pytest.raises(PipelineError, match="v1 is a former champion"):
        reg.start("1")


def test_a_rollout_needs_a_champion(logged, tmp_path):
    client = mlflow.MlflowClient(logged[0])
    name = f"rollout-test-{next(_names)}"
    mlflow.register_model(logged[1], name)
    with pytest.raises(PipelineError, match="has no champion"):
        rollout.start(client, name, "1", PARAMS, tmp_path)


def test_a_challenger_that_became_champion_cannot_go_canary(reg):
    reg.start("2")
    reg.client.set_registered_model_alias(reg.name, "champion", "2")  # e.g. moved by hand
    with pytest.raises(PipelineError, match="challenger v2 is champion now"):
        reg.mode("canary", 0.1)


def test_no_tags_mean_no_rollout(reg):
    state = registry.rollout_state(reg.client, reg.name)
    assert (state["mode"], state["share"], state["step"], state["challenger"]) == ("off", 0.0, 0, None)


MALFORMED = [
    ({"rollout.mode": "blue-green"}, "rollout.mode is 'blue-green'"),
    ({"rollout.share": "nan"}, "rollout.share is 'nan'"),
    ({"rollout.share": "2"}, "rollout.share is '2'"),
    ({"rollout.share": "half"}, "rollout.share is 'half'"),
    ({"rollout.step": "-1"}, "rollout.step is '-1'"),
    ({"rollout.step": "1e3"}, "rollout.step is '1e3'"),
    ({"rollout.salt": "other"}, "rollout.salt is 'other', not the challenger's version 2"),
    ({"rollout.mode": "canary", "rollout.share": "0"}, "canary mode with a share of 0"),
]


def test_malformed_rollout_tags_are_refused_and_off_resets_them(reg):
    for tags, message in MALFORMED:
        reg.start("2")
        for key, value in tags.items():
            reg.client.set_registered_model_tag(reg.name, key, value)
        before = reg.tags()
        with pytest.raises(PipelineError, match=message) as refused:
            reg.mode("canary", 0.25)
        assert "\n" not in str(refused.value) and rollout.RESET_HINT in str(refused.value)
        with pytest.raises(PipelineError, match=message):
            registry.rollout_state(reg.client, reg.name)
        assert reg.tags() == before, message  # nothing was trusted, nothing written
        reg.mode("off")  # the way out never reads the bad tags
        assert registry.rollout_state(reg.client, reg.name)["mode"] == "off", message


def test_a_rollout_on_without_its_alias_is_refused(reg):
    reg.start("2")
    reg.client.delete_registered_model_alias(reg.name, "challenger")
    with pytest.raises(PipelineError, match="in shadow mode without a 'challenger' alias"):
        rollout.finish(reg.client, reg.name, PARAMS, reg.store)
    assert reg.alias("champion") == "1"


def test_a_change_waits_for_the_promotion_lock(reg, logged):
    reg.start("2")
    done = {}

    def canary():
        done["decision"] = rollout.set_mode(
            mlflow.MlflowClient(logged[0]), reg.name, "canary", 0.5, PARAMS, reg.store
        )

    with registry.exclusive(reg.store):
        worker = threading.Thread(target=canary)
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and reg.tags()["rollout.mode"] == "shadow"
    worker.join(30)
    assert not worker.is_alive() and done["decision"]["share"] == 0.5
    assert reg.tags()["rollout.mode"] == "canary"


def test_the_projects_rollout_params_pass_the_check():
    assert rollout.check(PARAMS) == RULES


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"on_pass": "canary"}, "rollout.on_pass"),
        ({"steps": [0.5, 0.25]}, "rollout.steps"),
        ({"steps": []}, "rollout.steps"),
        ({"steps": [0, 1]}, "rollout.steps"),
        ({"steps": [0.5, 1.5]}, "rollout.steps"),
        ({"steps": [0.5, math.nan]}, "rollout.steps"),
        ({"steps": [True]}, "rollout.steps"),
        ({"steps": "0.1"}, "rollout.steps"),
        ({"routing_field": ""}, "rollout.routing_field"),
        ({"routing_field": 3}, "rollout.routing_field"),
        ({"poll_seconds": 0}, "rollout.poll_seconds"),
        ({"poll_seconds": math.inf}, "rollout.poll_seconds"),
        ({"poll_seconds": True}, "rollout.poll_seconds"),
        ({"analysis": None}, "rollout.analysis must be a mapping"),
        ({"analysis": {**RULES["analysis"], "alpha": 2}}, r"rollout\.analysis\.alpha"),
    ],
)
def test_bad_rollout_params_are_refused_in_one_line(change, message):
    with pytest.raises(ParamsError, match=message) as refused:
        rollout.check({"rollout": {**RULES, **change}})
    assert "\n" not in str(refused.value)
    with pytest.raises(ParamsError, match="no rollout section"):
        rollout.check({})
