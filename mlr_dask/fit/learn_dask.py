"""Learning the hierarchy and the ranks on the Dask path, for a matrix that need not fit in
memory (a zarr store, a Dask array; a numpy array runs the same stages in-process).

The stages mirror the in-memory pipeline (``mlr.md`` s. 4), each a function of the previous
one's output:

0. :func:`pick_start` (``init="best"``): the whole in-memory pipeline from the ``"bottom"``
   and the ``"uniform"`` start, each a future on the workers, on a random principal
   submatrix of at most ``sample_items`` rows and columns (read once); the start of lower
   error is kept.
1. :func:`top_splits`: while a block of the finest learned level is larger than
   ``block_items`` (the side a worker may hold), every block of the level is split in two by
   the rule of :func:`mlr_dask.fit.partition.split_block` (bipartite spectral co-clustering of
   ``W = R o R``; Fiedler vectors when symmetric; the cut direction of smallest normalized cut
   in a 4-dimensional embedding), but through *passes over A*: one task per stored tile
   computes ``W_t X`` and ``W_t^T Y`` for the diagonal blocks of the level at once. ``R`` is
   A (``"bottom"``: rank only on the atoms) or A minus the levels above fitted with their
   start ranks (``"uniform"``; one epoch of :func:`mlr_dask.fit.dask.fit_mlr_dask` per level).
   A level costs about ``2 q + 2 + rounds`` passes: the degrees with the first sketch, the
   randomized SVD of the normalized ``W`` with ``q`` power iterations (symmetric: ``2 q``
   iterations of one pass each), the scoring of the candidate cuts, then up to
   ``refine_rounds`` rounds of batch swaps, the first from the scoring pass's sums, the
   others two passes each (one symmetric).
2. :func:`split_below`: one task per block of that level reads its block of A and learns the
   rest of the hierarchy in memory (:func:`mlr_dask.fit.partition.spectral_partition` of the
   block minus the coarse fit). The blocks' rows are scattered in the stored order, so each
   task decodes the stored chunks its rows and columns meet (counted in ``passes_over_A``).
3. For a store whose stored order scatters the learned blocks over its chunks (the usual case:
   a store in original order), the matrix is rewritten once in hierarchy order into a
   temporary store (:mod:`mlr_dask.fit.reorder`: two passes of tasks of bounded memory; next
   to the input store unless ``scratch`` names a directory every worker sees; removed at the
   end, also after an error), so that every chunk the final fit reads is contiguous. Without
   it each chunk of the fit decodes most of the stored chunks. Counted as its reads and writes
   in ``passes_over_A``; ``history_["reorder"]`` says whether it ran and the read
   amplification that decided it.
4. The ranks and factors by :func:`mlr_dask.fit.dask.fit_mlr_dask` on the learned hierarchy:
   after ``"bottom"`` the ranks grow from the atoms, one per epoch on the level of largest
   predicted gain (the continuation of the in-memory growth), then rank exchanges with trial
   epochs; after ``"uniform"`` the exchanges start from the uniform allocation.

Memory: per tile task two tiles; per block task about four copies of a ``block_items``-sided
block; per reorder task ``2 block_items^2`` entries and a stored chunk; per start trial about
four copies of the sample; on the client the products (``(m + n) x`` about 50 numbers), the
coarse factors and the hierarchies.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fit.dask import ZarrChunk, _chunk_array
from mlr_dask.fit.partition import _cuts, _directions, spectral_partition
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix

__all__ = ["TileSource", "LearnOptions", "default_block_items", "pick_start", "top_splits",
           "split_below", "learn_mlr_dask"]

#: the starts that ``init="best"`` tries on a sample (as futures)
SAMPLE_STARTS = ("bottom", "uniform")


@dataclass
class LearnOptions:
    """Options of the learned Dask path. ``init``: ``"best"``, ``"bottom"`` or ``"uniform"``;
    ``block_items``: the largest block side one task loads (default 2048); ``sample_items``:
    sampled rows (columns) on which ``init="best"`` picks its start (default 1024);
    ``grow_per_step`` / ``exchange_steps``: ranks added per growth epoch and the bound on the
    exchanges of the final fit (each growth epoch or exchange trial costs a few passes over
    A); ``q``: power iterations of the split embeddings; ``rounds``: refinement rounds of the
    cut direction; ``refine_rounds``: swap rounds per split; ``reorder``: rewrite a store in
    hierarchy order before the final fit, ``"auto"`` (when its chunks would be read more than
    :data:`REORDER_ABOVE` times per pass), ``"always"`` or ``"never"``; ``scratch``: the
    directory of that temporary store (default: next to the input store); the other partition
    options mirror the in-memory ones."""

    init: str = "best"
    block_items: int = 2048
    sample_items: int = 1024
    q: int = 2
    rounds: int = 2
    n_vectors: int = 4
    n_random: int = 32
    balanced: bool = False
    refine: bool = True
    refine_rounds: int = 2
    grow_per_step: int = 1
    exchange_steps: int = 8
    #: epochs of the final fit after the exchange: "als" (not for the PSD model) or "bcd"
    method: str = "als"
    split: str = "normalized"
    symmetric: bool = False
    psd: bool = False
    seed: int = 0
    reorder: str = "auto"
    scratch: str | None = None


#: ``reorder="auto"`` rewrites a store in hierarchy order when one pass of the final fit in
#: the stored order would decode more than this many times the stored chunks
REORDER_ABOVE = 2.0


#: The part of a worker's memory limit that the tasks of the learned path plan to use,
#: process memory included: below the worker's pause threshold (80% by default), with room for
#: the decoded tiles and results in flight.
BLOCK_MEMORY_SHARE = 0.7


def default_block_items(client: Any = None) -> int:
    """The largest block side a task may learn in memory: eight float64 copies of the block
    (a block task holds about six: the block, its residual and the partition's work arrays,
    plus the stored tiles being decoded) within a task's share of its worker's memory. The share
    is :data:`BLOCK_MEMORY_SHARE` of the worker's limit less the memory its process already
    holds outside the managed data (interpreter, libraries, compiled kernels), over the worker's
    threads; the smallest over the workers counts. Between 64 and 4096; 2048 when there is no
    client or no limit. Cost: one scheduler query."""
    if client is None:
        return 2048
    try:  # the memory of one task: the worker's free share over its threads
        shares = []
        for w in client.scheduler_info()["workers"].values():
            limit = w.get("memory_limit") or 0
            if not limit:
                continue
            metrics = w.get("metrics") or {}
            own = max(0, int(metrics.get("memory") or 0) - int(metrics.get("managed_bytes") or 0))
            free = max(BLOCK_MEMORY_SHARE * limit - own, 0.1 * limit)
            shares.append(free / max(1, int(w.get("nthreads") or 1)))
    except Exception:  # an unusual client: keep the default
        return 2048
    if not shares:
        return 2048
    return int(max(64, min(4096, np.sqrt(min(shares) / (8 * 8)))))


# ------------------------------------------------------------------------------ the source
class TileSource:
    """The matrix as a grid of tiles (the stored chunks of a zarr array, the chunks of a Dask
    array, or ``tile`` x ``tile`` pieces of a numpy array), read inside the task that uses them.
    ``stored_rows`` / ``stored_cols``: the original item at each stored position. Positions
    below are stored positions. ``passes`` counts the tiles decoded, in units of the matrix."""

    def __init__(self, src: Any, tile: int = 2048) -> None:
        from mlr_dask.fit.store import MatrixStore

        self.passes = 0.0
        #: the coarse levels subtracted from A in every pass: per level (B_l (m, r_l),
        #: C_l (n, r_l), block of each stored row (m,), block of each stored column (n,))
        self.model: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.src = src
        if isinstance(src, MatrixStore):
            self.kind = "zarr"
            self.array = src.array
            m, n = src.shape
            cr, cc = (int(c) for c in src.array.chunks)
            self.sr = src.rows.perm if src.rows is not None else np.arange(m)
            self.sc = src.cols.perm if src.cols is not None else np.arange(n)
        elif hasattr(src, "dask") and hasattr(src, "chunks"):
            self.kind = "dask"
            self.array = src
            m, n = (int(s) for s in src.shape)
            self.sr, self.sc = np.arange(m), np.arange(n)
        else:
            self.kind = "numpy"
            self.array = np.asarray(src, dtype=np.float64)
            m, n = self.array.shape
            cr = cc = tile
            self.sr, self.sc = np.arange(m), np.arange(n)
        self.shape = (m, n)
        if self.kind == "dask":
            self.rg = np.concatenate([[0], np.cumsum(self.array.chunks[0])]).astype(np.int64)
            self.cg = np.concatenate([[0], np.cumsum(self.array.chunks[1])]).astype(np.int64)
        else:
            self.rg = np.append(np.arange(0, m, cr), m).astype(np.int64)
            self.cg = np.append(np.arange(0, n, cc), n).astype(np.int64)

    @property
    def n_tiles(self) -> int:
        return (self.rg.size - 1) * (self.cg.size - 1)

    def tile(self, i: int, j: int) -> Any:
        """What a task needs to read tile ``(i, j)``."""
        rs = slice(int(self.rg[i]), int(self.rg[i + 1]))
        cs = slice(int(self.cg[j]), int(self.cg[j + 1]))
        if self.kind == "zarr":
            return ZarrChunk(self.array, rs, cs)
        if self.kind == "dask":
            return self.array.blocks[i, j]
        return self.array[rs, cs]

    def block(self, rows: np.ndarray, cols: np.ndarray) -> Any:
        """What a task needs to read ``A[rows][:, cols]`` (sorted stored positions); counts the
        tiles it meets."""
        ti = np.unique(np.searchsorted(self.rg, rows, side="right") - 1)
        tj = np.unique(np.searchsorted(self.cg, cols, side="right") - 1)
        self.passes += ti.size * tj.size / self.n_tiles
        if self.kind == "zarr":
            return ZarrChunk(self.array, rows, cols)
        if self.kind == "dask":
            return self.array[rows][:, cols]
        return self.array[np.ix_(rows, cols)]

    def fit_source(self) -> Any:
        """The matrix as :func:`mlr_dask.fit.dask.fit_mlr_dask` takes it (a numpy matrix as a
        Dask array of the tiles, for its numpy engine)."""
        if self.kind != "numpy":
            return self.src
        import dask.array as da

        return da.from_array(self.array, chunks=(int(self.rg[1]), int(self.cg[1])))

    def compute(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        """Run ``f(*args)`` for each call: Dask tasks (the default scheduler) unless numpy."""
        if self.kind == "numpy":
            return [f(*args) for f, args in calls]
        import dask

        return list(dask.compute(*[dask.delayed(f, pure=False)(*a) for f, a in calls]))


# ------------------------------------------------------------------------------ tasks
def _subtract(A: np.ndarray, model: list[tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray]]) -> None:
    """``A -= sum_l [mr_l == mc_l] o (B_l C_l^T)`` in place (``model``: per level the rows'
    ``B_l`` (h, r_l), the columns' ``C_l`` (w, r_l) and their blocks ``mr_l`` (h,) and
    ``mc_l`` (w,))."""
    for B, C, mr, mc in model:
        same = mr[:, None] == mc[None, :]
        if same.all():
            A -= B @ C.T
        else:
            A -= np.where(same, B @ C.T, 0.0)


def tile_products(src: Any, r0: int, c0: int, br: np.ndarray, bc: np.ndarray,
                  X: np.ndarray | None, Y: np.ndarray | None, zero_diag: bool,
                  model: list[Any] | None = None
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One tile's share of a pass: with ``W = R_t o R_t`` kept where the row's block equals the
    column's (``br`` (h,), ``bc`` (w,)) and, when ``zero_diag``, zero on the diagonal of the
    whole matrix (``r0``, ``c0``: the tile's offsets), returns ``(W X, W^T Y)`` ((h, k), (w, k);
    None for a missing operand). ``R_t`` is the tile of A minus the coarse levels of ``model``
    (see :func:`_subtract`), or A itself. Cost O(h w (k + r))."""
    A = _chunk_array(src, writable=True)
    if model:
        _subtract(A, model)
    np.square(A, out=A)
    A[br[:, None] != bc[None, :]] = 0.0
    if zero_diag:
        h, w = A.shape
        d = np.arange(max(r0, c0), min(r0 + h, c0 + w))
        A[d - r0, d - c0] = 0.0
    return (None if X is None else A @ X, None if Y is None else A.T @ Y)


