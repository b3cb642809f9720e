"""The code is generic: no column of the default data set is named anywhere in pipelines/.

Another data set is a change to params.yaml, so a default-data name in the code (even in a
docstring) is either a hidden assumption or a misleading example.
"""

from __future__ import annotations

import csv
import re

from helpers.support import PROJECT

# "contract" is a column of the default data and also the project's word for the data contract.
PROJECT_WORDS = {"contract"}


def test_no_default_data_column_is_named_in_the_package() -> None:
    with open(PROJECT / "data" / "source" / "telco_churn.csv", newline="") as handle:
        columns = set(next(csv.reader(handle))) - PROJECT_WORDS
    assert len(columns) > 15
    found = []
    for path in sorted((PROJECT / "pipelines").rglob("*.py")):
        text = path.read_text()
        found += [f"{path.relative_to(PROJECT)}: {c}" for c in columns if re.search(rf"\b{c}\b", text)]
    assert found == []
