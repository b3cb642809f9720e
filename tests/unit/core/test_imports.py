"""hidden_modules: an installed optional library stays out of another library's eager imports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from pipelines.core.imports import hidden_modules


def test_a_hidden_module_fails_to_import_inside_the_block_and_imports_after() -> None:
    sys.modules.pop("tomllib", None)
    with hidden_modules("tomllib"), pytest.raises(ImportError):
        import tomllib
    import tomllib

    assert tomllib.loads("a = 1") == {"a": 1}


def test_a_module_already_imported_is_left_alone() -> None:
    import json

    with hidden_modules("json"):
        import json as again

        assert again is json
    assert sys.modules["json"] is json


def test_the_marker_is_removed_even_when_the_block_raises() -> None:
    sys.modules.pop("tomllib", None)
    with pytest.raises(RuntimeError), hidden_modules("tomllib"):
        raise RuntimeError("boom")
    assert "tomllib" not in sys.modules or sys.modules["tomllib"] is not None


def test_the_contract_keeps_an_installed_pyspark_out_and_prints_nothing() -> None:
    # With the Spark extra installed, pandera imports pyspark.pandas eagerly (0.8 s and a
    # FutureWarning on stderr). Checked in a fresh interpreter, where nothing is imported yet.
    if importlib.util.find_spec("pyspark") is None:
        pytest.skip("the Spark extra is not installed; nothing to keep out")
    code = (
        "import sys, pandas as pd\n"
        "from pipelines.data.contract import infer_contract, check_frame\n"
        "frame = pd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'x']})\n"
        "check_frame(frame, infer_contract(frame, 'b', max_categories=5, null_tolerance=0.1))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert done.stderr == ""
