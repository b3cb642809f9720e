"""Where each candidate's files live. Stated here once; dvc.yaml declares the same files as the
train stage's outputs (a repo test checks that they agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.files import read_json


@dataclass(frozen=True)
class Layout:
    """The per-candidate files under params.yaml's `paths.models`, `paths.metrics`, `paths.plots`."""

    models: Path
    metrics: Path
    plots: Path

    @classmethod
    def from_paths(cls, paths: dict[str, Any]) -> Layout:
        return cls(Path(paths["models"]), Path(paths["metrics"]), Path(paths["plots"]))

    def model_dir(self, candidate: str) -> Path:
        return self.models / candidate

    def model_file(self, candidate: str) -> Path:
        """The fitted pipeline, for the reports (the served copy is the MLflow run's skops file)."""
        return self.model_dir(candidate) / "model.joblib"

    def run_record(self, candidate: str) -> Path:
        """{run_id, model_uri, positive_class}: the candidate's MLflow run."""
        return self.model_dir(candidate) / "run.json"

    def cv_scores(self, candidate: str) -> Path:
        return self.metrics / "cv" / f"{candidate}.json"

    def holdout_scores(self, candidate: str) -> Path:
        return self.metrics / "holdout" / f"{candidate}.json"

    def plot_data(self, kind: str, candidate: str) -> Path:
        return self.plots / kind / f"{candidate}.csv"

    def plot_image(self, candidate: str, kind: str) -> Path:
        return self.plots / "images" / candidate / f"{kind}.png"

    def read_holdout_scores(self, candidates: list[str]) -> dict[str, dict[str, float]]:
        """Each candidate's holdout metrics, as its train stage wrote them."""
        return {c: read_json(self.holdout_scores(c)) for c in candidates}

    def read_run(self, candidate: str) -> dict[str, Any]:
        return read_json(self.run_record(candidate))
