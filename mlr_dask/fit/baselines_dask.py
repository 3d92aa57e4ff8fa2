"""The simple models inside the MLR class, fitted on the Dask path at the same storage as an
MLR fit, so that the Dask path too never returns a model worse than either:

- low rank: one level of rank ``r`` (randomized SVD through passes over the chunks);
- low rank + diagonal: ranks ``(r - 1, 1)`` over the root and a level of ``min(m, n)`` atoms.

Both are fixed-hierarchy fits by :func:`mlr_dask.fit.dask.fit_mlr_dask`, whose chunks are read
in the store's own order (contiguous reads), so each costs a few passes over A and memory
bounded by a chunk. :func:`keep_best` compares an MLR fit with them and reports all three errors
in ``history_``, as the in-memory pipeline does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mlr_dask.fit.partition import atom_counts
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix

__all__ = ["fit_baselines_dask", "keep_best", "with_baselines", "BASELINE_EPOCHS"]

#: Epochs of each baseline fit: low rank converges in one or two (the power iterations do the
#: work), low rank + diagonal alternates between its two levels.
BASELINE_EPOCHS = {"lowrank": 2, "lowrank_diag": 8}


def _stored_order(src: Any, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Original item at each stored position of rows and columns (identity for Dask arrays and
    stores in original order)."""
    rows = getattr(src, "rows", None)
    cols = getattr(src, "cols", None)
    if rows is None or cols is None:
        return np.arange(m), np.arange(n)
    return rows.perm, cols.perm


def fit_baselines_dask(
    src: Any,
    rank: int,
    *,
    psd: bool = False,
    tol: float = 1e-3,
    client: Any = None,
    chunk_items: int | None = None,
    q: int = 2,
    seed: int = 0,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, MLRMatrix]:
    """Low rank (rank ``rank``) and low rank + diagonal (``rank - 1`` and 1 on the atoms) fits
    of ``src`` (a :class:`~mlr_dask.fit.store.MatrixStore` or a Dask array, (m, n)), each with
    ``(m + n) rank`` numbers (``m rank`` when ``psd``), like an MLR fit of total rank ``rank``.

    The hierarchies follow the store's order, so the tasks read contiguous chunks. The diagonal
    pairs row ``i`` with column ``i`` of the original order; when the store keeps rows and
    columns in different orders, the reads of that fit are scattered (slower, same result).
    Cost: :data:`BASELINE_EPOCHS` epochs of :func:`~mlr_dask.fit.dask.fit_mlr_dask` each
    (an epoch is about ``2 q + 2`` passes over A per level). Returns ``{"lowrank": M,
    "lowrank_diag": M}`` (the second is absent when ``rank`` is 1 and the matrix has one
    row or column).
    """
    from mlr_dask.fit.dask import fit_mlr_dask

    m, n = (int(s) for s in src.shape)
    sr, sc = _stored_order(src, m, n)
    kw = dict(psd=psd, tol=tol, client=client, chunk_items=chunk_items, q=q, seed=seed,
              progress=progress)
    out: dict[str, MLRMatrix] = {}
    out["lowrank"] = fit_mlr_dask(src, Hierarchy([[0, m]], sr), Hierarchy([[0, n]], sc), [rank],
                                  max_iter=BASELINE_EPOCHS["lowrank"], **kw)
    if min(m, n) > 1:
        same = m == n and np.array_equal(sr, sc)
        rows = Hierarchy([[0, m]], sr if same else None)
        cols = Hierarchy([[0, n]], sc if same else None)
        c = atom_counts(rows, cols)
        out["lowrank_diag"] = fit_mlr_dask(src, rows.refine(c), cols.refine(c), [rank - 1, 1],
                                           max_iter=BASELINE_EPOCHS["lowrank_diag"], **kw)
    return out


def keep_best(M: MLRMatrix, baselines: dict[str, MLRMatrix], seconds: float) -> MLRMatrix:
    """The model of lowest relative error among the MLR fit ``M`` and the ``baselines`` (ties
    go to ``M``), with ``history_`` of ``M`` plus ``mlr_rel_error``, ``lowrank_rel_error``,
    ``lowrank_diag_rel_error``, ``returned`` and the baselines' seconds and passes. When a
    baseline wins, its error is appended to ``rel_error`` so that the last entry is always the
    error of the returned model."""
    h = dict(M.history_)
    errs = {"mlr": float(h["rel_error"][-1])}
    for name, B in baselines.items():
        errs[name] = float(B.history_["rel_error"][-1])
    h["mlr_rel_error"] = errs["mlr"]
    h["lowrank_rel_error"] = errs.get("lowrank")
    h["lowrank_diag_rel_error"] = errs.get("lowrank_diag")
    best = min(errs, key=lambda k: (errs[k], k != "mlr"))
    h["returned"] = best
    h["seconds"] = {**h.get("seconds", {}), "baselines": seconds}
    h["seconds"]["total"] = h["seconds"].get("total", 0.0) + seconds
    extra = sum(float(B.history_.get("passes_over_A", 0.0)) for B in baselines.values())
    if "passes" in h:
        h["passes"] = {**h["passes"], "baselines": round(extra, 3)}
    if "passes_over_A" in h:
        h["passes_over_A"] = round(float(h["passes_over_A"]) + extra, 3)
    out = M if best == "mlr" else baselines[best]
    if best != "mlr":
        h["rel_error"] = [*h["rel_error"], errs[best]]
        h["ranks"] = list(out.ranks)
    out.history_ = h
    return out


def with_baselines(M: MLRMatrix, src: Any, rank: int, **kw: Any) -> MLRMatrix:
    """Fit the baselines of ``src`` (see :func:`fit_baselines_dask`, same keywords) and return
    :func:`keep_best` of them and ``M``."""
    t0 = time.perf_counter()
    base = fit_baselines_dask(src, rank, **kw)
    return keep_best(M, base, time.perf_counter() - t0)
