"""The bento's pinned requirements are the versions of the project's own lock."""

import re

import yaml
from helpers.support import PROJECT as REPO


def locked_versions():
    text = (REPO / "requirements.lock").read_text()
    return {m[1].lower(): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", text, re.M)}


def test_bentofile_pins_match_the_lock():
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    pins = dict(p.split("==") for p in bentofile["python"]["packages"])
    assert pins, "bentofile.yaml pins no packages"
    locked = locked_versions()
    assert {name: locked.get(name.lower()) for name in pins} == pins


def test_bentofile_includes_exactly_the_serving_package():
    """The bento carries service.py and pipelines/serving/ (which imports nothing else of ours)."""
    import fnmatch

    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    service = (REPO / "service.py").read_text()
    imported = re.findall(r"^from (pipelines[\w.]*) import", service, re.M)
    assert imported == ["pipelines.serving"], imported
    tracked = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "pipelines").rglob("*.py"))
    included = {
        path for path in tracked for pattern in bentofile["include"] if fnmatch.fnmatch("/" + path, pattern)
    }
    serving = {path for path in tracked if path.startswith("pipelines/serving/")}
    assert included == serving | {"pipelines/__init__.py"}
