"""Alternating least squares on the Dask path: the final fit of the factors with a fixed
hierarchy and ranks, through products with A over its chunks.

The half step for the row factors is that of :func:`mlr_dask.fit.als.als_half_step`: each
finest block of rows solves its normal equations ``G X = H``. Only the right-hand sides ``H``
touch A: per level ``l`` with rank, the products ``A_t C_l[t]`` with the diagonal blocks of
the level, i.e. ``P_l = blockdiag_l(A) C_l`` (m, r_l). They come from

- levels coarser than the chunk level: one block product per level through the engine (a level
  with ``p`` blocks reads ``1/p`` of A);
- the finer levels: one task per diagonal chunk, all levels at once (their blocks lie inside).

The Gram matrices ``G`` are built from the factors on the driver. The column half step is the
same with the roles of rows and columns swapped (``A^T``). An iteration therefore reads A about
``2 (1 + sum_{l < c} 1 / p_l)`` times, plus one loss pass, against about ``2 (q + 1)`` block
products per coarse level for a BCD epoch. Each half step is an exact block minimization: the
loss never increases except by rounding, and an iteration that raises it is undone.

ALS needs separate row and column factors: the PSD model ``B B^T`` is fitted by BCD only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlr_dask.fit.als import leaf_solve

__all__ = ["diag_products", "run_als_dask"]


def fine_products_task(Aii: Any, X: list[np.ndarray], ob: list[np.ndarray],
                       ib: list[np.ndarray], transpose: bool) -> list[np.ndarray]:
    """``[blockdiag_l(A_ii) X_l]`` (or ``blockdiag_l(A_ii)^T X_l``) for the fine levels of one
    diagonal chunk ``A_ii`` (a, b), block boundaries local to the chunk (``ob``: the output
    side, ``ib``: the side of ``X_l``). Returns one (a, r_l) (or (b, r_l)) array per level.
    Cost: the area of each level's blocks times ``r_l``."""
    from mlr_dask.fit.dask import _chunk_array

    A = _chunk_array(Aii, False)
    out = []
    for Xl, o, i in zip(X, ob, ib, strict=True):
        Y = np.zeros((int(o[-1]), Xl.shape[1]))
        if Xl.shape[1]:
            for k in range(o.size - 1):
                if transpose:
                    blk = A[i[k]:i[k + 1], o[k]:o[k + 1]].T
                else:
                    blk = A[o[k]:o[k + 1], i[k]:i[k + 1]]
                Y[o[k]:o[k + 1]] = blk @ Xl[i[k]:i[k + 1]]
        out.append(Y)
    return out


def diag_products(eng: Any, F: Any, c: int, rch: np.ndarray, cch: np.ndarray,
                  X: list[np.ndarray], transpose: bool) -> list[np.ndarray]:
    """``P_l = blockdiag_l(A) X_l`` (or ``blockdiag_l(A)^T X_l``) for every level with rank:
    ``X_l`` (n, r_l) (or (m, r_l)) in hierarchy order; returns (m, r_l) (or (n, r_l)) arrays,
    zeros (m, 0) for levels without rank. ``F`` gives the boundaries and ranks, ``eng`` the
    chunks (see :mod:`mlr_dask.fit.dask`); ``c``, ``rch``, ``cch``: the chunk layout."""
    L = len(F.ranks)
    ob_all, ib_all = (F.cb, F.rb) if transpose else (F.rb, F.cb)
    m_out = int(ob_all[0][-1])
    out: list[np.ndarray] = [np.zeros((m_out, int(r))) for r in F.ranks]
    for lvl in range(min(c, L)):
        if F.ranks[lvl] == 0:
            continue
        ob, ib = ob_all[lvl], ib_all[lvl]
        parts = [np.ascontiguousarray(X[lvl][ib[t]:ib[t + 1]]) for t in range(ob.size - 1)]
        res = eng.block_products(F.rb[lvl], F.cb[lvl], parts, transpose=transpose)
        for t, Y in enumerate(res):
            out[lvl][ob[t]:ob[t + 1]] = Y
    fine = [lvl for lvl in range(c, L) if F.ranks[lvl] > 0]
    if not fine:
        return out
    from mlr_dask.fit.dask import _local_bounds

    och, ich = (cch, rch) if transpose else (rch, cch)
    calls = []
    for i in range(rch.size - 1):
        o0, o1, i0, i1 = int(och[i]), int(och[i + 1]), int(ich[i]), int(ich[i + 1])
        ob = _local_bounds([ob_all[lvl] for lvl in fine], o0, o1)
        ib = _local_bounds([ib_all[lvl] for lvl in fine], i0, i1)
        Xi = [np.ascontiguousarray(X[lvl][i0:i1]) for lvl in fine]
        eng.count(i, i)
        calls.append((fine_products_task, (eng.chunk(i, i), Xi, ob, ib, transpose)))
    for i, res in enumerate(eng.run(calls)):
        o0, o1 = int(och[i]), int(och[i + 1])
        for lvl, Y in zip(fine, res, strict=True):
            out[lvl][o0:o1] = Y
    return out