def block_partition(src: Any, n_levels: int, ranks: list[int], model: list[Any],
                    symmetric: bool, psd: bool, balanced: bool, refine: bool, split: str,
                    n_vectors: int, seed: int
                    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """The hierarchy of one block (its rows and columns as given, ``n_levels`` levels, atoms
    last) by :func:`spectral_partition` of the block minus the coarse levels of ``model`` (the
    block lies inside one block of each), with the start ``ranks`` (n_levels,) for the
    intermediate fits. Returns the local row order and boundaries per level, then the same for
    the columns. Memory: about four copies of the block."""
    A = _chunk_array(src, writable=True)
    _subtract(A, [(B, C, np.zeros(B.shape[0]), np.zeros(C.shape[0])) for B, C in model])
    rows, cols, _ = spectral_partition(A, n_levels, ranks, symmetric=symmetric, psd=psd,
                                       balanced=balanced, refine=refine, method=split,
                                       n_vectors=n_vectors, seed=seed)
    return rows.perm, list(rows.boundaries), cols.perm, list(cols.boundaries)


def start_trial(src: Any, inv_r: np.ndarray, inv_c: np.ndarray, rank: int, init: str,
                n_levels: int | None, symmetric: bool, psd: bool, seed: int) -> float:
    """The whole in-memory pipeline from the start ``init`` on a sampled submatrix (read by the
    task, reordered by ``inv_r`` / ``inv_c``), short (as :func:`mlr_dask.fit.pipeline.
    pick_start`: growth by three ranks per step, two epochs); returns its relative error."""
    from mlr_dask.fit import pipeline
    from mlr_dask.fit.options import (
        AllocationOptions,
        FitOptions,
        Options,
        PartitionOptions,
        Reporter,
    )

    A = np.ascontiguousarray(_chunk_array(src, writable=False)[np.ix_(inv_r, inv_c)])
    opts = Options(partition=PartitionOptions(init=init, levels=n_levels),
                   allocation=AllocationOptions(grow_per_step=3, max_rank_moves=rank // 3 + 8),
                   fit=FitOptions(max_iter=2), symmetric=symmetric, psd=psd, seed=seed,
                   threads=1, baselines=False)
    M = pipeline.run(A, rank, opts, Reporter(None), levels=n_levels)
    return float(M.history_["rel_error"][-1])


# ------------------------------------------------------------------------------ passes
@dataclass
class _Level:
    """The finest learned level: ``pr`` / ``pc`` stored position at each hierarchy position,
    ``rb`` / ``cb`` boundaries of every level so far."""

    pr: np.ndarray
    pc: np.ndarray
    rb: list[np.ndarray]
    cb: list[np.ndarray]

    def ids(self, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Block of the finest level of each stored row (column)."""
        br = np.empty(m, dtype=np.int64)
        bc = np.empty(n, dtype=np.int64)
        br[self.pr] = np.repeat(np.arange(self.rb[-1].size - 1), np.diff(self.rb[-1]))
        bc[self.pc] = np.repeat(np.arange(self.cb[-1].size - 1), np.diff(self.cb[-1]))
        return br, bc


def _sum_parts(*parts: np.ndarray | None) -> np.ndarray | None:
    """The sum of the parts that are not None (None when all are)."""
    out = None
    for p in parts:
        if p is not None:
            out = p.copy() if out is None else out + p
    return out


def _tree_sum(parts: list[Any]) -> Any:
    """Delayed sum of delayed parts, four at a time (the partial results are freed as they
    are added, so a worker holds a few of them, not all)."""
    import dask

    add = dask.delayed(_sum_parts, pure=False)
    while len(parts) > 1:
        parts = [add(*parts[k:k + 4]) if k + 1 < len(parts) else parts[k]
                 for k in range(0, len(parts), 4)]
    return parts[0]


def _pass(ts: TileSource, br: np.ndarray, bc: np.ndarray, X: np.ndarray | None,
          Y: np.ndarray | None, zero_diag: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(W X, W^T Y)`` in stored order for the diagonal blocks given by ``br`` / ``bc``, with
    ``W = R o R`` and ``R`` the matrix minus ``ts.model``: one task per tile that holds a
    diagonal-block entry, the tiles' shares summed per row strip (``W X``) and per column
    strip (``W^T Y``) by trees of tasks on the workers. ``X`` (n, k), ``Y`` (m, k)."""
    m, n = ts.shape
    K, J = ts.rg.size - 1, ts.cg.size - 1
    tiles: dict[tuple[int, int], tuple[Any, ...]] = {}
    for i in range(K):
        r0, r1 = int(ts.rg[i]), int(ts.rg[i + 1])
        for j in range(J):
            c0, c1 = int(ts.cg[j]), int(ts.cg[j + 1])
            if np.intersect1d(br[r0:r1], bc[c0:c1]).size:
                tiles[i, j] = (r0, r1, c0, c1)
    ts.passes += len(tiles) / ts.n_tiles
    WX = None if X is None else np.zeros((m, X.shape[1]))
    WtY = None if Y is None else np.zeros((n, Y.shape[1]))

    def args(i: int, j: int, Xj: Any, Yi: Any) -> tuple[Any, ...]:
        r0, r1, c0, c1 = tiles[i, j]
        model = [(B[r0:r1], C[c0:c1], mr[r0:r1], mc[c0:c1]) for B, C, mr, mc in ts.model]
        return (ts.tile(i, j), r0, c0, br[r0:r1], bc[c0:c1], Xj, Yi, zero_diag, model)

    def piece(A: np.ndarray | None, lo: int, hi: int) -> np.ndarray | None:
        return None if A is None else A[lo:hi]

    if ts.kind == "numpy":
        for (i, j), (r0, r1, c0, c1) in tiles.items():
            a, b = tile_products(*args(i, j, piece(X, c0, c1), piece(Y, r0, r1)))
            if a is not None:
                WX[r0:r1] += a
            if b is not None:
                WtY[c0:c1] += b
        return WX, WtY
    import dask

    # each strip of X / Y once in the graph, shared by the tiles that use it
    Xs = [dask.delayed(piece(X, int(ts.cg[j]), int(ts.cg[j + 1])), pure=True) for j in range(J)]
    Ys = [dask.delayed(piece(Y, int(ts.rg[i]), int(ts.rg[i + 1])), pure=True) for i in range(K)]
    task = dask.delayed(tile_products, pure=False, nout=2)
    out = {(i, j): task(*args(i, j, Xs[j], Ys[i])) for (i, j) in tiles}
    row_sums = {i: _tree_sum([out[i, j][0] for j in range(J) if (i, j) in out])
                for i in range(K) if any((i, j) in out for j in range(J))}
    col_sums = {j: _tree_sum([out[i, j][1] for i in range(K) if (i, j) in out])
                for j in range(J) if any((i, j) in out for i in range(K))}
    keys_r, keys_c = list(row_sums), list(col_sums)
    res = dask.compute(*[row_sums[i] for i in keys_r], *[col_sums[j] for j in keys_c])
    for i, a in zip(keys_r, res[:len(keys_r)], strict=True):
        if a is not None:
            WX[int(ts.rg[i]):int(ts.rg[i + 1])] += a
    for j, b in zip(keys_c, res[len(keys_r):], strict=True):
        if b is not None:
            WtY[int(ts.cg[j]):int(ts.cg[j + 1])] += b
    return WX, WtY


def _orth_blocks(Y: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    out = np.zeros_like(Y)
    for g in groups:
        out[g] = np.linalg.qr(Y[g])[0][:, :Y.shape[1]] if g.size >= Y.shape[1] else \
            np.linalg.qr(Y[g])[0] @ np.eye(g.size, Y.shape[1])
    return out


def _embeddings(ts: TileSource, lv: _Level, o: LearnOptions, rng: np.random.Generator
                ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Spectral embeddings (k vectors) of every block of the finest level through passes:
    singular pairs 2..k+1 of ``D1^-1/2 W D2^-1/2`` (eigenvectors of ``D^-1/2 W D^-1/2`` when
    symmetric), the trivial pair deflated, by a randomized range finder with ``q`` power
    iterations, scaled back by ``D^-1/2``. Returns per block ``Zr`` (a, k) and ``Zc`` (b, k) in
    the block's hierarchy order, and the row / column degrees (stored order)."""
    m, n = ts.shape
    sym = o.symmetric
    br, bc = lv.ids(m, n)
    rows = [lv.pr[a:b] for a, b in zip(lv.rb[-1][:-1], lv.rb[-1][1:], strict=True)]
    cols = [lv.pc[a:b] for a, b in zip(lv.cb[-1][:-1], lv.cb[-1][1:], strict=True)]
    k = max(1, min(o.n_vectors, min(min(g.size for g in rows), min(g.size for g in cols)) - 2))
    w = min(k + 8, min(min(g.size for g in rows), min(g.size for g in cols)))
    # one pass for the degrees and the first sketch: W [1, Om] (and W^T 1)
    Om = rng.standard_normal((n, w))
    first, dc = _pass(ts, br, bc, np.hstack([np.ones((n, 1)), Om]),
                      None if sym else np.ones((m, 1)), sym)
    d1 = first[:, 0]
    d2 = d1 if sym else dc[:, 0]
    tiny = 1e-300 + 1e-12 * max(float(d1.max(initial=0.0)), 1e-300)
    d1, d2 = d1 + tiny, d2 + tiny
    s1, s2 = 1.0 / np.sqrt(d1), 1.0 / np.sqrt(d2)
    u0, v0 = np.sqrt(d1), np.sqrt(d2)
    tot_r = np.array([d1[g].sum() for g in rows])

    def defl(out: np.ndarray, inp: np.ndarray, uo: np.ndarray, ui: np.ndarray,
             groups_o: list[np.ndarray], groups_i: list[np.ndarray]) -> np.ndarray:
        for t, (go, gi) in enumerate(zip(groups_o, groups_i, strict=True)):
            out[go] -= np.outer(uo[go], ui[gi] @ inp[gi]) / tot_r[t]
        return out

    def N(X: np.ndarray) -> np.ndarray:  # deflated D1^-1/2 W D2^-1/2
        WX, _ = _pass(ts, br, bc, s2[:, None] * X, None, sym)
        return defl(s1[:, None] * WX, X, u0, v0, rows, cols)

    def NT(Y: np.ndarray) -> np.ndarray:
        _, WtY = _pass(ts, br, bc, None, s1[:, None] * Y, False)
        return defl(s2[:, None] * WtY, Y, v0, u0, cols, rows)

    Y = defl(s1[:, None] * first[:, 1:], v0[:, None] * Om, u0, v0, rows, cols)  # N (D2^1/2 Om)
    for _ in range(2 * o.q if sym else o.q):  # a symmetric iteration is one pass, not two
        Q = _orth_blocks(Y, rows)
        Y = N(Q) if sym else N(_orth_blocks(NT(Q), cols))
    Q = _orth_blocks(Y, rows)
    Zr, Zc = [], []
    if sym:
        S = N(Q)
        for g in rows:  # Rayleigh-Ritz; the largest (algebraic) eigenvalues
            lam, V = np.linalg.eigh(0.5 * (Q[g].T @ S[g] + S[g].T @ Q[g]))
            U = Q[g] @ V[:, ::-1][:, :k]
            Zr.append(U * s1[g][:, None])
        Zc = Zr
    else:
        S = NT(Q)  # N^T Q: (n, w), the small SVD per block
        for g, h in zip(rows, cols, strict=True):
            Ub, _, Vt = np.linalg.svd(S[h].T, full_matrices=False)
            Zr.append((Q[g] @ Ub[:, :k]) * s1[g][:, None])
            Zc.append(Vt[:k].T * s2[h][:, None])
    return Zr, Zc, d1, d2


def _score(ts: TileSource, lv: _Level, P: list[np.ndarray], Qc: list[np.ndarray],
           d1: np.ndarray, d2: np.ndarray, o: LearnOptions, min_size: int
           ) -> tuple[list[np.ndarray], list[list[tuple[np.ndarray, int, np.ndarray, int]]],
                      np.ndarray, np.ndarray]:
    """Normalized cut of ``W`` of each candidate cut of each block (rows cut along the columns
    of ``P[t]`` (a, d), columns along ``Qc[t]`` (b, d)) by one pass; see
    :func:`mlr_dask.fit.partition._score_cuts`. Also returns, per candidate, the mass of each
    row on the columns of side 0 (m, d) and of each column on the rows of side 0 (n, d),
    stored order (what the first refinement round needs)."""
    m, n = ts.shape
    br, bc = lv.ids(m, n)
    d = P[0].shape[1]
    X = np.zeros((n, d))
    Yr = np.zeros((m, d))
    Rms, cuts_all = [], []
    for t, (a0, a1, b0, b1) in enumerate(zip(lv.rb[-1][:-1], lv.rb[-1][1:], lv.cb[-1][:-1],
                                            lv.cb[-1][1:], strict=True)):
        a, b = a1 - a0, b1 - b0
        ordr = np.argsort(P[t], axis=0, kind="stable")
        ordc = np.argsort(Qc[t], axis=0, kind="stable")
        cr = _cuts(P[t], o.balanced, min_size)
        cc = _cuts(Qc[t], o.balanced, min_size)
        rank_r = np.empty((a, d), dtype=np.int64)
        rank_r[ordr, np.arange(d)] = np.arange(a)[:, None]
        rank_c = np.empty((b, d), dtype=np.int64)
        rank_c[ordc, np.arange(d)] = np.arange(b)[:, None]
        Rms.append((rank_r < cr).astype(np.float64))
        Yr[lv.pr[a0:a1]] = Rms[-1]
        X[lv.pc[b0:b1]] = (rank_c < cc).astype(np.float64)
        cuts_all.append([(ordr[:, j], int(cr[j]), ordc[:, j], int(cc[j])) for j in range(d)])
    WX, WtY = _pass(ts, br, bc, X, None if o.symmetric else Yr, o.symmetric)
    scores = []
    for t, (a0, a1, b0, b1) in enumerate(zip(lv.rb[-1][:-1], lv.rb[-1][1:], lv.cb[-1][:-1],
                                            lv.cb[-1][1:], strict=True)):
        g, h = lv.pr[a0:a1], lv.pc[b0:b1]
        Rm, Cm = Rms[t], X[h]
        m00 = np.einsum("ij,ij->j", Rm, WX[g])
        r0, c0 = d1[g] @ Rm, d2[h] @ Cm
        cut = (r0 - m00) + (c0 - m00)
        vol0 = r0 + c0
        vol1 = d1[g].sum() + d2[h].sum() - vol0
        with np.errstate(divide="ignore", invalid="ignore"):
            s = cut / np.maximum(vol0, 1e-300) + cut / np.maximum(vol1, 1e-300)
        scores.append(np.where(np.isfinite(s), s, np.inf))
    return scores, cuts_all, WX, WX if o.symmetric else WtY


def _split_level(ts: TileSource, lv: _Level, o: LearnOptions, min_size: int,
                 rng: np.random.Generator) -> _Level:
    """Split every block of the finest level in two (see the module docstring)."""
    Zr, Zc, d1, d2 = _embeddings(ts, lv, o, rng)
    k = Zr[0].shape[1]
    nb = len(Zr)
    D = _directions(k, o.n_random, rng)
    scores, cuts, WX, WtY = _score(ts, lv, [z @ D for z in Zr], [z @ D for z in Zc], d1, d2,
                                   o, min_size)
    best = [int(np.argmin(s)) for s in scores]
    best_w = [D[:, j] for j in best]
    best_s = [scores[t][best[t]] for t in range(nb)]
    best_c = [cuts[t][best[t]] for t in range(nb)]
    m0, n0 = np.zeros(d1.size), np.zeros(d2.size)  # masses on side 0 of the best cuts
    rows = [lv.pr[a:b] for a, b in zip(lv.rb[-1][:-1], lv.rb[-1][1:], strict=True)]
    cols = [lv.pc[a:b] for a, b in zip(lv.cb[-1][:-1], lv.cb[-1][1:], strict=True)]

    def keep_mass(t: int, j: int, WX: np.ndarray, WtY: np.ndarray) -> None:
        m0[rows[t]] = WX[rows[t], j]
        n0[cols[t]] = WtY[cols[t], j]

    for t in range(nb):
        keep_mass(t, best[t], WX, WtY)
    step = 0.5
    for _ in range(o.rounds if k > 1 else 0):
        Ds = []
        for t in range(nb):
            Dl = best_w[t][:, None] + step * rng.standard_normal((k, 12))
            Ds.append(Dl / np.linalg.norm(Dl, axis=0, keepdims=True))
        scores, cuts, WX, WtY = _score(ts, lv, [z @ Dl for z, Dl in zip(Zr, Ds, strict=True)],
                                       [z @ Dl for z, Dl in zip(Zc, Ds, strict=True)], d1, d2,
                                       o, min_size)
        for t in range(nb):
            j = int(np.argmin(scores[t]))
            if scores[t][j] < best_s[t]:
                best_w[t], best_s[t], best_c[t] = Ds[t][:, j], scores[t][j], cuts[t][j]
                keep_mass(t, j, WX, WtY)
        step *= 0.5
    pr, pc = lv.pr.copy(), lv.pc.copy()
    new_rb, new_cb = [0], [0]
    for t, (a0, a1, b0, b1) in enumerate(zip(lv.rb[-1][:-1], lv.rb[-1][1:], lv.cb[-1][:-1],
                                            lv.cb[-1][1:], strict=True)):
        ordr, cr, ordc, cc = best_c[t]
        if o.symmetric:
            ordc, cc = ordr, cr
        pr[a0:a1] = lv.pr[a0:a1][ordr]
        pc[b0:b1] = lv.pc[b0:b1][ordc]
        new_rb += [a0 + cr, a1]
        new_cb += [b0 + cc, b1]
    out = _Level(pr, pc, lv.rb + [np.asarray(new_rb, dtype=np.int64)],
                 lv.cb + [np.asarray(new_cb, dtype=np.int64)])
    if o.refine:
        _refine_level(ts, lv, out, d1, d2, o, (m0, n0))
    return out


def _swap_side(p: np.ndarray, lo: int, mid: int, hi: int, gain: np.ndarray) -> int:
    """Swap between the sides ``p[lo:mid]`` and ``p[mid:hi]`` (stored positions) every pair of
    items, best first, whose summed gain of moving (``gain``: stored order, per item, for
    moving to the other side) is positive; ``p`` is updated in place. Returns the swaps."""
    s0, s1 = p[lo:mid].copy(), p[mid:hi].copy()
    if not s0.size or not s1.size:
        return 0
    o0 = np.argsort(-gain[s0], kind="stable")
    o1 = np.argsort(-gain[s1], kind="stable")
    k = min(s0.size, s1.size)
    tot = gain[s0[o0[:k]]] + gain[s1[o1[:k]]]
    n_sw = int(np.count_nonzero(tot > 0)) if tot.size and tot[0] > 0 else 0
    if n_sw:
        a, b = s0[o0[:n_sw]].copy(), s1[o1[:n_sw]].copy()
        s0[o0[:n_sw]], s1[o1[:n_sw]] = b, a
        p[lo:mid], p[mid:hi] = s0, s1
    return n_sw


def _refine_level(ts: TileSource, parent: _Level, lv: _Level, d1: np.ndarray, d2: np.ndarray,
                  o: LearnOptions, first: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Greedy swap refinement of the new level's cuts through passes (the batch form of
    :func:`mlr_dask.fit.partition._swap_refine`): with the column sides fixed, moving rows does
    not change the gain of moving other rows, so every pair of rows with a positive summed gain
    (the mass of ``W`` they bring into the diagonal blocks) is swapped at once; then the
    columns, with the rows fixed. One pass per half round, ``o.refine_rounds`` rounds or until
    nothing moves. ``first``: the masses of the rows on the column side 0 and of the columns on
    the row side 0 from the scoring pass: the first round swaps rows and columns from them at
    once, without a pass (the columns' gains are then computed before the rows move).
    Symmetric: rows and columns together, one pass per round (the pair terms ``W_ij`` are
    ignored). Updates ``lv.pr`` / ``lv.pc`` in place."""
    m, n = ts.shape
    br, bc = parent.ids(m, n)
    rb, cb = lv.rb[-1], lv.cb[-1]
    nb = (rb.size - 1) // 2
    for rnd in range(o.refine_rounds):
        moved = 0
        if rnd == 0 and first is not None:
            side_r = np.isin(np.arange(m), _side1(lv.pr, rb, nb))
            side_c = np.isin(np.arange(n), _side1(lv.pc, cb, nb))
            m1, n1 = d1 - first[0], d2 - first[1]
            gain_r, gain_c = _move_gain(side_r, d1, m1), _move_gain(side_c, d2, n1)
            for t in range(nb):
                moved += _swap_side(lv.pr, rb[2 * t], rb[2 * t + 1], rb[2 * t + 2], gain_r)
                if not o.symmetric:
                    moved += _swap_side(lv.pc, cb[2 * t], cb[2 * t + 1], cb[2 * t + 2],
                                        gain_c)
            if o.symmetric:
                lv.pc[:] = lv.pr
            if not moved:
                break
            continue
        for axis in ((0,) if o.symmetric else (0, 1)):
            if axis == 0:
                X = np.zeros((n, 1))
                for t in range(nb):
                    X[lv.pc[cb[2 * t + 1]:cb[2 * t + 2]], 0] = 1.0
                WX, _ = _pass(ts, br, bc, X, None, o.symmetric)
                m1 = WX[:, 0]
                gain = _move_gain(np.isin(np.arange(m), _side1(lv.pr, rb, nb)), d1, m1)
                for t in range(nb):
                    moved += _swap_side(lv.pr, rb[2 * t], rb[2 * t + 1], rb[2 * t + 2], gain)
                if o.symmetric:
                    lv.pc[:] = lv.pr
            else:
                Y = np.zeros((m, 1))
                for t in range(nb):
                    Y[lv.pr[rb[2 * t + 1]:rb[2 * t + 2]], 0] = 1.0
                _, WtY = _pass(ts, br, bc, None, Y, False)
                n1 = WtY[:, 0]
                gain = _move_gain(np.isin(np.arange(n), _side1(lv.pc, cb, nb)), d2, n1)
                for t in range(nb):
                    moved += _swap_side(lv.pc, cb[2 * t], cb[2 * t + 1], cb[2 * t + 2], gain)
        if not moved:
            break


def _move_gain(side1: np.ndarray, d: np.ndarray, mass1: np.ndarray) -> np.ndarray:
    """Diagonal mass gained by moving each item to the other side: ``mass1`` is its mass on
    the other axis's side 1, ``d`` its total mass, ``side1`` whether it is on side 1."""
    return np.where(side1, (d - mass1) - mass1, mass1 - (d - mass1))


def _side1(p: np.ndarray, b: np.ndarray, nb: int) -> np.ndarray:
    return np.concatenate([p[b[2 * t + 1]:b[2 * t + 2]] for t in range(nb)])


# ------------------------------------------------------------------------------ stages
def _n_split(n_levels: int) -> int:
    return max(0, n_levels - 2)


def _coarse_model(ts: TileSource, lv: _Level, ranks: list[int], o: LearnOptions,
                  chunk_items: int | None
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The levels learned so far fitted with their start ``ranks`` (one epoch on the Dask path,
    :func:`mlr_dask.fit.dask.fit_mlr_dask`), as the residual model of the next passes (stored
    order, see :attr:`TileSource.model`); empty when they all have rank 0."""
    from mlr_dask.fit.dask import fit_mlr_dask

    t = len(lv.rb)
    rk = [int(min(r, np.diff(a).min(), np.diff(b).min()))
          for r, a, b in zip(ranks[:t], lv.rb, lv.cb, strict=True)]
    if not any(rk):
        return []
    rows = Hierarchy(lv.rb, ts.sr[lv.pr])
    cols = Hierarchy(lv.cb, ts.sc[lv.pc])
    M = fit_mlr_dask(ts.fit_source(), rows, cols, rk, psd=o.psd, max_iter=0, tol=0.0,
                     chunk_items=chunk_items, q=o.q, seed=o.seed,
                     engine="numpy" if ts.kind == "numpy" else "dask")
    ts.passes += float(M.history_["passes_over_A"])
    m, n = ts.shape
    model = []
    for lvl, r in enumerate(rk):
        if r == 0:
            continue
        Bh, Ch = M.level(lvl)
        B, C = np.empty((m, r)), np.empty((n, r))
        B[lv.pr], C[lv.pc] = Bh, Ch
        mr, mc = np.empty(m, dtype=np.int64), np.empty(n, dtype=np.int64)
        mr[lv.pr] = np.repeat(np.arange(lv.rb[lvl].size - 1), np.diff(lv.rb[lvl]))
        mc[lv.pc] = np.repeat(np.arange(lv.cb[lvl].size - 1), np.diff(lv.cb[lvl]))
        model.append((B, C, mr, mc))
    return model


def top_splits(ts: TileSource, n_levels: int, ranks: list[int], o: LearnOptions,
               chunk_items: int | None = None,
               report: Callable[..., None] | None = None) -> _Level:
    """Stage 1: the levels whose blocks are larger than ``o.block_items`` (a side), learned by
    passes over the tiles (see the module docstring). ``ranks`` (n_levels,): the start; before
    each level's splits the levels above with a nonzero start rank are fitted
    (:func:`_coarse_model`) and the splits are made on the residual, as in memory. Returns the
    learned levels (at least the root) in stored positions; ``ts.model`` holds the coarse
    fit of the levels above the last one."""
    m, n = ts.shape
    lv = _Level(np.arange(m), np.arange(n), [np.array([0, m])], [np.array([0, n])])
    rng = np.random.default_rng(o.seed)
    n_split = _n_split(n_levels)
    lvl = 0
    ts.model = []
    while lvl < n_split and max(np.diff(lv.rb[-1]).max(), np.diff(lv.cb[-1]).max()) \
            > o.block_items:
        lvl += 1
        ts.model = _coarse_model(ts, lv, ranks, o, chunk_items)
        lv = _split_level(ts, lv, o, 2 ** (n_split - lvl), rng)
        if report:
            report("partition", lvl, n_split, level=lvl, of=n_split, where="cluster",
                   passes_over_A=round(ts.passes, 3))
    return lv


def split_below(ts: TileSource, lv: _Level, n_levels: int, ranks: list[int], o: LearnOptions,
                report: Callable[..., None] | None = None) -> tuple[Hierarchy, Hierarchy]:
    """Stage 2: the rest of the hierarchy, one task per block of the finest learned level
    (:func:`block_partition` on the block minus ``ts.model``, start ranks ``ranks[t:]``).
    Returns the whole hierarchies (stored positions as items)."""
    t = len(lv.rb) - 1
    local_levels = n_levels - t
    nb = lv.rb[-1].size - 1
    rows_sorted, cols_sorted, calls = [], [], []
    for k in range(nb):
        g = np.sort(lv.pr[lv.rb[-1][k]:lv.rb[-1][k + 1]])
        h = g if o.symmetric else np.sort(lv.pc[lv.cb[-1][k]:lv.cb[-1][k + 1]])
        rows_sorted.append(g)
        cols_sorted.append(h)
        if local_levels > 2:
            model = [(B[g], C[h]) for B, C, _, _ in ts.model]
            calls.append((block_partition, (ts.block(g, h), local_levels, list(ranks[t:]),
                                            model, o.symmetric, o.psd, o.balanced, o.refine,
                                            o.split, o.n_vectors, o.seed + k)))
    results = ts.compute(calls) if calls else []
    if report and calls:
        report("partition", _n_split(n_levels), _n_split(n_levels), where="blocks",
               blocks=len(calls), passes_over_A=round(ts.passes, 3))
    pr, pc = [], []
    extra_r: list[list[int]] = [[0] for _ in range(max(0, local_levels - 1))]
    extra_c: list[list[int]] = [[0] for _ in range(max(0, local_levels - 1))]
    off_r = off_c = 0
    for k in range(nb):
        g, h = rows_sorted[k], cols_sorted[k]
        if calls:
            lpr, lrb, lpc, lcb = results[k]
        else:  # only the atoms are left
            cnt = min(g.size, h.size)
            lpr, lpc = np.arange(g.size), np.arange(h.size)
            lrb = [np.array([0, g.size]),
                   np.linspace(0, g.size, cnt + 1).round().astype(np.int64)]
            lcb = [np.array([0, h.size]),
                   np.linspace(0, h.size, cnt + 1).round().astype(np.int64)]
        pr.append(g[lpr])
        pc.append(h[lpc])
        for j in range(1, local_levels):
            extra_r[j - 1] += (off_r + lrb[j][1:]).tolist()
            extra_c[j - 1] += (off_c + lcb[j][1:]).tolist()
        off_r += g.size
        off_c += h.size
    rows = Hierarchy(list(lv.rb) + [np.asarray(b) for b in extra_r], np.concatenate(pr))
    cols = Hierarchy(list(lv.cb) + [np.asarray(b) for b in extra_c], np.concatenate(pc))
    return rows, cols


def pick_start(ts: TileSource, rank: int, n_levels: int, o: LearnOptions, client: Any = None,
               report: Callable[..., None] | None = None) -> tuple[str, dict[str, Any]]:
    """Stage 0 (``init="best"``): the start of :data:`SAMPLE_STARTS` whose whole in-memory
    pipeline (:func:`start_trial`) gives the lower error on a random principal submatrix of
    ``o.sample_items`` rows and columns at most (the same set for both sides of a square
    matrix; rank at most a quarter of its side, levels fewer by the halvings of the
    sampling), each start a future on the workers (in-process without a client). Reads the
    sample once. Returns the start and what the sample gave."""
    if o.init != "best":
        return o.init, {"start": o.init}
    m, n = ts.shape
    rng = np.random.default_rng(o.seed + 7)
    sm, sn = min(m, o.sample_items), min(n, o.sample_items)
    ri = np.sort(rng.choice(m, size=sm, replace=False))
    ci = ri if m == n and sm == sn else np.sort(rng.choice(n, size=sn, replace=False))
    frac = min(sm / m, sn / n)
    r_sub = int(max(1, min(rank, min(sm, sn) // 4)))
    L_sub = max(1, min(n_levels - int(round(np.log2(1 / frac))),
                       int(np.ceil(np.log2(max(2, min(sm, sn))))) + 1))
    handle = ts.block(ri, ci)
    ident_r, ident_c = np.arange(sm), np.arange(sn)
    args = [(r_sub, s, L_sub, o.symmetric, o.psd, o.seed) for s in SAMPLE_STARTS]
    if client is not None and ts.kind != "numpy":
        import dask

        As = client.compute(dask.delayed(_chunk_array, pure=True)(handle, False))
        errs = client.gather([client.submit(start_trial, As, ident_r, ident_c, *a, pure=False)
                              for a in args])
    else:
        errs = ts.compute([(start_trial, (handle, ident_r, ident_c, *a)) for a in args])
    out = {s: float(e) for s, e in zip(SAMPLE_STARTS, errs, strict=True)}
    best = min(SAMPLE_STARTS, key=lambda k: out[k])
    if report:
        report("pick_start", 1, 1, start=best, **{f"error_{k}": v for k, v in out.items()})
    return best, {"start": best, "sample": [int(sm), int(sn)], "sample_rank": r_sub,
                  "starts": out}


def _reorder(ts: TileSource, rows_s: Hierarchy, cols_s: Hierarchy, rows: Hierarchy,
             cols: Hierarchy, chunk_items: int, o: LearnOptions, scratch: contextlib.ExitStack,
             report: Callable[..., None]) -> tuple[Any, dict[str, Any]]:
    """The source of the final fit: for a store, the matrix rewritten in hierarchy order
    (:func:`mlr_dask.fit.reorder.reordered_store`, removed when ``scratch`` closes) when
    ``o.reorder == "always"``, or ``"auto"`` and one pass of the fit in the stored order would
    decode more than :data:`REORDER_ABOVE` times the stored chunks; else the source as it is.
    ``rows_s`` / ``cols_s``: the hierarchies in stored positions, ``rows`` / ``cols`` in
    original items. Counts the reads and writes of the rewrite in ``ts.passes``. Memory per
    task: ``2 block_items^2`` entries (a quarter of what :func:`default_block_items` allows)."""
    from mlr_dask.fit.dask import chunk_layout
    from mlr_dask.fit.reorder import ScratchSpaceError, read_amplification, reordered_store

    if ts.kind != "zarr":
        return ts.fit_source(), {"done": False}
    _, rch, cch = chunk_layout(rows, cols, chunk_items)
    amp = read_amplification(rows_s.perm, cols_s.perm, rch, cch,
                             tuple(int(c) for c in ts.array.chunks))
    info: dict[str, Any] = {"done": False, "amplification": round(amp, 3)}
    if o.reorder == "never" or (o.reorder == "auto" and amp <= REORDER_ABOVE):
        return ts.src, info
    m, n = ts.shape
    band = max(2 * o.block_items ** 2, m, n)
    try:
        new, st = scratch.enter_context(reordered_store(
            ts.src, rows_s.perm, cols_s.perm, rows, cols, band_items=band, scratch=o.scratch,
            report=report))
    except ScratchSpaceError as e:  # "always" was checked before any work; "auto" goes on
        if o.reorder == "always":
            raise
        warnings.warn(f"{e}; fitting in the stored order (slower reads)", RuntimeWarning,
                      stacklevel=3)
        info["skipped"] = "disk space"
        return ts.src, info
    ts.passes += st["reads"] + st["writes"]
    info.update(done=True, reads=round(st["reads"], 3), writes=st["writes"], band_items=band)
    return new, info


@dataclass
class LearnResult:
    """What the learned Dask path reports next to the model."""

    seconds: dict[str, float] = field(default_factory=dict)
    passes: dict[str, float] = field(default_factory=dict)
    start: dict[str, Any] = field(default_factory=dict)


def learn_mlr_dask(
    src: Any,
    rank: int,
    n_levels: int,
    *,
    opts: LearnOptions | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    chunk_items: int | None = None,
    client: Any = None,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> MLRMatrix:
    """Learn the hierarchy (``n_levels`` levels, atoms last) and the ranks of an MLR matrix of
    total rank ``rank`` for ``src`` (a :class:`~mlr_dask.fit.store.MatrixStore`, a Dask array,
    or a numpy array for the in-process reference), then fit the factors on the Dask path; the
    stages are listed in the module docstring. ``history_`` adds ``seconds`` and ``passes``
    per stage, ``passes_over_A`` in all, and ``start`` (the start and its sampled errors).
    Cost: the sample read once, the passes of the top levels (with a coarse fit per level
    for the uniform start), one read of each block of the first level that fits
    ``block_items``, for a store usually the rewrite in hierarchy order (read and written
    twice; disk space: twice the store, temporarily), and the final fit's passes (an epoch
    per growth step or exchange).
    ``chunk_items`` of the final fit: default ``min(4096, block_items)``."""
    from mlr_dask.fit.dask import fit_mlr_dask
    from mlr_dask.fit.options import Reporter
    from mlr_dask.fit.pipeline import _short_caps, initial_ranks, start_ranks
    from mlr_dask.fit.ranks import rank_caps

    o = opts or LearnOptions()
    report = Reporter(progress)
    ts = TileSource(src)
    m, n = ts.shape
    if o.init not in ("best", *SAMPLE_STARTS):
        raise InputError(f"init must be 'best', 'bottom' or 'uniform' on the Dask path, got "
                         f"{o.init!r}")
    if o.symmetric and m != n:
        raise InputError(f"symmetric=True needs a square matrix, got {m} x {n}")
    if o.symmetric and not np.array_equal(ts.sr, ts.sc):
        raise InputError("symmetric=True on the Dask path needs a store whose rows and columns "
                         "are stored in the same order")
    if n_levels > 1 and 2 ** (n_levels - 2) > min(m, n):
        raise InputError(f"{n_levels} levels need at least {2 ** (n_levels - 2)} rows and "
                         "columns")
    if rank > min(m, n):
        raise InputError(f"rank {rank} is larger than min(m, n) = {min(m, n)}")
    if o.reorder not in ("auto", "always", "never"):
        raise InputError(f"reorder must be 'auto', 'always' or 'never', got {o.reorder!r}")
    for name in ("block_items", "sample_items"):
        if getattr(o, name) < 16:
            raise InputError(f"{name} must be at least 16, got {getattr(o, name)}")
    if o.reorder == "always" and ts.kind == "zarr":  # the space of the rewrite, before any work
        from mlr_dask.fit.reorder import check_scratch_space, scratch_bytes, scratch_location

        check_scratch_space(scratch_location(ts.src.path, o.scratch), scratch_bytes(ts.array))
    res = LearnResult()

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        t0, p0 = time.perf_counter(), ts.passes
        out = fn()
        res.seconds[name] = time.perf_counter() - t0
        res.passes[name] = ts.passes - p0
        return out

    start, res.start = stage("pick_start", lambda: pick_start(ts, rank, n_levels, o, client,
                                                              report))
    caps0 = _short_caps(m, n, n_levels) if n_levels > 1 else [min(m, n)]
    rk0 = start_ranks(start, rank, n_levels, caps0)
    lv = stage("top_splits", lambda: top_splits(ts, n_levels, rk0, o, chunk_items, report))
    rows_s, cols_s = stage("blocks", lambda: split_below(ts, lv, n_levels, rk0, o, report))
    ts.model = []
    rows = rows_s.with_perm(ts.sr[rows_s.perm])
    cols = cols_s.with_perm(ts.sc[cols_s.perm])
    caps = rank_caps(rows.boundaries, cols.boundaries)
    if start == "bottom" and n_levels > 1:  # grow from the atoms on the whole matrix
        grow_from = [0] * (n_levels - 1) + [1]
        ranks = [rank] + [0] * (n_levels - 1)
    else:
        grow_from = None
        ranks = initial_ranks(rank, caps, n_levels > 1)
    if chunk_items is None:  # a task of the fit holds a chunk or two: no larger than a block
        chunk_items = min(4096, o.block_items)
    with contextlib.ExitStack() as scratch:
        src, info = stage("reorder", lambda: _reorder(ts, rows_s, cols_s, rows, cols,
                                                      chunk_items, o, scratch, report))
        t0 = time.perf_counter()
        M = fit_mlr_dask(src, rows, cols, ranks, psd=o.psd, max_iter=max_iter,
                         tol=tol, client=client, chunk_items=chunk_items, q=o.q, seed=o.seed,
                         engine="numpy" if ts.kind == "numpy" else "dask",
                         grow_from=grow_from, exchange=n_levels > 1,
                         exchange_steps=o.exchange_steps, grow_per_step=o.grow_per_step,
                         method="bcd" if o.psd else o.method, progress=progress)
        res.seconds["fit"] = time.perf_counter() - t0
        res.passes["fit"] = float(M.history_["passes_over_A"])
    M.history_["reorder"] = info
    M.history_["seconds"] = {**res.seconds, "total": sum(res.seconds.values())}
    M.history_["passes"] = {k: round(v, 3) for k, v in res.passes.items()}
    M.history_["passes_over_A"] = round(sum(res.passes.values()), 3)
    M.history_["start"] = res.start
    M.history_["init"] = start
    M.history_["learned"] = "dask"
    return M
