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
                      UserWarning, stacklevel=4)


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
        whichever gives the lower error when partition and rank growth run on a random
        principal submatrix of a fifth of each side (:func:`mlr_dask.fit.pipeline.pick_start`;
        below 640 rows or columns both starts run through rank allocation on the whole matrix and
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
        an ALS epoch costs more than 3 BCD epochs timed in the same run. On the Dask path
        ``"auto"`` and ``"als"`` take ALS (:mod:`mlr_dask.fit.als_dask`: an iteration reads
        A fewer times than a BCD epoch) except for the PSD model.
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
    _check_choices(method, psd, init, partition, backend)
    partitioning, allocation, dask = _check_settings(partitioning, allocation, dask)
    threads = default_threads() if threads is None else threads
    if not isinstance(threads, int | np.integer) or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    rank = _check_total(rank, ranks)
    kind, src, (m, n) = _open_input(A)
    if symmetric and m != n:
        raise InputError(f"symmetric=True needs a square matrix, got {m} x {n}")
    if rank > min(m, n):
        raise InputError(f"rank {rank} is larger than min(m, n) = {min(m, n)}")
    rows, cols, L = _fixed_hierarchy(hierarchy, partition, levels, ranks, kind, src, m, n,
                                     symmetric)
    engine = _engine(kind, backend, m, n)
    if engine == "dask":
        return _fit_dask(src, rank, L, rows, cols, ranks, init=init, method=method,
                         symmetric=symmetric, psd=psd, allocate_ranks=allocate_ranks,
                         max_iter=max_iter, tol=tol, seed=seed, client=client,
                         baselines=baselines, partitioning=partitioning, dask=dask,
                         progress=progress)
    if engine == "operator":
        from mlr_dask.fit.dask import fit_mlr_operator

        caps = rank_caps(rows.boundaries, cols.boundaries)
        rk = list(ranks) if ranks is not None else initial_ranks(rank, caps, rows.has_atoms)
        return fit_mlr_operator(src, rows, cols, rk, psd=psd, max_iter=max_iter, tol=tol,
                                q=dask.power_iters, seed=seed, progress=progress)
    opts = Options(
        partition=PartitionOptions(method=partition, levels=levels, init=init,
                                   balanced=partitioning.balanced, refine=partitioning.refine,
                                   split=partitioning.split,
                                   split_vectors=int(partitioning.split_vectors),
                                   epochs=int(partitioning.epochs)),
        allocation=AllocationOptions(enabled=bool(allocate_ranks), eps=float(allocation.eps),
                                     max_rank_moves=int(allocation.max_rank_moves),
                                     grow_trials=int(allocation.grow_trials),
                                     late_trials=int(allocation.late_trials)),
        fit=FitOptions(method=method, max_iter=max_iter, tol=tol),
        symmetric=symmetric, psd=psd, seed=seed, threads=int(threads),
        baselines=bool(baselines))
    return _fit_in_memory(kind, src, rank, opts, rows, cols, ranks, L, progress)


# ------------------------------------------------------------------ the stages of fit_mlr
def _check_choices(method: str, psd: bool, init: str, partition: str, backend: str) -> None:
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


def _check_settings(partitioning: Any, allocation: Any, dask: Any
                    ) -> tuple[Partitioning, Allocation, DaskSettings]:
    """The settings groups, defaults filled in, each checked."""
    groups = (partitioning if partitioning is not None else Partitioning(),
              allocation if allocation is not None else Allocation(),
              dask if dask is not None else DaskSettings())
    for group, cls in zip(groups, (Partitioning, Allocation, DaskSettings), strict=True):
        if not isinstance(group, cls):
            raise InputError(f"expected a {cls.__name__}, got {type(group).__name__}")
        group.check()
    return groups


def _check_total(rank: Any, ranks: Sequence[int] | None) -> int:
    """The total rank, from ``rank`` or the sum of ``ranks`` (both given: they must agree)."""
    if rank is None and ranks is None:
        raise InputError("give the total rank or the ranks per level")
    if rank is not None and (not isinstance(rank, int | np.integer) or rank < 1):
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    if ranks is not None and rank is not None and sum(int(r) for r in ranks) != rank:
        raise InputError(f"ranks {list(ranks)} do not sum to rank {rank}")
    return int(rank) if ranks is None else sum(int(r) for r in ranks)


def _open_input(A: Any) -> tuple[str, Any, tuple[int, int]]:
    """What ``A`` is: ``("store", MatrixStore)`` (a store or its path; metadata read only),
    ``("dask", array)``, ``("operator", LinearOperator)`` or ``("dense", float64 array)``
    (checked finite), with its shape (m, n)."""
    if isinstance(A, MatrixStore):
        kind, src = "store", A
    elif isinstance(A, str | Path | os.PathLike):
        kind, src = "store", load_matrix_store(A)
    elif _is_dask(A):
        kind, src = "dask", A
    elif isinstance(A, spla.LinearOperator) and not isinstance(A, np.ndarray):
        kind, src = "operator", A
    else:
        kind, src = "dense", _check_dense(np.asarray(A))
    shape = tuple(src.shape)
    if len(shape) != 2:
        raise InputError(f"A must be 2-D, got shape {shape}")
    return kind, src, (int(shape[0]), int(shape[1]))


def _fixed_hierarchy(hierarchy: Any, partition: str, levels: int | None,
                     ranks: Sequence[int] | None, kind: str, src: Any, m: int, n: int,
                     symmetric: bool) -> tuple[Hierarchy | None, Hierarchy | None, int]:
    """The hierarchy pair when it is not learned (given, stored with the matrix, or dyadic;
    ``None`` otherwise) and the number of levels, all checked against the shape and the
    ranks before any work."""
    rows = cols = None
    if hierarchy is not None:
        rows, cols = _hier_pair(hierarchy, m, n, symmetric)
        if levels is not None and levels != rows.n_levels:
            raise InputError(f"levels={levels} but the hierarchy has {rows.n_levels} levels")
    elif partition == "given":
        if kind != "store" or src.rows is None:
            raise InputError("partition='given' needs a matrix store with stored hierarchies")
        rows, cols = _hier_pair((src.rows, src.cols), m, n, symmetric)
    L = rows.n_levels if rows is not None else (
        levels if levels is not None else (len(ranks) if ranks is not None
                                           else default_levels(m, n)))
    if L < 1:
        raise InputError("levels must be at least 1")
    if ranks is not None and len(ranks) != L:
        raise InputError(f"ranks has {len(ranks)} entries for {L} levels")
    if rows is None and L > 1 and 2 ** (L - 2) > min(m, n):
        raise InputError(f"{L} levels need at least {2 ** (L - 2)} rows and columns")
    if rows is None and (partition == "dyadic" or kind == "operator"):
        rows = Hierarchy.dyadic(m, max(1, L - 1))
        cols = Hierarchy.dyadic(n, max(1, L - 1))
        if L > 1:
            c = atom_counts(rows, cols)
            rows, cols = rows.refine(c), cols.refine(c)
    if rows is not None and ranks is not None:
        _check_ranks(ranks, rows, cols)
    return rows, cols, L


def _engine(kind: str, backend: str, m: int, n: int) -> str:
    """``"dask"`` for dask and store inputs with ``backend="dask"``, or with ``"auto"`` when
    the in-memory pipeline's three m x n arrays would exceed ``DENSE_LIMIT_BYTES``;
    ``"operator"`` for matvec-only input; ``"numpy"`` otherwise."""
    if kind == "operator":
        return "operator"
    if kind in ("store", "dask"):
        big = 3 * m * n * 8 > DENSE_LIMIT_BYTES
        if backend == "dask" or (backend == "auto" and big):
            return "dask"
    elif backend == "dask":
        raise InputError("backend='dask' needs a dask array or a zarr matrix store")
    return "numpy"


def _fit_dask(src: Any, rank: int, L: int, rows: Hierarchy | None, cols: Hierarchy | None,
              ranks: Sequence[int] | None, *, init: str, method: str, symmetric: bool,
              psd: bool,
              allocate_ranks: bool, max_iter: int, tol: float, seed: int, client: Any,
              baselines: bool, partitioning: Partitioning, dask: DaskSettings,
              progress: Callable[[str, dict[str, Any]], None] | None) -> MLRMatrix:
    """The Dask engine: the hierarchy and ranks learned (:func:`mlr_dask.fit.learn_dask.
    learn_mlr_dask`) or, with a fixed hierarchy, the factors fitted at the given (or
    starting) ranks (:func:`mlr_dask.fit.dask.fit_mlr_dask`); the epochs of the final fit are
    ALS iterations unless ``method="bcd"`` or ``psd``; then, with ``baselines``, low rank and
    low rank + diagonal in chunks of the same size (:mod:`mlr_dask.fit.baselines_dask`).
    Memory: chunks and blocks."""
    chunks = dask.chunk_items
    if rows is None:
        from mlr_dask.fit.learn_dask import LearnOptions, default_block_items, learn_mlr_dask

        if init not in ("best", "bottom", "uniform"):
            raise InputError(f"init {init!r} is not available on the Dask path: "
                             "'best', 'bottom' or 'uniform'")
        if ranks is not None:
            raise InputError("ranks are learned on the Dask path: give the total rank "
                             "only, or a hierarchy with the ranks")
        lo = LearnOptions(
            init=init, block_items=int(dask.block_items) if dask.block_items is not None
            else default_block_items(client), sample_items=int(dask.sample_items),
            q=int(dask.power_iters), balanced=partitioning.balanced,
            refine=partitioning.refine, split=partitioning.split,
            n_vectors=int(partitioning.split_vectors), grow_per_step=int(dask.grow_per_step),
            exchange_steps=int(dask.exchange_steps), symmetric=symmetric, psd=psd,
            seed=int(seed), method="bcd" if method == "bcd" else "als",
            reorder=dask.reorder, scratch=dask.scratch)
        M = learn_mlr_dask(src, rank, L, opts=lo, max_iter=max_iter, tol=tol,
                           chunk_items=dask.chunk_items, client=client, progress=progress)
        if chunks is None:  # the learned fit's chunks: no larger than a block
            chunks = min(4096, lo.block_items)
    else:
        M = _fit_fixed_dask(src, rank, rows, cols, ranks, method=method, psd=psd,
                            allocate_ranks=allocate_ranks, max_iter=max_iter, tol=tol,
                            seed=seed, client=client, dask=dask, progress=progress)
    if baselines:
        from mlr_dask.fit.baselines_dask import with_baselines

        M = with_baselines(M, src, rank, psd=psd, tol=tol, client=client, chunk_items=chunks,
                           q=dask.power_iters, seed=seed, progress=progress)
    return M


def _fit_fixed_dask(src: Any, rank: int, rows: Hierarchy, cols: Hierarchy,
                    ranks: Sequence[int] | None, *, method: str, psd: bool,
                    allocate_ranks: bool, max_iter: int, tol: float, seed: int, client: Any,
                    dask: DaskSettings,
                    progress: Callable[[str, dict[str, Any]], None] | None) -> MLRMatrix:
    """The factors of a fixed hierarchy on the Dask path, at the given ranks or the starting
    allocation (no rank allocation there)."""
    from mlr_dask.fit.dask import fit_mlr_dask

    m, n = (int(s) for s in src.shape)
    caps = rank_caps(rows.boundaries, cols.boundaries)
    rk = list(ranks) if ranks is not None else initial_ranks(
        rank, caps, rows.has_atoms and cols.n_blocks[-1] == min(m, n))
    M = fit_mlr_dask(src, rows, cols, rk, psd=psd, max_iter=max_iter, tol=tol, client=client,
                     chunk_items=dask.chunk_items, q=dask.power_iters, seed=seed,
                     method="bcd" if method == "bcd" or psd else "als", progress=progress)
    if allocate_ranks:
        M.history_["notes"] = ["rank allocation is not run on the Dask path: the starting "
                               "ranks were kept"]
    return M


def _fit_in_memory(kind: str, src: Any, rank: int, opts: Options, rows: Hierarchy | None,
                   cols: Hierarchy | None, ranks: Sequence[int] | None, L: int,
                   progress: Callable[[str, dict[str, Any]], None] | None) -> MLRMatrix:
    """The numpy engine: ``src`` loaded in original order (stores and dask arrays), then the
    stages of :func:`mlr_dask.fit.pipeline.run`. Memory: about three m x n arrays."""
    import time

    t0 = time.perf_counter()
    if kind == "store":
        A = _check_dense(src.dense_original())
    elif kind == "dask":
        A = _check_dense(np.asarray(src.compute()))
    else:
        A = src
    if opts.symmetric:
        _warn_if_asymmetric(A)
    load_s = time.perf_counter() - t0
    M = pipeline.run(A, rank, opts, Reporter(progress), rows=rows, cols=cols,
                     ranks=None if ranks is None else [int(r) for r in ranks],
                     levels=L if rows is None else None)
    M.history_["seconds"]["load"] = load_s
    M.history_["seconds"]["total"] += load_s
    return M
