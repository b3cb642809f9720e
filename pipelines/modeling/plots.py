"""Matplotlib figures of the evaluation, saved as PNG so reports render offline."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import matplotlib

# Headless: stages run without a display. In a notebook kernel this also turns off the inline
# backend's display at the end of each cell, so a figure appears where show() puts it, once.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# The curves each candidate's evaluation writes (plots/<kind>/<candidate>.csv), and their axes.
CURVES = {
    "roc": ("fpr", "tpr"),
    "precision_recall": ("recall", "precision"),
    "residuals": ("predicted", "residual"),
}


def curve(frame: pd.DataFrame, x: str, y: str, title: str, *, diagonal: bool = False) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(frame[x], frame[y], lw=2)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel=x, ylabel=y, title=title, xlim=(0, 1), ylim=(0, 1.01))
    fig.tight_layout()
    return fig


def confusion(frame: pd.DataFrame, title: str) -> Figure:
    table = pd.crosstab(frame["actual"], frame["predicted"])
    labels = sorted(set(table.index) | set(table.columns))
    table = table.reindex(index=labels, columns=labels, fill_value=0)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 3, 1.0 * len(labels) + 2.5))
    ax.imshow(table.to_numpy(), cmap="Blues")
    for (i, j), count in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, str(count), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    fig.tight_layout()
    return fig


def importance(frame: pd.DataFrame, title: str, top: int = 20) -> Figure:
    shown = frame.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(shown) + 1.5))
    ax.barh(shown["feature"].astype(str), shown["importance"], xerr=shown["std"], color="tab:blue")
    ax.set(xlabel="drop in score when shuffled", title=title)
    fig.tight_layout()
    return fig


def residuals(frame: pd.DataFrame, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(frame["predicted"], frame["residual"], s=6, alpha=0.4)
    ax.axhline(0, c="grey", ls="--", lw=1)
    ax.set(xlabel="predicted", ylabel="actual - predicted", title=title)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def figures(frames: dict[str, pd.DataFrame], scores: dict[str, float], name: str) -> dict[str, Figure]:
    """The PNG-worthy figures of one evaluated candidate, keyed by kind."""
    result = {"importance": importance(frames["importance"], f"{name}: permutation importance")}
    if len(frames["roc"]):
        auc = scores.get("roc_auc", float("nan"))
        result["roc"] = curve(frames["roc"], *CURVES["roc"], f"{name}: ROC, AUC {auc:.3f}", diagonal=True)
        result["precision_recall"] = curve(
            frames["precision_recall"], *CURVES["precision_recall"], f"{name}: precision-recall"
        )
        result["confusion"] = confusion(frames["confusion"], f"{name}: confusion (holdout)")
    if len(frames["residuals"]):
        result["residuals"] = residuals(frames["residuals"], f"{name}: residuals (holdout)")
    return result


def overlay(
    frames: dict[str, pd.DataFrame],
    x: str,
    y: str,
    title: str,
    *,
    diagonal: bool = False,
    points: bool = False,
) -> Figure:
    """Several candidates' curves (or, with points=True, point clouds) on one set of axes."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, frame in frames.items():
        if points:
            ax.scatter(frame[x], frame[y], s=6, alpha=0.4, label=name)
        else:
            ax.plot(frame[x], frame[y], lw=2, label=name)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel=x, ylabel=y, title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def overlays(curves: dict[str, dict[str, pd.DataFrame]]) -> dict[str, Figure]:
    """One overlay per kind of CURVES that has data (kind -> candidate -> frame), keyed by kind."""
    return {
        kind: overlay(
            frames,
            *CURVES[kind],
            f"{kind} (holdout)",
            diagonal=kind == "roc",
            points=kind == "residuals",
        )
        for kind, frames in curves.items()
        if frames
    }


def spread(folds: pd.DataFrame, metric: str) -> Figure:
    """Cross-validation spread: each candidate's fold scores as a box."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.boxplot([folds[c] for c in folds.columns], tick_labels=list(folds.columns))
    ax.set(ylabel=metric, title=f"cross-validated {metric}, per fold")
    fig.tight_layout()
    return fig


def show(figures: dict[str, Figure] | Iterable[Figure]) -> None:
    """Put each figure in the notebook's output as a PNG, then close it so it is shown only once.

    The PNG is embedded in the executed notebook, so the HTML report shows it offline.
    """
    from IPython.display import Image, display

    for fig in figures.values() if isinstance(figures, dict) else figures:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        display(Image(buffer.getvalue()))
        plt.close(fig)
