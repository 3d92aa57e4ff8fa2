"""``fit_mlr``: fit an MLR matrix to a dense matrix, a Dask array, a zarr matrix store or a
matvec-only operator, learning the hierarchy and the rank allocation when asked.

Stages (times in ``history_["seconds"]``): ``load``, ``partition`` (top-down spectral, or the
given hierarchy), ``rank_allocation`` (greedy growth from the atoms for ``init="bottom"``, then
greedy exchange), ``fit`` (BCD or ALS until converged).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla

from mlr_dask.errors import InputError
from mlr_dask.fit.als import run_als
from mlr_dask.fit.bcd import BCDState, init_state, run_bcd
from mlr_dask.fit.partition import atom_counts, spectral_partition
from mlr_dask.fit.ranks import allocate_ranks as _allocate
from mlr_dask.fit.ranks import grow_ranks, rank_caps
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import DENSE_LIMIT_BYTES, MLRMatrix

__all__ = ["fit_mlr", "fit_factors", "default_levels", "initial_ranks", "partition_ranks",
           "start_ranks", "INITS", "BEST_INITS", "DEFAULT_INIT",
           "load_matrix_store", "als_affordable",
           "MatrixStore"]


class MatrixStore:
    """A dense matrix store (format ``matrix`` v1) opened lazily.

    ``array``: the zarr array ``A`` in stored order; ``rows`` / ``cols``: the stored hierarchies
    (``None`` when the store is in original order); ``attrs``: the group attributes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from mlr_dask.io import open_group

        g = open_group(path, "matrix", 1)
        if "A" not in g:
            raise InputError(f"matrix store {str(path)!r} has no array 'A'")
        self.path = str(path)
        self.array = g["A"]
        if len(self.array.shape) != 2:
            raise InputError(f"array 'A' must be 2-D, got shape {self.array.shape}")
        self.rows = Hierarchy.read_zarr(g["rows"]) if "rows" in g else None
        self.cols = Hierarchy.read_zarr(g["cols"]) if "cols" in g else None
        if (self.rows is None) != (self.cols is None):
            raise InputError("matrix store has only one of the 'rows' / 'cols' hierarchies")
        m, n = self.array.shape
        if self.rows is not None and (self.rows.n != m or self.cols.n != n):
            raise InputError("the stored hierarchies do not match the size of 'A'")
        self.attrs = dict(g.attrs)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def dense_original(self) -> np.ndarray:
        """The whole matrix in original order (materializes m x n numbers)."""
        A = np.asarray(self.array[...], dtype=np.float64)
        if self.rows is None:
            return A
        out = np.empty_like(A)
        out[np.ix_(self.rows.perm, self.cols.perm)] = A
        return out


def load_matrix_store(path: str | os.PathLike) -> MatrixStore:
    """Open a dense matrix store written by ``mlr-dask generate`` (format checks included)."""
    return MatrixStore(path)


def default_levels(m: int, n: int) -> int:
    """Repeated bisection down to blocks of one or two items, then a level of atoms:
    ``ceil(log2(min(m, n))) + 1`` levels (at least 1)."""
    short = min(m, n)
    return 1 if short < 2 else int(np.ceil(np.log2(short))) + 1


def initial_ranks(rank: int, caps: Sequence[int], atoms: bool) -> list[int]:
    """Spread ``rank`` over the levels: 1 for a last level of atoms, the rest as evenly as
    possible (coarse levels first), respecting the caps; what does not fit goes to level 0."""
    L = len(caps)
    out = [0] * L
    left = rank
    if atoms and L > 1:
        out[-1] = min(1, caps[-1], left)
        left -= out[-1]
        todo = list(range(L - 1))
    else:
        todo = list(range(L))
    while left > 0 and todo:
        share, extra = divmod(left, len(todo))
        nxt = []
        for i, lvl in enumerate(todo):
            want = share + (1 if i < extra else 0)
            got = min(want, caps[lvl] - out[lvl])
            out[lvl] += got
            left -= got
            if out[lvl] < caps[lvl]:
                nxt.append(lvl)
        if len(nxt) == len(todo) and share == 0 and extra == 0:
            break
        todo = nxt
    if left > 0:
        raise InputError(f"rank {rank} exceeds the total capacity {sum(caps)} of the levels")
    return out


