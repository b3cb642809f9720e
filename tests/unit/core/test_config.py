"""pipelines/core/config.py: where the project is, and whether params.yaml makes sense."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core import config
from pipelines.core.errors import ParamsError, PipelineError


def test_project_root_is_the_nearest_folder_with_params(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    deep = tmp_path / "notebooks" / "sub"
    deep.mkdir(parents=True)
    assert config.project_root(deep) == tmp_path.resolve()
    assert config.project_root(tmp_path) == tmp_path.resolve()


def test_project_root_prefers_the_innermost_params(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "params.yaml").write_text("seed: 2\n")
    assert config.project_root(inner / ".") == inner.resolve()


def test_project_root_defaults_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "reports").mkdir()
    monkeypatch.chdir(tmp_path / "reports")
    assert config.project_root() == tmp_path.resolve()


def test_project_root_without_params_is_a_params_error(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"no params\.yaml"):
        config.project_root(tmp_path)


GOOD = {"task": "classification", "target": "y", "ignore": ["id"]}
COLUMNS = ["id", "a", "b", "y"]


def test_check_data_params_accepts_sensible_params() -> None:
    config.check_data_params(GOOD, COLUMNS)
    config.check_data_params({**GOOD, "task": "regression", "ignore": None}, COLUMNS)
    config.check_data_params({**GOOD, "ignore": []}, COLUMNS)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"task": "clustering"}, ["data.task", "'clustering'", "classification", "regression"]),
        ({"task": None}, ["data.task", "unknown"]),
        ({"target": "price"}, ["data.target", "'price'", "not a column"]),
        ({"ignore": "id"}, ["data.ignore", "list"]),
        ({"ignore": ["id", "zip_code"]}, ["data.ignore", "zip_code"]),
        ({"ignore": ["id", "y"]}, ["data.target", "'y'", "data.ignore"]),
    ],
)
def test_check_data_params_names_the_problem(change: dict, words: list[str]) -> None:
    with pytest.raises(ParamsError) as info:
        config.check_data_params({**GOOD, **change}, COLUMNS)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message
    assert isinstance(info.value, PipelineError)  # nbrun prints these as one line


def test_load_params_refuses_bad_yaml_and_non_mappings(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        config.load_params(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        config.load_params(listing)
    good = tmp_path / "good.yaml"
    good.write_text("seed: 3\ndata: {target: y}\n")
    assert config.load_params(good) == {"seed": 3, "data": {"target": "y"}}


def test_notebook_params_fill_missing_sections_and_work_from_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "params.yaml").write_text("seed: 7\ndata: {target: y}\npaths: {raw: r.parquet}\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    injected = {"target": "injected"}
    p = config.notebook_params(data=injected, seed=None, paths=None)
    assert p.data == injected  # papermill's injected value wins
    assert p.seed == 7 and p.paths == {"raw": "r.parquet"}  # None means: read params.yaml
    assert p.root == tmp_path.resolve()
    assert Path.cwd() == tmp_path.resolve()


def test_notebook_params_name_a_missing_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("seed: 7\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match="no section 'tracking'"):
        config.notebook_params(tracking=None)
