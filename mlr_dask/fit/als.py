"""Alternating least squares (ALS) for the factors with a fixed hierarchy and ranks.

With the column factors fixed, the fit is linear least squares in the row factors and separates
by rows: every row ``i`` of the permuted matrix is approximated by ``sum_l B_l[i] C_l[J_l(i)]^T``
where ``J_l(i)`` are the columns of the level-``l`` block of ``i``. Rows in the same finest block
share the design matrix ``M`` (n, r) (level ``l``'s columns hold ``C_l`` on ``J_l`` and zeros
elsewhere), so each finest block is one exact least-squares solve with many right-hand sides.
Then the roles swap. Each half step is an exact block minimization: the loss never increases.

:func:`als_half_step` solves the normal equations of each finest block with the block structure
of ``M`` (level ``l``'s columns are nonzero only on the columns of its block, nested ranges):
the right-hand sides cost one product per level over the level's diagonal blocks and the
(r, r) Gram matrix ``M^T M`` is built from the factor rows of the finer range of each pair of
levels. :func:`als_half_step_lstsq` is the dense reference (one ``lstsq`` with the full (n, r)
design per finest block).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mlr_dask.fit.bcd import BCDState, add_lowrank

__all__ = ["als_half_step", "als_half_step_lstsq", "diag_products", "leaf_solve",
           "momentum_iterations", "run_als"]


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


def als_half_step_lstsq(Ap: np.ndarray, rb: Sequence[np.ndarray], cb: Sequence[np.ndarray],
                        C: Sequence[np.ndarray], ranks: Sequence[int]) -> list[np.ndarray]:
    """Dense reference of :func:`als_half_step`: one ``lstsq`` with the full (n, r) design per
    finest block. Minimum-norm solutions when rank deficient. Cost O(n r^2 + n r rows) per
    finest block."""
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


def _psd_solve(G: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Minimum-norm ``X`` (r, k) with ``G X = H`` for a symmetric PSD ``G`` (r, r): eigenvalues
    below ``r * eps * max`` count as zero."""
    w, V = np.linalg.eigh(G)
    top = float(w[-1]) if w.size else 0.0
    if top <= 0.0:
        return np.zeros_like(H)
    keep = w > top * max(G.shape[0], 16) * np.finfo(np.float64).eps
    Vk = V[:, keep]
    return Vk @ ((Vk.T @ H) / w[keep, None])


def als_half_step(Ap: np.ndarray, rb: Sequence[np.ndarray], cb: Sequence[np.ndarray],
                  C: Sequence[np.ndarray], ranks: Sequence[int]) -> list[np.ndarray]:
    """Exact least-squares row factors ``B_l`` (m, r_l) for fixed column factors ``C_l``
    (n, r_l); ``Ap`` (m, n) in hierarchy order. Minimum-norm solutions when rank deficient
    (up to rounding: normal equations). Cost: ``sum_l r_l`` times the area of level ``l``'s
    diagonal blocks (the right-hand sides, :func:`diag_products`) plus O(r^2 n_l + r^3) per
    finest block (:func:`leaf_solve`)."""
    return leaf_solve(diag_products(Ap, rb, cb, C, ranks), rb, cb, C, ranks)


def diag_products(Ap: np.ndarray, rb: Sequence[np.ndarray], cb: Sequence[np.ndarray],
                  C: Sequence[np.ndarray], ranks: Sequence[int]) -> list[np.ndarray]:
    """``P_l = blockdiag_l(Ap) C_l`` (m, r_l) per level (zeros (m, 0) without rank): the
    products of the diagonal blocks of each level with that level's column factors."""
    m = Ap.shape[0]
    P = [np.zeros((m, int(r))) for r in ranks]
    for lvl, r in enumerate(ranks):
        if r == 0:
            continue
        r0, c0 = rb[lvl], cb[lvl]
        for k in range(r0.size - 1):
            P[lvl][r0[k]:r0[k + 1]] = Ap[r0[k]:r0[k + 1], c0[k]:c0[k + 1]] @ C[lvl][c0[k]:c0[k + 1]]
    return P


