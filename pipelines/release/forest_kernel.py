"""A tree ensemble as flat arrays built into a small shared library: the trees of a fitted
scikit-learn RandomForest or ExtraTrees (classifier or regressor, one output) or
GradientBoosting exported as data, next to a fixed C kernel (`kernels/forest.c`, committed) that
walks them, compiled by gcc in about a second. It replaces tl2cgen for these kinds only: tl2cgen
writes each of the forest's ~100k nodes as code, which gcc took 53-165 s to build and which ran no
faster than scikit-learn (bench/README.md, "Batch scoring by runtime").

The answers are scikit-learn's bit for bit, by construction (the kernel's header says how), and
`native.compile_native` still proves it on the holdout before the library can serve.
"""

from __future__ import annotations

import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.release.compilation import NotCompiled

SOURCE = Path(__file__).parent / "kernels" / "forest.c"
VERSION = 1  # the blob's layout: FOREST_VERSION in the kernel
FOREST, BOOSTING = 0, 1  # the blob's kind: how the caller starts and finishes the sums
# -O2 and the kernel's own unrolling; no -march: the library may run on another x86-64 machine
# (a Dask worker). No flag may change an IEEE sum, product or comparison: no -ffast-math, and no
# fused multiply-add (scikit-learn multiplies, then adds).
FLAGS = ["-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-std=c11", "-ffp-contract=off"]
NODE = np.dtype([("threshold", "<f4"), ("feature", "<i4"), ("left", "<i4")])


def kind(estimator: Any) -> int | None:
    """FOREST for a fitted single-output RandomForest/ExtraTrees, BOOSTING for a fitted
    GradientBoosting, None for what the kernel does not score."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    forests = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)
    if isinstance(estimator, forests) and getattr(estimator, "n_outputs_", None) == 1:
        return FOREST
    boosting = (GradientBoostingClassifier, GradientBoostingRegressor)
    if isinstance(estimator, boosting) and hasattr(estimator, "estimators_"):
        return BOOSTING
    return None


def supports(estimator: Any) -> bool:
    return kind(estimator) is not None


def float32_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 threshold: for any float32 x, `x <= t` (as
    scikit-learn compares it, in double) is then `x <= t32` (in float)."""
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, then stepped down below
        rounded = thresholds.astype(np.float32)
    above = rounded.astype(np.float64) > thresholds
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def tree_arrays(tree: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """(nodes, values, depth) of one fitted `tree_`, renumbered breadth first."""
    left, right = tree.children_left, tree.children_right
    levels, frontier = [np.array([0])], np.array([0])
    while True:
        inner = frontier[left[frontier] != -1]
        if inner.size == 0:
            break
        frontier = np.column_stack([left[inner], right[inner]]).ravel()
        levels.append(frontier)
    order = np.concatenate(levels)
    if len(order) != tree.node_count:
        raise NotCompiled("a tree's nodes do not form one tree: the kernel cannot walk it")
    new = np.empty(tree.node_count, dtype=np.int64)
    new[order] = np.arange(tree.node_count)
    nodes = np.zeros(tree.node_count, dtype=NODE)
    leaf = left[order] == -1
    nodes["threshold"] = np.where(leaf, np.float32(np.inf), float32_thresholds(tree.threshold[order]))
    nodes["feature"] = np.where(leaf, 0, tree.feature[order])
    nodes["left"] = np.where(leaf, np.arange(tree.node_count), new[np.where(leaf, 0, left[order])])
    values = np.ascontiguousarray(tree.value[order, 0, :], dtype="<f8")
    return nodes, values, int(tree.max_depth)


def forest_blob(estimator: Any) -> bytes:
    """The ensemble as the kernel reads it (kernels/forest.c's header gives the layout)."""
    found = kind(estimator)
    if found is None:
        raise NotCompiled(f"the forest kernel does not score {type(estimator).__name__}")
    if found == FOREST:
        members = [(tree, 0) for tree in estimator.estimators_]
        scale, n_outputs = 1.0, estimator.estimators_[0].tree_.value.shape[2]
    else:  # stage by stage, then class by class: scikit-learn's predict_stages order
        members = [(tree, k) for stage in estimator.estimators_ for k, tree in enumerate(stage)]
        scale, n_outputs = float(estimator.learning_rate), estimator.estimators_.shape[1]
    trees = [tree_arrays(tree.tree_) for tree, _ in members]
    width = trees[0][1].shape[1]
    sizes = np.array([len(nodes) for nodes, _, _ in trees], dtype=np.int64)
    header = struct.pack(
        "<8s6iq",
        b"SKFOREST",
        VERSION,
        found,
        len(trees),
        estimator.n_features_in_,
        n_outputs,
        width,
        int(sizes.sum()),
    )
    parts = [
        header,
        np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype("<i8").tobytes(),
        np.array([d for _, _, d in trees], dtype="<i4").tobytes(),
        np.array([k for _, k in members], dtype="<i4").tobytes(),
        np.full(len(trees), scale, dtype="<f8").tobytes(),
        np.concatenate([n for n, _, _ in trees]).tobytes(),
        np.concatenate([v for _, v, _ in trees]).tobytes(),
    ]
    return b"".join(part + b"\0" * (-len(part) % 8) for part in parts)


def build(estimator: Any, compiler: str = "gcc") -> bytes:
    """The shared library's bytes: the committed kernel with `estimator`'s trees embedded."""
    blob = forest_blob(estimator)
    with tempfile.TemporaryDirectory(prefix="forest-") as folder:
        (Path(folder) / "forest.bin").write_bytes(blob)
        library = Path(folder) / "model.so"
        command = [compiler, *FLAGS, f"-Wa,-I,{folder}", "-o", str(library), str(SOURCE)]
        try:
            done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NotCompiled(f"{compiler} could not build the forest kernel: {exc}") from None
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0][:300]
            raise NotCompiled(f"{compiler} could not build the forest kernel: {first}")
        return library.read_bytes()
