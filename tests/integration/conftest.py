"""The real pipeline runs the integration tests share.

`default_project`: one `dvc repro` of the project on its default data, reused by every test of
test_default_pipeline.py; the tests that change it put it back. `regression_run`: a `dvc repro` of
a regression data set, started in the background before the default run when its test is
selected (both pipelines run single-threaded, so on two cores they overlap).

Each runs in a temporary copy of the project (a fresh git repository, so DVC and the lineage
tags work).
"""

from __future__ import annotations

import pytest
from helpers.project_copy import Project, RegressionRun, lock_out_md5s, metrics_files
from helpers.support import Background, copy_project, git_head, read_yaml, regression_frame, write_yaml


@pytest.fixture(scope="session")
def regression_run(tmp_path_factory: pytest.TempPathFactory):
    """`dvc repro` on ~400 rows with a numeric target; only params.yaml changes: `data`, and a new
    paths.contract so that one gets inferred. The default candidates pick regressors themselves."""
    base = tmp_path_factory.mktemp("regression")
    root = copy_project(base / "project")
    frame = regression_frame(400)
    frame.to_csv(root / "data" / "source" / "listings.csv", index=False)
    params = read_yaml(root / "params.yaml")
    params["data"] = {
        "source": "data/source/listings.csv",
        "target": "price",
        "task": "regression",
        "ignore": ["listing"],
        "positive_class": None,
    }
    params["paths"]["contract"] = "data/contract_listings.yaml"  # absent, so it gets inferred
    write_yaml(params, root / "params.yaml")
    committed = (root / "data" / "contract.yaml").read_bytes()
    job = Background(["dvc", "repro"], root, base / "logs")
    yield RegressionRun(root=root, frame=frame, params=params, committed_contract=committed, job=job)
    job.stop()


@pytest.fixture(scope="session")
def default_project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Project:
    if any("regression_run" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("regression_run")  # starts it, to run beside this one
    root = copy_project(tmp_path_factory.mktemp("default") / "project")
    params = read_yaml(root / "params.yaml")
    assert params["tracking"]["store"] == "mlruns", "the tests expect the store under the project"
    project = Project(root=root, head=git_head(root))
    result = project.dvc("repro")
    assert result.returncode == 0, f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    project.first_lock = lock_out_md5s(root)
    project.first_metrics = metrics_files(root)
    return project