def leaf_solve(P: Sequence[np.ndarray], rb: Sequence[np.ndarray], cb: Sequence[np.ndarray],
               C: Sequence[np.ndarray], ranks: Sequence[int]) -> list[np.ndarray]:
    """The row factors ``B_l`` (m, r_l) that solve the normal equations of every finest block
    with rank, given the right-hand sides ``P_l = blockdiag_l(A) C_l`` (m, r_l) (from
    :func:`diag_products`, or from passes over chunks on the Dask path). The Gram matrix of a
    block is built from the factor rows of the finer range of each pair of levels; a pair's
    part depends only on the finer level's block, so it is computed once per such block.
    Cost O(r^3 + r (rows)) per finest block plus O(L r^2 n) for the Gram parts."""
    m = rb[0][-1]
    used = [lvl for lvl, r in enumerate(ranks) if r > 0]
    Bs = [np.zeros((m, r)) for r in ranks]
    if not used:
        return Bs
    last = used[-1]
    anc = _ancestors(rb[:last + 1])
    fine = rb[last]
    sizes = [int(ranks[lvl]) for lvl in used]
    offs = np.concatenate(([0], np.cumsum(sizes)))
    r = int(offs[-1])
    gram: dict[tuple[int, int, int], np.ndarray] = {}
    for leaf in range(fine.size - 1):
        a, b = fine[leaf], fine[leaf + 1]
        spans = [(int(cb[lvl][anc[leaf, lvl]]), int(cb[lvl][anc[leaf, lvl] + 1])) for lvl in used]
        H = np.empty((r, b - a))
        G = np.empty((r, r))
        for i, li in enumerate(used):
            H[offs[i]:offs[i + 1]] = P[li][a:b].T
            for j in range(i, len(used)):  # level j is finer: its span is inside level i's
                key = (i, j, int(anc[leaf, used[j]]))
                g = gram.get(key)
                if g is None:
                    d0, d1 = spans[j]
                    g = gram[key] = C[li][d0:d1].T @ C[used[j]][d0:d1]
                G[offs[i]:offs[i + 1], offs[j]:offs[j + 1]] = g
                G[offs[j]:offs[j + 1], offs[i]:offs[i + 1]] = g.T
        X = _psd_solve(G, H)  # (r, rows)
        for i, li in enumerate(used):
            Bs[li][a:b] = X[offs[i]:offs[i + 1]].T
    return Bs


#: Momentum of the accelerated ALS (:func:`run_als`): the first extrapolation weight, its
#: growth after an accepted extrapolated iteration, its cut after a rejected one, its cap.
BETA_START, BETA_GROW, BETA_CUT, BETA_MAX = 0.5, 1.2, 0.5, 1.0


def _c_step_loss(AT: np.ndarray, st: BCDState, B: list[np.ndarray]
                 ) -> tuple[list[np.ndarray], float]:
    """The column half step for row factors ``B`` and the loss it reaches, without the
    residual: at an exact least-squares solution the residual is orthogonal to the fit, so
    ``||A - M||^2 = ||A||^2 - <A, M>`` and ``<A, M> = sum_l <C_l, blockdiag_l(A^T) B_l>``
    (the right-hand sides of the half step)."""
    Q = diag_products(AT, st.cb, st.rb, B, st.ranks)
    C = leaf_solve(Q, st.cb, st.rb, B, st.ranks)
    fit = sum(float(np.einsum("ij,ij->", c, q)) for c, q in zip(C, Q, strict=True))
    return C, st.norm2 - fit


