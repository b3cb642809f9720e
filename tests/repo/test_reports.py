"""The HTML reports, as a person sees them: opened in a real headless browser (Chromium).

Each report shows every figure its stage makes, as an embedded PNG the browser decodes, and
neither code cells nor warning noise. The reports come from test_notebooks_run's tiny project.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from repo.test_notebooks_run import CANDIDATES, tiny_project

from pipelines.modeling import plots

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Appended to a copy of each report: once loaded, the body carries how many images decoded.
COUNT_DECODED = (
    "<script>window.addEventListener('load', () => { document.body.dataset.decodedImages = "
    "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length; });</script>"
)
# A code cell's input, and the In [n] / Out [n] prompts, in nbconvert's lab template.
CODE_MARKERS = ("jp-InputArea-editor", "jp-InputPrompt", "jp-OutputPrompt", "highlight-ipynb")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not IN_CI,
    reason="chromium is not installed (apt-get install --no-install-recommends chromium); CI installs it",
)


class Page(HTMLParser):
    """What the browser's DOM holds: image sources, classes, text, the body's data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.classes: set[str] = set()
        self.body: dict[str, str] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.classes.update(values.get("class", "").split())
        if tag == "img":
            self.images.append(values.get("src", ""))
        if tag == "body":
            self.body = values

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def browse(report: Path, scratch: Path) -> Page:
    """Load the report in headless Chromium and parse the DOM it ends up with."""
    assert CHROMIUM, "CI must have chromium: .ci/run installs it"
    page = scratch / report.name
    page.write_text(report.read_text().replace("</body>", f"{COUNT_DECODED}</body>"))
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={scratch / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = Page()
    parsed.feed(result.stdout)
    return parsed


def png_images(page: Page) -> int:
    return sum(src.startswith("data:image/png;base64,") for src in page.images)


def check_clean(page: Page, report: Path) -> None:
    text = " ".join(page.text)
    assert "TqdmWarning" not in text, report.name
    assert not re.search(r"\b(import|from) pipelines\b", text), f"{report.name} shows code"
    assert not [m for m in CODE_MARKERS if m in page.classes], f"{report.name} shows code cells"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_project(tmp_path_factory)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("candidate", sorted(CANDIDATES))
def test_train_report_shows_every_figure_of_its_stage(tiny: Path, tmp_path: Path, candidate: str) -> None:
    report = tiny / "reports" / f"train-{candidate}.html"
    made = sorted((tiny / "plots" / "images" / candidate).glob("*.png"))
    assert len(made) >= 4  # classification: importance, ROC, precision-recall, confusion

    page = browse(report, tmp_path)

    assert png_images(page) == len(made)
    assert page.body.get("data-decoded-images") == str(len(made))
    check_clean(page, report)


@pytest.mark.timeout(600)
def test_compare_report_shows_the_overlaid_curves_and_the_cv_spread(tiny: Path, tmp_path: Path) -> None:
    report = tiny / "reports" / "compare.html"
    overlaid = [
        kind
        for kind in plots.CURVES
        if any((tiny / "plots" / kind / f"{c}.csv").read_text().count("\n") > 1 for c in CANDIDATES)
    ]
    assert overlaid == ["roc", "precision_recall"]

    page = browse(report, tmp_path)

    assert png_images(page) == len(overlaid) + 1  # and the CV spread
    assert page.body.get("data-decoded-images") == str(len(overlaid) + 1)
    check_clean(page, report)


@pytest.mark.timeout(600)
def test_explore_report_shows_its_figures_without_code(tiny: Path, tmp_path: Path) -> None:
    report = tiny / "reports" / "explore.html"
    page = browse(report, tmp_path)
    assert png_images(page) >= 2  # the target, the numeric histograms
    check_clean(page, report)
