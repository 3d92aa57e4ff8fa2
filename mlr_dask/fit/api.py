"""``fit_mlr``: fit an MLR matrix to a dense matrix, a Dask array, a zarr matrix store or a
matvec-only operator, learning the hierarchy and the rank allocation when asked.

This module validates the input and picks the engine: the in-memory pipeline
(:mod:`mlr_dask.fit.pipeline`: partition -> allocate -> fit -> compare with low rank and low
rank + diagonal) or the Dask path: :mod:`mlr_dask.fit.learn_dask` when the hierarchy is
learned, :mod:`mlr_dask.fit.dask` for a fixed one. Times per stage are in
``history_["seconds"]``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla

from mlr_dask.errors import InputError
from mlr_dask.fit import pipeline
from mlr_dask.fit.als import run_als
from mlr_dask.fit.bcd import BCDState, init_state, run_bcd
from mlr_dask.fit.options import (
    DEFAULT_MAX_RANK_MOVES,
    AllocationOptions,
    FitOptions,
    Options,
    PartitionOptions,
    Reporter,
    default_threads,
)
from mlr_dask.fit.partition import atom_counts
from mlr_dask.fit.pipeline import (
    BEST_INITS,
    als_affordable,
    initial_ranks,
    partition_ranks,
    start_ranks,
)
from mlr_dask.fit.ranks import rank_caps
from mlr_dask.fit.settings import Allocation, DaskSettings, Partitioning
from mlr_dask.fit.store import MatrixStore, load_matrix_store
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import DENSE_LIMIT_BYTES, MLRMatrix

__all__ = ["fit_mlr", "fit_factors", "default_levels", "initial_ranks", "partition_ranks",
           "start_ranks", "INITS", "BEST_INITS", "DEFAULT_INIT",
           "load_matrix_store", "als_affordable", "MatrixStore", "DEFAULT_MAX_RANK_MOVES"]

#: Starting allocations of a learned hierarchy (``fit_mlr(init=...)``).
INITS = ("best", "bottom", "uniform", "spread", "top")
DEFAULT_INIT = "best"


def default_levels(m: int, n: int) -> int:
    """Repeated bisection down to blocks of one or two items, then a level of atoms:
    ``ceil(log2(min(m, n))) + 1`` levels (at least 1)."""
    short = min(m, n)
    return 1 if short < 2 else int(np.ceil(np.log2(short))) + 1


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



def _warn_if_asymmetric(A: np.ndarray) -> None:
    """Warn when ``symmetric=True`` (one hierarchy for rows and columns) meets a matrix far from
    symmetric, e.g. a kernel between two point sets: such a fit is poor. O(n^2) time, no n x n
    temporary (row blocks)."""
    num = den = 0.0
    for a in range(0, A.shape[0], 1024):
        b = min(a + 1024, A.shape[0])
        num += float(np.sum((A[a:b] - A[:, a:b].T) ** 2))
        den += float(np.sum(A[a:b] ** 2))
    rel = float(np.sqrt(num / den)) if den > 0 else 0.0
    if rel > 1e-6:
        warnings.warn(f"symmetric=True uses one hierarchy for rows and columns, but A is far "
                      f"from symmetric (||A - A^T|| / ||A|| = {rel:.3g}); the fit will be poor",
                      UserWarning, stacklevel=3)


def fit_mlr(
    A: Any,
    rank: int | None = None,
    *,
    hierarchy: Any = None,
    levels: int | None = None,
    ranks: Sequence[int] | None = None,
    init: str = DEFAULT_INIT,
    partition: str = "spectral",
    allocate_ranks: bool = True,
    method: str = "auto",
    symmetric: bool = False,
    psd: bool = False,
    max_iter: int = 100,
    tol: float = 1e-3,
    baselines: bool = True,
    seed: int = 0,
    threads: int | None = None,
    backend: str = "auto",
    client: Any = None,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
    partitioning: Partitioning | None = None,
    allocation: Allocation | None = None,
    dask: DaskSettings | None = None,
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
    partition : ``"spectral"`` (learn; in memory, or on the Dask path), ``"dyadic"``
        (bisection in the given order, atoms last) or ``"given"`` (the hierarchy stored with a
        zarr matrix).
    init : starting rank allocation of a learned hierarchy (ignored when ``ranks`` is given
        or the hierarchy is fixed). ``"best"`` (default): ``"bottom"`` or ``"uniform"``,
        whichever gives the lower error when the whole pipeline runs on a random principal
        submatrix of a quarter of each side (:func:`mlr_dask.fit.pipeline.pick_start`; below
        512 rows or columns both starts run through rank allocation on the whole matrix and
        only the better one goes on to the final fit). ``"bottom"`` tends to win on kernel matrices,
        ``"uniform"`` on matrices with strong coarse levels. ``"bottom"``: rank only on the
        atoms while partitioning, so the hierarchy is recursive co-clustering of ``A o A``;
        then the rank grows one unit per step on the level of largest predicted gain, each
        step followed by one BCD epoch (a continuation: BCD started with the final ranks
        stalls far higher). ``"spread"``: half on the root, the rest over the next five
        levels, 1 on the atoms; ``"uniform"``: 1 on the atoms, the rest evenly; ``"top"``:
        all on the root.
    allocate_ranks : run the rank exchange after the start (the growth of ``init="bottom"``
        runs regardless: it is what reaches the total rank).
    method : ``"bcd"``, ``"als"`` or ``"auto"`` (default) for the final fit. ``"auto"`` takes
        ALS when it is affordable (:func:`als_affordable`) and falls back to BCD as soon as
        an ALS epoch costs more than 3 BCD epochs timed in the same run.
    symmetric : square matrix, same hierarchy for rows and columns (Fiedler partitioning).
    psd : symmetric PSD model ``B B^T`` with clipped eigenvalues (implies ``symmetric``).
    max_iter, tol : epochs of the final fit and the relative-decrease stopping rule.
    baselines : also fit low rank and low rank + diagonal at the same storage (in memory, or
        on the Dask path by :mod:`mlr_dask.fit.baselines_dask`) and return the best of the
        three; ``history_`` reports all three errors.
    threads : BLAS / numba threads of every in-memory stage (threadpoolctl limits), and
        parallel rank-allocation trials (one BLAS thread each); default: the cores this
        process may use.
    backend : ``"auto"`` (Dask for dask / zarr inputs larger than the in-memory limit, numpy
        otherwise), ``"numpy"`` or ``"dask"``. On the Dask path a given hierarchy is fitted
        with the ranks as given (or the starting allocation: no rank allocation); otherwise
        the hierarchy and the ranks are learned there too (:func:`mlr_dask.fit.learn_dask.
        learn_mlr_dask`: the start picked on a sample by futures, top splits by passes over
        the tiles, the blocks below as tasks, then growth and exchange of the ranks on the
        whole matrix).
    client : the Dask client of the Dask path (the default scheduler when None).
    progress : optional callback ``progress(stage, info)``; every step is also published with
        :func:`mlr_dask.events.publish` (stages ``partition``, ``rank_move``, ``epoch``).
    partitioning, allocation, dask : the expert settings of each stage
        (:class:`~mlr_dask.fit.settings.Partitioning`,
        :class:`~mlr_dask.fit.settings.Allocation`,
        :class:`~mlr_dask.fit.settings.DaskSettings`); default: their defaults.

    Memory: the in-memory path materializes about three m x n float64 arrays (the matrix, the
    residual, and one trial copy per thread during rank allocation; an ALS final fit adds
    one: the target rebuilt in hierarchy order); ``backend="auto"`` switches dask and zarr
    inputs to the Dask path when that would exceed ``mlr_dask.mlr.DENSE_LIMIT_BYTES``.

    Returns
    -------
    MLRMatrix with ``history_``: ``rel_error`` per epoch of the final fit (the last entry is
    the error of the returned model), ``partition`` (error after the partition),
    ``rank_moves`` (growth steps with ``src`` None, then accepted exchanges; the error after
    each), ``seconds`` per stage, ``ranks``, ``init`` (the start used), ``starts`` (errors
    of the starts compared by ``init="best"``), ``mlr_rel_error``, ``lowrank_rel_error``,
    ``lowrank_diag_rel_error`` and ``returned`` (``"mlr"``, ``"lowrank"`` or
    ``"lowrank_diag"``) when ``baselines``.
    """
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
    partitioning = partitioning if partitioning is not None else Partitioning()
    allocation = allocation if allocation is not None else Allocation()
    dask = dask if dask is not None else DaskSettings()
    for group, cls in ((partitioning, Partitioning), (allocation, Allocation),
                       (dask, DaskSettings)):
        if not isinstance(group, cls):
            raise InputError(f"expected a {cls.__name__}, got {type(group).__name__}")
        group.check()
    if threads is None:
        threads = default_threads()
    if not isinstance(threads, int | np.integer) or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
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
    if isinstance(A, MatrixStore):
        store = A
        shape = store.shape
    elif isinstance(A, str | Path | os.PathLike):
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

    # ---- the engine: Dask (learned, or a fixed hierarchy without allocation) or in memory
    if (store is not None or dask_arr is not None) and operator is None:
        nbytes = m * n * 8
        use_dask = backend == "dask" or (backend == "auto" and 3 * nbytes > DENSE_LIMIT_BYTES)
        if use_dask:
            if rows is None:
                from mlr_dask.fit.learn_dask import (
                    LearnOptions,
                    default_block_items,
                    learn_mlr_dask,
                )

                if init not in ("best", "bottom", "uniform"):
                    raise InputError(f"init {init!r} is not available on the Dask path: "
                                     "'best', 'bottom' or 'uniform'")
                lo = LearnOptions(
                    init=init, block_items=int(dask.block_items) if dask.block_items
                    is not None else default_block_items(client),
                    sample_items=int(dask.sample_items), q=int(dask.power_iters),
                    balanced=partitioning.balanced, refine=partitioning.refine,
                    split=partitioning.split, n_vectors=int(partitioning.split_vectors),
                    grow_per_step=int(dask.grow_per_step),
                    exchange_steps=int(dask.exchange_steps), symmetric=symmetric, psd=psd,
                    seed=int(seed))
                if ranks is not None:
                    raise InputError("ranks are learned on the Dask path: give the total rank "
                                     "only, or a hierarchy with the ranks")
            src = store if store is not None else dask_arr
            chunk_items = base_chunks = dask.chunk_items
            if rows is None:
                if base_chunks is None:  # as the learned fit: a chunk no larger than a block
                    base_chunks = min(4096, lo.block_items)
                M = learn_mlr_dask(src, rank, L, opts=lo, max_iter=max_iter, tol=tol,
                                   chunk_items=chunk_items, client=client, progress=progress)
            else:
                from mlr_dask.fit.dask import fit_mlr_dask

                rk = list(ranks) if ranks is not None else initial_ranks(
                    rank, caps, rows.has_atoms and cols.n_blocks[-1] == min(m, n))
                M = fit_mlr_dask(src, rows, cols, rk, psd=psd, max_iter=max_iter, tol=tol,
                                 client=client, chunk_items=chunk_items, q=dask.power_iters,
                                 seed=seed, progress=progress)
                if allocate_ranks:
                    M.history_["notes"] = ["rank allocation is not run on the Dask path: the "
                                           "starting ranks were kept"]
            if baselines:
                from mlr_dask.fit.baselines_dask import with_baselines

                M = with_baselines(M, src, rank, psd=psd, tol=tol, client=client,
                                   chunk_items=base_chunks, q=dask.power_iters, seed=seed,
                                   progress=progress)
            return M
    if operator is not None:
        from mlr_dask.fit.dask import fit_mlr_operator

        rk = list(ranks) if ranks is not None else initial_ranks(rank, caps, rows.has_atoms)
        return fit_mlr_operator(operator, rows, cols, rk, psd=psd, max_iter=max_iter, tol=tol,
                                q=dask.power_iters, seed=seed, progress=progress)
    if backend == "dask" and store is None and dask_arr is None:
        raise InputError("backend='dask' needs a dask array or a zarr matrix store")

    import time

    t0 = time.perf_counter()
    if store is not None:
        A = _check_dense(store.dense_original())
    elif dask_arr is not None:
        A = _check_dense(np.asarray(dask_arr.compute()))
    if symmetric:
        _warn_if_asymmetric(A)
    load_s = time.perf_counter() - t0
    opts = Options(
        partition=PartitionOptions(method=partition, levels=levels, init=init,
                                   balanced=partitioning.balanced, refine=partitioning.refine,
                                   split=partitioning.split,
                                   split_vectors=int(partitioning.split_vectors),
                                   epochs=int(partitioning.epochs)),
        allocation=AllocationOptions(enabled=bool(allocate_ranks), eps=float(allocation.eps),
                                     max_rank_moves=int(allocation.max_rank_moves),
                                     grow_trials=int(allocation.grow_trials)),
        fit=FitOptions(method=method, max_iter=max_iter, tol=tol),
        symmetric=symmetric, psd=psd, seed=seed, threads=int(threads),
        baselines=bool(baselines))
    M = pipeline.run(A, rank, opts, Reporter(progress), rows=rows, cols=cols,
                     ranks=None if ranks is None else [int(r) for r in ranks],
                     levels=L if rows is None else None)
    M.history_["seconds"]["load"] = load_s
    M.history_["seconds"]["total"] += load_s
    return M
