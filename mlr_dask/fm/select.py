"""Choosing the structure of a factor model from the data: a feature hierarchy learned from the
training correlations (``hierarchy="learn"``) and greedy rank selection (``ranks="auto"``).

*Learned hierarchy.* The correlation matrix ``C`` (n x n) of the training data is split top
down: every group of the finest level so far is cut in two by the project's spectral splitter
(:func:`mlr_dask.fit.partition.split_block` on ``C o C`` restricted to the group, symmetric,
at the cut of smallest normalized cut, each side keeping at least ``MIN_GROUP`` features when
the group allows it), ``levels - 1`` times. Correlated features land in the same groups. For a
dask input ``C`` is computed on the cluster (one pass); the splits run on the driver. Cost
O(N n^2) for ``C`` plus the eigenvectors of each group's block.

*Ranks and shrinkage.* Chosen by the held-out log-likelihood of K-fold cross-validation (K =
:func:`n_folds`: 5 below ``SMALL_N`` samples, else 3; the samples split at random, seeded by
``random_state``; the score of a choice is the held-out log-likelihood per sample over all
folds), then the model is refitted on all the data with the choice. The chosen shrinkage is
scaled by (K - 1) / K for that refit: a shrinkage ``a`` on m samples is the weight of ``a m``
prior samples (:mod:`mlr_dask.fm.moments`), and the same prior weight on the K / (K - 1) times
larger data is that fraction. Greedy, like the MLR rank allocation, in two phases:

1. with the dense trials and a single-group first level (the root): factor analysis first,
   the root alone at the ranks of ``ROOT_GRID`` in turn, without shrinkage, each trial
   warm-started from the one before, until ``ROOT_PATIENCE`` ranks in a row score below the
   best (the model with the root alone is factor analysis, so the search starts from the
   factor model that cross-validation picks); with the shrinkage
   searched, every value of ``SHRINKAGE_GRID`` is then tried at those ranks (see ``ONE_SE``);
   then, from there, rounds of whole-level moves (a climb from rank 1 found choices that
   scored better on one fold only and cost most of the search): each round tries one factor
   more, half the current rank more and one factor less at every level, and one factor less
   at a level with one more at the level below (factor analysis puts every factor at the
   root: the way down to factors of groups), each group's rank capped at its size; each trial
   an EM per fold warm-started from the current parameters of that fold (a new factor starts
   small and random), and takes the best move not tried before; it stops after
   ``PATIENCE + 1`` rounds in a row that do not raise the best score by more than
   ``MIN_GAIN`` nats per sample, and goes back to the best choice seen. Otherwise (the
   chunked trials, or several groups at the top): from rank 1 at the top level and 0 below,
   level rounds at the shrinkage ``SHRINKAGE_START``, the shrinkage grid, level rounds again;
2. per group (levels of several groups): every group's rank one up and one down; when some
   moves pay, the best one is taken, or all the paying ones together when that scores better;
   rounds until none pays, at most ``GROUP_ROUNDS``. A move to fewer factors pays when it
   scores above the current choice at all, one to more factors by ``MIN_GAIN``.
3. after a search that began with the root phase, its choice is returned only when its paired
   gain over the folds against the factor analysis model of that phase (the root alone at
   its chosen rank and shrinkage) exceeds the standard error of that gain (``KEEP_FA``);
   otherwise that factor analysis model is returned.

The held-out likelihood is used rather than an information criterion because the loadings of
a multilevel model are not all identifiable (rotations within groups, a group's factor
against its parent's), which makes the parameter count of AIC/BIC ambiguous, while the
held-out likelihood measures the generalization the model is chosen for. Cross-validation
rather than one validation split because the choice of a single split varies from split to
split. With complete data the search never touches the samples again after one pass: each
fold is held as n rows with the fold's training covariance (standardized, then shrunk) and n
rows with its held-out covariance about the training mean (:mod:`mlr_dask.fm.moments`), so
one trial costs O(n^2 R) per EM iteration whatever N, and a dask input or data store is read
once on the cluster; with missing values the folds are the samples themselves (no shrinkage).
With a distributed client active the trials of a round (every candidate and fold) run as
futures. Cost: rounds x candidates x K warm EM fits of at most ``TRIAL_ITER`` (chunked) or
``DENSE_TRIAL_ITER`` iterations (``MOVE_TRIAL_ITER`` for the rank moves); phase 2 has two
candidates per group. With at most :data:`~mlr_dask.fm.dense.DENSE_MAX_FEATURES` features
and complete data, the final fit starts from the dense EM on the covariance of all the data
(:func:`dense_start`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy

__all__ = ["learn_hierarchy", "auto_ranks", "FOLDS", "SHRINKAGE_GRID", "MIN_GAIN", "MIN_GROUP"]

#: Folds of the cross-validation of ``ranks="auto"`` and ``shrinkage="auto"`` (see
#: :func:`n_folds`).
FOLDS = 3
#: Folds below ``SMALL_N`` samples: a training fold keeps 4/5 of the samples instead of 2/3, so
#: the choice is made at a sample size nearer the final fit's (with few samples the best size
#: of the model and its shrinkage change fast with the sample size), and each choice is scored
#: on more fits. Above, three folds are close enough and cost less.
FOLDS_SMALL = 5
SMALL_N = 1000
#: Values of the shrinkage tried, all at once at the best ranks of the first level phase (from
#: ``SHRINKAGE_START``). Log-spaced: on nearly collinear features (correlations near 1) even
#: 1e-3 costs likelihood, while on noisy ones 0.05 or more pays.
SHRINKAGE_GRID = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
SHRINKAGE_START = 0.02
#: One-standard-error rule on paired fold differences: a shrinkage is only chosen over none
#: when its mean gain over the folds exceeds the standard error of that gain (the folds are
#: the same for every candidate, so the differences are paired and the fold-to-fold offsets
#: cancel). The held-out likelihood of a few samples is heavy tailed: one fold holding a few
#: outlying samples moves the mean score of every candidate, and a gain made on that fold
#: alone is not taken.
ONE_SE = True
#: The same rule for rank moves (a move replaces the best choice only when its paired gain is
#: significant). Off: with three folds it kept the search from the small per-group gains it
#: is there to find, and on the breast cancer data it moved the held-out score by under 0.1.
ONE_SE_MOVES = False
#: The final choice of a search that started with the root phase is compared with the factor
#: analysis model that phase found (the root alone at its CV rank and shrinkage, a member of
#: every family searched): the search's choice is returned only when its paired gain over the
#: folds exceeds its standard error (:func:`_pays`), else the factor analysis model. The many
#: moves of the search are each taken on a mean gain, and on heavy-tailed data (a few outlying
#: samples in one fold) a chain of them can drift to a choice that wins on one fold only; this
#: one test against the model the search started from keeps it from losing to plain factor
#: analysis by that drift.
KEEP_FA = True
#: Ranks of the root tried alone (factor analysis) at the start of the search (those below the
#: number of features).
ROOT_GRID = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300)
#: The root phase stops after this many ranks of the grid in a row below its best.
ROOT_PATIENCE = 2
#: Rounds of per-group moves after the per-level search.
GROUP_ROUNDS = 3
#: A feature's variance in a training fold is floored at this fraction of its overall one (a
#: feature nearly constant in a fold, such as a rarely lit pixel, would otherwise get a tiny
#: noise variance there and its held-out values would swamp the score of every choice).
FOLD_VAR_FLOOR = 0.5
#: Smallest gain of the held-out log-likelihood per sample for a rank move to be kept (a
#: move to a nested model with fewer factors needs only a gain above zero).
MIN_GAIN = 1e-2
#: Smallest group a learned split creates (when the group allows it).
MIN_GROUP = 2
#: EM iterations of each warm-started rank trial.
TRIAL_ITER = 200
#: EM iterations of each trial of the dense EM (cheaper iterations).
DENSE_TRIAL_ITER = 500
#: EM iterations of each trial of a rank move (warm-started from a fitted choice: the loadings
#: kept, the new factor small; slower to converge than the root trials, whose root is solved
#: exactly). A move's score is then a lower bound of its converged one, the same budget for
#: every candidate: the comparison errs towards the current choice.
MOVE_TRIAL_ITER = 150
#: Relative tolerance of the trials of the dense EM (at most the model's ``tol``). With the
#: exact root step the trials stop within about 1e-2 nats per sample of their optimum at
#: this tolerance (the size of ``MIN_GAIN``); plain EM crept on nearly collinear features and
#: needed 1e-7.
TRIAL_TOL = 1e-6
#: Rounds without a gain the search goes on for before it stops (noise in the validation score
#: can hide a gain one move further); the best ranks seen are returned.
PATIENCE = 3
#: Largest number of rounds of the greedy rank search.
MAX_ROUNDS = 200


def _as_matrix(Y: Any, array: str | None) -> Any:
    """Numpy or dask (N, n) array in original order from an array, DataArray, dask array or
    data-store path (array ``array`` of the store, read lazily)."""
    import os

    from mlr_dask.fm.labels import is_dataarray

    if is_dataarray(Y):
        Y = Y.transpose("sample", "feature").data
    if isinstance(Y, str | os.PathLike):
        from mlr_dask.fm.inputs import open_data

        Y = open_data(Y, array)[0]
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

    del standardize
    Y = _as_matrix(Y, array)
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


def n_folds(N: int) -> int:
    """Folds of the search for N samples: ``FOLDS_SMALL`` below ``SMALL_N`` samples, else
    ``FOLDS``."""
    return FOLDS_SMALL if N < SMALL_N else FOLDS


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


def _pays(gain: np.ndarray) -> bool:
    """Whether per-fold gains (K,) have a mean above their standard error."""
    g = np.asarray(gain, dtype=np.float64)
    se = float(np.std(g, ddof=1) / np.sqrt(g.size)) if g.size > 1 else 0.0
    return float(g.mean()) > se


def _fewer(spec: list[np.ndarray], than: list[np.ndarray]) -> bool:
    """Whether the group ranks ``spec`` are nowhere above those of ``than`` and somewhere
    below (a model nested in the other)."""
    le = all(bool(np.all(a <= b)) for a, b in zip(spec, than, strict=True))
    return le and any(bool(np.any(a < b)) for a, b in zip(spec, than, strict=True))


def _better(result: tuple, score: float, folds: np.ndarray, simpler: bool = False) -> bool:
    """Whether a trial ``result`` (score, states, fold scores) beats a choice of ``score`` and
    fold scores ``folds``: by more than ``MIN_GAIN`` (by anything when the trial's model is
    ``simpler``, nested in the choice's: fewer factors are kept unless they cost likelihood)
    and, with ``ONE_SE_MOVES``, by a mean paired gain over the folds above its standard error
    (:func:`_pays`)."""
    if result[0] <= score + (0.0 if simpler else MIN_GAIN):
        return False
    return not ONE_SE_MOVES or _pays(np.asarray(result[2]) - np.asarray(folds))


def _level_max(spec: list[np.ndarray]) -> list[int]:
    return [int(g.max()) for g in spec]


def _key(spec: list[np.ndarray], alpha: float) -> tuple:
    return (tuple(tuple(int(x) for x in g) for g in spec), float(alpha))


class _Folds:
    """The K folds of the search: per fold the training rows (per shrinkage, cached) and the
    validation rows, and the constant of the validation score (Jacobian of the fold's
    standardization); ``route`` is ``"moments"`` (complete data: n equivalent rows per fold,
    :mod:`mlr_dask.fm.moments`) or ``"rows"`` (missing values: the samples themselves)."""

    def __init__(self, model: Any, data: Any, folds: int, seed: int) -> None:
        from mlr_dask.fm import moments as mom

        self.centre = not model.assume_centered
        Y = data.Y
        N = int(Y.shape[0])
        if N < 2 * folds:
            raise InputError(f"ranks='auto' needs at least {2 * folds} samples, got {N}")
        self.missing = not data.is_dask and bool(np.isnan(np.asarray(Y)).any())
        self.K = folds
        if self.missing:
            self.route = "rows"
            fid = mom._fold_of_samples(N, folds, seed)
            Yn = np.asarray(Y, dtype=np.float64)
            self.tr = [Yn[fid != k] for k in range(folds)]
            self.va = [Yn[fid == k] for k in range(folds)]
            self.weight = np.array([float(np.sum(fid == k)) for k in range(folds)])
            self.jac = np.zeros(folds)
            return
        from mlr_dask.fm.dense import DENSE_MAX_FEATURES

        self.route = "dense" if int(Y.shape[1]) <= DENSE_MAX_FEATURES else "moments"
        fm = mom.fold_moments(Y, folds, seed=seed, centre=self.centre)
        zero = None if self.centre else np.zeros(fm.shift.size)
        S_all, _, _ = fm.covariance(list(range(folds)), zero)
        floor = FOLD_VAR_FLOOR * np.diag(S_all)
        self.S_tr, self.va, self.jac, self.weight = [], [], np.zeros(folds), np.zeros(folds)
        for k in range(folds):
            others = [i for i in range(folds) if i != k]
            S_tr, mu_tr, _ = fm.covariance(others, zero)
            S_va, _, m_va = fm.covariance([k], mu_tr if self.centre else zero)
            d = np.sqrt(np.maximum(np.diag(S_tr), floor))
            d = np.where(d > 0, d, 1.0)
            S_tr = S_tr / np.outer(d, d)
            S_tr[np.diag_indices_from(S_tr)] = np.where(floor > 0, 1.0, 0.0)  # floored
            self.S_tr.append(S_tr)
            S_va = S_va / np.outer(d, d)
            self.va.append(S_va if self.route == "dense" else mom.equivalent_rows(S_va))
            self.jac[k] = float(np.log(d).sum())
            self.weight[k] = m_va
        self._rows: dict[float, list[np.ndarray]] = {}

    def train(self, alpha: float) -> list[np.ndarray]:
        from mlr_dask.fm import moments as mom

        if self.route == "rows":
            return self.tr
        if alpha not in self._rows:
            self._rows[alpha] = [mom.shrink(S, alpha) if self.route == "dense" else
                                 mom.equivalent_rows(mom.shrink(S, alpha)) for S in self.S_tr]
        return self._rows[alpha]

    def params(self, model: Any) -> dict:
        if self.route == "dense":
            return {"dense": True, "max_iter": min(DENSE_TRIAL_ITER, int(model.max_iter)),
                    "tol": min(float(model.tol), TRIAL_TOL)}
        p = {"max_iter": min(TRIAL_ITER, int(model.max_iter)), "tol": float(model.tol),
             "init": model.init, "random_state": model.random_state,
             "chunk_size": model.chunk_size, "shrinkage": 0.0}
        if self.route == "rows":
            p.update(assume_centered=model.assume_centered, standardize=model.standardize)
        else:
            p.update(assume_centered=True, standardize=False)
        return p


def _trial(params: dict, h: Hierarchy, spec: list, Xtr: np.ndarray, Xva: np.ndarray,
           start: tuple[np.ndarray, np.ndarray] | None) -> tuple[float, np.ndarray, np.ndarray]:
    """Fit ``spec`` on the training rows Xtr (hierarchy order, identity-perm ``h``) from
    ``start`` (F, D) or the SVD start; returns (validation log-likelihood per sample of Xva,
    F, D). With ``params["dense"]``, Xtr and Xva are covariances (n, n) and the fit is the
    dense EM (:mod:`mlr_dask.fm.dense`)."""
    from sklearn.exceptions import ConvergenceWarning

    if params.get("dense"):
        from mlr_dask.fm.dense import DenseEM
        from mlr_dask.fm.model import make_tree

        em = DenseEM(make_tree(h, spec)[0], Xtr)
        F, D = em.start() if start is None else start
        F, D, _ = em.fit(F, D, max_iter=params["max_iter"], tol=params["tol"])
        return em.loglike(F, D, Xva), F, D

    from mlr_dask.fm.model import MultilevelFactorModel

    m = MultilevelFactorModel(h, spec, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m._fit_fixed(Xtr, h, spec, None, array=None, checkpoint=None, checkpoint_every=0,
                     resume=False, callback=None, start=start, publish=False)
    return m.score(Xva), m._state.F.copy(), m._state.D.copy()


def dense_start(model: Any, Y: Any, hier: Any, ranks: Any, alpha: float, *,
                array: str | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Start ``(F, D)`` (original feature order, data units) for the final fit after the search:
    the dense EM (:mod:`mlr_dask.fm.dense`, with its exact root step and start) run to
    ``model.tol`` on the covariance of all of Y (shrunk by ``alpha``, standardized with
    ``model.standardize``); the data EM then only confirms it. None for more than
    :data:`~mlr_dask.fm.dense.DENSE_MAX_FEATURES` features or with missing values. Cost: one
    pass for the covariance, then O(n^3) per iteration."""
    from mlr_dask.fm import moments as mom
    from mlr_dask.fm.dense import DENSE_MAX_FEATURES, DenseEM
    from mlr_dask.fm.inputs import as_feature_data
    from mlr_dask.fm.model import make_tree

    data = as_feature_data(Y, hier, array=array, allow_nan=True)
    hh = data.hierarchy
    if hh.n > DENSE_MAX_FEATURES:
        return None
    if not data.is_dask and bool(np.isnan(np.asarray(data.Y)).any()):
        return None
    S, _, _ = mom.moments(data.Y, centre=not model.assume_centered)
    sd = np.sqrt(np.diag(S))
    if np.any(sd <= 0):
        return None
    scale = sd if model.standardize else np.ones_like(sd)
    S = mom.shrink(S / np.outer(scale, scale), float(alpha))
    h = Hierarchy(hh.boundaries, level_names=hh.level_names)
    em = DenseEM(make_tree(h, ranks)[0], S)
    try:
        F, D = em.start()
        F, D, _ = em.fit(F, D, max_iter=int(model.max_iter), tol=float(model.tol))
    except np.linalg.LinAlgError:
        return None
    Fo, Do = np.empty_like(F), np.empty_like(D)
    Fo[hh.perm] = F * scale[:, None]
    Do[hh.perm] = D * scale ** 2
    return Fo, Do


def auto_ranks(model: Any, Y: Any, hier: Any, *, array: str | None = None,
               ranks: Any = None, shrinkage: float | None = None
               ) -> tuple[list[list[int]], float, list[dict]]:
    """Greedy ranks (per level, then per group) and shrinkage for ``model``'s settings on Y
    (module docstring); ``ranks`` given: only the shrinkage is searched; ``shrinkage`` given:
    only the ranks. Returns the ranks (per level the rank of each group, for
    :func:`mlr_dask.fm.model.make_tree`), the shrinkage and the trials (dicts ``ranks`` (the
    level ranks), ``group_ranks``, ``shrinkage``, ``move``, ``validation`` (mean held-out
    log-likelihood per sample over the folds), ``accepted`` (the move taken in its round)).
    Y: array, dask array, DataArray or data-store path (``array``)."""
    from mlr_dask import events
    from mlr_dask.fm.dask import _client
    from mlr_dask.fm.inputs import as_feature_data
    from mlr_dask.fm.model import make_tree

    data = as_feature_data(Y, hier, array=array, allow_nan=True)
    hh = data.hierarchy
    h = Hierarchy(hh.boundaries, level_names=hh.level_names)  # hierarchy order: identity
    n_factor = h.n_levels - 1 if (h.has_atoms and h.n_levels > 1) else h.n_levels
    seed = 0 if model.random_state is None else int(model.random_state)
    folds = _Folds(model, data, n_folds(int(data.Y.shape[0])), seed)
    if folds.missing and shrinkage not in (None, 0.0):
        raise InputError("shrinkage > 0 needs complete data (Y contains NaN)")
    grid = (0.0,) if folds.missing else SHRINKAGE_GRID
    search_alpha = shrinkage is None and len(grid) > 1
    alpha = (SHRINKAGE_START if search_alpha else 0.0) if shrinkage is None else float(shrinkage)
    params = folds.params(model)
    hf = make_tree(h, [1] * n_factor)[0].hierarchy
    sizes = [hf.block_sizes(lvl).astype(np.int64) for lvl in range(n_factor)]
    search_ranks = ranks is None
    if search_ranks:
        spec = [np.minimum(np.full(s.size, 1 if lvl == 0 else 0), s)
                for lvl, s in enumerate(sizes)]
    else:
        spec = [np.asarray(g, dtype=np.int64) for g in make_tree(h, ranks)[0].group_ranks]
    rng = np.random.default_rng(seed)
    client = _client()
    trials: list[dict] = []

    def evaluate(cands: list[tuple[list, float, list | None, str]],
                 max_iter: int | None = None) -> list[tuple]:
        p = params if max_iter is None else {**params,
                                             "max_iter": min(params["max_iter"], max_iter)}
        jobs = [(ci, k) for ci in range(len(cands)) for k in range(folds.K)]
        args = [(p, h, [g.copy() for g in cands[ci][0]], folds.train(cands[ci][1])[k],
                 folds.va[k], None if cands[ci][2] is None else cands[ci][2][k])
                for ci, k in jobs]
        if client is not None:
            res = client.gather([client.submit(_trial, *a, pure=False) for a in args])
        else:
            res = [_trial(*a) for a in args]
        out = []
        for ci in range(len(cands)):
            rs = res[ci * folds.K:(ci + 1) * folds.K]
            sc = np.array([r[0] for r in rs]) - folds.jac
            score = float(np.dot(sc, folds.weight) / folds.weight.sum())
            out.append((score, [(r[1], r[2]) for r in rs], sc))
        return out

    def record(cands: list, results: list, taken: int) -> None:
        for j, (c, r) in enumerate(zip(cands, results, strict=True)):
            trials.append({"ranks": _level_max(c[0]), "group_ranks": [g.tolist() for g in c[0]],
                           "shrinkage": float(c[1]), "move": c[3], "validation": float(r[0]),
                           "folds": [float(x) for x in r[2]],
                           "accepted": bool(j == taken)})

    def grown(spec2: list, cur: list, states: list) -> list:
        t_old, t_new = make_tree(h, cur)[0], make_tree(h, spec2)[0]
        return [(_grow(F, t_old, t_new, D, rng), D) for F, D in states]

    if search_ranks and folds.route == "dense" and sizes[0].size == 1 and search_alpha:
        alpha = 0.0  # the root phase runs without shrinkage
    first = [(spec, alpha, None, "start")]
    res0 = evaluate(first)
    record(first, res0, 0)
    cur_score, states = res0[0][:2]
    best = (cur_score, [g.copy() for g in spec], alpha, states)
    best_f = res0[0][2]  # the fold scores of the best choice
    events.publish("fm-ranks", step=0, total=None, ranks=_level_max(spec), shrinkage=alpha,
                   validation=cur_score)
    step = 0

    def level_moves(spec: list, down: bool) -> list[tuple[list, str]]:
        out = []
        for lvl in range(n_factor if search_ranks else 0):
            top = int(spec[lvl].max())
            for inc in sorted({1, max(1, top // 2)}):
                s2 = [g.copy() for g in spec]
                s2[lvl] = np.minimum(np.maximum(spec[lvl], top) + inc, sizes[lvl])
                if np.array_equal(s2[lvl], spec[lvl]):
                    continue
                if not any(_key(x, 0) == _key(s2, 0) for x, _ in out):
                    out.append((s2, f"level {lvl} +{inc}"))
            s2 = [g.copy() for g in spec]
            s2[lvl] = np.maximum(spec[lvl] - 1, 0)
            if down and top > 0 and any(int(g.max()) > 0 for g in s2):
                out.append((s2, f"level {lvl} -1"))
            if down and top > 0 and lvl + 1 < n_factor:  # a factor handed down a level
                s3 = [g.copy() for g in s2]
                s3[lvl + 1] = np.minimum(np.maximum(spec[lvl + 1], int(spec[lvl + 1].max()))
                                         + 1, sizes[lvl + 1])
                if not np.array_equal(s3[lvl + 1], spec[lvl + 1]):
                    out.append((s3, f"level {lvl} -1, level {lvl + 1} +1"))
        return out

    def take(cands: list, results: list, k: int) -> None:
        nonlocal best, best_f, step
        score, st = results[k][:2]
        step += 1
        events.publish("fm-ranks", step=step, total=None, ranks=_level_max(cands[k][0]),
                       shrinkage=cands[k][1], validation=score)
        if _better(results[k], best[0], best_f, _fewer(cands[k][0], best[1])):
            best = (score, [g.copy() for g in cands[k][0]], cands[k][1], st)
            best_f = results[k][2]

    def level_phase(down: bool, frm: tuple | None = None) -> None:
        """Rounds of whole-level moves from ``frm`` (score, spec, shrinkage, states; default
        the best choice so far) at its shrinkage (``down``: also one factor less, and one
        handed down a level); it stops when its own best has not risen for ``PATIENCE + 1``
        rounds."""
        local, spec, alpha, states = best if frm is None else frm
        stale, seen = 0, {_key(spec, alpha)}
        for _ in range(MAX_ROUNDS):
            cands = [(s2, alpha, grown(s2, spec, states), mv) for s2, mv in level_moves(spec, down)
                     if _key(s2, alpha) not in seen]
            if not cands:
                return
            seen.update(_key(c[0], c[1]) for c in cands)
            results = evaluate(cands, MOVE_TRIAL_ITER)
            k = int(np.argmax([r[0] for r in results]))
            record(cands, results, k)
            take(cands, results, k)
            spec, states = [g.copy() for g in cands[k][0]], results[k][1]
            stale = 0 if results[k][0] > local + MIN_GAIN else stale + 1
            local = max(local, results[k][0])
            if stale > PATIENCE:
                return

    def shrinkage_phase() -> bool:
        """Every value of the grid at the best ranks; the best one among those that score at
        least as well as no shrinkage on every fold (see ``ONE_SE``). Returns whether the
        shrinkage was searched."""
        nonlocal best, best_f, step
        _, spec, _, states = best
        if not search_alpha:
            return False
        cands = [(spec, a2, states, f"shrinkage {a2:g}") for a2 in grid]
        results = evaluate(cands)
        base = results[grid.index(0.0)][2] if (ONE_SE and 0.0 in grid) else None
        ok = [j for j, r in enumerate(results) if base is None or grid[j] == 0.0
              or _pays(r[2] - base)]
        k = max(ok, key=lambda j: results[j][0])
        record(cands, results, k)
        best = (results[k][0], [g.copy() for g in spec], grid[k], results[k][1])
        best_f = results[k][2]
        step += 1
        events.publish("fm-ranks", step=step, total=None, ranks=_level_max(spec),
                       shrinkage=grid[k], validation=results[k][0])
        return True

    def root_phase() -> bool:
        """Factor analysis first: the root alone at the ranks of ``ROOT_GRID`` below its size
        in turn, at the start's shrinkage (none when it is searched), each warm-started from
        the one before, until ``ROOT_PATIENCE`` ranks in a row score below the best of them;
        that best becomes the current choice when it beats the start. Only with the dense
        trials and a single-group first level."""
        nonlocal best, best_f, step
        if not (search_ranks and folds.route == "dense" and sizes[0].size == 1):
            return False
        cur, cur_states = spec, res0[0][1]
        top, stale = res0[0][0], 0
        for k in ROOT_GRID:
            if k <= int(spec[0][0]):
                continue
            if k >= int(sizes[0][0]) or stale >= ROOT_PATIENCE:
                break
            s2 = [np.zeros_like(g) for g in spec]
            s2[0][:] = k
            cands = [(s2, alpha, grown(s2, cur, cur_states), f"root {k}")]
            results = evaluate(cands)
            better = results[0][0] > top
            record(cands, results, 0 if better else -1)
            if better:
                top, stale = results[0][0], 0
                best = (results[0][0], [g.copy() for g in s2], alpha, results[0][1])
                best_f = results[0][2]
            else:
                stale += 1
            cur, cur_states = s2, results[0][1]
            step += 1
            events.publish("fm-ranks", step=step, total=None, ranks=_level_max(s2),
                           shrinkage=alpha, validation=results[0][0])
        return True

    # phase 1: factor analysis (the root alone at every rank), the shrinkage, whole levels;
    # without the root phase, whole levels at the starting shrinkage first
    rooted = root_phase()
    ref = None
    if rooted:
        shrinkage_phase()
        ref = (best, best_f)  # factor analysis: the root alone at its CV rank and shrinkage
        level_phase(True)
    else:
        if search_ranks:
            level_phase(False)
        if shrinkage_phase() and search_ranks:
            level_phase(True)
    # phase 2: one group at a time (+1 / -1), the levels of several groups
    for _ in range(GROUP_ROUNDS if search_ranks else 0):
        score0, spec0, alpha, states0 = best
        f0 = best_f
        cands = []
        for lvl in range(n_factor):
            if sizes[lvl].size < 2:
                continue
            for g in range(sizes[lvl].size):
                for d in (1, -1):
                    r2 = int(spec0[lvl][g]) + d
                    if r2 < 0 or r2 > sizes[lvl][g]:
                        continue
                    s2 = [x.copy() for x in spec0]
                    s2[lvl][g] = r2
                    if all(int(x.max()) == 0 for x in s2):
                        continue
                    cands.append((s2, alpha, grown(s2, spec0, states0),
                                  f"level {lvl} group {g} {d:+d}"))
        if not cands:
            break
        results = evaluate(cands, MOVE_TRIAL_ITER)
        gains = [j for j, r in enumerate(results)
                 if _better(r, score0, f0, _fewer(cands[j][0], spec0))]
        k = max(gains, key=lambda j: results[j][0]) if gains else -1
        record(cands, results, k)
        if not gains:
            break
        take(cands, results, k)
        if len(gains) > 1:  # all the paying moves together
            comb = [x.copy() for x in spec0]
            for j in gains:
                for lvl in range(n_factor):
                    ch = cands[j][0][lvl] != spec0[lvl]
                    comb[lvl][ch] = cands[j][0][lvl][ch]
            c2 = [(comb, alpha, grown(comb, spec0, states0), "paying group moves together")]
            r2 = evaluate(c2, MOVE_TRIAL_ITER)
            ok = _better(r2[0], best[0], best_f, _fewer(comb, best[1]))
            record(c2, r2, 0 if ok else -1)
            if ok:
                take(c2, r2, 0)
    if ref is not None and KEEP_FA and _key(best[1], best[2]) != _key(ref[0][1], ref[0][2]) \
            and not _pays(np.asarray(best_f) - np.asarray(ref[1])):
        # the search's choice against factor analysis: kept only on a significant gain
        record([(ref[0][1], ref[0][2], None, "factor analysis kept")],
               [(ref[0][0], None, ref[1])], 0)
        best = ref[0]
    _, spec, alpha, _ = best
    if search_alpha:  # the same prior weight in samples for the K/(K-1) times larger data
        alpha = alpha * (folds.K - 1) / folds.K
    return [g.tolist() for g in spec], float(alpha), trials
