"""The Dask path: fit the factors of an MLR matrix whose dense matrix lives in zarr (or any
Dask array, or a matvec-only operator) with a fixed hierarchy, without loading it.

Layout: the rows and columns are split into chunks made of whole blocks of the *chunk level*
``c`` (the coarsest level whose blocks all fit in ``chunk_items``); chunks never cross a block
boundary of level ``c - 1``, so every chunk lies inside one block of each coarse level (when
even the finest blocks exceed ``chunk_items``, ``c = L`` and the finest blocks are cut).

- Fine levels ``c .. L-1`` live inside the diagonal chunks: one task per diagonal chunk reads its
  chunk of A, subtracts the coarse levels (low rank there) and runs the BCD sweep of the fine
  levels on that chunk (plain numpy / numba code, :mod:`mlr_dask.fit.bcd`).
- Coarse levels ``0 .. c-1`` are fitted by randomized SVDs of their blocks through products
  ``A_t X_t`` and ``A_t^T Y_t`` with the diagonal blocks ``A_t`` of the level only (a level
  with ``p`` blocks reads ``1/p`` of A), minus the other levels applied in factored form. A
  level fit takes ``2 (q + 1)`` such products (first fit, ``q`` power iterations) or two
  (warm started: the old factors and the next ``GAIN_DEPTH`` singular vectors of each block
  from the last fit join the test matrix and the range, which keeps the fit monotone and
  makes the predicted gains of the next ranks converge over the epochs, as in memory). The
  fine-level tasks get and return their blocks' next singular vectors too.
- The loss (and, on the first pass, ``||A||_F^2``) is computed once per epoch by one pass over
  the chunks of A.

``history_["passes_over_A"]`` counts the chunks read, in units of the whole matrix.

Engines: the numpy engine runs the tasks in-process on a matrix in memory (the reference); the
Dask engine runs the same tasks on a Dask array, one task per chunk (the chunk a dependency),
partial sums reduced by a tree; the zarr engine (a :class:`~mlr_dask.fit.store.MatrixStore`)
lets each task read its chunks itself, one at a time, a whole chunk row (column) of a block
per product or loss task, each stored chunk decoded once per task even when the stored chunks
do not line up with the layout's. No chunk is ever kept in a worker for another task, and
the results are small (products ``chunk x w``, factors): nothing is worth spilling. A pass
over a store costs its decoding (zstd and copies, a few hundred MB/s per core), which is what
makes the out-of-core fit slower than the same tasks in memory.

Memory per task: one or two chunks (``chunk_items^2`` numbers each) plus a stored chunk being
decoded; on the driver: the factors (``(m + n) r``) and the products (``m x w`` per level).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fit.bcd import GAIN_DEPTH, add_lowrank, epoch_order, init_state, sweep
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.kernels import block_matmat
from mlr_dask.mlr import MLRMatrix

__all__ = ["chunk_layout", "fit_mlr_dask", "fit_mlr_operator", "fit_products"]

#: Random test vectors of a product-level fit beyond the ranks and the GAIN_DEPTH tail
#: vectors kept (as the in-memory randomized level fits).
OVERSAMPLE = 10


def chunk_layout(rows: Hierarchy, cols: Hierarchy, chunk_items: int) -> tuple[int, np.ndarray,
                                                                               np.ndarray]:
    """``(c, row_chunks, col_chunks)``: the chunk level and the chunk boundaries (K + 1,).

    Row chunk ``k`` and column chunk ``k`` lie in the same block of every level ``< c``. When
    even the finest blocks are larger than ``chunk_items`` (``c = L``: all levels are coarse),
    each finest block is cut into equal pieces along both axes (the same number of pieces, at
    most its smaller side), so that no task reads more than about a chunk at a time."""
    L = rows.n_levels
    c = L
    for lvl in range(L):
        if max(rows.block_sizes(lvl).max(), cols.block_sizes(lvl).max()) <= chunk_items:
            c = lvl
            break
    if c == L:
        rb, cb = rows.boundaries[-1], cols.boundaries[-1]
        r_cuts, c_cuts = [np.zeros(1, dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
        for k in range(rb.size - 1):
            a, b = int(rb[k + 1] - rb[k]), int(cb[k + 1] - cb[k])
            s = max(1, min(-(-max(a, b) // chunk_items), a, b))
            steps = np.arange(1, s + 1, dtype=np.int64)
            r_cuts.append(rb[k] + steps * a // s)
            c_cuts.append(cb[k] + steps * b // s)
        return L, np.concatenate(r_cuts), np.concatenate(c_cuts)
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


class ZarrChunk:
    """One chunk of a zarr array, read inside the task that needs it (so no task holds a chunk
    for another one). ``rows`` / ``cols``: a ``slice`` or the stored indices in hierarchy order.
    Small to pickle: the zarr array object and two slices (or index arrays)."""

    __slots__ = ("array", "cols", "rows")

    def __init__(self, array: Any, rows: slice | np.ndarray, cols: slice | np.ndarray) -> None:
        self.array, self.rows, self.cols = array, rows, cols

    def __getstate__(self) -> tuple[Any, Any, Any]:
        return self.array, self.rows, self.cols

    def __setstate__(self, state: tuple[Any, Any, Any]) -> None:
        self.array, self.rows, self.cols = state

    def read(self) -> np.ndarray:
        """The chunk (rows, cols) as a new float64 array."""
        if isinstance(self.rows, slice) and isinstance(self.cols, slice):
            A = self.array[self.rows, self.cols]
        else:
            A = self.array.oindex[self.rows, self.cols]
        return np.asarray(A, dtype=np.float64)


def _chunk_array(src: Any, writable: bool) -> np.ndarray:
    """The chunk behind ``src`` (a :class:`ZarrChunk` or an array); a private copy when
    ``writable`` and ``src`` may be shared."""
    if isinstance(src, ZarrChunk):
        return src.read()  # a fresh array: ours to modify
    if writable:
        return np.array(src, dtype=np.float64, order="C")
    return np.asarray(src, dtype=np.float64)


class ZarrStrip:
    """Consecutive chunks of one strip of a zarr array (same rows, consecutive column ranges
    for ``axis=0``; same columns, consecutive row ranges for ``axis=1``), read window by window
    along the strip so that each stored chunk is decoded once even when the layout's chunks do
    not line up with the stored ones. Holds one stored window and one chunk at a time."""

    __slots__ = ("array", "axis", "own", "spans")

    def __init__(self, array: Any, own: slice | np.ndarray, spans: list[tuple[int, int]],
                 axis: int) -> None:
        self.array, self.own, self.spans, self.axis = array, own, spans, axis

    def __getstate__(self) -> tuple[Any, Any, Any, Any]:
        return self.array, self.own, self.spans, self.axis

    def __setstate__(self, state: tuple[Any, Any, Any, Any]) -> None:
        self.array, self.own, self.spans, self.axis = state

    def _read(self, lo: int, hi: int) -> np.ndarray:
        sel = (self.own, slice(lo, hi)) if self.axis == 0 else (slice(lo, hi), self.own)
        if isinstance(self.own, slice):
            A = self.array[sel]
        else:
            A = self.array.oindex[sel]
        A = np.asarray(A, dtype=np.float64)
        return A if self.axis == 0 else A.T  # the strip axis first: (own, window)

    def chunks(self) -> Any:
        """The chunks in order, each a new float64 array."""
        step = int(self.array.chunks[1 - self.axis])
        size = int(self.array.shape[1 - self.axis])
        win, wlo, whi = None, 0, 0
        for a, b in self.spans:
            if win is None or not (wlo <= a < whi):
                win = None
                wlo = (a // step) * step
                whi = min(wlo + step, size)
                if wlo == a and whi <= b:  # stored windows inside the span: read them at once
                    whi = min(b - (b - a) % step if b < size else b, size)
                win = self._read(wlo, whi)
            if (a, b) == (wlo, whi):
                out, win = win, None
            else:
                out = np.empty((win.shape[0], b - a))
                pos = a
                while pos < b:
                    if win is None or not (wlo <= pos < whi):
                        wlo = (pos // step) * step
                        whi = min(wlo + step, size)
                        win = self._read(wlo, whi)
                    take = min(b, whi) - pos
                    out[:, pos - a:pos - a + take] = win[:, pos - wlo:pos - wlo + take]
                    pos += take
            yield np.ascontiguousarray(out if self.axis == 0 else out.T)
            del out


def _mm_kernel(A: np.ndarray, X: np.ndarray) -> np.ndarray:
    return A @ X


def _rmm_kernel(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return A.T @ Y


def _loss_kernel(A: np.ndarray, Bi: np.ndarray, Cj: np.ndarray, shared: np.ndarray,
                 fine: Any) -> np.ndarray:
    """``[||A||^2, ||A - model||^2]`` on one chunk (``A`` is modified)."""
    v = A.reshape(-1)
    a2 = float(v @ v)
    return np.array([a2, loss_task(A, Bi[:, shared], Cj[:, shared], fine, copy=False)])


_KERNELS: dict[str, tuple[Callable[..., Any], bool]] = {
    "mm": (_mm_kernel, False), "rmm": (_rmm_kernel, False), "loss": (_loss_kernel, True)}


def row_task(kind: str, srcs: list[Any], args: list[tuple[Any, ...]]) -> Any:
    """``sum_k kernel(chunk_k, *args_k)`` over a list of chunks, read one at a time (at most one
    chunk and its partial result in memory). ``kind``: ``"mm"`` (``A X``), ``"rmm"``
    (``A^T Y``) or ``"loss"``."""
    kernel, writable = _KERNELS[kind]
    chunks = (srcs.chunks() if isinstance(srcs, ZarrStrip)
              else (_chunk_array(src, writable) for src in srcs))
    acc = None
    for A, a in zip(chunks, args, strict=True):
        part = kernel(A, *a)
        del A
        acc = part if acc is None else acc + part
    return acc


def _add(*parts: Any) -> Any:
    acc = parts[0]
    for p in parts[1:]:
        acc = acc + p
    return acc


def fine_task(
    Aii: Any,
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
    tB: list[np.ndarray] | None = None,
    tC: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Sweep the fine levels on one diagonal chunk ``Aii`` (a, b) (an array or a
    :class:`ZarrChunk`): the coarse levels contribute ``Bc Cc^T`` there. ``tB`` / ``tC``: the
    tail singular vectors of the last fit per level ((a, GAIN_DEPTH), (b, GAIN_DEPTH); the warm
    start of the randomized block fits, :mod:`mlr_dask.fit.bcd`). Returns the new fine factors
    and side outputs (small: (a + b) (r + GAIN_DEPTH) numbers)."""
    R = _chunk_array(Aii, True)
    add_lowrank(R, Bc, Cc, -1.0)
    st = init_state(R, rb, cb, ranks, psd=psd, B=Bf, C=None if psd else Cf, exact_max=exact_max,
                    seed=seed, copy=False)
    del R
    if tB is not None:
        st.tail_B = [np.array(x, dtype=np.float64) for x in tB]
        st.tail_C = st.tail_B if psd else [np.array(x, dtype=np.float64) for x in tC]
    sweep(st, levels)
    return {"B": st.B, "C": st.B if psd else st.C, "dp": st.delta_plus, "dm": st.delta_minus,
            "nB": st.next_B, "nC": st.next_B if psd else st.next_C, "g": st.gains,
            "tB": st.tail_B, "tC": st.tail_B if psd else st.tail_C}