def momentum_iterations(
    B: list[np.ndarray],
    C: list[np.ndarray],
    loss: float,
    row_step: Callable[[list[np.ndarray]], list[np.ndarray]],
    col_step: Callable[[list[np.ndarray]], tuple[list[np.ndarray], float]],
    *,
    max_iter: int,
    tol: float,
    momentum: bool = True,
    after: Callable[[int, float], bool | None] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """The ALS iteration, whatever computes its half steps: from factors ``B`` / ``C`` with
    loss ``loss``, an iteration is ``B' = row_step(C)`` then ``C', loss' = col_step(B')``.

    ``momentum``: the row step starts from the extrapolated column factors
    ``C + beta (C - C_prev)`` (the iteration map keeps the gauge of the factors, so
    consecutive iterates are comparable); an extrapolated iteration that does not lower the
    loss is discarded and redone from ``C`` with a smaller ``beta``. Every accepted iterate
    lowers the loss; a plain iteration that would raise it (rounding) ends the run with the old
    factors. Stops when the relative decrease is at most ``tol`` (not counting a plain step
    right after a discarded extrapolation, unless the one before was redone too), after
    ``max_iter`` iterations, or when ``after(it, loss)`` (called after each accepted
    iteration) returns True. Returns the final factors and the loss after each accepted
    iteration. Cost per iteration: two half steps, three after a discarded extrapolation."""
    losses: list[float] = []
    C_prev: list[np.ndarray] | None = None
    beta, rejected = BETA_START, False  # rejected: the last iteration discarded its extrapolation
    for it in range(1, max_iter + 1):
        step = None
        was_rejected, rejected = rejected, False
        if momentum and C_prev is not None:
            Cy = [c + beta * (c - p) for c, p in zip(C, C_prev, strict=True)]
            Bn = row_step(Cy)
            Cn, new = col_step(Bn)
            if new < loss:
                step = (Bn, Cn, new)
                beta = min(BETA_MAX, beta * BETA_GROW)
            else:
                beta *= BETA_CUT
                rejected = True
        if step is None:
            Bn = row_step(C)
            Cn, new = col_step(Bn)
            if new > loss:  # rounding of the normal equations: keep the old factors
                break
            step = (Bn, Cn, new)
        C_prev = C
        B, C, before, loss = step[0], step[1], loss, step[2]
        losses.append(loss)
        stop = bool(after(it, loss)) if after else False
        if stop or before <= 0:
            break
        if (before - loss) <= tol * before and (not rejected or was_rejected):
            break
    return B, C, losses


def run_als(
    Ap: np.ndarray,
    st: BCDState,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    AT: np.ndarray | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
    momentum: bool = True,
) -> list[float]:
    """ALS iterations (:func:`momentum_iterations`) starting from the factors in ``st``
    (non-PSD); ``Ap`` (m, n) is the target in hierarchy order (``AT``: its contiguous
    transpose, when the caller has it). The half steps are :func:`als_half_step`; the loss of
    an iteration comes from the column step's right-hand sides (:func:`_c_step_loss`), so the
    residual is rebuilt only at the end. ``callback(it, rel_error)`` is called after each
    iteration and stops the run by returning True. Updates ``st`` (factors, residual, loss)
    in place. Returns the relative error after each iteration (index 0: the start). Cost per
    iteration: two :func:`als_half_step` (three for a rejected extrapolation), no residual."""
    AT = np.ascontiguousarray(Ap.T) if AT is None else AT
    hist = [st.rel_error]

    def after(it: int, loss: float) -> bool:
        st.loss = loss
        hist.append(st.rel_error)
        return bool(callback(it, hist[-1])) if callback else False

    st.B, st.C, _ = momentum_iterations(
        st.B, st.C, st.loss, lambda C: als_half_step(Ap, st.rb, st.cb, C, st.ranks),
        lambda B: _c_step_loss(AT, st, B), max_iter=max_iter, tol=tol, momentum=momentum,
        after=after)
    _residual(Ap, st)
    hist[-1] = st.rel_error
    return hist


def _residual(Ap: np.ndarray, st: BCDState) -> None:
    """``st.R = Ap - sum_l A_l`` rebuilt in place (the old array reused), and the loss."""
    np.copyto(st.R, Ap)
    for lvl in range(len(st.ranks)):
        if st.ranks[lvl] == 0:
            continue
        r0, c0 = st.rb[lvl], st.cb[lvl]
        for k in range(r0.size - 1):
            add_lowrank(st.R[r0[k]:r0[k + 1], c0[k]:c0[k + 1]], st.B[lvl][r0[k]:r0[k + 1]],
                        st.C[lvl][c0[k]:c0[k + 1]], -1.0)
    st.exact_loss()
