"""Crash repair of promote and rollback, against an in-memory registry that can crash at any step.

The oracle is the invariant itself, stated independently of `registry`: after a repair, nothing
is pending, the history ends at the champion alias, previous-champion is the step before it, and
a version that never became champion is abandoned and out of the history.
"""

import json
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from pipelines.release import registry

NAME = "m"


class Crash(Exception):
    pass


class FakeRegistry:
    """The MlflowClient calls registry.py makes, on dicts; `crash_after` mutating calls, it raises."""

    def __init__(self):
        self.model_tags: dict[str, str] | None = None  # None: no registered model yet
        self.aliases: dict[str, str] = {}
        self.versions: dict[str, dict[str, str]] = {}
        self.crash_after: int | None = None
        self.calls = 0

    def _mutate(self):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise Crash(f"crashed after {self.calls} steps")
        self.calls += 1

    # reads
    def get_registered_model(self, name):
        if self.model_tags is None:
            raise MlflowException("no such model")
        return SimpleNamespace(tags=dict(self.model_tags))

    def get_model_version_by_alias(self, name, alias):
        if alias not in self.aliases:
            raise MlflowException("no such alias")
        number = self.aliases[alias]
        return SimpleNamespace(version=number, tags=dict(self.versions[number]))

    def search_model_versions(self, filter_string):
        return [SimpleNamespace(version=v, tags=dict(t)) for v, t in self.versions.items()]

    # writes
    def register(self, model_uri, name, tags):
        self._mutate()
        if self.model_tags is None:
            self.model_tags = {}
        number = str(len(self.versions) + 1)
        self.versions[number] = dict(tags)
        return SimpleNamespace(version=number)

    def set_model_version_tag(self, name, version, key, value):
        self._mutate()
        self.versions[str(version)][key] = value

    def set_registered_model_tag(self, name, key, value):
        self._mutate()
        self.model_tags[key] = value

    def set_registered_model_alias(self, name, alias, version):
        self._mutate()
        self.aliases[alias] = str(version)

    def delete_registered_model_alias(self, name, alias):
        self._mutate()
        if alias not in self.aliases:
            raise MlflowException("no such alias")
        del self.aliases[alias]

    # the invariant
    def history(self):
        return json.loads((self.model_tags or {}).get(registry.HISTORY_TAG, "[]"))

    def assert_consistent(self):
        states = {v: t.get(registry.STATE_TAG) for v, t in self.versions.items()}
        assert registry.PENDING not in states.values(), states
        chain = self.history()
        if "champion" in self.aliases:
            assert chain and chain[-1] == self.aliases["champion"], (chain, self.aliases)
        assert all(states[v] == registry.DONE for v in chain), (chain, states)
        if len(chain) > 1:
            assert self.aliases.get("previous-champion") == chain[-2]
        else:
            assert "previous-champion" not in self.aliases
        abandoned = [v for v, s in states.items() if s == registry.ABANDONED]
        assert not set(abandoned) & set(chain)
        return chain


@pytest.fixture
def fake(monkeypatch):
    client = FakeRegistry()
    monkeypatch.setattr(mlflow, "register_model", client.register)
    return client


def promote(client):
    return registry.promote(client, NAME, "models:/m-x", {"run_id": "r"})


def clone(client, monkeypatch, crash_after=None):
    """A copy of the registry's state that crashes after `crash_after` writes; it registers too."""
    copy = FakeRegistry()
    copy.__dict__.update(json.loads(json.dumps(client.__dict__)))
    copy.calls, copy.crash_after = 0, crash_after
    monkeypatch.setattr(mlflow, "register_model", copy.register)
    return copy


def steps_of(action, client, monkeypatch):
    """How many registry writes `action` makes, on a copy of the client's state."""
    trial = clone(client, monkeypatch)
    action(trial)
    return trial.calls


def test_a_promotion_without_crash_leaves_a_consistent_registry(fake):
    assert promote(fake) == "1" and promote(fake) == "2"
    assert fake.assert_consistent() == ["1", "2"]
    assert fake.versions["1"]["former_champion"] == "true"


@pytest.mark.parametrize("earlier", [0, 2])
def test_a_promotion_crashed_at_any_step_is_repaired(fake, monkeypatch, earlier):
    for _ in range(earlier):
        promote(fake)
    before = fake.history()
    steps = steps_of(promote, fake, monkeypatch)
    assert steps >= 5
    for crash_at in range(1, steps):
        client = clone(fake, monkeypatch, crash_after=crash_at)
        with pytest.raises(Crash):
            promote(client)
        new = str(len(client.versions))
        client.crash_after = None
        notes = registry.repair(client, NAME)
        chain = client.assert_consistent()
        if client.aliases.get("champion") == new:  # the alias moved: the promotion happened
            assert chain == [*before, new] and client.versions[new][registry.STATE_TAG] == registry.DONE
        else:  # it did not: the version is abandoned, and never counted
            assert chain == before and client.versions[new][registry.STATE_TAG] == registry.ABANDONED
            assert any("abandoned" in n for n in notes)
        after = promote(client)  # and the next promotion starts from a clean state
        assert client.assert_consistent()[-1] == after