def loss_task(Aij: np.ndarray, Bij: np.ndarray, Cij: np.ndarray,
              fine: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray],
                          list[np.ndarray]] | None, copy: bool = True) -> float:
    """``||A_ij - model_ij||_F^2`` on one chunk (a, b): ``Bij Cij^T`` holds the coarse levels
    shared by the two chunks; ``fine = (B, C, rb, cb)`` the fine levels (diagonal chunks only).
    ``copy=False`` subtracts in place."""
    R = np.array(Aij, dtype=np.float64) if copy else Aij
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
class _OperatorEngine:
    """Products of a matvec-only LinearOperator (original order) in hierarchy order."""

    def __init__(self, op: Any, rows: Hierarchy, cols: Hierarchy) -> None:
        self.op, self.rows, self.cols = op, rows, cols
        self.shape = tuple(op.shape)
        self.passes = 0.0

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

    def block_products(self, rb: np.ndarray, cb: np.ndarray, parts: list[np.ndarray],
                       transpose: bool) -> list[np.ndarray]:
        """``[A_t X_t]`` (or ``A_t^T X_t``) for the diagonal blocks ``A_t`` of one level: one
        product with the block-column matrix, diagonal blocks kept."""
        outer, inner = (cb, rb) if transpose else (rb, cb)
        width = max(P.shape[1] for P in parts)
        X = _blockcols(parts, inner, width, int(inner[-1]))
        Y = self.rmatmat(X) if transpose else self.matmat(X)
        return [Y[outer[t]:outer[t + 1], t * width:t * width + P.shape[1]]
                for t, P in enumerate(parts)]