def _row_step(eng: Any, F: Any, c: int, rch: np.ndarray, cch: np.ndarray,
              C: list[np.ndarray]) -> list[np.ndarray]:
    """New row factors for the column factors ``C`` (one exact least-squares solve per finest
    block of rows with rank). Cost: the products of :func:`diag_products`."""
    P = diag_products(eng, F, c, rch, cch, C, transpose=False)
    return leaf_solve(P, F.rb, F.cb, C, F.ranks)


def _col_step(eng: Any, F: Any, c: int, rch: np.ndarray, cch: np.ndarray,
              B: list[np.ndarray], norm2: float) -> tuple[list[np.ndarray], float]:
    """New column factors for the row factors ``B`` and the loss they reach, without a pass for
    the loss: at an exact least-squares solution the residual is orthogonal to the fit, so
    ``||A - M||^2 = ||A||^2 - sum_l <C_l, blockdiag_l(A^T) B_l>`` (the right-hand sides)."""
    Q = diag_products(eng, F, c, rch, cch, B, transpose=True)
    C = leaf_solve(Q, F.cb, F.rb, B, F.ranks)
    fit = sum(float(np.einsum("ij,ij->", cl, ql)) for cl, ql in zip(C, Q, strict=True))
    return C, norm2 - fit


def run_als_dask(eng: Any, F: Any, c: int, rch: np.ndarray, cch: np.ndarray,
                 loss: Callable[[], float], cur: float, norm2: float, *, max_iter: int,
                 tol: float, momentum: bool = True,
                 progress: Callable[[str, dict[str, Any]], None] | None = None
                 ) -> list[float]:
    """ALS iterations from the factors in ``F`` (updated in place; not PSD), whose loss is
    ``cur``; ``loss()`` is one pass computing the current loss, ``norm2`` is ``||A||_F^2``.

    The iteration of :func:`mlr_dask.fit.als.momentum_iterations` (momentum on the column
    factors, the stopping rule), with the half steps through products with A over its chunks
    (:func:`_row_step`, :func:`_col_step`: the loss from the column step's right-hand sides,
    no pass of its own). One ``loss()`` pass at the end gives the exact final loss. Returns the
    relative error after each kept iteration. Cost per iteration: two half steps (three after a
    discarded extrapolation), each about ``1 + sum_{l < c} 1 / p_l`` reads of A."""
    from mlr_dask.fit.als import momentum_iterations

    def rel(x: float) -> float:
        return float(np.sqrt(max(x, 0.0) / norm2)) if norm2 > 0 else 0.0

    out: list[float] = []

    def after(it: int, new: float) -> bool:
        out.append(rel(new))
        if progress:
            progress("epoch", {"epoch": it, "rel_error": out[-1], "method": "als"})
        return False

    B, C, _ = momentum_iterations(
        list(F.B), list(F.C), cur, lambda C: _row_step(eng, F, c, rch, cch, C),
        lambda B: _col_step(eng, F, c, rch, cch, B, norm2), max_iter=max_iter, tol=tol,
        momentum=momentum, after=after)
    F.B[:], F.C[:] = B, C
    if out:  # the exact loss of the final factors (the one above drops rounding)
        out[-1] = rel(loss())
    return out
