"""The bento's pinned requirements are the versions of the project's own lock."""

import re
from pathlib import Path

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


def test_bentofile_includes_what_the_service_imports():
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    service = (REPO / "service.py").read_text()
    imported = set(re.findall(r"^from pipelines import (\w+)", service, re.M))
    assert imported, "service.py imports nothing from pipelines/"
    for module in imported:
        assert f"/pipelines/{module}.py" in bentofile["include"]
    for module in ("serving", "http"):
        source = (REPO / "pipelines" / f"{module}.py").read_text()
        assert not re.search(r"^\s*(import|from)\s+(mlflow|pandera|dvc)\b", source, re.M)
        assert re.findall(r"^from pipelines import (\w+)", source, re.M) in ([], ["serving"])
