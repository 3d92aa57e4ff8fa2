"""The Dask path: fit the factors of an MLR matrix whose dense matrix lives in zarr (or any
Dask array, or a matvec-only operator) with a fixed hierarchy, without loading it.

Layout: the rows and columns are split into chunks made of whole blocks of the *chunk level*
``c`` (the coarsest level whose blocks all fit in ``chunk_items``); chunks never cross a block
boundary of level ``c - 1``, so every chunk lies inside one block of each coarse level.

- Fine levels ``c .. L-1`` live inside the diagonal chunks: one task per diagonal chunk reads its
  chunk of A, subtracts the coarse levels (low rank there) and runs the BCD sweep of the fine
  levels on that chunk (plain numpy / numba code, :mod:`mlr_dask.fit.bcd`).
- Coarse levels ``0 .. c-1`` are fitted by randomized SVDs of their blocks through products
  ``A X`` and ``A^T Y`` with block-structured test matrices (blockwise Dask products reduced to
  the driver), minus the other levels applied in factored form. A level fit reads A
  ``2 (q + 1)`` times (first fit, ``q`` power iterations) or twice (warm started: the old factors
  join the test matrix and the range, which also keeps the fit monotone).
- The loss is computed once per epoch by one pass over the chunks of A.

Memory per task: a few chunks (``chunk_items^2`` numbers each); on the driver: the factors
(``(m + n) r``) and the products (``m x p_l w`` for a coarse level with ``p_l`` blocks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fit.bcd import add_lowrank, epoch_order, init_state, sweep
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.kernels import block_matmat
from mlr_dask.mlr import MLRMatrix

__all__ = ["chunk_layout", "fit_mlr_dask", "fit_mlr_operator", "fit_products"]

OVERSAMPLE = 8


def chunk_layout(rows: Hierarchy, cols: Hierarchy, chunk_items: int) -> tuple[int, np.ndarray,
                                                                               np.ndarray]:
    """``(c, row_chunks, col_chunks)``: the chunk level and the chunk boundaries (K + 1,)."""
    L = rows.n_levels
    c = L
    for lvl in range(L):
        if max(rows.block_sizes(lvl).max(), cols.block_sizes(lvl).max()) <= chunk_items:
            c = lvl
            break
    if c == L:  # even the finest blocks are larger than a chunk: all levels are coarse
        return L, rows.boundaries[-1].copy(), cols.boundaries[-1].copy()
    rb, cb = rows.boundaries[c], cols.boundaries[c]
    parent_r = set(rows.boundaries[c - 1].tolist()) if c > 0 else {0, rows.n}
    r_out, c_out = [0], [0]
    for k in range(1, rb.size):
        too_big = (rb[k] - r_out[-1] > chunk_items) or (cb[k] - c_out[-1] > chunk_items)
        cut = too_big or int(rb[k - 1]) in parent_r
        if cut and rb[k - 1] > r_out[-1]:
            r_out.append(int(rb[k - 1]))
            c_out.append(int(cb[k - 1]))
    r_out.append(rows.n)
    c_out.append(cols.n)
    return c, np.asarray(r_out, dtype=np.int64), np.asarray(c_out, dtype=np.int64)


# ---------------------------------------------------------------------- tasks (plain numpy)
def _local_bounds(bounds: Sequence[np.ndarray], lo: int, hi: int) -> list[np.ndarray]:
    out = []
    for b in bounds:
        sel = b[(b >= lo) & (b <= hi)]
        out.append((sel - lo).astype(np.int64))
    return out


def fine_task(
    Aii: np.ndarray,
    Bc: np.ndarray,
    Cc: np.ndarray,
    rb: list[np.ndarray],
    cb: list[np.ndarray],
    ranks: list[int],
    Bf: list[np.ndarray],
    Cf: list[np.ndarray],
    psd: bool,
    levels: list[int],
    exact_max: int,
    seed: int,
) -> dict[str, Any]:
    """Sweep the fine levels on one diagonal chunk ``Aii`` (a, b): the coarse levels
    contribute ``Bc Cc^T`` there. Returns the new fine factors and side outputs."""
    R = np.array(Aii, dtype=np.float64)
    add_lowrank(R, Bc, Cc, -1.0)
    st = init_state(R, rb, cb, ranks, psd=psd, B=Bf, C=None if psd else Cf, exact_max=exact_max,
                    seed=seed, copy=False)
    sweep(st, levels)
    return {"B": st.B, "C": st.B if psd else st.C, "dp": st.delta_plus, "dm": st.delta_minus,
            "nB": st.next_B, "nC": st.next_B if psd else st.next_C}


def loss_task(Aij: np.ndarray, Bij: np.ndarray, Cij: np.ndarray,
              fine: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray],
                          list[np.ndarray]] | None) -> float:
    """``||A_ij - model_ij||_F^2`` on one chunk: ``Bij Cij^T`` holds the coarse levels shared by
    the two chunks; ``fine = (B, C, rb, cb)`` the fine levels (diagonal chunks only)."""
    R = np.array(Aij, dtype=np.float64)
    add_lowrank(R, Bij, Cij, -1.0)
    if fine is not None:
        Bf, Cf, rb, cb = fine
        for B, C, r0, c0 in zip(Bf, Cf, rb, cb, strict=True):
            for k in range(r0.size - 1):
                add_lowrank(R[r0[k]:r0[k + 1], c0[k]:c0[k + 1]], B[r0[k]:r0[k + 1]],
                            C[c0[k]:c0[k + 1]], -1.0)
    v = R.reshape(-1)
    return float(v @ v)


# ---------------------------------------------------------------------- engines
class _NumpyEngine:
    """Products and chunks of a dense matrix in hierarchy order (the reference path)."""

    def __init__(self, Ah: np.ndarray) -> None:
        self.A = Ah
        self.shape = Ah.shape
        self.passes = 0

    def matmat(self, X: np.ndarray) -> np.ndarray:
        self.passes += 1
        return self.A @ X

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        self.passes += 1
        return self.A.T @ Y

    def block(self, r0: int, r1: int, c0: int, c1: int) -> Any:
        return self.A[r0:r1, c0:c1]

    def run(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        return [f(*args) for f, args in calls]

    def norm2(self) -> float:
        v = self.A.reshape(-1)
        return float(v @ v)


class _DaskEngine(_NumpyEngine):
    """The same on a Dask array (hierarchy order), chunked along the layout's chunks."""

    def __init__(self, Ad: Any, rch: np.ndarray, cch: np.ndarray) -> None:
        self.A = Ad.rechunk((tuple(np.diff(rch).tolist()), tuple(np.diff(cch).tolist())))
        self.rch, self.cch = rch, cch
        self.shape = tuple(Ad.shape)
        self.passes = 0

    def matmat(self, X: np.ndarray) -> np.ndarray:
        import dask.array as da

        self.passes += 1
        Xd = da.from_array(X, chunks=(self.A.chunks[1], X.shape[1]))
        return np.asarray((self.A @ Xd).compute())

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        import dask.array as da

        self.passes += 1
        Yd = da.from_array(Y, chunks=(self.A.chunks[0], Y.shape[1]))
        return np.asarray((self.A.T @ Yd).compute())

    def block(self, r0: int, r1: int, c0: int, c1: int) -> Any:
        i = int(np.searchsorted(self.rch, r0))
        j = int(np.searchsorted(self.cch, c0))
        return self.A.blocks[i, j]

    def run(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        import dask

        tasks = [dask.delayed(f, pure=False)(*args) for f, args in calls]
        return list(dask.compute(*tasks))

    def norm2(self) -> float:
        return float((self.A**2).sum().compute())


class _OperatorEngine(_NumpyEngine):
    """Products of a matvec-only LinearOperator (original order) in hierarchy order."""

    def __init__(self, op: Any, rows: Hierarchy, cols: Hierarchy) -> None:
        self.op, self.rows, self.cols = op, rows, cols
        self.shape = tuple(op.shape)
        self.passes = 0

    def matmat(self, X: np.ndarray) -> np.ndarray:
        self.passes += 1
        Xo = np.empty_like(X)
        Xo[self.cols.perm] = X
        return np.asarray(self.op.matmat(Xo))[self.rows.perm]

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        self.passes += 1
        Yo = np.empty_like(Y)
        Yo[self.rows.perm] = Y
        return np.asarray(self.op.rmatmat(Yo))[self.cols.perm]


# ---------------------------------------------------------------------- the fit
class _Factors:
    def __init__(self, rows: Hierarchy, cols: Hierarchy, ranks: Sequence[int], psd: bool):
        m, n = rows.n, cols.n
        self.rb, self.cb = list(rows.boundaries), list(cols.boundaries)
        self.ranks = [int(r) for r in ranks]
        self.B = [np.zeros((m, r)) for r in self.ranks]
        self.C = self.B if psd else [np.zeros((n, r)) for r in self.ranks]
        self.psd = psd
        L = len(self.ranks)
        self.dp = np.zeros(L)
        self.dm = np.full(L, np.inf)
        self.nB = [np.zeros(m) for _ in range(L)]
        self.nC = self.nB if psd else [np.zeros(n) for _ in range(L)]

    def apply(self, X: np.ndarray, exclude: int, transpose: bool) -> np.ndarray:
        """``sum_{l != exclude} A_l X`` (or ``A_l^T``) in hierarchy order."""
        outer, inner = (self.cb, self.rb) if transpose else (self.rb, self.cb)
        out = np.zeros((outer[-1][-1], X.shape[1]))
        X = np.ascontiguousarray(X)
        for lvl, r in enumerate(self.ranks):
            if lvl == exclude or r == 0:
                continue
            Bl, Cl = (self.C[lvl], self.B[lvl]) if transpose else (self.B[lvl], self.C[lvl])
            block_matmat(np.ascontiguousarray(Bl), np.ascontiguousarray(Cl), X, outer[lvl],
                         inner[lvl], out)
        return out


def _orth(Y: np.ndarray) -> np.ndarray:
    return np.linalg.qr(Y)[0]


def _blockcols(parts: list[np.ndarray], bounds: np.ndarray, width: int, n: int) -> np.ndarray:
    X = np.zeros((n, len(parts) * width))
    for k, P in enumerate(parts):
        X[bounds[k]:bounds[k + 1], k * width:k * width + P.shape[1]] = P
    return X


def _product_level(eng: Any, F: _Factors, lvl: int, q: int, rng: np.random.Generator) -> None:
    """Refit level ``lvl`` by blockwise randomized SVDs through products with A."""
    rb, cb, r = F.rb[lvl], F.cb[lvl], F.ranks[lvl]
    p = rb.size - 1
    m, n = rb[-1], cb[-1]
    k = r + 1
    small = int(min(np.diff(rb).min(), np.diff(cb).min()))
    warm = r > 0 and bool(np.any(F.B[lvl]))
    j = r if warm else 0
    g = max(1, min(k + OVERSAMPLE, small) - j)
    W = j + g
    Om = [np.hstack([F.C[lvl][cb[t]:cb[t + 1]] if j else np.zeros((cb[t + 1] - cb[t], 0)),
                     rng.standard_normal((cb[t + 1] - cb[t], g))]) for t in range(p)]

    def R_times(parts: list[np.ndarray], width: int) -> list[np.ndarray]:
        X = _blockcols(parts, cb, width, n)
        Y = eng.matmat(X) - F.apply(X, lvl, transpose=False)
        return [Y[rb[t]:rb[t + 1], t * width:(t + 1) * width] for t in range(p)]

    def RT_times(parts: list[np.ndarray], width: int) -> list[np.ndarray]:
        X = _blockcols(parts, rb, width, m)
        Z = eng.rmatmat(X) - F.apply(X, lvl, transpose=True)
        return [Z[cb[t]:cb[t + 1], t * width:(t + 1) * width] for t in range(p)]

    Y = R_times(Om, W)
    for _ in range(0 if warm else q):
        Q = [_orth(y) for y in Y]
        Z = [_orth(z) for z in RT_times(Q, W)]
        Y = R_times(Z, W)
    Q = [_orth(np.hstack([F.B[lvl][rb[t]:rb[t + 1]], Y[t]]) if j else Y[t]) for t in range(p)]
    W2 = W + j
    Q = [np.pad(qq, ((0, 0), (0, W2 - qq.shape[1]))) for qq in Q]
    dp = dm = 0.0
    if F.psd:
        S = R_times(Q, W2)  # R_k Q_k
        for t in range(p):
            T = Q[t].T @ S[t]
            lam, V = np.linalg.eigh(0.5 * (T + T.T))
            lam, V = np.maximum(lam[::-1], 0.0), Q[t] @ V[:, ::-1]
            lam = np.pad(lam, (0, max(0, k - lam.size)))
            V = np.pad(V, ((0, 0), (0, max(0, k - V.shape[1]))))
            F.B[lvl][rb[t]:rb[t + 1]] = V[:, :r] * np.sqrt(lam[:r])
            F.nB[lvl][rb[t]:rb[t + 1]] = V[:, r] * np.sqrt(lam[r])
            dp += lam[r] ** 2
            dm += lam[r - 1] ** 2 if r else 0.0
    else:
        S = RT_times(Q, W2)  # R_k^T Q_k
        for t in range(p):
            Us, s, Vt = np.linalg.svd(S[t].T, full_matrices=False)
            U = Q[t] @ Us
            s = np.pad(s, (0, max(0, k - s.size)))
            U = np.pad(U, ((0, 0), (0, max(0, k - U.shape[1]))))
            V = np.pad(Vt.T, ((0, 0), (0, max(0, k - Vt.shape[0]))))
            sq = np.sqrt(s)
            F.B[lvl][rb[t]:rb[t + 1]] = U[:, :r] * sq[:r]
            F.C[lvl][cb[t]:cb[t + 1]] = V[:, :r] * sq[:r]
            F.nB[lvl][rb[t]:rb[t + 1]] = U[:, r] * sq[r]
            F.nC[lvl][cb[t]:cb[t + 1]] = V[:, r] * sq[r]
            dp += s[r] ** 2
            dm += s[r - 1] ** 2 if r else 0.0
    F.dp[lvl] = dp
    F.dm[lvl] = dm if r else np.inf


def _fine_sweep(eng: Any, F: _Factors, c: int, rch: np.ndarray, cch: np.ndarray,
                levels: list[int], exact_max: int, seed: int) -> None:
    L = len(F.ranks)
    fine = list(range(c, L))
    calls = []
    for i in range(rch.size - 1):
        r0, r1, c0, c1 = int(rch[i]), int(rch[i + 1]), int(cch[i]), int(cch[i + 1])
        Bc = np.hstack([F.B[lvl][r0:r1] for lvl in range(c)] or [np.zeros((r1 - r0, 0))])
        Cc = np.hstack([F.C[lvl][c0:c1] for lvl in range(c)] or [np.zeros((c1 - c0, 0))])
        rb = _local_bounds([F.rb[lvl] for lvl in fine], r0, r1)
        cb = _local_bounds([F.cb[lvl] for lvl in fine], c0, c1)
        Bf = [F.B[lvl][r0:r1] for lvl in fine]
        Cf = [F.C[lvl][c0:c1] for lvl in fine]
        loc = [lvl - c for lvl in levels]
        calls.append((fine_task, (eng.block(r0, r1, c0, c1), Bc, Cc, rb, cb,
                                  [F.ranks[lvl] for lvl in fine], Bf, Cf, F.psd, loc, exact_max,
                                  seed + i)))
    results = eng.run(calls)
    for lvl in fine:
        F.dp[lvl] = 0.0
        F.dm[lvl] = 0.0
    for i, res in enumerate(results):
        r0, r1, c0, c1 = int(rch[i]), int(rch[i + 1]), int(cch[i]), int(cch[i + 1])
        for t, lvl in enumerate(fine):
            F.B[lvl][r0:r1] = res["B"][t]
            F.nB[lvl][r0:r1] = res["nB"][t]
            if not F.psd:
                F.C[lvl][c0:c1] = res["C"][t]
                F.nC[lvl][c0:c1] = res["nC"][t]
            F.dp[lvl] += res["dp"][t]
            F.dm[lvl] += res["dm"][t]


def _loss(eng: Any, F: _Factors, c: int, rch: np.ndarray, cch: np.ndarray) -> float:
    L = len(F.ranks)
    K = rch.size - 1
    anc = [np.searchsorted(F.rb[lvl], rch[:-1], side="right") - 1 for lvl in range(c)]
    calls = []
    for i in range(K):
        for j in range(K):
            r0, r1, c0, c1 = int(rch[i]), int(rch[i + 1]), int(cch[j]), int(cch[j + 1])
            shared = [lvl for lvl in range(c) if anc[lvl][i] == anc[lvl][j]]
            Bij = np.hstack([F.B[lvl][r0:r1] for lvl in shared] or [np.zeros((r1 - r0, 0))])
            Cij = np.hstack([F.C[lvl][c0:c1] for lvl in shared] or [np.zeros((c1 - c0, 0))])
            fine = None
            if i == j and c < L:
                fine = ([F.B[lvl][r0:r1] for lvl in range(c, L)],
                        [F.C[lvl][c0:c1] for lvl in range(c, L)],
                        _local_bounds(F.rb[c:], r0, r1), _local_bounds(F.cb[c:], c0, c1))
            calls.append((loss_task, (eng.block(r0, r1, c0, c1), Bij, Cij, fine)))
    return float(sum(eng.run(calls)))


def _operator_loss(eng: Any, F: _Factors, batch: int = 256) -> float:
    m, n = eng.shape
    total = 0.0
    for a in range(0, n, batch):
        b = min(a + batch, n)
        E = np.zeros((n, b - a))
        E[np.arange(a, b), np.arange(b - a)] = 1.0
        Rcols = eng.matmat(E) - F.apply(E, -1, transpose=False)
        total += float(np.sum(Rcols**2))
    eng.passes -= 1 if n > batch else 0
    return total


def fit_products(
    eng: Any,
    rows: Hierarchy,
    cols: Hierarchy,
    ranks: Sequence[int],
    *,
    c: int,
    rch: np.ndarray | None,
    cch: np.ndarray | None,
    psd: bool = False,
    max_iter: int = 100,
    tol: float = 1e-3,
    q: int = 2,
    seed: int = 0,
    exact_max: int = 192,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> MLRMatrix:
    """BCD with levels ``< c`` fitted through products of ``eng`` and levels ``>= c`` inside the
    diagonal chunks ``rch``/``cch``; see the module docstring."""
    t0 = time.perf_counter()
    F = _Factors(rows, cols, ranks, psd)
    L = len(F.ranks)
    rng = np.random.default_rng(seed)
    operator = rch is None
    norm2 = eng.norm2() if not operator else None

    def loss() -> float:
        return _operator_loss(eng, F) if operator else _loss(eng, F, c, rch, cch)

    def epoch(levels: list[int]) -> None:
        i = 0
        while i < len(levels):
            lvl = levels[i]
            if lvl < c:
                _product_level(eng, F, lvl, q, rng)
                i += 1
            else:
                j = i
                while j < len(levels) and levels[j] >= c:
                    j += 1
                _fine_sweep(eng, F, c, rch, cch, levels[i:j], exact_max, seed)
                i = j

    if operator:
        E = np.zeros((cols.n, 0))
        norm2 = 0.0
        for a in range(0, cols.n, 256):
            b = min(a + 256, cols.n)
            E = np.zeros((cols.n, b - a))
            E[np.arange(a, b), np.arange(b - a)] = 1.0
            norm2 += float(np.sum(eng.matmat(E) ** 2))
    epoch(list(range(L)))
    cur = loss()
    hist = [float(np.sqrt(cur / norm2))]
    if progress:
        progress("epoch", {"epoch": 0, "rel_error": hist[-1]})
    for it in range(1, max_iter + 1):
        epoch(epoch_order(L))
        new = loss()
        hist.append(float(np.sqrt(new / norm2)))
        if progress:
            progress("epoch", {"epoch": it, "rel_error": hist[-1]})
        done = cur <= 0 or (cur - new) <= tol * cur
        cur = new
        if done:
            break
    B = np.hstack(F.B)
    M = MLRMatrix(rows, cols, F.ranks, B) if psd else MLRMatrix(rows, cols, F.ranks, B,
                                                                   np.hstack(F.C))
    M.history_ = {"rel_error": hist, "ranks": list(F.ranks), "passes_over_A": eng.passes,
                  "chunk_level": c, "n_chunks": 0 if operator else int(rch.size - 1),
                  "seconds": {"fit": time.perf_counter() - t0}}
    return M


def _source_in_hierarchy_order(src: Any, rows: Hierarchy, cols: Hierarchy) -> Any:
    import dask.array as da

    from mlr_dask.fit.api import MatrixStore

    if isinstance(src, MatrixStore):
        arr = da.from_zarr(src.array)
        sr = src.rows.perm if src.rows is not None else np.arange(arr.shape[0])
        sc = src.cols.perm if src.cols is not None else np.arange(arr.shape[1])
    else:
        arr = src
        sr, sc = np.arange(arr.shape[0]), np.arange(arr.shape[1])
    # stored position s holds original item sr[s]; we need original item rows.perm[i]
    inv_r = np.empty_like(sr)
    inv_r[sr] = np.arange(sr.size)
    inv_c = np.empty_like(sc)
    inv_c[sc] = np.arange(sc.size)
    ir, ic = inv_r[rows.perm], inv_c[cols.perm]
    if not np.array_equal(ir, np.arange(ir.size)):
        arr = arr[ir]
    if not np.array_equal(ic, np.arange(ic.size)):
        arr = arr[:, ic]
    return arr.astype(np.float64)


def fit_mlr_dask(
    src: Any,
    rows: Hierarchy,
    cols: Hierarchy,
    ranks: Sequence[int],
    *,
    psd: bool = False,
    max_iter: int = 100,
    tol: float = 1e-3,
    client: Any = None,
    chunk_items: int | None = None,
    q: int = 2,
    seed: int = 0,
    exact_max: int = 192,
    engine: str = "dask",
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> MLRMatrix:
    """Fit the factors (fixed hierarchy and ranks) of a matrix given as a Dask array (original
    order) or a :class:`~mlr_dask.fit.api.MatrixStore`, chunk by chunk.

    ``chunk_items``: rows (and columns) per chunk, default 4096 (128 MiB of float64 per chunk).
    ``engine="numpy"`` runs the same algorithm on the matrix loaded in memory (reference).
    The result's ``history_`` holds the relative error per epoch and ``passes_over_A``.
    """
    chunk_items = 4096 if chunk_items is None else int(chunk_items)
    if chunk_items < 1:
        raise InputError("chunk_items must be positive")
    m, n = rows.n, cols.n
    Ad = _source_in_hierarchy_order(src, rows, cols)
    if tuple(Ad.shape) != (m, n):
        raise InputError(f"the matrix is {Ad.shape}, the hierarchy {(m, n)}")
    c, rch, cch = chunk_layout(rows, cols, chunk_items)
    if engine == "numpy":
        eng: Any = _NumpyEngine(np.ascontiguousarray(Ad.compute()))
    else:
        eng = _DaskEngine(Ad, rch, cch)
    return fit_products(eng, rows, cols, ranks, c=c, rch=rch, cch=cch, psd=psd,
                        max_iter=max_iter, tol=tol, q=q, seed=seed, exact_max=exact_max,
                        progress=progress)


def fit_mlr_operator(
    op: Any,
    rows: Hierarchy,
    cols: Hierarchy,
    ranks: Sequence[int],
    *,
    psd: bool = False,
    max_iter: int = 100,
    tol: float = 1e-3,
    q: int = 2,
    seed: int = 0,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> MLRMatrix:
    """Fit with matvecs only (``op.matmat`` / ``op.rmatmat``, original order): every level by
    randomized SVDs through products. A level with ``p`` blocks costs products with about
    ``p (r_l + 9)`` vectors, and the loss ``n`` matvecs per epoch: meant for operators that
    cannot be stored, at moderate sizes."""
    return fit_products(_OperatorEngine(op, rows, cols), rows, cols, ranks, c=rows.n_levels,
                        rch=None, cch=None, psd=psd, max_iter=max_iter, tol=tol, q=q, seed=seed,
                        progress=progress)