def test_a_rollback_crashed_at_any_step_is_repaired(fake, monkeypatch):
    for _ in range(3):
        promote(fake)

    def rollback(client):
        return registry.rollback(client, NAME, "bad")

    for crash_at in range(1, steps_of(rollback, fake, monkeypatch)):
        client = clone(fake, monkeypatch, crash_after=crash_at)
        with pytest.raises(Crash):
            rollback(client)
        client.crash_after = None
        registry.repair(client, NAME)
        chain = client.assert_consistent()
        assert chain == (["1", "2"] if client.aliases["champion"] == "2" else ["1", "2", "3"])


def test_repair_makes_the_history_follow_the_alias():
    assert registry.repaired_history(["1", "2", "3"], "2") == ["1", "2"]  # rollback before history
    assert registry.repaired_history(["1", "2"], "3") == ["1", "2", "3"]  # promotion before history
    assert registry.repaired_history(["1", "2"], "2") == ["1", "2"]
    assert registry.repaired_history(["1", "2"], None) == ["1", "2"]


def test_repair_of_a_missing_model_does_nothing(fake):
    assert registry.repair(fake, NAME) == []


def test_versions_from_before_states_existed_count_as_done(fake):
    fake.model_tags = {registry.HISTORY_TAG: json.dumps(["1"])}
    fake.versions = {"1": {}}
    fake.aliases = {"champion": "1"}
    assert registry.repair(fake, NAME) == []
    assert fake.versions["1"] == {}


def test_the_promotion_lock_excludes_a_second_holder(tmp_path):
    """A second process cannot take the lock while the first holds it (flock is per open file)."""
    import fcntl

    with (
        registry.exclusive(tmp_path),
        open(tmp_path / registry.LOCK_FILE) as other,
        pytest.raises(BlockingIOError),
    ):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(tmp_path / registry.LOCK_FILE) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit


# --- promote_version: a rollout's finish moves an existing version to champion ---


def register_only(client):
    """A version registered without becoming champion (as a rollout's challenger is)."""
    return str(client.register("models:/m-x", NAME, tags={}).version)


def test_promote_version_keeps_history_and_previous_champion_consistent(fake):
    promote(fake)
    promote(fake)
    challenger = register_only(fake)
    assert registry.promote_version(fake, NAME, challenger) == "2"
    assert fake.assert_consistent() == ["1", "2", challenger]
    assert fake.versions["2"]["former_champion"] == "true"
    assert registry.rollback(fake, NAME, "bad")[1] == "2"  # rollback walks the same history
    assert fake.assert_consistent() == ["1", "2"]


def test_promote_version_crashed_at_any_step_is_repaired(fake, monkeypatch):
    promote(fake)
    promote(fake)
    challenger = register_only(fake)

    def finish(client):
        return registry.promote_version(client, NAME, challenger)

    steps = steps_of(finish, fake, monkeypatch)
    assert steps >= 5
    for crash_at in range(1, steps):
        client = clone(fake, monkeypatch, crash_after=crash_at)
        with pytest.raises(Crash):
            finish(client)
        client.crash_after = None
        registry.repair(client, NAME)
        chain = client.assert_consistent()
        moved = client.aliases["champion"] == challenger
        assert chain == (["1", "2", challenger] if moved else ["1", "2"]), crash_at
        if not moved:
            assert client.versions[challenger][registry.STATE_TAG] == registry.ABANDONED
            assert finish(client) == "2"  # finishing again after the repair completes
        assert client.assert_consistent() == ["1", "2", challenger]


def test_promote_version_refuses_a_version_in_the_history(fake):
    from pipelines.core.errors import PipelineError

    promote(fake)
    promote(fake)
    with pytest.raises(PipelineError, match=r"v1 is in the champion history \['1', '2'\]: use rollback"):
        registry.promote_version(fake, NAME, "1")
    assert fake.assert_consistent() == ["1", "2"]


def test_rollout_state_of_a_model_without_tags_is_off(fake):
    state = registry.rollout_state(fake, NAME)  # not even registered
    assert (state["mode"], state["share"], state["challenger"]) == ("off", 0.0, None)
    promote(fake)
    assert registry.rollout_state(fake, NAME)["mode"] == "off"
