"""The multilevel factor model estimator (scikit-learn style).

``Sigma = F_hat F_hat^T + D``: every group of every factor level of the hierarchy has ``r_l``
factors loading on its features; ``D`` is diagonal. Fitted by the one-pass EM of
:mod:`mlr_dask.fm.em` on numpy data in memory or on Dask (dask arrays, zarr stores), with the
same per-chunk code.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.validation import validate_data

from mlr_dask.errors import InputError
from mlr_dask.fm import chunk as ck
from mlr_dask.fm import em
from mlr_dask.fm import missing as missing_mod
from mlr_dask.fm.inputs import FeatureData, as_feature_data, factor_levels
from mlr_dask.fm.labels import FeatureLabels, factor_coords, is_dataarray, level_names
from mlr_dask.fm.tree import FactorTree, TreeCholesky, leaf_path_factor, tree_cholesky
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.io import atomic_group, open_group
from mlr_dask.mlr import MLRMatrix

__all__ = ["MultilevelFactorModel", "MODEL_FORMAT", "MODEL_VERSION"]

MODEL_FORMAT = "fm-model"
MODEL_VERSION = 1

#: Defaults of ``max_iter`` and ``tol``, the same on the command line.
MAX_ITER = 500
TOL = 1e-6

#: Target size of one feature chunk (all samples) in bytes, float64.
CHUNK_BYTES = 64 * 2**20


class MultilevelFactorModel(TransformerMixin, BaseEstimator):
    """Multilevel factor model fitted by EM (a scikit-learn transformer and density model).

    Parameters
    ----------
    hierarchy : the feature hierarchy: a Hierarchy of the features (original order ->
        ``perm``), levels root first, a last level of singletons (if present) being the
        diagonal, which takes no rank; for an xarray input a list of coordinate names (along
        ``feature``) holding level labels, coarse to fine; ``"learn"`` to learn it from the
        training correlations (:func:`mlr_dask.fm.select.learn_hierarchy`, ``levels`` factor
        levels); ``None``: from a data store, or one group of all features for an array (plain
        factor analysis).
    ranks : one entry per factor level, an int (the rank of every group of the level, capped
        at each group's size: see ``rank_caps_``) or a sequence with the rank of each group of
        the level; an int alone is used for every level; ``"auto"`` chooses them greedily by
        held-out log-likelihood (:func:`mlr_dask.fm.select.auto_ranks`).
    levels : number of factor levels of a learned hierarchy (``hierarchy="learn"``).
    max_iter : maximum number of EM iterations (in total, counting resumed ones); a fit that
        stops there warns (``sklearn.exceptions.ConvergenceWarning``).
    tol : stop when the average log-likelihood per sample grows by less than ``tol`` times its
        absolute value in one iteration.
    init : ``"svd"`` (leading singular directions of the centred data by a randomized range
        finder, O(N n R): level l takes the next r_l of them, D the leftover variance floored
        at 1% of the variance) or ``"random"``.
    random_state : seed of the random start and of the sketch of the SVD start.
    assume_centered : the data are already centred (no mean is fitted).
    standardize : fit on the features divided by their train standard deviation (``scale_``);
        the fitted parameters, scores and samples are in the original units (the
        log-likelihood includes the Jacobian ``-sum log scale_``).
    chunk_size : features per chunk (whole leaves); default from 64 MiB per chunk.
    shrinkage : ``a`` in [0, 1): fit the model to the sample covariance with its correlations
        shrunk by ``1 - a``, ``(1 - a) S + a diag(S)`` (a penalized likelihood, the posterior
        mode under an inverse-Wishart-type prior; :mod:`mlr_dask.fm.moments`); ``"auto"``:
        chosen by K-fold held-out log-likelihood (:func:`mlr_dask.fm.select.auto_ranks`);
        ``None`` (default): ``"auto"`` with ``ranks="auto"``, else 0 (maximum likelihood).
        A fit with ``a > 0`` needs complete data; it forms S (n x n) in one pass (on the
        cluster for dask inputs, O(N n^2)) and runs the EM on n rows with covariance ``S_a``
        (O(n^2 R) per iteration), so it suits up to a few thousand features.

    Attributes (after ``fit``)
    ----------
    hierarchy_ : Hierarchy of the factor levels; ranks_ : loading columns of each level (the
        largest rank of its groups, at least 1); group_ranks_ : per level the rank of each
        group (0: no factor); rank_trials_ : the trials of ``ranks="auto"`` or
        ``shrinkage="auto"``; shrinkage_ : the shrinkage used; search_seconds_ : time of that
        search; rank_caps_ : the groups
        whose rank was lowered to their size (dicts ``level, group, size, requested, rank``).
    loadings_ : (n_features, R) compressed loadings in original feature order: row j holds the
        loadings of j's group at every level (columns ``offsets_[l]:offsets_[l+1]``; columns
        past the rank of j's group are zero). A DataArray (feature, factor) when fitted on a
        DataArray.
    noise_variance_ : (n_features,) D; mean_ : (n_features,) (DataArrays likewise).
    scale_ : (n_features,) train standard deviations (``standardize=True``) or None.
    loglike_ : average train log-likelihood per sample after each iteration (observed entries
        only, with missing values); loglike_init_ : at the start; n_iter_ ; converged_ ;
        n_samples_ ; n_features_in_ ; feature_labels_ : the input's coordinates along
        ``feature`` (:class:`mlr_dask.fm.labels.FeatureLabels`) or None.

    Missing values (NaN, in memory): fitted by the exact EM of :mod:`mlr_dask.fm.missing`;
    ``score``, ``score_samples`` and ``transform`` use the observed entries, ``impute`` fills
    in the missing ones.

    Acceleration: the complete-data EM runs SQUAREM cycles of 3 iterations
    (:func:`mlr_dask.fm.em.run_em`): every recorded iteration is still an EM step and the
    log-likelihood never decreases. Checkpoints are written at the multiples of
    ``checkpoint_every`` that end a cycle (multiples of 3) or the fit, so a resumed fit retraces
    the uninterrupted one.

    Noise floor: after every M-step ``D_j >= max(1e-8 var_j, 1e-12)`` (``chunk.FLOOR_REL``).
    """

    def __init__(
        self,
        hierarchy: Hierarchy | Sequence[str] | str | None = None,
        ranks: int | Sequence[Any] | str = 1,
        *,
        levels: int | None = None,
        max_iter: int = MAX_ITER,
        tol: float = TOL,
        init: str = "svd",
        random_state: int | None = None,
        assume_centered: bool = False,
        standardize: bool = False,
        chunk_size: int | None = None,
        shrinkage: float | str | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.ranks = ranks
        self.levels = levels
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.assume_centered = assume_centered
        self.standardize = standardize
        self.chunk_size = chunk_size
        self.shrinkage = shrinkage

    def __sklearn_tags__(self):  # noqa: ANN204
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64"]
        return tags

    # ------------------------------------------------------------------ setup
    def _check_params(self) -> None:
        if not isinstance(self.max_iter, int | np.integer) or self.max_iter < 0:
            raise InputError(f"max_iter must be a non-negative integer, got {self.max_iter!r}")
        if not isinstance(self.tol, int | float | np.floating) or not np.isfinite(self.tol) \
                or self.tol < 0:
            raise InputError(f"tol must be >= 0, got {self.tol!r}")
        if self.init not in ("svd", "random"):
            raise InputError(f"init must be 'svd' or 'random', got {self.init!r}")
        if self.chunk_size is not None and int(self.chunk_size) < 1:
            raise InputError("chunk_size must be at least 1")
        h = self.hierarchy
        if isinstance(h, str) and h == "learn":
            if not isinstance(self.levels, int | np.integer) or self.levels < 1:
                raise InputError("hierarchy='learn' needs levels= (number of factor levels, "
                                 f">= 1), got {self.levels!r}")
        elif self.levels is not None:
            raise InputError("levels= is only used with hierarchy='learn'")
        if isinstance(self.ranks, str) and self.ranks != "auto":
            raise InputError(f"ranks must be ints, per-group lists or 'auto', got {self.ranks!r}")
        a = self.shrinkage
        if not (a is None or (isinstance(a, str) and a == "auto") or (
                isinstance(a, int | float | np.floating | np.integer) and 0.0 <= float(a) < 1.0)):
            raise InputError(f"shrinkage must be a number in [0, 1), 'auto' or None, got {a!r}")

    def _chunks(self, tree: FactorTree, n_samples: int) -> np.ndarray:
        size = self.chunk_size or max(1, CHUNK_BYTES // (8 * max(n_samples, 1)))
        return tree.hierarchy.leaf_chunks(int(size))

    def _runner(self, data: FeatureData, tree: FactorTree, Y: Any = None):
        bounds = self._chunks(tree, data.shape[0])
        if data.is_dask:
            from mlr_dask.fm.dask import DaskRunner

            return DaskRunner(data.Y, tree, bounds, data.zarr_source)
        return em.NumpyRunner(data.Y if Y is None else Y, tree, bounds)

    def _input(self, Y: Any, *, reset: bool, min_samples: int) -> Any:
        """Array-likes through scikit-learn's validation (dtype, shape, feature count);
        DataArrays, dask arrays and store paths as they are."""
        if isinstance(Y, str | os.PathLike) or is_dataarray(Y) or \
                type(Y).__module__.startswith("dask"):
            return Y
        try:
            return validate_data(self, Y, reset=reset, ensure_all_finite="allow-nan",
                                 ensure_min_samples=min_samples, dtype=[np.float64, np.float32])
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(str(exc)) from None

    def prepare(self, Y: Any, *, array: str | None = None) -> tuple[FeatureData, FactorTree]:
        """Check the inputs and parameters for a fit with a given hierarchy and ranks (no work
        on the data): returns the data in hierarchy order and the factor tree. Raises
        InputError."""
        self._check_params()
        if self.ranks == "auto" or (isinstance(self.hierarchy, str)
                                    and self.hierarchy == "learn"):
            raise InputError("prepare() needs a given hierarchy and ranks")
        Y = self._input(Y, reset=False, min_samples=2) if not hasattr(self, "_state") else Y
        hier = self._default_hierarchy(Y)
        data = as_feature_data(Y, hier, array=array, allow_nan=True)
        return data, make_tree(data.hierarchy, self.ranks)[0]

    def _default_hierarchy(self, Y: Any) -> Any:
        if self.hierarchy is None and not isinstance(Y, str | os.PathLike):
            n = int(np.shape(Y)[1]) if not is_dataarray(Y) else int(Y.sizes["feature"])
            return Hierarchy.from_boundaries([[0, n]])
        return self.hierarchy

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        Y: Any,
        y: Any = None,
        *,
        array: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 0,
        resume: bool = False,
        callback: Callable[[dict], None] | None = None,
    ) -> MultilevelFactorModel:
        """Fit on ``Y`` (N samples x n features, original feature order; numpy, dask,
        DataArray or zarr data-store path; NaN marks missing entries of in-memory data).
        ``array`` names the array of a data store (default ``Y``). With ``checkpoint`` (a path)
        the state is saved every ``checkpoint_every`` iterations (see
        :mod:`mlr_dask.fm.checkpoint`) and ``resume`` continues from the latest one.
        ``callback(info)`` after each iteration with ``info = {"iteration", "loglike",
        "seconds"}``; each iteration is also published as an ``"em"`` event."""
        from mlr_dask.fm import select

        self._check_params()
        Y = self._input(Y, reset=True, min_samples=2)
        labels = FeatureLabels.from_dataarray(Y) if is_dataarray(Y) else None
        hier = self._default_hierarchy(Y)
        t0 = time.perf_counter()
        if isinstance(hier, str) and hier == "learn":
            hier = select.learn_hierarchy(Y, int(self.levels), array=array,
                                          standardize=bool(self.standardize))
        self.learn_seconds_ = time.perf_counter() - t0
        ranks = self.ranks
        alpha = self.shrinkage
        if alpha is None:
            alpha = "auto" if isinstance(ranks, str) else 0.0
        self.rank_trials_ = None
        t1 = time.perf_counter()
        if isinstance(ranks, str) or alpha == "auto":
            ranks, alpha, self.rank_trials_ = select.auto_ranks(
                self, Y, hier, array=array, ranks=None if isinstance(ranks, str) else ranks,
                shrinkage=None if alpha == "auto" else float(alpha))
        self.shrinkage_ = float(alpha)
        self.search_seconds_ = time.perf_counter() - t1
        start = None
        if self.rank_trials_ is not None and not resume:  # searched: the dense start
            start = select.dense_start(self, Y, hier, ranks, self.shrinkage_, array=array)
        if self.shrinkage_ > 0:
            self._fit_shrunk(Y, hier, ranks, labels, array=array, checkpoint=checkpoint,
                             callback=callback, start=start)
        else:
            self._fit_fixed(Y, hier, ranks, labels, array=array, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every, resume=resume, callback=callback,
                            start=start)
        return self

    def _fit_shrunk(self, Y: Any, hier: Any, ranks: Any, labels: FeatureLabels | None, *,
                    array: str | None, checkpoint: Any,
                    callback: Callable[[dict], None] | None,
                    start: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """The fit with shrinkage ``self.shrinkage_ > 0``: S and the mean in one pass, then the
        EM on the n equivalent rows of ``shrink(S)`` (:mod:`mlr_dask.fm.moments`), in the units
        of the standardized features with ``standardize``; parameters and log-likelihoods are
        reported in the units of Y (the log-likelihoods are those of ``S_a``, the fitted
        objective)."""
        from mlr_dask.fm import moments as mom

        if checkpoint is not None:
            raise InputError("checkpoints are not supported with shrinkage > 0")
        if isinstance(Y, str | os.PathLike):
            from mlr_dask.fm.inputs import open_data

            Ym, h_store, _ = open_data(Y, array)
            hier = h_store if hier is None else hier
        elif is_dataarray(Y):
            Ym = Y.transpose("sample", "feature").data
        else:
            Ym = Y
        if not type(Ym).__module__.startswith("dask") and np.isnan(np.asarray(Ym)).any():
            raise InputError("shrinkage > 0 needs complete data (Y contains NaN)")
        S, mean, N = mom.moments(Ym, centre=not self.assume_centered)
        sd = np.sqrt(np.diag(S))
        em.check_variances(mean, np.diag(S) * N, N)
        scale = sd if self.standardize else None
        Sw = S / np.outer(sd, sd) if scale is not None else S
        X = mom.equivalent_rows(mom.shrink(Sw, self.shrinkage_))
        Xin: Any = X
        if is_dataarray(Y):  # keep the feature coordinates (level labels)
            import xarray as xr

            Xin = xr.DataArray(X, dims=("sample", "feature"), coords={
                c: v for c, v in Y.coords.items() if v.dims == ("feature",)})
        self._fit_fixed(Xin, hier, ranks, labels, array=None, checkpoint=None,
                        checkpoint_every=0, resume=False, callback=callback,
                        equivalent=(mean, scale, N), start=start)

    def _fit_fixed(self, Y: Any, hier: Any, ranks: Any, labels: FeatureLabels | None, *,
                   array: str | None, checkpoint: Any, checkpoint_every: int, resume: bool,
                   callback: Callable[[dict], None] | None,
                   start: tuple[np.ndarray, np.ndarray] | None = None,
                   publish: bool = True,
                   equivalent: tuple[np.ndarray, np.ndarray | None, int] | None = None) -> None:
        """The fit for a given hierarchy and ranks; ``start`` optional ``(F, D)`` in
        original order (a warm start); ``publish``: an ``"em"`` event per iteration;
        ``equivalent = (mean, scale, N)`` (original order; ``scale`` or None): Y holds rows
        with the (shrunk) covariance of N samples of that mean, divided by ``scale``
        (:meth:`_fit_shrunk`)."""
        from mlr_dask.fm import checkpoint as cp

        t_fit = time.perf_counter()
        data = as_feature_data(Y, hier, array=array, allow_nan=True)
        tree, caps = make_tree(data.hierarchy, ranks)
        N = data.shape[0]
        h = tree.hierarchy
        names = (labels.feature if labels is not None and labels.feature is not None
                 else np.arange(tree.n))[h.perm]
        centre = not self.assume_centered and equivalent is None
        missing = not data.is_dask and bool(np.isnan(data.Y).any())
        scale_h = None
        if equivalent is not None:
            scale_h = None if equivalent[1] is None else equivalent[1][h.perm]
        elif self.standardize:
            scale_h = _feature_std(data)
            data = FeatureData(data.Y / scale_h, data.hierarchy, data.is_dask, data.source)
        meta = {"ranks": list(tree.ranks), "n_features": tree.n, "n_samples": N,
                "bounds": [b.tolist() for b in tree.bounds],
                "group_ranks": [g.tolist() for g in tree.group_ranks],
                "assume_centered": bool(self.assume_centered),
                "standardize": bool(self.standardize)}
        if checkpoint_every and checkpoint is None:
            raise InputError("checkpoint_every needs a checkpoint path")
        if missing and checkpoint is not None:
            raise InputError("checkpoints are not supported with missing values")
        resumed = None
        if checkpoint is not None:
            resumed = cp.prepare(checkpoint, resume=resume, meta=meta, create=False)
        if missing:
            missing_mod.check_missing(data.Y)
        t0 = time.perf_counter()
        Yfill = None
        if missing:
            obs = np.isfinite(data.Y)
            m0 = np.nanmean(data.Y, axis=0) if centre else np.zeros(tree.n)
            Yfill = np.where(obs, data.Y, m0)
        runner = self._runner(data, tree, Yfill)
        seed = 0 if self.random_state is None else int(self.random_state)
        if resumed is not None:
            state, est = em.resume_from(runner, tree, centre, resumed)
        elif start is not None:
            state, est = em.warm_start(runner, tree, centre, start[0][h.perm] / (
                1.0 if scale_h is None else scale_h[:, None]),
                start[1][h.perm] / (1.0 if scale_h is None else scale_h ** 2), names)
        elif self.init == "svd":
            state, est = em.svd_start(runner, tree, centre, seed=seed, names=names)
        else:
            state, est = em.random_start(runner, tree, centre,
                                         np.random.default_rng(self.random_state), names)
        if checkpoint is not None and resumed is None:
            cp.prepare(checkpoint, resume=False, meta=meta, create=True)
        self.start_seconds_ = time.perf_counter() - t0
        times: list[float] = []
        last = [time.perf_counter()]
        max_iter = int(self.max_iter)

        def on_iter(st: em.FMState) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            if checkpoint is not None and checkpoint_every and st.n_iter % checkpoint_every == 0 \
                    and (st.n_iter % em.CYCLE == 0 or st.n_iter == max_iter):
                cp.write_checkpoint(checkpoint, st)
            ll = float(st.loglike[-1])
            if publish:
                _publish(st.n_iter, max_iter, ll, ranks=[int(r) for r in tree.ranks],
                         n_blocks=[int(g) for g in tree.n_groups])
            if callback is not None:
                callback({"iteration": st.n_iter, "loglike": ll, "seconds": times[-1]})
            last[0] = time.perf_counter()

        if missing:
            state, done = _run_missing(tree, state, data.Y, max_iter=max_iter,
                                       tol=float(self.tol), centre=centre, callback=on_iter)
            chol = None
        else:
            state, est, done = em.run_em(runner, tree, state, est, max_iter=max_iter,
                                         tol=float(self.tol), callback=on_iter,
                                         accelerate=True)
            chol = est.chol
        if scale_h is not None:
            state = _unscale(state, scale_h)
            chol = None
        if equivalent is not None:
            state = replace(state, mean=np.asarray(equivalent[0], dtype=np.float64)[h.perm])
            N = int(equivalent[2])
        self.iter_seconds_ = times
        self.converged_ = bool(done)
        self.n_passes_ = getattr(runner, "passes", None)
        self.missing_ = bool(missing)
        self.feature_labels_ = labels
        self._set_state(tree, state, N)
        self.scale_ = None if scale_h is None else self._to_original(scale_h)
        self.rank_caps_ = list(caps)
        self._chol = chol
        self.fit_seconds_ = time.perf_counter() - t_fit
        if not done and max_iter > 0 and state.n_iter >= max_iter:
            warnings.warn(
                f"EM stopped at max_iter={max_iter} before reaching tol={self.tol:g} (last "
                f"relative change {_rel_change(state):.2e}); raise max_iter or tol",
                ConvergenceWarning, stacklevel=3)

    def _set_state(self, tree: FactorTree, state: em.FMState, n_samples: int) -> None:
        h = tree.hierarchy
        self._tree = tree
        self._state = state
        self.hierarchy_ = h
        self.ranks_ = tuple(tree.ranks)
        self.group_ranks_ = [g.copy() for g in tree.group_ranks]
        self.offsets_ = np.asarray(tree.offsets)
        self.n_features_in_ = tree.n
        self.n_samples_ = int(n_samples)
        self.n_iter_ = int(state.n_iter)
        self.loglike_ = list(state.loglike)
        self.loglike_init_ = float(state.loglike_init)
        self._chol = None
        self._precision = None
        if not hasattr(self, "feature_labels_"):
            self.feature_labels_ = None

    @property
    def loadings_(self) -> Any:
        """(n, R) compressed loadings, original order (a DataArray when fitted on one)."""
        self._check_fitted()
        F = self._to_original(self._state.F)
        lab = self.feature_labels_
        if lab is None:
            return F
        return lab.loadings(F, level_names(self.hierarchy_, self._tree.n_levels), self.ranks_)

    @property
    def noise_variance_(self) -> Any:
        """(n,) noise variances D, original order (a DataArray when fitted on one)."""
        self._check_fitted()
        return self._features(self._to_original(self._state.D), "noise_variance")

    @property
    def mean_(self) -> Any:
        """(n,) means, original order (a DataArray when fitted on one)."""
        self._check_fitted()
        return self._features(self._to_original(self._state.mean), "mean")

    def _features(self, x: np.ndarray, name: str) -> Any:
        lab = self.feature_labels_
        return x if lab is None else lab.features(x, name)

    def _to_original(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        out[self.hierarchy_.perm] = x
        return out

    def _check_fitted(self) -> None:
        if "_state" not in self.__dict__:
            raise NotFittedError("this MultilevelFactorModel is not fitted yet; call fit first")

    # ------------------------------------------------------------------ small operators
    @property
    def chol_(self) -> TreeCholesky:
        """Tree Cholesky of ``K = I + F_hat^T D^-1 F_hat`` for the fitted parameters."""
        self._check_fitted()
        if self._chol is None:
            tree, st = self._tree, self._state
            plan = ck.make_plan(tree, 0, tree.n)
            part = ck.chunk_stats(np.zeros((0, tree.n)), st.mean, st.FT_chunks(
                np.array([0, tree.n]))[0], st.D, plan)
            K = em.reduce_stats(tree, [part])[0]
            self._chol = tree_cholesky(tree, K)
        return self._chol

    def logdet(self) -> float:
        """``log det Sigma = sum_j log D_j + log det K``, O(n r + tree)."""
        return float(np.log(self._state.D).sum() + self.chol_.logdet)

    def _atoms(self) -> Hierarchy:
        h = self.hierarchy_
        return h.refine(h.block_sizes(-1))

    def get_covariance(self) -> MLRMatrix:
        """``Sigma = F_hat F_hat^T + D`` as a symmetric MLR operator (the factor levels plus a
        singleton level of rank 1 holding ``sqrt(D)``); never a dense n x n."""
        self._check_fitted()
        st = self._state
        B = np.concatenate([st.F, np.sqrt(st.D)[:, None]], axis=1)
        ha = self._atoms()
        return MLRMatrix(ha, ha, (*self.ranks_, 1), B)

    def get_precision(self) -> MLRMatrix:
        """``Sigma^-1 = D^-1 - H_hat H_hat^T`` with ``H_hat = D^-1 F_hat L^-T`` (same sparsity as
        F_hat), as an MLR operator with the same hierarchy: ``B = [-H, D^-1/2]``,
        ``C = [H, D^-1/2]`` (C differs from B by the signs). O(n R^2)."""
        self._check_fitted()
        if self._precision is None:
            tree, st = self._tree, self._state
            leaves = np.arange(tree.n_leaves)
            Lp = leaf_path_factor(tree, self.chol_, leaves)
            A = st.F / st.D[:, None]
            H = np.empty_like(A)
            lb = tree.bounds[-1]
            for i in leaves:
                a, b = int(lb[i]), int(lb[i + 1])
                H[a:b] = np.linalg.solve(Lp[i], A[a:b].T).T
            dinv = (1.0 / np.sqrt(st.D))[:, None]
            ha = self._atoms()
            self._precision = MLRMatrix(ha, ha, (*self.ranks_, 1),
                                        np.concatenate([-H, dinv], axis=1),
                                        np.concatenate([H, dinv], axis=1))
        return self._precision

    def solve(self, b: Any) -> np.ndarray:
        """``Sigma^-1 b`` for b (n,) or (n, k) in original order, O(n R) per column."""
        b = np.asarray(b)
        if b.shape[0] != self.n_features_in_:
            raise InputError(f"b has {b.shape[0]} rows, expected {self.n_features_in_}")
        return self.get_precision() @ b

    # ------------------------------------------------------------------ data methods
    def _score_input(self, Y: Any, array: str | None) -> tuple[FeatureData, Any]:
        """Checked data in hierarchy order for scoring, and the input's sample coordinate
        (None unless a DataArray with one)."""
        self._check_fitted()
        Y = self._input(Y, reset=False, min_samples=1)
        sample = None
        if is_dataarray(Y):
            Y = self._align(Y)
            if "sample" in Y.coords:
                sample = Y.coords["sample"].values
        data = as_feature_data(Y, self.hierarchy_, array=array, allow_nan=True, min_samples=1)
        if data.shape[1] != self.n_features_in_:
            raise InputError(f"Y has {data.shape[1]} features, expected {self.n_features_in_}")
        return data, sample

    def _align(self, Y: Any) -> Any:
        """A DataArray with the fitted feature labels, put in the fitted feature order."""
        if set(Y.dims) != {"sample", "feature"}:
            raise InputError(f"a DataArray needs dims ('sample', 'feature'), got {Y.dims}")
        lab = self.feature_labels_
        if lab is None or lab.feature is None or "feature" not in Y.coords:
            return Y
        have = np.asarray(Y.coords["feature"].values)
        if have.shape == lab.feature.shape and np.array_equal(have, lab.feature):
            return Y
        pos = {v: i for i, v in enumerate(have.tolist())}
        missing = [v for v in lab.feature.tolist() if v not in pos]
        if missing or have.size != lab.feature.size:
            raise InputError(f"the DataArray's features differ from the fitted ones "
                             f"(e.g. {missing[:3]})")
        return Y.isel(feature=[pos[v] for v in lab.feature.tolist()])

    def _estep_on(self, Y: Any, array: str | None = None) -> tuple[Any, Any]:
        """E-step of the fitted parameters on Y: ``(est, sample coordinate)`` with ``est`` an
        :class:`em.EStep` or, when Y has NaN, a :class:`missing.MissingEStep`."""
        data, sample = self._score_input(Y, array)
        st = self._state
        if not data.is_dask and np.isnan(data.Y).any():
            return missing_mod.estep_missing(self._tree, st.F, st.D, st.mean,
                                             np.asarray(data.Y, dtype=np.float64)), sample
        runner = self._runner(data, self._tree)
        b = runner.bounds
        parts = runner.map(ck.task_stats, [em.split(st.mean, b), st.FT_chunks(b),
                                           em.split(st.D, b)], what="score")
        if data.is_dask:
            bad = sum(int(not np.all(np.isfinite(p.ysq_d))) for p in parts)
            if bad:
                raise InputError("Y contains NaN or infinite values (missing values are "
                                 "supported for in-memory data)")
        return em.e_step(self._tree, parts, with_w=False), sample

    def score_samples(self, Y: Any, *, array: str | None = None) -> Any:
        """(N,) log-likelihood of each sample (rows of Y, original feature order; NaN entries
        are missing: the marginal density of the observed ones). A DataArray (sample) for a
        DataArray input."""
        est, sample = self._estep_on(Y, array)
        ll = est.sample_loglike
        if is_dataarray(Y):
            import xarray as xr

            return xr.DataArray(ll, dims=("sample",), name="loglike",
                                coords=None if sample is None else {"sample": sample})
        return ll

    def score(self, Y: Any, y: Any = None, *, array: str | None = None) -> float:
        """Average log-likelihood per sample."""
        return float(np.mean(np.asarray(self.score_samples(Y, array=array))))

    def transform(self, Y: Any, *, array: str | None = None) -> Any:
        """(N, s) posterior means ``E[z | y]`` of all factors, ordered by level, group, then
        factor within the group (``s = sum_l p_l r_l``; the factors past a group's rank are
        zero); NaN entries are missing. A DataArray (sample, factor) with coordinates
        ``level``, ``group``, ``group_label``, ``rank`` along ``factor`` for a DataArray
        input."""
        est, sample = self._estep_on(Y, array)
        Z = self._tree.levels_to_expanded(list(est.Q)).T
        if is_dataarray(Y):
            import xarray as xr

            coords = factor_coords(self._tree, self.hierarchy_, self.feature_labels_)
            if sample is not None:
                coords["sample"] = ("sample", sample)
            return xr.DataArray(Z, dims=("sample", "factor"), coords=coords, name="factors")
        return Z

    def impute(self, Y: Any) -> Any:
        """Y (N, n) with its NaN entries replaced by ``E[y_miss | y_obs]`` under the fitted
        model (original order; a DataArray for a DataArray input). One tree Cholesky per
        missingness pattern; O(N n R)."""
        data, sample = self._score_input(Y, None)
        if data.is_dask:
            raise InputError("impute needs in-memory data")
        st = self._state
        Yh = np.asarray(data.Y, dtype=np.float64)
        if np.isnan(Yh).any():
            Yh = missing_mod.estep_missing(self._tree, st.F, st.D, st.mean, Yh).Yhat
        out = self._to_original_cols(Yh)
        if is_dataarray(Y):
            lab = self.feature_labels_ or FeatureLabels(None, {})
            return lab.samples(out, sample)
        return out

    def _to_original_cols(self, Yh: np.ndarray) -> np.ndarray:
        out = np.empty_like(Yh)
        out[:, self.hierarchy_.perm] = Yh
        return out

    def conditional(self, Y: Any, observed: Any,
                    targets: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Imputation: mean and covariance of the ``targets`` features given the ``observed``
        ones under the fitted Gaussian (features neither observed nor targets are
        marginalized).

        ``Y`` (N, n) or (n,) in original feature order (entries of unobserved features are
        ignored and may be NaN); ``observed`` a boolean mask (n,) or feature indices;
        ``targets`` feature indices, none of them observed (default: all unobserved
        features). Returns ``(mean, cov)``: ``mean`` (N, t) (or (t,) for a single sample),
        ``cov`` (t, t), the same for every sample. Tree solves only; the dense (t, t)
        covariance is the only matrix formed, so t is limited to
        ``conditional.MAX_TARGETS``."""
        from mlr_dask.fm.conditional import conditional_gaussian

        self._check_fitted()
        n = self.n_features_in_
        Y = np.asarray(Y, dtype=np.float64)
        single = Y.ndim == 1
        Y2 = Y[None, :] if single else Y
        if Y2.ndim != 2 or Y2.shape[1] != n:
            raise InputError(f"Y must have {n} features, got shape {Y.shape}")
        obs = np.asarray(observed)
        if obs.dtype == bool:
            if obs.shape != (n,):
                raise InputError(f"the observed mask must have shape ({n},)")
        else:
            idx = obs.astype(np.int64).ravel()
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise InputError("observed feature index out of range")
            obs = np.zeros(n, dtype=bool)
            obs[idx] = True
        tgt = (np.flatnonzero(~obs) if targets is None
               else np.asarray(targets, dtype=np.int64).ravel())
        if tgt.size == 0:
            raise InputError("no target features")
        if tgt.min() < 0 or tgt.max() >= n:
            raise InputError("target feature index out of range")
        if np.any(obs[tgt]):
            raise InputError("targets must not be observed features")
        if not np.all(np.isfinite(Y2[:, obs])):
            raise InputError("Y contains NaN or infinite values at observed features")
        h = self.hierarchy_
        st = self._state
        mean, cov = conditional_gaussian(self._tree, st.F, st.D, st.mean, Y2[:, h.perm],
                                         obs[h.perm], h.iperm[tgt])
        return (mean[0] if single else mean), cov

    def expected_score(self, true_model: MultilevelFactorModel) -> float:
        """Exact expected average log-likelihood per sample of data drawn from
        ``true_model`` (another multilevel factor model on the same features, any hierarchy)
        under this model: ``-(n/2) log 2 pi - (1/2) logdet Sigma - (1/2) tr(Sigma^-1
        Sigma_t) - (1/2) d^T Sigma^-1 d`` with ``d`` the difference of the means. The trace
        goes through the factored forms (``mlr_dask.fm.conditional``); O(n R R_t) plus tree
        solves with ``s_t`` right-hand sides; no n x n matrix."""
        from mlr_dask.fm.conditional import trace_precision_lowrank

        self._check_fitted()
        true_model._check_fitted()
        n = self.n_features_in_
        if true_model.n_features_in_ != n:
            raise InputError(f"the true model has {true_model.n_features_in_} features, "
                             f"expected {n}")
        h, ht = self.hierarchy_, true_model.hierarchy_
        st = self._state
        Ft = true_model._to_original(true_model._state.F)[h.perm]  # this model's order
        where = h.iperm[ht.perm]  # position here of the true model's i-th feature
        groups_t = [[np.sort(where[b[g]:b[g + 1]]) for g in range(b.size - 1)]
                    for b in ht.boundaries]
        tr = trace_precision_lowrank(self._tree, self.chol_, st.F, st.D, Ft, groups_t,
                                     true_model.offsets_)
        tr += float(self.get_precision().diagonal()
                    @ true_model._to_original(true_model._state.D))
        d = true_model._to_original(true_model._state.mean) - self._to_original(st.mean)
        quad = float(d @ self.solve(d))
        return float(-0.5 * (n * em.LOG_2PI + self.logdet() + tr + quad))

    def sample(self, n_samples: int = 1, random_state: Any = None) -> Any:
        """(n_samples, n) draws ``y = mean + F_hat z + sqrt(D) e``, original order; O(n r)
        per sample. A DataArray (sample, feature) with the feature coordinates when the model
        was fitted on a DataArray."""
        self._check_fitted()
        rng = np.random.default_rng(random_state)
        tree, st = self._tree, self._state
        n_samples = int(n_samples)
        Yh = np.tile(st.mean, (n_samples, 1))
        for lvl in range(tree.n_levels):
            o0, o1 = tree.span(lvl)
            b = tree.bounds[lvl]
            for g in range(tree.n_groups[lvl]):
                z = rng.standard_normal((n_samples, o1 - o0))
                Yh[:, b[g]:b[g + 1]] += z @ st.F[b[g]:b[g + 1], o0:o1].T
        Yh += rng.standard_normal(Yh.shape) * np.sqrt(st.D)
        out = self._to_original_cols(Yh)
        lab = self.feature_labels_
        return out if lab is None else lab.samples(out, np.arange(n_samples))

    # ------------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the fitted model to a zarr group (format ``fm-model``, version 1), atomically:
        parameters in the units of the data, group ranks, ``scale`` (standardize) and the
        feature labels (JSON attribute ``labels``)."""
        self._check_fitted()
        st = self._state
        lab = self.feature_labels_
        hier = self.hierarchy if isinstance(self.hierarchy, str | list | tuple) else None
        with atomic_group(path, MODEL_FORMAT, MODEL_VERSION, overwrite=overwrite) as g:
            write_model_group(g, self.hierarchy_, self.ranks_, st.F, st.D, st.mean, {
                "n_iter": self.n_iter_,
                "loglike": list(self.loglike_),
                "loglike_init": self.loglike_init_,
                "n_samples": self.n_samples_,
                "converged": bool(getattr(self, "converged_", False)),
                "group_ranks": [g_.tolist() for g_ in self._tree.group_ranks],
                "scale": None if self.scale_ is None else [float(x) for x in self.scale_],
                "shrinkage": float(getattr(self, "shrinkage_", 0.0)),
                "labels": None if lab is None else lab.to_json(),
                "params": {"max_iter": int(self.max_iter), "tol": float(self.tol),
                           "init": self.init, "assume_centered": bool(self.assume_centered),
                           "standardize": bool(self.standardize),
                           "hierarchy": None if hier is None else
                           (hier if isinstance(hier, str) else list(hier)),
                           "levels": self.levels, "ranks": _jsonable_ranks(self.ranks),
                           "shrinkage": self.shrinkage if self.shrinkage is None or
                           isinstance(self.shrinkage, str) else float(self.shrinkage)},
            })

    @classmethod
    def load(cls, path: str | os.PathLike) -> MultilevelFactorModel:
        """Read a model written by :meth:`save` (or the ``truth`` group of a data store)."""
        g = open_group(path, MODEL_FORMAT, MODEL_VERSION)
        try:
            h = Hierarchy.read_zarr(g["hierarchy"])
            a = dict(g.attrs)
            params = a.get("params", {})
            gr = a.get("group_ranks")
            tree = FactorTree(h, a["ranks"], None if gr is None else
                              [np.asarray(x, dtype=np.int64) for x in gr])
            ranks_param = params.get("ranks", a["ranks"])
            model = cls(h, ranks_param if ranks_param != "auto" else
                        [x.tolist() for x in tree.group_ranks],
                        max_iter=params.get("max_iter", MAX_ITER),
                        tol=params.get("tol", TOL), init=params.get("init", "svd"),
                        assume_centered=params.get("assume_centered", False),
                        standardize=params.get("standardize", False),
                        shrinkage=float(a.get("shrinkage", 0.0)))
            state = em.FMState.from_F(np.asarray(g["F"][:]), D=np.asarray(g["D"][:]),
                               mean=np.asarray(g["mean"][:]), n_iter=int(a.get("n_iter", 0)),
                               loglike=tuple(a.get("loglike", ())),
                               loglike_init=float(a.get("loglike_init", float("nan"))))
        except KeyError as exc:
            raise InputError(f"model store {str(path)!r} is incomplete: missing {exc}") from None
        if state.F.shape != (tree.n, tree.rank) or state.D.shape != (tree.n,):
            raise InputError(f"model store {str(path)!r} has arrays of the wrong shape")
        lab = a.get("labels")
        model.feature_labels_ = None if lab is None else FeatureLabels.from_json(lab)
        model._set_state(tree, state, int(a.get("n_samples", 0)))
        model.converged_ = bool(a.get("converged", False))
        sc = a.get("scale")
        model.scale_ = None if sc is None else np.asarray(sc, dtype=np.float64)
        model.shrinkage_ = float(a.get("shrinkage", 0.0))
        model.rank_caps_ = []
        return model

    @classmethod
    def from_parameters(cls, hierarchy: Hierarchy, ranks: Any, F: np.ndarray,
                        D: np.ndarray, mean: np.ndarray | None = None) -> MultilevelFactorModel:
        """A model with given parameters: ``hierarchy`` (factor levels), ``ranks`` (as in the
        constructor), compressed loadings ``F`` (n, R) and ``D`` (n,) in ORIGINAL feature
        order (entries past a group's rank are set to zero)."""
        tree, _ = make_tree(hierarchy, ranks)
        hf = tree.hierarchy
        F = np.asarray(F, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        if F.shape != (tree.n, tree.rank) or D.shape != (tree.n,):
            raise InputError(f"F must be ({tree.n}, {tree.rank}) and D ({tree.n},)")
        if np.any(D <= 0) or not np.all(np.isfinite(F)):
            raise InputError("D must be positive and F finite")
        m = np.zeros(tree.n) if mean is None else np.asarray(mean, dtype=np.float64)
        p = hf.perm
        model = cls(hf, ranks)
        model._set_state(tree, em.FMState.from_F(tree.apply_mask(F[p]), D=D[p], mean=m[p]), 0)
        model.scale_ = None
        model.shrinkage_ = 0.0
        model.rank_caps_ = []
        return model

    def _repr_html_(self) -> str:
        from mlr_dask.display import model_html
        return model_html(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        return {"text/plain": repr(self), "text/html": self._repr_html_()}


def _jsonable_ranks(ranks: Any) -> Any:
    if isinstance(ranks, str | int | np.integer):
        return ranks if isinstance(ranks, str) else int(ranks)
    return [[int(x) for x in r] if isinstance(r, list | tuple | np.ndarray) else int(r)
            for r in ranks]


def make_tree(h: Hierarchy, ranks: Any) -> tuple[FactorTree, list[dict]]:
    """The factor tree of hierarchy ``h`` for ``ranks`` (constructor convention: an int for
    every factor level, or one entry per factor level, an int or the ranks of its groups).
    Each group's rank is capped at its size; returns the tree and the caps (dicts
    ``level, group, size, requested, rank``)."""
    if isinstance(ranks, str):
        raise InputError(f"ranks {ranks!r} must be resolved before building the tree")
    if isinstance(ranks, int | np.integer) or (isinstance(ranks, np.ndarray) and ranks.ndim == 0):
        n_factor = h.n_levels - 1 if (h.has_atoms and h.n_levels > 1) else h.n_levels
        spec: list[Any] = [ranks] * n_factor
    else:
        spec = list(ranks)
    hf = factor_levels(h, [0] * len(spec))
    group_ranks, level_ranks, caps = [], [], []
    for lvl, entry in enumerate(spec):
        sizes = hf.block_sizes(lvl)
        req = np.asarray(entry)
        if req.ndim == 0:
            req = np.full(sizes.size, req)
        if req.shape != sizes.shape:
            raise InputError(f"ranks of level {lvl}: {req.size} given for its "
                             f"{sizes.size} groups")
        if req.dtype.kind not in "iu" and not (req.dtype.kind == "f"
                                               and np.all(req == np.round(req))):
            raise InputError(f"ranks must be integers, got {np.ravel(entry).tolist()[:5]}")
        req = req.astype(np.int64)
        if np.any(req < 0):
            raise InputError(f"ranks must be >= 0, got {int(req.min())} at level {lvl}")
        gr = np.minimum(req, sizes)
        for g in np.flatnonzero(gr < req).tolist():
            caps.append({"level": lvl, "group": g, "size": int(sizes[g]),
                         "requested": int(req[g]), "rank": int(gr[g])})
        group_ranks.append(gr)
        level_ranks.append(max(1, int(gr.max())))
    if all(int(g.max()) == 0 for g in group_ranks):
        raise InputError("all ranks are 0: the model needs at least one factor")
    return FactorTree(hf, level_ranks, group_ranks), caps


def _feature_std(data: FeatureData) -> np.ndarray:
    """Train standard deviation of each feature (hierarchy order; NaN ignored); 1 where it
    is 0 (constant features are refused later)."""
    if data.is_dask:
        import dask.array as da

        sd = np.asarray(da.nanstd(data.Y.astype(np.float64), axis=0).compute())
    else:
        sd = np.nanstd(np.asarray(data.Y, dtype=np.float64), axis=0)
    return np.where(sd > 0, sd, 1.0)


def _unscale(state: em.FMState, s: np.ndarray) -> em.FMState:
    """Parameters fitted on ``Y / s`` back in the units of Y: ``F s``, ``D s^2``, ``mean s``;
    log-likelihoods per sample minus ``sum log s`` (the Jacobian)."""
    jac = float(np.log(s).sum())
    return em.FMState.from_F(state.F * s[:, None], D=state.D * s * s, mean=state.mean * s,
                             n_iter=state.n_iter,
                             loglike=tuple(x - jac for x in state.loglike),
                             loglike_init=state.loglike_init - jac)


def _rel_change(state: em.FMState) -> float:
    ll = [state.loglike_init, *state.loglike]
    if len(ll) < 2:
        return float("nan")
    return abs(ll[-1] - ll[-2]) / max(abs(ll[-1]), 1e-300)


def _publish(step: int, total: int, loglike: float, **metrics: Any) -> None:
    from mlr_dask import events

    events.publish("em", step=int(step), total=int(total), loglike=float(loglike), **metrics)


def _run_missing(tree: FactorTree, state: em.FMState, Yh: np.ndarray, *, max_iter: int,
                 tol: float, centre: bool,
                 callback: Callable[[em.FMState], None]) -> tuple[em.FMState, bool]:
    """EM with missing entries (:mod:`mlr_dask.fm.missing`) from ``state``."""
    var = np.nanvar(Yh, axis=0)
    F, D, mean = state.F, state.D, state.mean
    est = missing_mod.estep_missing(tree, F, D, mean, Yh, stats=True)
    state = replace(state, loglike_init=est.loglike, sumsq=None)
    done = False
    while state.n_iter < max_iter:
        prev = state.loglike[-1] if state.loglike else state.loglike_init
        F, D, m = missing_mod.mstep_missing(tree, F, est, var, centre)
        if centre:
            mean = m
        est = missing_mod.estep_missing(tree, F, D, mean, Yh, stats=True)
        state = em.FMState.from_F(F, D=D, mean=mean, n_iter=state.n_iter + 1,
                                  loglike=(*state.loglike, est.loglike),
                                  loglike_init=state.loglike_init)
        callback(state)
        if em.converged(state.loglike, prev, tol):
            done = True
            break
    return state, done


def write_model_group(g: Any, hierarchy: Hierarchy, ranks: Sequence[int], F: np.ndarray,
                      D: np.ndarray, mean: np.ndarray, attrs: dict | None = None) -> None:
    """Store a model into an empty zarr group (format ``fm-model`` version 1): arrays ``F``
    (n, R), ``D`` (n,), ``mean`` (n,) in the hierarchy order of ``hierarchy`` (the factor
    levels, subgroup ``hierarchy``); attrs ``ranks`` and ``attrs``."""
    from mlr_dask.io import FORMAT_KEY, VERSION_KEY, create_array

    g.attrs[FORMAT_KEY] = MODEL_FORMAT
    g.attrs[VERSION_KEY] = MODEL_VERSION
    create_array(g, "F", data=np.asarray(F, dtype=np.float64), dims=("feature", "factor"))
    create_array(g, "D", data=np.asarray(D, dtype=np.float64), dims=("feature",))
    create_array(g, "mean", data=np.asarray(mean, dtype=np.float64), dims=("feature",))
    hierarchy.write_zarr(g.create_group("hierarchy"))
    g.attrs.update({"ranks": [int(r) for r in ranks],
                    "layout": "F (n, R), D (n,), mean (n,) in hierarchy order",
                    **(attrs or {})})
