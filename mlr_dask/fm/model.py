"""The multilevel factor model estimator (scikit-learn style).

``Sigma = F_hat F_hat^T + D``: every group of every factor level of the hierarchy has ``r_l``
factors loading on its features; ``D`` is diagonal. Fitted by the one-pass EM of
:mod:`mlr_dask.fm.em` on numpy data in memory or on Dask (dask arrays, zarr stores), with the
same per-chunk code.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fm import chunk as ck
from mlr_dask.fm import em
from mlr_dask.fm.inputs import FeatureData, as_feature_data, factor_levels
from mlr_dask.fm.tree import FactorTree, TreeCholesky, leaf_path_factor, tree_cholesky
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.io import atomic_group, open_group
from mlr_dask.mlr import MLRMatrix

__all__ = ["MultilevelFactorModel", "MODEL_FORMAT", "MODEL_VERSION"]

MODEL_FORMAT = "fm-model"
MODEL_VERSION = 1

#: Target size of one feature chunk (all samples) in bytes, float64.
CHUNK_BYTES = 64 * 2**20


class MultilevelFactorModel:
    """Multilevel factor model fitted by EM.

    Parameters
    ----------
    hierarchy : Hierarchy of the features (original order -> ``perm``), levels root first; a
        last level of singletons, if present, is the diagonal and takes no rank. For an xarray
        input it may be a list of coordinate names (along ``feature``) holding level labels;
        ``None`` for a zarr data store (read from the store).
    ranks : one rank per factor level, each at most the size of the smallest group of its level.
    max_iter : maximum number of EM iterations (in total, counting resumed ones).
    tol : stop when the average log-likelihood per sample grows by less than ``tol`` times its
        absolute value in one iteration.
    init : ``"svd"`` (truncated SVD of the centred data: level l takes the next r_l singular
        directions, D the leftover variance floored at 1% of the variance) or ``"random"``.
    random_state : seed for ``init="random"``.
    assume_centered : the data are already centred (no mean is fitted).
    chunk_size : features per chunk (whole leaves); default from 64 MiB per chunk.

    Attributes (after ``fit``)
    ----------
    hierarchy_ : Hierarchy of the factor levels; ranks_ : tuple of ranks.
    loadings_ : (n_features, R) compressed loadings in original feature order: row j holds the
        loadings of j's group at every level (columns ``offsets_[l]:offsets_[l+1]``).
    noise_variance_ : (n_features,) D; mean_ : (n_features,).
    loglike_ : average train log-likelihood per sample after each iteration; loglike_init_ :
        at the start; n_iter_ ; converged_ ; n_samples_ ; n_features_in_.

    Noise floor: after every M-step ``D_j >= max(1e-8 var_j, 1e-12)`` (``chunk.FLOOR_REL``).
    """

    def __init__(
        self,
        hierarchy: Hierarchy | Sequence[str] | None = None,
        ranks: Sequence[int] = (),
        max_iter: int = 100,
        tol: float = 1e-6,
        init: str = "svd",
        random_state: int | None = None,
        assume_centered: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.ranks = ranks
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.assume_centered = assume_centered
        self.chunk_size = chunk_size

    _PARAMS = ("hierarchy", "ranks", "max_iter", "tol", "init", "random_state",
               "assume_centered", "chunk_size")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters (scikit-learn convention)."""
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params: Any) -> MultilevelFactorModel:
        """Set constructor parameters (scikit-learn convention)."""
        for k, v in params.items():
            if k not in self._PARAMS:
                raise InputError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return (f"MultilevelFactorModel(ranks={list(self.ranks)}, max_iter={self.max_iter}, "
                f"tol={self.tol}, init={self.init!r})")

    def _repr_html_(self) -> str:
        from mlr_dask.display import model_html
        return model_html(self)

    # ------------------------------------------------------------------ setup
    def _check_params(self) -> None:
        if not isinstance(self.max_iter, int | np.integer) or self.max_iter < 0:
            raise InputError(f"max_iter must be a non-negative integer, got {self.max_iter!r}")
        if not np.isfinite(self.tol) or self.tol < 0:
            raise InputError(f"tol must be >= 0, got {self.tol!r}")
        if self.init not in ("svd", "random"):
            raise InputError(f"init must be 'svd' or 'random', got {self.init!r}")
        if self.chunk_size is not None and int(self.chunk_size) < 1:
            raise InputError("chunk_size must be at least 1")

    def _chunks(self, tree: FactorTree, n_samples: int) -> np.ndarray:
        size = self.chunk_size or max(1, CHUNK_BYTES // (8 * max(n_samples, 1)))
        return tree.hierarchy.leaf_chunks(int(size))

    def _runner(self, data: FeatureData, tree: FactorTree):
        bounds = self._chunks(tree, data.shape[0])
        if data.is_dask:
            from mlr_dask.fm.dask import DaskRunner

            return DaskRunner(data.Y, tree, bounds, data.zarr_source)
        return em.NumpyRunner(data.Y, tree, bounds)

    def prepare(self, Y: Any, *, array: str | None = None) -> tuple[FeatureData, FactorTree]:
        """Check the inputs and parameters (no work on the data): returns the data in hierarchy
        order and the factor tree. Raises InputError."""
        self._check_params()
        data = as_feature_data(Y, self.hierarchy, array=array)
        hf = factor_levels(data.hierarchy, self.ranks)
        return data, FactorTree(hf, self.ranks)

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
        DataArray or zarr data-store path). ``array`` names the array of a data store
        (default ``Y``). With ``checkpoint`` (a path) the state is saved every
        ``checkpoint_every`` iterations (see :mod:`mlr_dask.fm.checkpoint`) and ``resume``
        continues from the latest one. ``callback(info)`` after each iteration with
        ``info = {"iteration", "loglike", "seconds"}``."""
        from mlr_dask.fm import checkpoint as cp

        data, tree = self.prepare(Y, array=array)
        N = data.shape[0]
        meta = {"ranks": list(tree.ranks), "n_features": tree.n, "n_samples": N,
                "bounds": [b.tolist() for b in tree.bounds],
                "assume_centered": bool(self.assume_centered)}
        if checkpoint_every and checkpoint is None:
            raise InputError("checkpoint_every needs a checkpoint path")
        resumed = None
        if checkpoint is not None:
            resumed = cp.prepare(checkpoint, resume=resume, meta=meta, create=False)
        runner = self._runner(data, tree)
        t0 = time.perf_counter()
        if resumed is not None:
            state, est = em.resume_from(runner, tree, not self.assume_centered, resumed)
        elif self.init == "svd":
            state, est = em.svd_start(runner, tree, not self.assume_centered, N)
        else:
            state, est = em.random_start(runner, tree, not self.assume_centered,
                                         np.random.default_rng(self.random_state))
        if checkpoint is not None and resumed is None:
            cp.prepare(checkpoint, resume=False, meta=meta, create=True)
        self.start_seconds_ = time.perf_counter() - t0
        times: list[float] = []
        last = [time.perf_counter()]

        def on_iter(st: em.FMState) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            if checkpoint is not None and checkpoint_every and st.n_iter % checkpoint_every == 0:
                cp.write_checkpoint(checkpoint, st)
            if callback is not None:
                callback({"iteration": st.n_iter, "loglike": st.loglike[-1],
                          "seconds": times[-1]})
            last[0] = time.perf_counter()

        state, est, done = em.run_em(runner, tree, state, est, max_iter=int(self.max_iter),
                                     tol=float(self.tol), callback=on_iter)
        self.iter_seconds_ = times
        self.converged_ = done
        self.n_passes_ = getattr(runner, "passes", None)
        self._set_state(tree, state, N)
        self._chol = est.chol
        return self

    def _set_state(self, tree: FactorTree, state: em.FMState, n_samples: int) -> None:
        h = tree.hierarchy
        self._tree = tree
        self._state = state
        self.hierarchy_ = h
        self.ranks_ = tuple(tree.ranks)
        self.offsets_ = np.asarray(tree.offsets)
        self.n_features_in_ = tree.n
        self.n_samples_ = int(n_samples)
        self.n_iter_ = int(state.n_iter)
        self.loglike_ = list(state.loglike)
        self.loglike_init_ = float(state.loglike_init)
        self.loadings_ = self._to_original(state.F)
        self.noise_variance_ = self._to_original(state.D)
        self.mean_ = self._to_original(state.mean)
        self._chol = None
        self._precision = None

    def _to_original(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        out[self.hierarchy_.perm] = x
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "_state"):
            raise InputError("the model is not fitted yet")

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
    def _estep_on(self, Y: Any, array: str | None = None) -> em.EStep:
        self._check_fitted()
        data = as_feature_data(Y, self.hierarchy_, array=array)
        if data.shape[1] != self.n_features_in_:
            raise InputError(f"Y has {data.shape[1]} features, expected {self.n_features_in_}")
        runner = self._runner(data, self._tree)
        st = self._state
        b = runner.bounds
        parts = runner.map(ck.task_stats, [em.split(st.mean, b), st.FT_chunks(b),
                                           em.split(st.D, b)], what="score")
        if data.is_dask:
            bad = sum(int(not np.all(np.isfinite(p.ysq_d))) for p in parts)
            if bad:
                raise InputError("Y contains NaN or infinite values")
        return em.e_step(self._tree, parts, with_w=False)

    def score_samples(self, Y: Any, *, array: str | None = None) -> np.ndarray:
        """(N,) log-likelihood of each sample (rows of Y, original feature order)."""
        return self._estep_on(Y, array).sample_loglike

    def score(self, Y: Any, y: Any = None, *, array: str | None = None) -> float:
        """Average log-likelihood per sample."""
        return float(self.score_samples(Y, array=array).mean())

    def transform(self, Y: Any, *, array: str | None = None) -> np.ndarray:
        """(N, s) posterior means ``E[z | y]`` of all factors, ordered by level, group, then
        factor within the group (``s = sum_l p_l r_l``)."""
        est = self._estep_on(Y, array)
        return self._tree.levels_to_expanded(list(est.Q)).T

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
        Ft = true_model.loadings_[h.perm]  # this model's hierarchy order
        where = h.iperm[ht.perm]  # position here of the true model's i-th feature
        groups_t = [[np.sort(where[b[g]:b[g + 1]]) for g in range(b.size - 1)]
                    for b in ht.boundaries]
        tr = trace_precision_lowrank(self._tree, self.chol_, st.F, st.D, Ft, groups_t,
                                     true_model.offsets_)
        tr += float(self.get_precision().diagonal() @ true_model.noise_variance_)
        d = true_model.mean_ - self.mean_
        quad = float(d @ self.solve(d))
        return float(-0.5 * (n * em.LOG_2PI + self.logdet() + tr + quad))

    def sample(self, n_samples: int = 1, random_state: Any = None) -> np.ndarray:
        """(n_samples, n) draws ``y = mean + F_hat z + sqrt(D) e``, original order; O(n r)
        per sample."""
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
        out = np.empty_like(Yh)
        out[:, self.hierarchy_.perm] = Yh
        return out

    # ------------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> None:
        """Write the fitted model to a zarr group (format ``fm-model``, version 1), atomically."""
        self._check_fitted()
        st = self._state
        with atomic_group(path, MODEL_FORMAT, MODEL_VERSION, overwrite=overwrite) as g:
            write_model_group(g, self.hierarchy_, self.ranks_, st.F, st.D, st.mean, {
                "n_iter": self.n_iter_,
                "loglike": list(self.loglike_),
                "loglike_init": self.loglike_init_,
                "n_samples": self.n_samples_,
                "converged": bool(getattr(self, "converged_", False)),
                "params": {"max_iter": int(self.max_iter), "tol": float(self.tol),
                           "init": self.init, "assume_centered": bool(self.assume_centered)},
            })

    @classmethod
    def load(cls, path: str | os.PathLike) -> MultilevelFactorModel:
        """Read a model written by :meth:`save` (or the ``truth`` group of a data store)."""
        g = open_group(path, MODEL_FORMAT, MODEL_VERSION)
        try:
            h = Hierarchy.read_zarr(g["hierarchy"])
            a = dict(g.attrs)
            params = a.get("params", {})
            model = cls(h, a["ranks"], max_iter=params.get("max_iter", 100),
                        tol=params.get("tol", 1e-6), init=params.get("init", "svd"),
                        assume_centered=params.get("assume_centered", False))
            tree = FactorTree(h, a["ranks"])
            state = em.FMState.from_F(np.asarray(g["F"][:]), D=np.asarray(g["D"][:]),
                               mean=np.asarray(g["mean"][:]), n_iter=int(a.get("n_iter", 0)),
                               loglike=tuple(a.get("loglike", ())),
                               loglike_init=float(a.get("loglike_init", float("nan"))))
        except KeyError as exc:
            raise InputError(f"model store {str(path)!r} is incomplete: missing {exc}") from None
        if state.F.shape != (tree.n, tree.rank) or state.D.shape != (tree.n,):
            raise InputError(f"model store {str(path)!r} has arrays of the wrong shape")
        model._set_state(tree, state, int(a.get("n_samples", 0)))
        model.converged_ = bool(a.get("converged", False))
        return model

    @classmethod
    def from_parameters(cls, hierarchy: Hierarchy, ranks: Sequence[int], F: np.ndarray,
                        D: np.ndarray, mean: np.ndarray | None = None) -> MultilevelFactorModel:
        """A model with given parameters: ``hierarchy`` (factor levels), compressed loadings
        ``F`` (n, R) and ``D`` (n,) in ORIGINAL feature order."""
        hf = factor_levels(hierarchy, ranks)
        tree = FactorTree(hf, ranks)
        F = np.asarray(F, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        if F.shape != (tree.n, tree.rank) or D.shape != (tree.n,):
            raise InputError(f"F must be ({tree.n}, {tree.rank}) and D ({tree.n},)")
        if np.any(D <= 0) or not np.all(np.isfinite(F)):
            raise InputError("D must be positive and F finite")
        m = np.zeros(tree.n) if mean is None else np.asarray(mean, dtype=np.float64)
        p = hf.perm
        model = cls(hf, ranks)
        model._set_state(tree, em.FMState.from_F(F[p], D=D[p], mean=m[p]), 0)
        return model


def write_model_group(g: Any, hierarchy: Hierarchy, ranks: Sequence[int], F: np.ndarray,
                      D: np.ndarray, mean: np.ndarray, attrs: dict | None = None) -> None:
    """Store a model into an empty zarr group (format ``fm-model`` version 1): arrays ``F``
    (n, R), ``D`` (n,), ``mean`` (n,) in the hierarchy order of ``hierarchy`` (the factor
    levels, subgroup ``hierarchy``); attrs ``ranks`` and ``attrs``."""
    from mlr_dask.io import FORMAT_KEY, VERSION_KEY

    g.attrs[FORMAT_KEY] = MODEL_FORMAT
    g.attrs[VERSION_KEY] = MODEL_VERSION
    g.create_array("F", data=np.asarray(F, dtype=np.float64))
    g.create_array("D", data=np.asarray(D, dtype=np.float64))
    g.create_array("mean", data=np.asarray(mean, dtype=np.float64))
    hierarchy.write_zarr(g.create_group("hierarchy"))
    g.attrs.update({"ranks": [int(r) for r in ranks],
                    "layout": "F (n, R), D (n,), mean (n,) in hierarchy order",
                    **(attrs or {})})
