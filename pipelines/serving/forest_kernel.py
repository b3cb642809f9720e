"""The forest kernel's library (release/forest_kernel.py builds it) called through ctypes.

The library holds the trees and adds each tree's values to a row's sums; this side starts and
finishes them as scikit-learn does: a forest's from zero, then divided by the number of trees; a
gradient boosting's from its initial raw predictions, then through its loss's link (both
computed by the fitted estimator itself). ctypes lets go of the GIL during the call, so with
several threads each scores its own rows at the same time.
"""

from __future__ import annotations

import ctypes
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Rows per block: a block's float32 rows (~64 KB) stay in the core's cache while each tree,
# in turn, walks all of them.
BLOCK_BYTES = 64 * 1024
MIN_ROWS_PER_THREAD = 2048


FOREST, BOOSTING = 0, 1  # release/forest_kernel.py's kinds


class ForestKernel:
    """A loaded forest library: `score` gives scikit-learn's predict_proba (classifier) or
    predict (regressor, as one column) of a float32 matrix without NaN."""

    def __init__(self, library: ctypes.CDLL, threads: int = 1) -> None:
        shape = (ctypes.c_int32 * 5)()
        library.forest_kernel_shape.restype = ctypes.c_int
        if library.forest_kernel_shape(shape) != 0 or shape[1] not in (FOREST, BOOSTING):
            raise ValueError("the forest library's data is not a forest this runtime can read")
        _, self.kind, self.n_trees, self.n_features, self.n_outputs = (int(v) for v in shape)
        self.call = library.forest_kernel_score
        self.call.restype = ctypes.c_int
        self.call.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int64,
        ]
        self.library = library  # keeps it loaded as long as the kernel lives
        self.threads = threads or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.block = max(8, BLOCK_BYTES // (4 * max(self.n_features, 1)) // 8 * 8)

    def _sums(self, x: np.ndarray, out: np.ndarray) -> None:
        if len(x) and self.call(x.ctypes.data, len(x), x.shape[1], out.ctypes.data, self.block) != 0:
            raise ValueError(f"the forest takes {self.n_features} features, not {x.shape[1]}")

    def add(self, x: np.ndarray, out: np.ndarray) -> None:
        """Adds each tree's (scaled) values to `out` (rows x outputs, float64, C order)."""
        parts = min(self.threads, len(x) // MIN_ROWS_PER_THREAD)
        if self.pool is None or parts < 2:
            self._sums(x, out)
            return
        bounds = np.linspace(0, len(x), parts + 1).astype(int)
        pieces = [(x[a:b], out[a:b]) for a, b in itertools.pairwise(bounds)]
        list(self.pool.map(lambda piece: self._sums(*piece), pieces))

    def score(self, x: Any, estimator: Any = None) -> np.ndarray:
        """scikit-learn's answers for `x`; a gradient boosting's need its fitted `estimator`."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"the forest takes rows of {self.n_features} features, not {x.shape}")
        if self.kind == FOREST:
            out = np.zeros((len(x), self.n_outputs))
            self.add(x, out)
            out /= self.n_trees  # scikit-learn: the sum over trees in order, then this division
            return out
        if len(x) == 0:  # scikit-learn refuses to start from no rows
            return np.zeros((0, len(getattr(estimator, "classes_", [0]))))
        raw = np.array(estimator._raw_predict_init(x), dtype=np.float64, order="C")  # its own start
        if raw.shape != (len(x), self.n_outputs):
            raise ValueError(
                f"the initial predictions have shape {raw.shape}, not ({len(x)}, {self.n_outputs})"
            )
        self.add(x, raw)
        if not hasattr(estimator, "predict_proba"):
            return raw  # a regressor's raw sums are its predictions
        return estimator._loss.predict_proba(raw.ravel() if self.n_outputs == 1 else raw)
