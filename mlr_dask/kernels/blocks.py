"""Block-diagonal low-rank products and per-block segment sums.

Shapes: ``B`` (m, r) and ``C`` (n, r) are one level's stacked factors in hierarchy order;
``row_bounds`` / ``col_bounds`` (p + 1,) are that level's block boundaries; ``X`` (n, t).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=False)
def _block_matmat(B, C, X, row_bounds, col_bounds, out):  # pragma: no cover - compiled
    r = B.shape[1]
    t = X.shape[1]
    z = np.empty((r, t), dtype=out.dtype)
    for k in range(row_bounds.size - 1):
        z[:, :] = 0.0
        for j in range(col_bounds[k], col_bounds[k + 1]):
            for a in range(r):
                c = C[j, a]
                for s in range(t):
                    z[a, s] += c * X[j, s]
        for i in range(row_bounds[k], row_bounds[k + 1]):
            for a in range(r):
                b = B[i, a]
                for s in range(t):
                    out[i, s] += b * z[a, s]


@numba.njit(nogil=True, cache=False)
def _block_matvec(B, C, x, row_bounds, col_bounds, out):  # pragma: no cover - compiled
    r = B.shape[1]
    z = np.empty(r, dtype=out.dtype)
    for k in range(row_bounds.size - 1):
        z[:] = 0.0
        for j in range(col_bounds[k], col_bounds[k + 1]):
            xj = x[j]
            for a in range(r):
                z[a] += C[j, a] * xj
        for i in range(row_bounds[k], row_bounds[k + 1]):
            acc = 0.0
            for a in range(r):
                acc += B[i, a] * z[a]
            out[i] += acc


def block_matmat(
    B: np.ndarray,
    C: np.ndarray,
    X: np.ndarray,
    row_bounds: np.ndarray,
    col_bounds: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """``out += blockdiag_k(B_k C_k^T) @ X`` in place (numba); returns ``out`` (m, t)."""
    if B.shape[1] and row_bounds.size > 1:
        if X.shape[1] == 1:
            _block_matvec(B, C, X[:, 0], row_bounds, col_bounds, out[:, 0])
        else:
            _block_matmat(B, C, X, row_bounds, col_bounds, out)
    return out


def block_matmat_numpy(
    B: np.ndarray,
    C: np.ndarray,
    X: np.ndarray,
    row_bounds: np.ndarray,
    col_bounds: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Plain-numpy twin of :func:`block_matmat` (segment sums with ``np.add.reduceat``)."""
    if B.shape[1] == 0:
        return out
    z = segment_sum_numpy(C[:, :, None] * X[:, None, :], col_bounds)  # (p, r, t)
    rows_block = np.repeat(np.arange(row_bounds.size - 1), np.diff(row_bounds))
    out += np.einsum("ir,irt->it", B, z[rows_block])
    return out


@numba.njit(nogil=True, cache=False)
def _segment_sum(X, bounds, out):  # pragma: no cover - compiled
    for k in range(bounds.size - 1):
        for i in range(bounds[k], bounds[k + 1]):
            for a in range(X.shape[1]):
                out[k, a] += X[i, a]


def segment_sum(X: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(p, q) sums of the rows of ``X`` (n, q) over the blocks ``[bounds[k], bounds[k+1])``."""
    X2 = np.ascontiguousarray(X.reshape(X.shape[0], -1))
    out = np.zeros((bounds.size - 1, X2.shape[1]), dtype=X2.dtype)
    _segment_sum(X2, np.asarray(bounds, dtype=np.int64), out)
    return out.reshape((bounds.size - 1, *X.shape[1:]))


def segment_sum_numpy(X: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Plain-numpy twin of :func:`segment_sum` (blocks are non-empty)."""
    return np.add.reduceat(X, np.asarray(bounds[:-1], dtype=np.int64), axis=0)


def warm() -> None:
    """Compile the kernels of this module for float64 on tiny inputs."""
    b = np.array([0, 2], dtype=np.int64)
    F = np.ones((2, 1))
    block_matmat(F, F, np.ones((2, 1)), b, b, np.zeros((2, 1)))
    block_matmat(F, F, np.ones((2, 2)), b, b, np.zeros((2, 2)))
    segment_sum(np.ones((2, 1)), b)
