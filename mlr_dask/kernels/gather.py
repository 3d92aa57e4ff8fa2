"""Gather / scatter of the diagonal blocks of one level, for batched block SVDs.

Shapes: ``R`` (m, n) a matrix in hierarchy order; ``rb`` / ``cb`` (p + 1,) the row / column
boundaries of one level; ``idx`` (t,) the blocks to move; ``G`` (t, BM, BN) the blocks, zero
padded to a common shape (``BM >= max rows``, ``BN >= max cols`` of the chosen blocks).
``F`` (m, r) a stacked factor; ``Fp`` (t, BM, r) its rows per block, zero padded.

Each numba kernel (``nogil``, no parallel, no cache) has a plain-numpy twin (suffix
``_numpy``); tests compare them.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "gather_blocks",
    "gather_blocks_numpy",
    "scatter_blocks",
    "scatter_blocks_numpy",
    "gather_rows",
    "gather_rows_numpy",
    "scatter_rows",
    "scatter_rows_numpy",
]


@numba.njit(nogil=True, cache=False)
def _gather_blocks(R, rb, cb, idx, G):  # pragma: no cover - compiled
    for t in range(idx.size):
        k = idx[t]
        r0, c0 = rb[k], cb[k]
        for i in range(rb[k + 1] - r0):
            for j in range(cb[k + 1] - c0):
                G[t, i, j] = R[r0 + i, c0 + j]


def gather_blocks(
    R: np.ndarray, rb: np.ndarray, cb: np.ndarray, idx: np.ndarray, BM: int, BN: int
) -> np.ndarray:
    """(t, BM, BN) the blocks ``idx`` of ``R``, zero padded."""
    G = np.zeros((idx.size, BM, BN), dtype=R.dtype)
    _gather_blocks(R, rb, cb, idx, G)
    return G


def gather_blocks_numpy(
    R: np.ndarray, rb: np.ndarray, cb: np.ndarray, idx: np.ndarray, BM: int, BN: int
) -> np.ndarray:
    """Plain-numpy twin of :func:`gather_blocks`."""
    G = np.zeros((idx.size, BM, BN), dtype=R.dtype)
    for t, k in enumerate(idx):
        blk = R[rb[k]:rb[k + 1], cb[k]:cb[k + 1]]
        G[t, :blk.shape[0], :blk.shape[1]] = blk
    return G


@numba.njit(nogil=True, cache=False)
def _scatter_blocks(R, rb, cb, idx, G):  # pragma: no cover - compiled
    for t in range(idx.size):
        k = idx[t]
        r0, c0 = rb[k], cb[k]
        for i in range(rb[k + 1] - r0):
            for j in range(cb[k + 1] - c0):
                R[r0 + i, c0 + j] = G[t, i, j]


def scatter_blocks(
    R: np.ndarray, rb: np.ndarray, cb: np.ndarray, idx: np.ndarray, G: np.ndarray
) -> np.ndarray:
    """Write the unpadded part of ``G`` (t, BM, BN) into the blocks ``idx`` of ``R``, in place."""
    _scatter_blocks(R, rb, cb, idx, G)
    return R


def scatter_blocks_numpy(
    R: np.ndarray, rb: np.ndarray, cb: np.ndarray, idx: np.ndarray, G: np.ndarray
) -> np.ndarray:
    """Plain-numpy twin of :func:`scatter_blocks`."""
    for t, k in enumerate(idx):
        h, w = rb[k + 1] - rb[k], cb[k + 1] - cb[k]
        R[rb[k]:rb[k + 1], cb[k]:cb[k + 1]] = G[t, :h, :w]
    return R


@numba.njit(nogil=True, cache=False)
def _gather_rows(F, bounds, idx, Fp):  # pragma: no cover - compiled
    for t in range(idx.size):
        k = idx[t]
        r0 = bounds[k]
        for i in range(bounds[k + 1] - r0):
            for a in range(F.shape[1]):
                Fp[t, i, a] = F[r0 + i, a]


def gather_rows(F: np.ndarray, bounds: np.ndarray, idx: np.ndarray, BM: int) -> np.ndarray:
    """(t, BM, r) the rows of ``F`` (m, r) in the blocks ``idx``, zero padded."""
    Fp = np.zeros((idx.size, BM, F.shape[1]), dtype=F.dtype)
    if F.shape[1]:
        _gather_rows(F, bounds, idx, Fp)
    return Fp


def gather_rows_numpy(F: np.ndarray, bounds: np.ndarray, idx: np.ndarray, BM: int) -> np.ndarray:
    """Plain-numpy twin of :func:`gather_rows`."""
    Fp = np.zeros((idx.size, BM, F.shape[1]), dtype=F.dtype)
    for t, k in enumerate(idx):
        Fp[t, :bounds[k + 1] - bounds[k]] = F[bounds[k]:bounds[k + 1]]
    return Fp


@numba.njit(nogil=True, cache=False)
def _scatter_rows(F, bounds, idx, Fp):  # pragma: no cover - compiled
    for t in range(idx.size):
        k = idx[t]
        r0 = bounds[k]
        for i in range(bounds[k + 1] - r0):
            for a in range(F.shape[1]):
                F[r0 + i, a] = Fp[t, i, a]


def scatter_rows(F: np.ndarray, bounds: np.ndarray, idx: np.ndarray, Fp: np.ndarray) -> np.ndarray:
    """Write the unpadded rows of ``Fp`` (t, BM, r) into ``F`` (m, r), in place."""
    if F.shape[1]:
        _scatter_rows(F, bounds, idx, Fp)
    return F


def scatter_rows_numpy(
    F: np.ndarray, bounds: np.ndarray, idx: np.ndarray, Fp: np.ndarray
) -> np.ndarray:
    """Plain-numpy twin of :func:`scatter_rows`."""
    for t, k in enumerate(idx):
        F[bounds[k]:bounds[k + 1]] = Fp[t, :bounds[k + 1] - bounds[k]]
    return F


def warm() -> None:
    """Compile the kernels of this module for float64 on tiny inputs (worker start-up)."""
    b = np.array([0, 2], dtype=np.int64)
    idx = np.array([0], dtype=np.int64)
    R = np.zeros((2, 2))
    scatter_blocks(R, b, b, idx, gather_blocks(R, b, b, idx, 2, 2))
    F = np.zeros((2, 1))
    scatter_rows(F, b, idx, gather_rows(F, b, idx, 2))
