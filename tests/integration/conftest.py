"""One real `dvc repro` of the project on its default data, shared by the integration tests.

The run happens in a temporary copy of the git-tracked files (a fresh git repository, so DVC and
the lineage tags work). Tests that change the copy put it back as they found it.
"""

from __future__ import annotations

import pytest
from project_copy import Project, lock_out_md5s, metrics_files
from support import copy_project, git_head, read_yaml


@pytest.fixture(scope="session")
def default_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    root = copy_project(tmp_path_factory.mktemp("default") / "project")
    params = read_yaml(root / "params.yaml")
    assert params["tracking"]["store"] == "mlruns", "the tests expect the store under the project"
    project = Project(root=root, head=git_head(root))
    result = project.dvc("repro")
    assert result.returncode == 0, f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    project.first_lock = lock_out_md5s(root)
    project.first_metrics = metrics_files(root)
    return project