def partition_ranks(rank: int, n_levels: int, caps: Sequence[int], atoms: bool) -> list[int]:
    """Starting ranks for a learned hierarchy: half of the rank on the root, the rest spread
    evenly over the next (up to five) levels, 1 on a last level of atoms; capped by ``caps``
    (the excess goes to the root)."""
    L = n_levels
    out = [0] * L
    if L == 1:
        return [rank]
    left = rank
    if atoms:
        out[-1] = min(1, caps[-1])
        left -= out[-1]
    out[0] = left - left // 2
    mids = list(range(1, min(6, L - (1 if atoms else 0))))
    rest = left // 2
    for i, lvl in enumerate(mids):
        out[lvl] = rest // len(mids) + (1 if i < rest % len(mids) else 0)
    if not mids:
        out[0] += rest
    for lvl in range(1, L):
        extra = max(0, out[lvl] - caps[lvl])
        out[lvl] -= extra
        out[0] += extra
    return out


#: Starting allocations of a learned hierarchy (``fit_mlr(init=...)``).
INITS = ("best", "bottom", "uniform", "spread", "top")
#: The starts that ``init="best"`` tries, in order (ties keep the first).
BEST_INITS = ("bottom", "uniform")
DEFAULT_INIT = "best"


def start_ranks(init: str, rank: int, n_levels: int, caps: Sequence[int]) -> list[int]:
    """Ranks per level used while a hierarchy of ``n_levels`` levels (last: atoms) is learned.

    ``"spread"``: :func:`partition_ranks`; ``"uniform"``: :func:`initial_ranks` (1 on the
    atoms, the rest evenly); ``"top"``: all on the root; ``"bottom"``: 1 on the atoms and 0
    elsewhere (the partition is then recursive co-clustering of ``A o A`` and the rest of the
    rank is added afterwards by greedy growth). ``caps`` (n_levels,) bound the levels."""
    L = n_levels
    if L == 1:
        return [rank]
    if init == "spread":
        return partition_ranks(rank, L, caps, True)
    if init == "uniform":
        return initial_ranks(rank, caps, True)
    if init == "top":
        return [rank] + [0] * (L - 1)
    if init == "bottom":
        return [0] * (L - 1) + [min(1, rank, caps[-1])]
    raise InputError(f"unknown init {init!r}")


def _check_dense(A: np.ndarray) -> np.ndarray:
    if A.ndim != 2:
        raise InputError(f"A must be a 2-D matrix, got shape {A.shape}")
    if A.dtype.kind not in "biuf":
        raise InputError(f"A must hold real numbers, got dtype {A.dtype}")
    if min(A.shape) < 1:
        raise InputError(f"A is empty (shape {A.shape})")
    A = np.asarray(A, dtype=np.float64)
    if not np.all(np.isfinite(A)):
        raise InputError("A contains NaN or inf")
    return A


def _hier_pair(hierarchy: Any, m: int, n: int, symmetric: bool) -> tuple[Hierarchy, Hierarchy]:
    if isinstance(hierarchy, Hierarchy):
        rows = cols = hierarchy
    else:
        try:
            rows, cols = hierarchy
        except (TypeError, ValueError):
            raise InputError("hierarchy must be a Hierarchy or a (rows, cols) pair") from None
    if not isinstance(rows, Hierarchy) or not isinstance(cols, Hierarchy):
        raise InputError("hierarchy must be a Hierarchy or a (rows, cols) pair")
    if rows.n != m or cols.n != n:
        raise InputError(f"hierarchy has sizes ({rows.n}, {cols.n}), the matrix is {m} x {n}")
    if rows.n_blocks != cols.n_blocks:
        raise InputError("row and column hierarchies need the same number of blocks per level")
    if symmetric and rows != cols:
        raise InputError("symmetric fits need the same hierarchy for rows and columns")
    return rows, cols


def _permute(A: np.ndarray, rows: Hierarchy, cols: Hierarchy) -> np.ndarray:
    return np.ascontiguousarray(A[rows.perm][:, cols.perm])


def _to_mlr(st: BCDState, rows: Hierarchy, cols: Hierarchy) -> MLRMatrix:
    B = np.hstack(st.B)
    if st.psd:
        return MLRMatrix(rows, cols, st.ranks, B)
    return MLRMatrix(rows, cols, st.ranks, B, np.hstack(st.C))


