"""The DVC remote on the stack's S3 store: push from one copy, pull into a fresh git clone.

The files are compared by md5 computed here with hashlib, not by DVC; the objects are also looked
up in the bucket directly, so a pull that silently fell back to another remote would show."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.support import classification_frame, subprocess_env

pytestmark = pytest.mark.integration

PROBE = Path("data") / "s3_probe"


def _md5s(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_push_then_pull_into_a_fresh_clone(stack: Any, stack_kit: Any, tmp_path: Path) -> None:
    root = stack.project
    probe = root / PROBE
    probe.mkdir(parents=True, exist_ok=True)
    frame = classification_frame(500, seed=13)
    frame.to_csv(probe / "table.csv", index=False)
    frame.to_parquet(probe / "table.parquet")
    (probe / "bytes.bin").write_bytes(hashlib.sha256(b"seed").digest() * 4096)
    originals = _md5s(probe)

    shared = (root / ".dvc" / "config").read_text()
    assert "url = s3://dvc/tabular-mlops" in shared and "remote = local" in shared  # local stays default

    stack_kit.run(["dvc", "add", PROBE.as_posix()], root)
    stack_kit.run(["git", "add", "-A"], root)
    stack_kit.run(["git", "commit", "-q", "-m", "s3 probe data"], root)
    stack_kit.run(["dvc", "push", "-r", "s3", f"{PROBE.as_posix()}.dvc"], root)

    keys = {
        o["Key"]
        for o in stack.s3_client().list_objects_v2(Bucket="dvc", Prefix="tabular-mlops/").get("Contents", [])
    }
    for md5 in originals.values():
        assert f"tabular-mlops/files/md5/{md5[:2]}/{md5[2:]}" in keys

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True, env=subprocess_env())
    assert not (clone / PROBE).exists() and not (clone / ".dvc" / "config.local").exists()
    stack.write_dvc_local(clone)
    stack_kit.run(["dvc", "pull", "-r", "s3", f"{PROBE.as_posix()}.dvc"], clone)
    assert _md5s(clone / PROBE) == originals
