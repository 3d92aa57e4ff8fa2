"""Choosing the structure of a factor model from the data: a feature hierarchy learned from the
training correlations (``hierarchy="learn"``) and greedy rank selection (``ranks="auto"``).

*Learned hierarchy.* The correlation matrix ``C`` (n x n) of the training data is split top
down: every group of the finest level so far is cut in two by the project's spectral splitter
(:func:`mlr_dask.fit.partition.split_block` on ``C o C`` restricted to the group, symmetric,
at the cut of smallest normalized cut, each side keeping at least ``MIN_GROUP`` features when
the group allows it), ``levels - 1`` times. Correlated features land in the same groups. For a
dask input ``C`` is computed on the cluster (one pass); the splits run on the driver. Cost
O(N n^2) for ``C`` plus the eigenvectors of each group's block.

*Ranks.* Greedy, like the MLR rank allocation: starting from rank 1 at the root and 0 below,
each round tries one more factor at every level (each group's rank capped at its size), each
trial an EM warm-started from the current parameters (the new factor starts small and random),
and takes the move with the best log-likelihood on a validation split (``VALIDATION`` of the
samples, drawn with ``random_state``); it stops after ``PATIENCE + 1`` rounds in a row that do
not raise the best score by more than ``MIN_GAIN`` nats per sample, and returns the best ranks
seen. The held-out likelihood is used rather than an information
criterion because the loadings of a multilevel model are not all identifiable (rotations within
groups, a group's factor against its parent's), which makes the parameter count of AIC/BIC
ambiguous, while the held-out likelihood measures the generalization the model is chosen for.
With a distributed client active the trials of a round run as futures. Ranks per group are not
searched (a level's rank applies to all its groups, capped by their sizes).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy

__all__ = ["learn_hierarchy", "auto_ranks", "VALIDATION", "MIN_GAIN", "MIN_GROUP"]

#: Fraction of the samples held out to choose the ranks.
VALIDATION = 0.25
#: Smallest gain of the held-out log-likelihood per sample for a rank move to be kept.
MIN_GAIN = 1e-3
#: Smallest group a learned split creates (when the group allows it).
MIN_GROUP = 2
#: EM iterations of each warm-started rank trial.
TRIAL_ITER = 300
#: Trials start from the current parameters (else from the SVD start).
WARM = True
#: Each round also tries adding half the level's current rank (escapes plateaus).
BIG_MOVES = True
#: Rounds without a gain the search goes on for before it stops (noise in the validation score
#: can hide a gain one move further); the best ranks seen are returned.
PATIENCE = 2
#: Largest number of rounds of the greedy rank search.
MAX_ROUNDS = 200


def _as_matrix(Y: Any, what: str) -> Any:
    """Numpy or dask (N, n) array in original order from an array, DataArray or dask array."""
    from mlr_dask.fm.labels import is_dataarray

    if is_dataarray(Y):
        Y = Y.transpose("sample", "feature").data
    if isinstance(Y, str):
        raise InputError(f"{what} needs an array or DataArray input, not a store path")
    return Y


def correlations(Y: Any) -> np.ndarray:
    """(n, n) correlation matrix of the columns of Y (numpy or dask; NaN entries ignored:
    filled with the column mean). Constant columns get zero correlations."""
    if type(Y).__module__.startswith("dask"):
        import dask.array as da

        Yd = Y.astype(np.float64)
        m = da.nanmean(Yd, axis=0)
        Yc = da.where(da.isnan(Yd), 0.0, Yd - m)
        S = np.asarray((Yc.T @ Yc).compute())
    else:
        Yn = np.asarray(Y, dtype=np.float64)
        Yc = Yn - np.nanmean(Yn, axis=0)
        Yc = np.where(np.isnan(Yc), 0.0, Yc)
        S = Yc.T @ Yc
    d = np.sqrt(np.diag(S))
    d = np.where(d > 0, d, np.inf)
    return S / d[:, None] / d[None, :]


def learn_hierarchy(Y: Any, levels: int, *, array: str | None = None,
                    standardize: bool = False, seed: int = 0) -> Hierarchy:
    """Hierarchy of ``levels`` factor levels over the features of Y (N, n) (module docstring).
    ``standardize`` is accepted for symmetry: correlations are scale free either way."""
    from mlr_dask.fit.partition import split_block

    del array, standardize
    Y = _as_matrix(Y, "hierarchy='learn'")
    n = int(Y.shape[1])
    C = correlations(Y)
    rng = np.random.default_rng(seed)
    perm = np.arange(n)
    bounds = [np.array([0, n])]
    for _ in range(levels - 1):
        prev = bounds[-1]
        order = np.arange(n)
        new = [0]
        for k in range(prev.size - 1):
            a, b = int(prev[k]), int(prev[k + 1])
            if b - a < 2:
                new.append(b)
                continue
            idx = perm[a:b]
            o, c, _, _ = split_block(C[np.ix_(idx, idx)], symmetric=True, balanced=False,
                                     power=2, min_size=min(MIN_GROUP, (b - a) // 2), rng=rng)
            order[a:b] = a + o
            new += [a + c, b]
        perm = perm[order]
        bounds.append(np.asarray(new))
    return Hierarchy(bounds, perm, level_names=[f"learned{i}" for i in range(levels)])


def _grow(F: np.ndarray, old_tree: Any, new_tree: Any, D: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    """Loadings for ``new_tree`` (one level with one more column) from ``F`` of ``old_tree``
    (hierarchy order): old columns copied, new ones small and random."""
    Fn = np.zeros((new_tree.n, new_tree.rank))
    for lvl in range(new_tree.n_levels):
        a0, a1 = old_tree.span(lvl)
        b0, b1 = new_tree.span(lvl)
        k = min(a1 - a0, b1 - b0)
        Fn[:, b0:b0 + k] = F[:, a0:a0 + k]
        if b1 - b0 > k:
            Fn[:, b0 + k:b1] = rng.standard_normal((new_tree.n, b1 - b0 - k)) * \
                np.sqrt(D)[:, None] * 0.1
    Fn[~new_tree.col_mask] = 0.0
    # a group newly given a factor whose old column was masked: fill it too
    fresh = new_tree.col_mask & (Fn == 0.0)
    Fn[fresh] = (rng.standard_normal(int(fresh.sum())) *
                 np.broadcast_to(np.sqrt(D)[:, None] * 0.1, Fn.shape)[fresh])
    return Fn


def _trial(params: dict, h: Hierarchy, spec: list, Ytr: np.ndarray, Yva: np.ndarray,
           start: tuple[np.ndarray, np.ndarray] | None) -> tuple[float, np.ndarray, np.ndarray]:
    """Fit ``spec`` on Ytr (hierarchy order, identity-perm ``h``) from ``start`` (F, D) or
    the SVD start; returns (validation log-likelihood per sample, F, D)."""
    from sklearn.exceptions import ConvergenceWarning

    from mlr_dask.fm.model import MultilevelFactorModel

    m = MultilevelFactorModel(h, spec, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m._fit_fixed(Ytr, h, spec, None, array=None, checkpoint=None, checkpoint_every=0,
                     resume=False, callback=None, start=start, publish=False)
    return m.score(Yva), m._state.F.copy(), m._state.D.copy()


def auto_ranks(model: Any, Y: Any, hier: Any, *, array: str | None = None
               ) -> tuple[list[int], list[dict]]:
    """Greedy ranks per level for ``model``'s settings on Y (module docstring). Returns the
    ranks (one per factor level, for :func:`mlr_dask.fm.model.make_tree`) and the trials
    (``ranks``, ``validation`` log-likelihood per sample, ``accepted``)."""
    from mlr_dask import events
    from mlr_dask.fm.dask import _client
    from mlr_dask.fm.inputs import as_feature_data
    from mlr_dask.fm.model import make_tree

    if isinstance(Y, str):
        raise InputError("ranks='auto' needs an array or DataArray input, not a store path")
    data = as_feature_data(Y, hier, array=array, allow_nan=True)
    if data.is_dask:
        Yh = np.asarray(data.Y.compute(), dtype=np.float64)
    else:
        Yh = np.asarray(data.Y, dtype=np.float64)
    N = Yh.shape[0]
    n_va = int(round(VALIDATION * N))
    if n_va < 2 or N - n_va < 2:
        raise InputError(f"ranks='auto' needs more samples than {N}")
    hh = data.hierarchy
    h = Hierarchy(hh.boundaries, level_names=hh.level_names)  # hierarchy order: identity
    n_factor = h.n_levels - 1 if (h.has_atoms and h.n_levels > 1) else h.n_levels
    rng = np.random.default_rng(model.random_state)
    idx = rng.permutation(N)
    Yva, Ytr = Yh[idx[:n_va]], Yh[idx[n_va:]]
    params = {"max_iter": min(TRIAL_ITER, int(model.max_iter)), "tol": float(model.tol),
              "init": model.init, "random_state": model.random_state,
              "assume_centered": model.assume_centered, "standardize": model.standardize,
              "chunk_size": model.chunk_size}
    spec = [1] + [0] * (n_factor - 1)
    best, F, D = _trial(params, h, spec, Ytr, Yva, None)
    tree = make_tree(h, spec)[0]
    trials = [{"ranks": list(spec), "validation": best, "accepted": True}]
    best_seen, best_spec, stale = best, list(spec), 0
    client = _client()
    events.publish("fm-ranks", step=0, total=None, ranks=list(spec), validation=best)
    for rnd in range(1, MAX_ROUNDS + 1):
        cands = []
        for lvl in range(n_factor):
            for inc in sorted({1, max(1, spec[lvl] // 2)} if BIG_MOVES else {1}):
                s2 = list(spec)
                s2[lvl] += inc
                t2 = make_tree(h, s2)[0]
                if all(np.array_equal(a, b) for a, b in zip(t2.group_ranks, tree.group_ranks,
                                                               strict=True)):
                    continue  # every group of the level is at its cap
                if any(c[0] == s2 for c in cands):
                    continue
                cands.append((s2, t2, (_grow(F, tree, t2, D, rng), D) if WARM else None))
        if not cands:
            break
        if client is not None:
            futs = [client.submit(_trial, params, h, s2, Ytr, Yva, st, pure=False)
                    for s2, _, st in cands]
            results = client.gather(futs)
        else:
            results = [_trial(params, h, s2, Ytr, Yva, st) for s2, _, st in cands]
        k = int(np.argmax([r[0] for r in results]))
        gain = results[k][0] > best_seen + MIN_GAIN
        for j, ((s2, _, _), r) in enumerate(zip(cands, results, strict=True)):
            trials.append({"ranks": list(s2), "validation": float(r[0]),
                           "accepted": bool(j == k)})
        cur, F, D = results[k]
        spec, tree = cands[k][0], cands[k][1]
        events.publish("fm-ranks", step=rnd, total=None, ranks=list(spec), validation=cur)
        if gain:
            best_seen, best_spec, stale = cur, list(spec), 0
        else:
            stale += 1
            if stale > PATIENCE:
                break
    return best_spec, trials