def _check_ranks(ranks: Sequence[int], rows: Hierarchy, cols: Hierarchy) -> list[int]:
    rk = [int(r) for r in ranks]
    if len(rk) != rows.n_levels:
        raise InputError(f"ranks has {len(rk)} entries for {rows.n_levels} levels")
    caps = rank_caps(rows.boundaries, cols.boundaries)
    for lvl, (r, c) in enumerate(zip(rk, caps, strict=True)):
        if r < 0:
            raise InputError(f"rank of level {lvl} is negative")
        if r > c:
            raise InputError(f"rank {r} of level {lvl} is larger than its smallest block ({c})")
    return rk


def fit_factors(
    A: Any,
    rows: Hierarchy,
    cols: Hierarchy,
    ranks: Sequence[int],
    *,
    method: str = "bcd",
    psd: bool = False,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> MLRMatrix:
    """Fit the factors of an MLR matrix with a fixed hierarchy and ranks.

    ``A`` (m, n) dense, original order. ``method``: ``"bcd"`` (block coordinate descent) or
    ``"als"`` (alternating least squares, started from one greedy BCD sweep). ``psd``: symmetric
    PSD model ``B B^T`` (BCD only). The result has ``history_`` with the relative error per epoch.
    Memory: two m x n arrays (permuted copy and residual).
    """
    A = _check_dense(np.asarray(A))
    m, n = A.shape
    rows, cols = _hier_pair((rows, cols), m, n, psd)
    rk = _check_ranks(ranks, rows, cols)
    if method not in ("bcd", "als"):
        raise InputError(f"method must be 'bcd' or 'als', got {method!r}")
    if psd and method == "als":
        raise InputError("the PSD variant is fitted by BCD only")
    Ap = _permute(A, rows, cols)
    st = init_state(Ap, rows.boundaries, cols.boundaries, rk, psd=psd, seed=seed, copy=True)
    if method == "bcd":
        hist = run_bcd(st, max_iter=max_iter, tol=tol)
    else:
        run_bcd(st, max_iter=0)
        hist = run_als(Ap, st, max_iter=max_iter, tol=tol)
    M = _to_mlr(st, rows, cols)
    M.history_ = {"rel_error": hist, "ranks": list(st.ranks)}
    return M


def _is_dask(A: Any) -> bool:
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover
        return False
    return isinstance(A, da.Array)


def fit_mlr(
    A: Any,
    rank: int | None = None,
    *,
    hierarchy: Any = None,
    levels: int | None = None,
    ranks: Sequence[int] | None = None,
    partition: str = "spectral",
    allocate_ranks: bool = True,
    method: str = "auto",
    symmetric: bool = False,
    psd: bool = False,
    max_iter: int = 100,
    tol: float = 1e-3,
    init: str = DEFAULT_INIT,
    balanced: bool = False,
    refine: bool = True,
    split: str = "normalized",
    split_vectors: int = 4,
    partition_epochs: int = 1,
    alloc_eps: float = 1e-3,
    alloc_max_steps: int = 200,
    n_jobs: int = 2,
    seed: int = 0,
    backend: str = "auto",
    client: Any = None,
    chunk_items: int | None = None,
    power_iters: int = 2,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> MLRMatrix:
    """Fit an MLR matrix of total rank ``rank`` to ``A``.

    Parameters
    ----------
    A : (m, n) numpy array, dask array, path of a dense matrix store (zarr, format ``matrix``),
        or a ``LinearOperator`` with matvecs only (then the hierarchy must be given or dyadic and
        every level is fitted by randomized SVDs through products).
    rank : total rank ``r = sum(ranks)``; storage ``(m + n) r`` (``m r`` when ``psd``).
    hierarchy : a Hierarchy for both axes or a ``(rows, cols)`` pair, used as is.
    levels : number of levels L when the hierarchy is learned (default
        :func:`default_levels`: bisection down to 1-2 items, then atoms).
    ranks : (L,) ranks per level: fixed with ``allocate_ranks=False``, the start otherwise.
    partition : ``"spectral"`` (learn, in memory), ``"dyadic"`` (bisection in the given order,
        atoms last) or ``"given"`` (the hierarchy stored with a zarr matrix).
    init : starting rank allocation of a learned hierarchy (ignored when ``ranks`` is given
        or the hierarchy is fixed). ``"best"`` (default): the learned fit from each start of
        :data:`BEST_INITS` (``"bottom"``, ``"uniform"``), the lowest error kept (about twice
        the time of one). ``"bottom"`` wins on kernel matrices (r = 28: radial n = 5000 0.0553,
        DGT 5000 x 7000 0.1652; with single-vector splits, radial n = 2000 0.053 against 0.102
        for ``"uniform"`` and 0.088 for ``"spread"``, the former default), ``"uniform"`` on
        matrices with strong coarse levels (MLR plus 10% noise, n = 1000: 0.112 against 0.147).
        ``"bottom"``: rank only on the atoms while partitioning, so the hierarchy is
        recursive co-clustering of ``A o A``; then the rank grows from a diagonal model one
        unit at a time (each step tries the 3 levels of largest predicted gain, each with one
        warm-started BCD epoch, and keeps the best; see
        :func:`mlr_dask.fit.ranks.grow_ranks`), then the rank exchange (if
        ``allocate_ranks``) and the final fit. ``"spread"``: half on the root, the rest over
        the next five levels, 1 on the atoms (:func:`partition_ranks`); ``"uniform"``: 1 on
        the atoms, the rest evenly (:func:`initial_ranks`); ``"top"``: all on the root.
    allocate_ranks : run the greedy rank exchange (the growth of ``init="bottom"`` runs
        regardless: it is what reaches the total rank).
    balanced, refine, split : partitioning options: equal halves (default: cut at the sign
        change, keeping enough items for the levels below), greedy swap refinement (default on;
        both defaults gave lower errors on the kernel matrices), ``"normalized"`` (bipartite
        co-clustering of ``R o R``, default) or ``"centered"`` (leading pair of the
        double-centered ``R o R``, as in ``mlr.md``).
    split_vectors : dimension of the spectral embedding in which each split searches its cut
        (``split="normalized"`` and symmetric splits; see :func:`mlr_dask.fit.partition.
        split_block`). 1 orders by the leading non-trivial vector alone; 4 (default) lowered
        the error on DGT 5000 x 7000 from 0.178 to 0.165 (r = 28).
    partition_epochs : BCD epochs of the coarser levels before each split (as in the spec: 1;
        no effect with ``init="bottom"``, where nothing above the atoms is fitted yet). With
        ``init="spread"``, 8 gave 0.0906 instead of 0.0942 on the radial kernel at n = 5000, but
        0.204 instead of 0.190 on DGT 5000 x 7000.
    method : ``"bcd"``, ``"als"`` or ``"auto"`` (default) for the final fit. ``"auto"`` takes
        ALS when it is affordable (not PSD, and the blocks of the finest level with a nonzero
        rank few enough that their least-squares solves cost no more than one product of A
        with r columns, see :func:`als_affordable`), BCD otherwise. From the same start ALS
        converges faster than BCD (which creeps on for hundreds of epochs): learned pipeline
        with ``init="spread"``, r = 28, at most 100 epochs, radial n = 2000 0.0882 instead of
        0.0951, DGT 2000 x 2800 0.1814 instead of 0.1900, in less time. Partitioning and
        rank allocation use BCD.
    symmetric : square matrix, same hierarchy for rows and columns (Fiedler partitioning).
    psd : symmetric PSD model ``B B^T`` with clipped eigenvalues (implies ``symmetric``).
    max_iter, tol : epochs of the final fit and the relative-decrease stopping rule.
    backend : ``"auto"`` (Dask for dask / zarr inputs larger than the in-memory limit, numpy
        otherwise), ``"numpy"`` or ``"dask"`` (needs a fixed hierarchy; the ranks are kept as
        given or as the starting allocation: no rank allocation on the Dask path).
    client, chunk_items, power_iters : Dask path options (see :func:`mlr_dask.fit.dask.
        fit_mlr_dask`); the default scheduler is used when ``client`` is None.
    progress : optional callback ``progress(stage, info)``.

    Memory: the in-memory path materializes about three m x n float64 arrays (the matrix, its
    permuted copy and the residual; rank-allocation trials add one copy per parallel trial;
    an ALS final fit adds two: the target rebuilt in hierarchy order and its transpose);
    ``backend="auto"`` switches dask and zarr inputs to the Dask path (fixed hierarchy) when
    that would exceed ``mlr_dask.mlr.DENSE_LIMIT_BYTES``.

    Returns
    -------
    MLRMatrix with ``history_``: ``rel_error`` per epoch of the final fit, ``partition``
    (relative error at the start of the rank exchange), ``rank_moves`` (growth steps of
    ``init="bottom"``, with ``src`` None, then accepted exchanges; the error after each),
    ``seconds`` per stage, ``ranks``, ``init`` (the start used; None for a fixed hierarchy or
    given ranks).
    """
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    psd = bool(psd)
    symmetric = bool(symmetric) or psd
    if method not in ("auto", "bcd", "als"):
        raise InputError(f"method must be 'auto', 'bcd' or 'als', got {method!r}")
    if psd and method == "als":
        raise InputError("the PSD variant is fitted by BCD only")
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
    if partition not in ("spectral", "dyadic", "given"):
        raise InputError(f"partition must be 'spectral', 'dyadic' or 'given', got {partition!r}")
    if backend not in ("auto", "numpy", "dask"):
        raise InputError(f"backend must be 'auto', 'numpy' or 'dask', got {backend!r}")
    if not isinstance(split_vectors, int | np.integer) or split_vectors < 1:
        raise InputError(f"split_vectors must be a positive integer, got {split_vectors!r}")
    if rank is None and ranks is None:
        raise InputError("give the total rank or the ranks per level")
    if rank is not None and (not isinstance(rank, int | np.integer) or rank < 1):
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    if ranks is not None and rank is not None and sum(int(r) for r in ranks) != rank:
        raise InputError(f"ranks {list(ranks)} do not sum to rank {rank}")
    if ranks is not None:
        rank = sum(int(r) for r in ranks)

    store: MatrixStore | None = None
    operator = None
    dask_arr = None
    if isinstance(A, str | Path):
        store = load_matrix_store(A)
        shape = store.shape
    elif _is_dask(A):
        dask_arr = A
        shape = tuple(A.shape)
    elif isinstance(A, spla.LinearOperator) and not isinstance(A, np.ndarray):
        operator = A
        shape = tuple(A.shape)
    else:
        A = _check_dense(np.asarray(A))
        shape = A.shape
    if len(shape) != 2:
        raise InputError(f"A must be 2-D, got shape {shape}")
    m, n = int(shape[0]), int(shape[1])
    if symmetric and m != n:
        raise InputError(f"symmetric=True needs a square matrix, got {m} x {n}")
    if rank > min(m, n):
        raise InputError(f"rank {rank} is larger than min(m, n) = {min(m, n)}")

    # ---- the hierarchy (validated before any work)
    rows = cols = None
    if hierarchy is not None:
        rows, cols = _hier_pair(hierarchy, m, n, symmetric)
        if levels is not None and levels != rows.n_levels:
            raise InputError(f"levels={levels} but the hierarchy has {rows.n_levels} levels")
    elif partition == "given":
        if store is None or store.rows is None:
            raise InputError("partition='given' needs a matrix store with stored hierarchies")
        rows, cols = _hier_pair((store.rows, store.cols), m, n, symmetric)
    L = rows.n_levels if rows is not None else (
        levels if levels is not None else (len(ranks) if ranks is not None
                                           else default_levels(m, n)))
    if L < 1:
        raise InputError("levels must be at least 1")
    if ranks is not None and len(ranks) != L:
        raise InputError(f"ranks has {len(ranks)} entries for {L} levels")
    if rows is None and partition == "dyadic" or (rows is None and operator is not None):
        if L > 1 and 2 ** (L - 2) > min(m, n):
            raise InputError(f"{L} levels need at least {2 ** (L - 2)} rows and columns")
        rows = Hierarchy.dyadic(m, max(1, L - 1))
        cols = Hierarchy.dyadic(n, max(1, L - 1))
        if L > 1:
            c = atom_counts(rows, cols)
            rows, cols = rows.refine(c), cols.refine(c)
    if rows is None and L > 1 and 2 ** (L - 2) > min(m, n):
        raise InputError(f"{L} levels need at least {2 ** (L - 2)} rows and columns")
    if rows is not None:
        caps = rank_caps(rows.boundaries, cols.boundaries)
        if ranks is not None:
            _check_ranks(ranks, rows, cols)
    if (store is not None or dask_arr is not None) and operator is None:
        nbytes = m * n * 8
        # the in-memory path holds about three m x n arrays (input, permuted copy, residual)
        use_dask = backend == "dask" or (backend == "auto" and 3 * nbytes > DENSE_LIMIT_BYTES)
        if use_dask:
            if rows is None:
                raise InputError("the Dask path needs a fixed hierarchy (hierarchy=... or "
                                 "partition='given' / 'dyadic')")
            from mlr_dask.fit.dask import fit_mlr_dask

            rk = list(ranks) if ranks is not None else initial_ranks(
                rank, caps, rows.has_atoms and cols.n_blocks[-1] == min(m, n))
            src = store if store is not None else dask_arr
            M = fit_mlr_dask(src, rows, cols, rk, psd=psd, max_iter=max_iter, tol=tol,
                             client=client, chunk_items=chunk_items, q=power_iters, seed=seed,
                             progress=progress)
            if allocate_ranks:
                M.history_["notes"] = ["rank allocation is not run on the Dask path: the "
                                       "starting ranks were kept"]
            return M
    if operator is not None:
        from mlr_dask.fit.dask import fit_mlr_operator

        rk = list(ranks) if ranks is not None else initial_ranks(
            rank, caps, rows.has_atoms)
        return fit_mlr_operator(operator, rows, cols, rk, psd=psd, max_iter=max_iter, tol=tol,
                                q=power_iters, seed=seed, progress=progress)
    if backend == "dask" and store is None and dask_arr is None:
        raise InputError("backend='dask' needs a dask array or a zarr matrix store")

    # ---- in memory
    t0 = time.perf_counter()
    if store is not None:
        if rows is not None and store.rows is not None and rows == store.rows \
                and cols == store.cols:
            Ap = np.ascontiguousarray(store.array[...], dtype=np.float64)
            Ap = _check_dense(Ap)
            A = None
        else:
            A = _check_dense(store.dense_original())
    elif dask_arr is not None:
        A = _check_dense(np.asarray(dask_arr.compute()))
    seconds["load"] = time.perf_counter() - t0

    def say(stage: str, **info: Any) -> None:
        if progress is not None:
            progress(stage, info)

    if init == "best":
        if rows is None and ranks is None and L > 1:
            opts = dict(levels=L, allocate_ranks=allocate_ranks, method=method,
                        symmetric=symmetric, psd=psd, max_iter=max_iter, tol=tol,
                        balanced=balanced, refine=refine, split=split,
                        split_vectors=split_vectors,
                        partition_epochs=partition_epochs, alloc_eps=alloc_eps,
                        alloc_max_steps=alloc_max_steps, n_jobs=n_jobs, seed=seed,
                        backend="numpy", progress=progress)
            return _best_start(A, rank, opts, seconds, t_start)
        init = BEST_INITS[0]  # fixed hierarchy or given ranks: the start does not matter

    part_hist: list[float] = []
    grown: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    learned = rows is None
    if learned:
        if L > 1:
            probe_r = Hierarchy.dyadic(m, max(1, L - 1))
            probe_c = Hierarchy.dyadic(n, max(1, L - 1))
            cnt = atom_counts(probe_r, probe_c)
            probe_r, probe_c = probe_r.refine(cnt), probe_c.refine(cnt)
            short_caps = rank_caps(probe_r.boundaries, probe_c.boundaries)
            rk0 = list(ranks) if ranks is not None else start_ranks(init, rank, L, short_caps)
        else:
            rk0 = [rank]

        def on_level(lvl: int) -> None:
            say("partition", level=lvl, of=L - 1)

        rows, cols, st = spectral_partition(A, L, rk0, symmetric=symmetric, psd=psd,
                                            balanced=balanced, refine=refine, seed=seed,
                                            method=split, epochs=partition_epochs,
                                            n_vectors=split_vectors,
                                            callback=on_level)
        del A
        deficit = rank - sum(st.ranks)
        if init == "bottom" and ranks is None and deficit > 0:
            run_bcd(st, max_iter=1, tol=0.0)  # side outputs of every level
            t_grow = time.perf_counter()
            st, grown = grow_ranks(st, rank, n_jobs=n_jobs,
                                   callback=lambda info: say("rank_move", **info))
            seconds["rank_growth"] = time.perf_counter() - t_grow
            deficit = 0
        if deficit > 0:  # caps of the learned blocks were smaller: level 0 takes the rest
            st.B[0] = np.hstack([st.B[0], np.zeros((m, deficit))])
            if psd:
                st.C = st.B
            else:
                st.C[0] = np.hstack([st.C[0], np.zeros((n, deficit))])
            st.ranks[0] += deficit
        run_bcd(st, max_iter=1, tol=0.0)
    else:
        if A is not None:
            Ap = _permute(A, rows, cols)
            del A
        caps = rank_caps(rows.boundaries, cols.boundaries)
        rk = list(ranks) if ranks is not None else initial_ranks(rank, caps, rows.has_atoms)
        st = init_state(Ap, rows.boundaries, cols.boundaries, rk, psd=psd, seed=seed, copy=False)
        run_bcd(st, max_iter=1, tol=0.0)
    part_hist.append(st.rel_error)
    seconds["partition"] = time.perf_counter() - t0 - seconds.get("rank_growth", 0.0)
    say("partition_done", rel_error=st.rel_error)

    moves: list[dict[str, Any]] = list(grown)
    t0 = time.perf_counter()
    if allocate_ranks and L > 1:
        start_loss = st.loss
        st, more = _allocate(
            st, eps=alloc_eps, max_steps=alloc_max_steps, n_jobs=n_jobs,
            callback=lambda info: say("rank_move", **info))
        moves += more
        if st.loss > start_loss:  # pragma: no cover - allocate_ranks only accepts gains
            raise RuntimeError("rank allocation increased the loss")
    seconds["rank_allocation"] = time.perf_counter() - t0 + seconds.pop("rank_growth", 0.0)

    t0 = time.perf_counter()
    Ap_for_als = None
    if method == "auto":
        method = "als" if not psd and als_affordable(st.rb, st.cb, st.ranks) else "bcd"
    if method == "als":
        Ap_for_als = _rebuild(st)
        hist = run_als(Ap_for_als, st, max_iter=max_iter, tol=tol,
                       callback=lambda it, e: say("epoch", epoch=it, rel_error=e))
    else:
        hist = run_bcd(st, max_iter=max_iter, tol=tol, greedy_init=False,
                       callback=lambda it, e: say("epoch", epoch=it, rel_error=e))
    seconds["fit"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    M = _to_mlr(st, rows, cols)
    M.history_ = {
        "rel_error": hist,
        "partition": part_hist,
        "rank_moves": moves,
        "seconds": seconds,
        "ranks": list(st.ranks),
        "rel_error_final": st.rel_error,
        "method": method,
        "init": init if learned and ranks is None else None,
    }
    return M


def _best_start(A: np.ndarray, rank: int, opts: dict[str, Any], seconds: dict[str, float],
                t_start: float) -> MLRMatrix:
    """``init="best"``: one learned fit per start of :data:`BEST_INITS`, the lowest error
    kept; ``history_["starts"]`` holds the error of each, ``seconds`` the sums per stage."""
    best: MLRMatrix | None = None
    starts: dict[str, float] = {}
    total = dict(seconds)
    for init in BEST_INITS:
        M = fit_mlr(A, rank, init=init, **opts)
        starts[init] = float(M.history_["rel_error_final"])
        for k, v in M.history_["seconds"].items():
            if k not in ("total", "load"):
                total[k] = total.get(k, 0.0) + v
        if best is None or starts[init] < best.history_["rel_error_final"]:
            best = M
    assert best is not None
    total["total"] = time.perf_counter() - t_start
    best.history_["seconds"] = total
    best.history_["starts"] = starts
    return best


def als_affordable(rb: Sequence[np.ndarray], cb: Sequence[np.ndarray],
                   ranks: Sequence[int]) -> bool:
    """Whether an ALS epoch costs about as much as a BCD epoch: each half step solves one
    least-squares problem with an (n, r) design per block of the finest level with a nonzero
    rank (O(n r^2) each), against O(m n r) for the products; ALS is affordable when
    ``blocks * r <= min(m, n)``. ``rb`` / ``cb``: boundaries per level, ``ranks`` (L,)."""
    used = [lvl for lvl, r in enumerate(ranks) if r > 0]
    if not used:
        return False
    last = used[-1]
    m, n = int(rb[0][-1]), int(cb[0][-1])
    blocks = rb[last].size - 1
    return blocks * sum(int(r) for r in ranks) <= min(m, n)


def _rebuild(st: BCDState) -> np.ndarray:
    """The target in hierarchy order from the residual and the factors (R + sum A_l)."""
    from mlr_dask.fit.bcd import add_lowrank

    Ap = st.R.copy()
    for lvl in range(len(st.ranks)):
        r0, c0 = st.rb[lvl], st.cb[lvl]
        for k in range(r0.size - 1):
            add_lowrank(Ap[r0[k]:r0[k + 1], c0[k]:c0[k + 1]], st.B[lvl][r0[k]:r0[k + 1]],
                        st.C[lvl][c0[k]:c0[k + 1]], 1.0)
    return Ap