class _NumpyEngine:
    """The chunked algorithm on a dense matrix in memory (hierarchy order): the reference for
    the Dask engines, running the same tasks (chunk by chunk, in the same order) in-process."""

    def __init__(self, Ah: np.ndarray, rch: np.ndarray, cch: np.ndarray) -> None:
        self.A = Ah
        self.rch, self.cch = rch, cch
        self.shape = tuple(Ah.shape)
        self.passes = 0.0

    # -- overridden by the Dask engines
    def chunk(self, i: int, j: int) -> Any:
        """Chunk ``(i, j)`` as a task argument."""
        return self.A[self.rch[i]:self.rch[i + 1], self.cch[j]:self.cch[j + 1]]

    def const(self, x: Any) -> Any:
        """A small array shared by several tasks."""
        return x

    def rows(self, kind: str, jobs: list[tuple[list[Any], list[tuple[Any, ...]]]]) -> list[Any]:
        """``[row_task(kind, srcs, args) for srcs, args in jobs]``."""
        return [row_task(kind, srcs, args) for srcs, args in jobs]

    def run(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        return [f(*args) for f, args in calls]

    # -- shared
    def count(self, i: np.ndarray | int, j: np.ndarray | int) -> None:
        """Count the chunks read as a fraction of a pass over A."""
        a = np.sum(np.diff(self.rch)[i]) if np.ndim(i) else self.rch[i + 1] - self.rch[i]
        b = np.sum(np.diff(self.cch)[j]) if np.ndim(j) else self.cch[j + 1] - self.cch[j]
        self.passes += float(a) * float(b) / (float(self.shape[0]) * float(self.shape[1]))

    def block_products(self, rb: np.ndarray, cb: np.ndarray, parts: list[np.ndarray],
                       transpose: bool) -> list[np.ndarray]:
        """``[A_t X_t]`` (or ``A_t^T X_t``) for the diagonal blocks ``A_t`` of one level
        (block ``t``: rows ``rb[t]:rb[t+1]``, columns ``cb[t]:cb[t+1]``; ``X_t`` has that many
        columns (rows) and ``w`` columns). Only those blocks of A are read; a level with ``p``
        blocks reads about ``1/p`` of A. One task per chunk row (column) of each block."""
        own, other = (self.cch, self.rch) if transpose else (self.rch, self.cch)
        ob, ib = (cb, rb) if transpose else (rb, cb)
        jobs, index = [], []
        for t, P in enumerate(parts):
            io = np.arange(np.searchsorted(own, ob[t]), np.searchsorted(own, ob[t + 1]))
            ii = np.arange(np.searchsorted(other, ib[t]), np.searchsorted(other, ib[t + 1]))
            pieces = [self.const(np.ascontiguousarray(P[other[j] - ib[t]:other[j + 1] - ib[t]]))
                      for j in ii]
            for i in io:
                srcs = [self.chunk(j, i) if transpose else self.chunk(i, j) for j in ii]
                jobs.append((srcs, [(x,) for x in pieces]))
                index.append(t)
            if transpose:
                self.count(ii, io)
            else:
                self.count(io, ii)
        res = self.rows("rmm" if transpose else "mm", jobs)
        out: list[list[np.ndarray]] = [[] for _ in parts]
        for t, r in zip(index, res, strict=True):
            out[t].append(r)
        return [np.vstack(o) for o in out]


class _DaskEngine(_NumpyEngine):
    """The same tasks on a Dask array (hierarchy order), chunked along the layout's chunks. A
    chunk is a dependency of the task that uses it; products and the loss are per-chunk tasks
    summed by a tree, so a task holds one chunk."""

    def __init__(self, Ad: Any, rch: np.ndarray, cch: np.ndarray) -> None:
        self.A = Ad.rechunk((tuple(np.diff(rch).tolist()), tuple(np.diff(cch).tolist())))
        self.rch, self.cch = rch, cch
        self.shape = tuple(Ad.shape)
        self.passes = 0.0

    def chunk(self, i: int, j: int) -> Any:
        return self.A.blocks[i, j]

    def const(self, x: Any) -> Any:
        import dask

        return dask.delayed(x, pure=True)

    def rows(self, kind: str, jobs: list[tuple[list[Any], list[tuple[Any, ...]]]]) -> list[Any]:
        import dask

        task = dask.delayed(row_task, pure=False)
        add = dask.delayed(_add, pure=False)
        out = []
        for srcs, args in jobs:
            parts = [task(kind, [s], [a]) for s, a in zip(srcs, args, strict=True)]
            while len(parts) > 1:
                parts = [add(*parts[k:k + 4]) if k + 1 < len(parts) else parts[k]
                         for k in range(0, len(parts), 4)]
            out.append(parts[0])
        return list(dask.compute(*out))

    def run(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        import dask

        tasks = [dask.delayed(f, pure=False)(*args) for f, args in calls]
        return list(dask.compute(*tasks))


class _ZarrEngine(_DaskEngine):
    """The same tasks on a zarr array: each task reads its chunks itself, one at a time, and a
    product or loss task covers a whole chunk row (column) of a block: no chunk is ever held for
    another task and no partial sums travel. ``ir`` / ``ic``: stored row / column of each
    hierarchy position."""

    def __init__(self, array: Any, ir: np.ndarray, ic: np.ndarray, rch: np.ndarray,
                 cch: np.ndarray) -> None:
        self.array = array
        self.ir, self.ic = ir, ic
        self.rch, self.cch = rch, cch
        self.shape = (ir.size, ic.size)
        self.passes = 0.0

    @staticmethod
    def _sel(idx: np.ndarray, a: int, b: int) -> slice | np.ndarray:
        part = idx[a:b]
        if part.size and np.array_equal(part, np.arange(part[0], part[0] + part.size)):
            return slice(int(part[0]), int(part[0]) + part.size)
        return part.copy()

    def chunk(self, i: int, j: int) -> Any:
        return ZarrChunk(self.array, self._sel(self.ir, int(self.rch[i]), int(self.rch[i + 1])),
                         self._sel(self.ic, int(self.cch[j]), int(self.cch[j + 1])))

    def _strip(self, srcs: list[ZarrChunk]) -> ZarrStrip | list[ZarrChunk]:
        """The chunks of a job as one strip when they share their rows (columns) and their
        columns (rows) are consecutive stored ranges."""
        for axis, own, other in ((0, "rows", "cols"), (1, "cols", "rows")):
            o = [getattr(x, own) for x in srcs]
            t = [getattr(x, other) for x in srcs]
            same = all(isinstance(v, slice) and v == o[0] for v in o) or all(
                isinstance(v, np.ndarray) and np.array_equal(v, o[0]) for v in o)
            if same and all(isinstance(v, slice) for v in t) and all(
                    u.stop == v.start for u, v in zip(t[:-1], t[1:], strict=True)):
                return ZarrStrip(self.array, o[0], [(v.start, v.stop) for v in t], axis)
        return srcs

    def rows(self, kind: str, jobs: list[tuple[list[Any], list[tuple[Any, ...]]]]) -> list[Any]:
        import dask

        task = dask.delayed(row_task, pure=False)
        return list(dask.compute(*[task(kind, self._strip(srcs), args) for srcs, args in jobs]))


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
        # per level: the unit singular vectors r+1 .. r+GAIN_DEPTH of every block from the last
        # fit (warm starts of the next one) and their squared singular values summed over the
        # blocks (the predicted gains of the next ranks)
        self.tB = [np.zeros((m, GAIN_DEPTH)) for _ in range(L)]
        self.tC = self.tB if psd else [np.zeros((n, GAIN_DEPTH)) for _ in range(L)]
        self.gains = np.zeros((L, GAIN_DEPTH))

    def save(self) -> tuple[Any, ...]:
        """A copy of the factors, ranks and side outputs (:meth:`restore`)."""
        cp = [b.copy() for b in self.B], None if self.psd else [c.copy() for c in self.C]
        tails = [b.copy() for b in self.tB], None if self.psd else [c.copy() for c in self.tC]
        return (*cp, list(self.ranks), self.dp.copy(), self.dm.copy(), *tails,
                self.gains.copy())

    def restore(self, saved: tuple[Any, ...]) -> None:
        """Back to a state from :meth:`save`."""
        self.B, C, self.ranks, self.dp, self.dm, self.tB, tC, self.gains = saved
        self.C = self.B if self.psd else C
        self.tC = self.tB if self.psd else tC

    def add_next(self, lvl: int, warm: bool = True) -> None:
        """One more rank on level ``lvl``, started at the stored next singular pair of its
        blocks (as the in-memory growth does) when ``warm``, else at zero (for the level's next
        fit to find)."""
        nb = self.nB[lvl] if warm else np.zeros_like(self.nB[lvl])
        self.B[lvl] = np.hstack([self.B[lvl], nb[:, None]])
        if not self.psd:
            nc = self.nC[lvl] if warm else np.zeros_like(self.nC[lvl])
            self.C[lvl] = np.hstack([self.C[lvl], nc[:, None]])
        else:
            self.C = self.B
        self.ranks[lvl] += 1

    def resize(self, ranks: Sequence[int]) -> None:
        """Set the ranks per level: factor columns kept, cut, or zero padded."""
        for lvl, r in enumerate(ranks):
            r = int(r)
            self.B[lvl] = _fit_columns(self.B[lvl], r)
            if not self.psd:
                self.C[lvl] = _fit_columns(self.C[lvl], r)
        if self.psd:
            self.C = self.B
        self.ranks = [int(r) for r in ranks]

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


def _fit_columns(F: np.ndarray, r: int) -> np.ndarray:
    if F.shape[1] >= r:
        return np.ascontiguousarray(F[:, :r])
    return np.pad(F, ((0, 0), (0, r - F.shape[1])))


def _orth(Y: np.ndarray) -> np.ndarray:
    return np.linalg.qr(Y)[0]


def _blockcols(parts: list[np.ndarray], bounds: np.ndarray, width: int, n: int) -> np.ndarray:
    X = np.zeros((n, len(parts) * width))
    for k, P in enumerate(parts):
        X[bounds[k]:bounds[k + 1], k * width:k * width + P.shape[1]] = P
    return X


def _pad(Y: np.ndarray, width: int) -> np.ndarray:
    return Y if Y.shape[1] == width else np.pad(Y, ((0, 0), (0, width - Y.shape[1])))


def _product_level(eng: Any, F: _Factors, lvl: int, q: int, rng: np.random.Generator) -> None:
    """Refit level ``lvl`` by blockwise randomized SVDs through products with A, as the
    in-memory randomized level fit (:func:`mlr_dask.fit.bcd.fit_level`): the first fit with
    ``q`` power iterations, later ones warm started (the factors and the tail vectors ``F.tB``
    / ``F.tC`` join the test matrix and the range, ``OVERSAMPLE`` random vectors more: one
    product each way, and the fit is monotone). Updates the factors, the next pairs, the tail
    vectors and the predicted gains of the level. Cost: ``2 (q + 1)`` (first fit) or 2 block
    products over the level's diagonal blocks with ``r + GAIN_DEPTH + OVERSAMPLE`` vectors."""
    rb, cb, r = F.rb[lvl], F.cb[lvl], F.ranks[lvl]
    p = rb.size - 1
    m, n = rb[-1], cb[-1]
    k = r + GAIN_DEPTH
    small = int(min(np.diff(rb).min(), np.diff(cb).min()))
    tail = bool(np.any(F.tB[lvl]))
    warm = (r > 0 and bool(np.any(F.B[lvl]))) or tail
    # warm-start columns: the factors (when warm) and the tail vectors (when there are some)
    init_r = [np.hstack(([F.B[lvl][rb[t]:rb[t + 1]]] if warm and r else [])
                        + ([F.tB[lvl][rb[t]:rb[t + 1]]] if tail else [])
                        or [np.zeros((rb[t + 1] - rb[t], 0))]) for t in range(p)]
    init_c = [np.hstack(([F.C[lvl][cb[t]:cb[t + 1]]] if warm and r else [])
                        + ([F.tC[lvl][cb[t]:cb[t + 1]]] if tail else [])
                        or [np.zeros((cb[t + 1] - cb[t], 0))]) for t in range(p)]
    j = init_c[0].shape[1]
    g = max(1, min(k + OVERSAMPLE, small) - j)
    W = j + g
    Om = [np.hstack([init_c[t], rng.standard_normal((cb[t + 1] - cb[t], g))]) for t in range(p)]

    def R_times(parts: list[np.ndarray], width: int) -> list[np.ndarray]:
        Y = eng.block_products(rb, cb, parts, transpose=False)
        M = F.apply(_blockcols(parts, cb, width, n), lvl, transpose=False)
        return [_pad(Y[t], width) - M[rb[t]:rb[t + 1], t * width:(t + 1) * width]
                for t in range(p)]

    def RT_times(parts: list[np.ndarray], width: int) -> list[np.ndarray]:
        Z = eng.block_products(rb, cb, parts, transpose=True)
        M = F.apply(_blockcols(parts, rb, width, m), lvl, transpose=True)
        return [_pad(Z[t], width) - M[cb[t]:cb[t + 1], t * width:(t + 1) * width]
                for t in range(p)]

    Y = R_times(Om, W)
    for _ in range(0 if warm else (min(q, 1) if r == 0 else q)):  # r = 0: gains only
        Q = [_orth(y) for y in Y]
        Z = [_orth(z) for z in RT_times(Q, W)]
        Y = R_times(Z, W)
    Q = [_orth(np.hstack([init_r[t], Y[t]]) if j else Y[t]) for t in range(p)]
    W2 = W + j
    Q = [np.pad(qq, ((0, 0), (0, W2 - qq.shape[1]))) for qq in Q]
    gains = np.zeros(GAIN_DEPTH)
    dm = 0.0
    if F.psd:
        S = R_times(Q, W2)  # R_k Q_k
        for t in range(p):
            T = Q[t].T @ S[t]
            lam, V = np.linalg.eigh(0.5 * (T + T.T))
            lam, V = np.maximum(lam[::-1], 0.0), Q[t] @ V[:, ::-1]
            lam = np.pad(lam, (0, max(0, k - lam.size)))[:k]
            V = np.pad(V, ((0, 0), (0, max(0, k - V.shape[1]))))[:, :k]
            F.B[lvl][rb[t]:rb[t + 1]] = V[:, :r] * np.sqrt(lam[:r])
            F.nB[lvl][rb[t]:rb[t + 1]] = V[:, r] * np.sqrt(lam[r])
            F.tB[lvl][rb[t]:rb[t + 1]] = V[:, r:]
            gains += lam[r:] ** 2
            dm += lam[r - 1] ** 2 if r else 0.0
    else:
        S = RT_times(Q, W2)  # R_k^T Q_k
        for t in range(p):
            Us, s, Vt = np.linalg.svd(S[t].T, full_matrices=False)
            U = Q[t] @ Us
            s = np.pad(s, (0, max(0, k - s.size)))[:k]
            U = np.pad(U, ((0, 0), (0, max(0, k - U.shape[1]))))[:, :k]
            V = np.pad(Vt.T, ((0, 0), (0, max(0, k - Vt.shape[0]))))[:, :k]
            sq = np.sqrt(s)
            F.B[lvl][rb[t]:rb[t + 1]] = U[:, :r] * sq[:r]
            F.C[lvl][cb[t]:cb[t + 1]] = V[:, :r] * sq[:r]
            F.nB[lvl][rb[t]:rb[t + 1]] = U[:, r] * sq[r]
            F.nC[lvl][cb[t]:cb[t + 1]] = V[:, r] * sq[r]
            F.tB[lvl][rb[t]:rb[t + 1]] = U[:, r:]
            F.tC[lvl][cb[t]:cb[t + 1]] = V[:, r:]
            gains += s[r:] ** 2
            dm += s[r - 1] ** 2 if r else 0.0
    F.gains[lvl] = gains
    F.dp[lvl] = gains[0]
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
        tB = [F.tB[lvl][r0:r1] for lvl in fine]
        tC = None if F.psd else [F.tC[lvl][c0:c1] for lvl in fine]
        loc = [lvl - c for lvl in levels]
        eng.count(i, i)
        calls.append((fine_task, (eng.chunk(i, i), Bc, Cc, rb, cb,
                                  [F.ranks[lvl] for lvl in fine], Bf, Cf, F.psd, loc, exact_max,
                                  seed + i, tB, tC)))
    results = eng.run(calls)
    swept = sorted(set(levels))
    for lvl in swept:
        F.dp[lvl] = 0.0
        F.dm[lvl] = 0.0
        F.gains[lvl] = 0.0
    for i, res in enumerate(results):
        r0, r1, c0, c1 = int(rch[i]), int(rch[i + 1]), int(cch[i]), int(cch[i + 1])
        for lvl in swept:
            t = lvl - c
            F.B[lvl][r0:r1] = res["B"][t]
            F.nB[lvl][r0:r1] = res["nB"][t]
            F.tB[lvl][r0:r1] = res["tB"][t]
            if not F.psd:
                F.C[lvl][c0:c1] = res["C"][t]
                F.nC[lvl][c0:c1] = res["nC"][t]
                F.tC[lvl][c0:c1] = res["tC"][t]
            F.dp[lvl] += res["dp"][t]
            F.dm[lvl] += res["dm"][t]
            F.gains[lvl] += res["g"][t]


def _loss(eng: Any, F: _Factors, c: int, rch: np.ndarray, cch: np.ndarray) -> tuple[float,
                                                                                    float]:
    """``(||A||_F^2, ||A - model||_F^2)`` by one pass over the chunks, one task per chunk row:
    row chunk ``i`` carries the coarse ``B`` rows, column chunk ``j`` the coarse ``C`` rows,
    and a mask selects the levels whose block holds both chunks."""
    L = len(F.ranks)
    K = rch.size - 1
    anc = [np.searchsorted(F.rb[lvl], rch[:-1], side="right") - 1 for lvl in range(c)]
    cols = [np.full(F.ranks[lvl], lvl) for lvl in range(c)]
    col_level = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    Cs = [eng.const(np.hstack([F.C[lvl][cch[j]:cch[j + 1]] for lvl in range(c)]
                              or [np.zeros((cch[j + 1] - cch[j], 0))])) for j in range(K)]
    jobs = []
    for i in range(K):
        r0, r1 = int(rch[i]), int(rch[i + 1])
        Bi = eng.const(np.hstack([F.B[lvl][r0:r1] for lvl in range(c)]
                                 or [np.zeros((r1 - r0, 0))]))
        args = []
        for j in range(K):
            c0, c1 = int(cch[j]), int(cch[j + 1])
            shared = np.array([anc[lvl][i] == anc[lvl][j] for lvl in range(c)], dtype=bool)
            mask = shared[col_level] if c else np.zeros(0, dtype=bool)
            fine = None
            if i == j and c < L:
                fine = ([F.B[lvl][r0:r1] for lvl in range(c, L)],
                        [F.C[lvl][c0:c1] for lvl in range(c, L)],
                        _local_bounds(F.rb[c:], r0, r1), _local_bounds(F.cb[c:], c0, c1))
            args.append((Bi, Cs[j], mask, fine))
        jobs.append(([eng.chunk(i, j) for j in range(K)], args))
    eng.count(np.arange(K), np.arange(K))
    a2, r2 = np.sum(eng.rows("loss", jobs), axis=0)
    return float(a2), float(r2)


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
    grow_from: Sequence[int] | None = None,
    exchange: bool = False,
    exchange_steps: int = 8,
    grow_per_step: int = 1,
    method: str = "bcd",
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> MLRMatrix:
    """BCD with levels ``< c`` fitted through products of ``eng`` and levels ``>= c`` inside the
    diagonal chunks ``rch``/``cch``; see the module docstring. ``grow_from``: start at these
    ranks and grow to the total of ``ranks``, one rank per epoch on each of the
    ``grow_per_step`` levels of largest predicted gain (the next singular values of their
    blocks, from that epoch), a new rank started at the stored next singular pair of its
    blocks when one level grows (as the in-memory growth does), at zero when several grow in
    the same step; ``ranks`` then gives the total
    only and the grown ranks are returned. This continuation from the finest levels ends far
    lower than BCD started at the final ranks on kernel matrices. Cost: one epoch (without
    the loss pass) per step. ``exchange``: then up to ``exchange_steps`` rank exchanges
    (:func:`_exchange`). ``method="als"``: the epochs after the exchange are ALS iterations
    (:mod:`mlr_dask.fit.als_dask`; not for the PSD model or an operator), which converge
    where BCD epochs creep."""
    t0 = time.perf_counter()
    F = _Factors(rows, cols, ranks if grow_from is None else grow_from, psd)
    L = len(F.ranks)
    rng = np.random.default_rng(seed)
    operator = rch is None
    norm2 = 0.0

    def loss() -> float:
        nonlocal norm2
        if operator:
            return _operator_loss(eng, F)
        a2, r2 = _loss(eng, F, c, rch, cch)
        norm2 = norm2 or a2  # ||A||^2 from the first loss pass: no pass of its own
        return r2

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
        for a in range(0, cols.n, 256):
            b = min(a + 256, cols.n)
            E = np.zeros((cols.n, b - a))
            E[np.arange(a, b), np.arange(b - a)] = 1.0
            norm2 += float(np.sum(eng.matmat(E) ** 2))
    moves: list[dict[str, Any]] = []
    if grow_from is not None:
        total = int(sum(int(r) for r in ranks))
        caps = [int(min(np.diff(F.rb[lvl]).min(), np.diff(F.cb[lvl]).min())) for lvl in range(L)]
        epoch(list(range(L)))
        while sum(F.ranks) < total:
            cand = [lvl for lvl in range(L) if F.ranks[lvl] < caps[lvl]]
            if not cand:
                raise InputError(f"rank {total} exceeds the capacity {sum(caps)} of the levels")
            dst = sorted(cand, key=lambda x: -F.dp[x])[:min(grow_per_step,
                                                            total - sum(F.ranks))]
            # several levels grown at once start at zero: their stored next pairs were taken
            # from residuals that overlap (each still holds what the others' pairs explain),
            # and a short fit does not untangle them
            for x in dst:
                F.add_next(x, warm=len(dst) == 1)
            epoch(epoch_order(L))
            moves.append({"step": len(moves) + 1, "src": None, "dst": [int(x) for x in dst],
                          "ranks": list(F.ranks)})
            if progress:
                progress("rank_move", {"step": len(moves), "total": total - sum(grow_from),
                                       "ranks": list(F.ranks)})
    epoch(list(range(L)))
    cur = loss()
    hist = [float(np.sqrt(cur / norm2))]
    if progress:
        progress("epoch", {"epoch": 0, "rel_error": hist[-1]})
    if exchange and exchange_steps:
        cur = _exchange(F, epoch, loss, cur, L, exchange_steps, moves, progress)
        hist[-1] = float(np.sqrt(cur / norm2))
    als = method == "als" and not psd and not operator
    if als:  # see mlr_dask.fit.als_dask
        from mlr_dask.fit.als_dask import run_als_dask
        from mlr_dask.fit.pipeline import ALS_TOL_FACTOR  # the in-memory final fit's stop

        hist += run_als_dask(eng, F, c, rch, cch, loss, cur, norm2, max_iter=max_iter,
                             tol=tol * ALS_TOL_FACTOR, progress=progress)
    else:
        for it in range(1, max_iter + 1):
            epoch(epoch_order(L))  # the full order: see epoch_levels
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
    M.history_ = {"rel_error": hist, "ranks": list(F.ranks), "rank_moves": moves,
                  "passes_over_A": round(float(eng.passes), 6), "chunk_level": c,
                  "n_chunks": 0 if operator else int(rch.size - 1),
                  "method": "als" if als else "bcd", "seconds": {"fit": time.perf_counter() - t0}}
    return M


def _exchange(F: _Factors, epoch: Callable[[list[int]], None], loss: Callable[[], float],
              cur: float, L: int, steps: int, moves: list[dict[str, Any]],
              progress: Callable[[str, dict[str, Any]], None] | None, eps: float = 1e-3,
              n_trials: int = 2) -> float:
    """Rank exchanges with trials: the moves of one rank from a level ``src`` to a level
    ``dst`` are ranked by the predicted change ``dp[dst] - dm[src]`` of the last epoch (the
    next singular values of ``dst``'s blocks against the last ones of ``src``'s) and the best
    ``n_trials`` are tried in turn, each with one epoch; the first that lowers the loss by
    ``eps`` of it is kept (the factors are restored otherwise), and the exchange stops when
    none does. Returns the loss. Cost per trial: one epoch and one loss pass."""
    caps = [int(min(np.diff(F.rb[lvl]).min(), np.diff(F.cb[lvl]).min())) for lvl in range(L)]
    for _ in range(steps):
        pairs = sorted(((F.dp[d] - F.dm[s], s, d) for s in range(L) for d in range(L)
                        if s != d and F.ranks[s] > 0 and F.ranks[d] < caps[d]
                        and np.isfinite(F.dm[s])), reverse=True)[:n_trials]
        accepted = False
        for _, src, dst in pairs:
            saved = F.save()
            rk = list(F.ranks)
            rk[src] -= 1
            F.resize(rk)
            F.add_next(dst)
            epoch(epoch_order(L))
            new = loss()
            if new <= (1.0 - eps) * cur:
                cur = new
                moves.append({"step": len(moves) + 1, "src": int(src), "dst": int(dst),
                              "ranks": list(F.ranks)})
                if progress:
                    progress("rank_move", {"step": len(moves), "ranks": list(F.ranks)})
                accepted = True
                break
            F.restore(saved)
        if not accepted:
            break
    return cur


def _source_in_hierarchy_order(src: Any, rows: Hierarchy, cols: Hierarchy) -> tuple[Any, Any]:
    """The matrix as a Dask array in hierarchy order, and for a store ``(zarr array, ir, ic)``
    (stored row / column of each hierarchy position) for tasks that read it themselves."""
    import dask.array as da

    from mlr_dask.fit.store import MatrixStore

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
    zarr_src = (src.array, ir, ic) if isinstance(src, MatrixStore) else None
    if not np.array_equal(ir, np.arange(ir.size)):
        arr = arr[ir]
    if not np.array_equal(ic, np.arange(ic.size)):
        arr = arr[:, ic]
    return arr.astype(np.float64), zarr_src


def _publishing(progress: Callable[[str, dict[str, Any]], None] | None
                ) -> Callable[[str, dict[str, Any]], None]:
    """A ``progress(stage, info)`` callback that also publishes every step as an event
    (:class:`mlr_dask.fit.options.Reporter`), so the driver and the monitor see the Dask path
    as they see the in-memory one."""
    from mlr_dask.fit.options import Reporter

    report = Reporter(progress)

    def cb(stage: str, info: dict[str, Any]) -> None:
        step = int(info.get("step", info.get("epoch", 0)))
        report(stage, step, info.get("total"),
               **{k: v for k, v in info.items() if k not in ("step", "total")})

    return cb


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
    grow_from: Sequence[int] | None = None,
    exchange: bool = False,
    exchange_steps: int = 8,
    grow_per_step: int = 1,
    method: str = "bcd",
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> MLRMatrix:
    """Fit the factors (fixed hierarchy and ranks) of a matrix given as a Dask array (original
    order) or a :class:`~mlr_dask.fit.store.MatrixStore`, chunk by chunk.

    ``chunk_items``: rows (and columns) per chunk, default 4096 (128 MiB of float64 per chunk).
    ``engine="numpy"`` runs the same algorithm on the matrix loaded in memory (reference).
    With a store, the tasks read their chunks from zarr themselves (see the module docstring).
    The result's ``history_`` holds the relative error per epoch and ``passes_over_A``.
    ``grow_from``, ``grow_per_step``, ``exchange``, ``exchange_steps``: grow the ranks from
    these first, exchange ranks between levels after the first epoch; ``method``: ``"bcd"``
    or ``"als"`` for the epochs after that (see :func:`fit_products`).
    """
    if method not in ("bcd", "als"):
        raise InputError(f"method must be 'bcd' or 'als', got {method!r}")
    chunk_items = 4096 if chunk_items is None else int(chunk_items)
    if chunk_items < 1:
        raise InputError("chunk_items must be positive")
    m, n = rows.n, cols.n
    Ad, zarr_src = _source_in_hierarchy_order(src, rows, cols)
    if tuple(Ad.shape) != (m, n):
        raise InputError(f"the matrix is {Ad.shape}, the hierarchy {(m, n)}")
    c, rch, cch = chunk_layout(rows, cols, chunk_items)
    if engine == "numpy":
        eng: Any = _NumpyEngine(np.ascontiguousarray(Ad.compute()), rch, cch)
    elif zarr_src is not None:
        eng = _ZarrEngine(*zarr_src, rch, cch)
    else:
        eng = _DaskEngine(Ad, rch, cch)
    try:
        M = fit_products(eng, rows, cols, ranks, c=c, rch=rch, cch=cch, psd=psd,
                         max_iter=max_iter, tol=tol, q=q, seed=seed, exact_max=exact_max,
                         grow_from=grow_from, exchange=exchange,
                         exchange_steps=exchange_steps, grow_per_step=grow_per_step,
                         method=method, progress=_publishing(progress))
    except np.linalg.LinAlgError:
        _raise_if_not_finite(Ad)  # the usual cause; costs a pass only when the fit failed
        raise
    if not np.isfinite(M.history_["rel_error"][-1]):
        _raise_if_not_finite(Ad)
    return M


def _raise_if_not_finite(Ad: Any) -> None:
    """InputError naming the first chunk (row and column ranges, hierarchy order) of ``Ad`` that
    holds NaN or inf. One pass over the matrix."""
    import dask.array as da

    bad = da.map_blocks(lambda b: np.array([[not np.isfinite(b).all()]]), Ad,
                        chunks=(1, 1), dtype=bool).compute()
    if bad.any():
        i, j = np.argwhere(bad)[0]
        r0, c0 = int(sum(Ad.chunks[0][:i])), int(sum(Ad.chunks[1][:j]))
        raise InputError(
            f"A contains NaN or inf (first in rows {r0}:{r0 + Ad.chunks[0][i]}, columns "
            f"{c0}:{c0 + Ad.chunks[1][j]} of the hierarchy order)")


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
                        progress=_publishing(progress))
