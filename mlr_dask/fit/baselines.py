"""Baselines at equal storage, returned as ``MLRMatrix`` so they compare one to one:

- :func:`lowrank`: truncated SVD of rank ``r`` (one level);
- :func:`lowrank_plus_diagonal`: two levels, ranks ``(r - 1, 1)``, the last of atoms (a
  diagonal for square matrices), fitted by BCD;
- :func:`block_diagonal`: two levels, ranks ``(0, r)``: ``n_blocks`` contiguous diagonal blocks
  of rank ``r`` each (same storage ``(m + n) r``).

Inputs ``A`` (m, n) dense in original order.
"""

from __future__ import annotations

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fit.bcd import init_state, run_bcd
from mlr_dask.fit.partition import atom_counts
from mlr_dask.fit.svd import randomized_svd
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix

__all__ = ["truncated_svd", "lowrank", "lowrank_plus_diagonal", "block_diagonal",
           "rel_error_dense"]


def rel_error_dense(A: np.ndarray, M: MLRMatrix) -> float:
    """``||A - M||_F / ||A||_F`` with ``A`` dense in original order (materializes M)."""
    return float(np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A))


def truncated_svd(
    A: np.ndarray, rank: int, *, exact_max: int = 1500, q: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``rank`` SVD of ``A`` (m, n): dense LAPACK when ``min(m, n) <= exact_max``, else a
    randomized SVD with ``q`` power iterations and 20 extra columns. Returns
    ``U`` (m, rank), ``s`` (rank,), ``V`` (n, rank)."""
    A = np.asarray(A, dtype=np.float64)
    if min(A.shape) <= exact_max:
        U, s, Vt = np.linalg.svd(A, full_matrices=False)
        return U[:, :rank], s[:rank], Vt[:rank].T
    return randomized_svd(A, rank, q=q, oversample=20, rng=np.random.default_rng(seed))


def lowrank(A: np.ndarray, rank: int, **kw: int) -> MLRMatrix:
    """Rank-``rank`` truncated SVD as a one-level MLRMatrix (balanced factors)."""
    m, n = A.shape
    if not 0 <= rank <= min(m, n):
        raise InputError(f"rank {rank} must be between 0 and min(m, n) = {min(m, n)}")
    U, s, V = truncated_svd(A, rank, **kw)
    sq = np.sqrt(s)
    return MLRMatrix(Hierarchy([[0, m]]), Hierarchy([[0, n]]), [rank], U * sq, V * sq)


def lowrank_plus_diagonal(A: np.ndarray, rank: int, *, max_iter: int = 50,
                          tol: float = 1e-6) -> MLRMatrix:
    """``(r - 1, 1)`` two-level fit: low rank plus a diagonal of ``min(m, n)`` atoms."""
    m, n = A.shape
    if rank < 1 or rank - 1 > min(m, n):
        raise InputError(f"rank {rank} must be between 1 and min(m, n) + 1")
    rows, cols = Hierarchy([[0, m]]), Hierarchy([[0, n]])
    c = atom_counts(rows, cols)
    rows, cols = rows.refine(c), cols.refine(c)
    st = init_state(A, rows.boundaries, cols.boundaries, [rank - 1, 1])
    run_bcd(st, max_iter=max_iter, tol=tol)
    return MLRMatrix(rows, cols, st.ranks, np.hstack(st.B), np.hstack(st.C))


def block_diagonal(A: np.ndarray, rank: int, *, n_blocks: int = 8, max_iter: int = 1) -> MLRMatrix:
    """``n_blocks`` contiguous diagonal blocks (original order) of rank ``rank`` each."""
    m, n = A.shape
    if n_blocks < 1 or n_blocks > min(m, n):
        raise InputError(f"n_blocks must be between 1 and {min(m, n)}")
    rb = np.linspace(0, m, n_blocks + 1).round().astype(np.int64)
    cb = np.linspace(0, n, n_blocks + 1).round().astype(np.int64)
    if rank > min(np.diff(rb).min(), np.diff(cb).min()):
        raise InputError(f"rank {rank} is larger than the smallest block")
    rows = Hierarchy([[0, m], rb])
    cols = Hierarchy([[0, n], cb])
    st = init_state(A, rows.boundaries, cols.boundaries, [0, rank])
    run_bcd(st, max_iter=max_iter, tol=1.0)
    return MLRMatrix(rows, cols, st.ranks, np.hstack(st.B), np.hstack(st.C))
