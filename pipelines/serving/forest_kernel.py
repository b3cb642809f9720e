"""The forest kernel's library (release/forest_kernel.py builds it) called through ctypes.

The library holds the trees; this side hands it a float32 matrix and divides its per-row sums by
the number of trees, as scikit-learn's forest does. ctypes lets go of the GIL during the call, so
with several threads each scores its own rows at the same time.
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


class ForestKernel:
    """A loaded forest library: `score` gives scikit-learn's predict_proba (classifier) or
    predict (regressor, as one column) of a float32 matrix without NaN."""

    def __init__(self, library: ctypes.CDLL, threads: int = 1) -> None:
        shape = (ctypes.c_int32 * 4)()
        library.forest_kernel_shape.restype = ctypes.c_int
        if library.forest_kernel_shape(shape) != 0:
            raise ValueError("the forest library's data is not a forest this runtime can read")
        _, self.n_trees, self.n_features, self.n_outputs = (int(v) for v in shape)
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

    def score(self, x: Any) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"the forest takes rows of {self.n_features} features, not {x.shape}")
        out = np.zeros((len(x), self.n_outputs))
        parts = min(self.threads, len(x) // MIN_ROWS_PER_THREAD)
        if self.pool is None or parts < 2:
            self._sums(x, out)
        else:
            bounds = np.linspace(0, len(x), parts + 1).astype(int)
            pieces = [(x[a:b], out[a:b]) for a, b in itertools.pairwise(bounds)]
            list(self.pool.map(lambda piece: self._sums(*piece), pieces))
        out /= self.n_trees  # scikit-learn: the sum over trees in order, then this division
        return out
