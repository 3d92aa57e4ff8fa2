"""Alternating least squares (ALS) for the factors with a fixed hierarchy and ranks.

With the column factors fixed, the fit is linear least squares in the row factors and separates
by rows: every row ``i`` of the permuted matrix is approximated by ``sum_l B_l[i] C_l[J_l(i)]^T``
where ``J_l(i)`` are the columns of the level-``l`` block of ``i``. Rows in the same finest block
share the design matrix ``M`` (n, r) (level ``l``'s columns hold ``C_l`` on ``J_l`` and zeros
elsewhere), so each finest block is one exact least-squares solve with many right-hand sides.
Then the roles swap. Each half step is an exact block minimization: the loss never increases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mlr_dask.fit.bcd import BCDState, add_lowrank

__all__ = ["als_half_step", "run_als"]


def _design(F: Sequence[np.ndarray], bounds: Sequence[np.ndarray], anc: np.ndarray,
            n: int) -> np.ndarray:
    r = sum(f.shape[1] for f in F)
    M = np.zeros((n, r))
    off = 0
    for lvl in range(anc.size):
        f = F[lvl]
        k = anc[lvl]
        a, b = bounds[lvl][k], bounds[lvl][k + 1]
        M[a:b, off:off + f.shape[1]] = f[a:b]
        off += f.shape[1]
    return M


def _ancestors(bounds: Sequence[np.ndarray]) -> np.ndarray:
    starts = bounds[-1][:-1]
    return np.stack([np.searchsorted(b, starts, side="right") - 1 for b in bounds], axis=1)


def als_half_step(Ap: np.ndarray, rb: Sequence[np.ndarray], cb: Sequence[np.ndarray],
                  C: Sequence[np.ndarray], ranks: Sequence[int]) -> list[np.ndarray]:
    """Exact least-squares row factors ``B_l`` (m, r_l) for fixed column factors ``C_l``
    (n, r_l); ``Ap`` (m, n) in hierarchy order. Minimum-norm solutions when rank deficient."""
    m, n = Ap.shape
    used = [lvl for lvl, r in enumerate(ranks) if r > 0]
    last = used[-1] if used else 0  # rows of one block of the finest used level share M
    anc = _ancestors(rb[:last + 1])
    fine = rb[last]
    Bs = [np.zeros((m, r)) for r in ranks]
    offs = np.concatenate(([0], np.cumsum(ranks)))
    for leaf in range(fine.size - 1):
        M = _design(C, cb, anc[leaf], n)
        a, b = fine[leaf], fine[leaf + 1]
        X = np.linalg.lstsq(M, Ap[a:b].T, rcond=None)[0]  # (r, rows)
        for lvl in range(len(ranks)):
            Bs[lvl][a:b] = X[offs[lvl]:offs[lvl + 1]].T
    return Bs


def run_als(
    Ap: np.ndarray,
    st: BCDState,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """ALS iterations starting from the factors in ``st`` (non-PSD); ``Ap`` (m, n) is the
    target in hierarchy order. Updates ``st`` (factors, residual, loss) in place; returns the
    relative error after each iteration (index 0: the start)."""
    L = len(st.ranks)
    AT = np.ascontiguousarray(Ap.T)
    hist = [st.rel_error]
    for it in range(1, max_iter + 1):
        before = st.loss
        st.B = als_half_step(Ap, st.rb, st.cb, st.C, st.ranks)
        st.C = als_half_step(AT, st.cb, st.rb, st.B, st.ranks)
        R = np.array(Ap, dtype=np.float64, copy=True)
        for lvl in range(L):
            r0, c0 = st.rb[lvl], st.cb[lvl]
            for k in range(r0.size - 1):
                add_lowrank(R[r0[k]:r0[k + 1], c0[k]:c0[k + 1]], st.B[lvl][r0[k]:r0[k + 1]],
                            st.C[lvl][c0[k]:c0[k + 1]], -1.0)
        st.R = R
        st.exact_loss()
        hist.append(st.rel_error)
        if callback:
            callback(it, hist[-1])
        if before <= 0 or (before - st.loss) <= tol * before:
            break
    return hist
