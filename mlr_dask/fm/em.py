"""The EM of the multilevel factor model (``mfm.md`` section 2), driver side.

The data are only touched by the per-chunk functions of :mod:`mlr_dask.fm.chunk`, run by a
*runner* (:class:`NumpyRunner` here, ``DaskRunner`` in :mod:`mlr_dask.fm.dask`) that maps a task
over the feature chunks and returns the per-chunk results. Everything here works on small
objects: per-level ``(p_l, r_l, N)`` arrays and path blocks.

One iteration (:func:`em_iteration`) = one pass over Y: every chunk does the M-step for its
features from the broadcast (:attr:`EStep.bcast`) and returns the statistics of its new
loadings; then :func:`e_step` assembles K, factors it on the tree, solves for ``Q``, evaluates
the log-likelihood of the new parameters and builds the next broadcast. The leaf level of
``Q`` and of ``Q Q^T`` (the largest part of the tree work with many small leaves) is not formed
here: the chunks finish it from ``L^-1 P`` and their own data (:func:`mstep_leaf_terms`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fm import chunk as ck
from mlr_dask.fm.tree import (
    FactorTree,
    TreeCholesky,
    path_gram,
    selected_inverse,
    tree_back_solve,
    tree_cholesky,
    tree_half_solve,
)

__all__ = [
    "FMState",
    "EStep",
    "NumpyRunner",
    "reduce_stats",
    "e_step",
    "svd_start",
    "random_start",
    "warm_start",
    "em_iteration",
    "em_step",
    "run_em",
    "LOG_2PI",
]

LOG_2PI = float(np.log(2 * np.pi))


@dataclass(frozen=True)
class FMState:
    """Parameters of the model in hierarchy order.

    Attributes: ``FT_parts`` the transposed compressed loadings by feature chunk, (R, n_c)
    each (as the chunks return them: no copy per iteration); ``F`` (n, R) all of them (a
    cached property); ``D`` (n,) noise variances; ``mean`` (n,);
    ``n_iter`` EM iterations done; ``loglike`` average train log-likelihood per sample after
    each iteration; ``loglike_init`` the value at the start; ``sumsq`` (n,) column sums of
    squares of the centred train data (from the first pass; not saved)."""

    FT_parts: tuple[np.ndarray, ...]
    D: np.ndarray
    mean: np.ndarray
    n_iter: int = 0
    loglike: tuple[float, ...] = ()
    loglike_init: float = float("nan")
    sumsq: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_F(cls, F: np.ndarray, **kw: Any) -> FMState:
        """State from full loadings ``F`` (n, R)."""
        return cls(FT_parts=(np.ascontiguousarray(np.asarray(F, dtype=np.float64).T),), **kw)

    @cached_property
    def F(self) -> np.ndarray:
        """(n, R) compressed loadings, hierarchy order."""
        return np.ascontiguousarray(np.concatenate(self.FT_parts, axis=1).T)

    def FT_chunks(self, bounds: np.ndarray) -> list[np.ndarray]:
        """(R, n_c) loadings of each chunk of ``bounds``."""
        sizes = [p.shape[1] for p in self.FT_parts]
        if sizes == list(np.diff(bounds)):
            return list(self.FT_parts)
        FT = np.concatenate(self.FT_parts, axis=1)
        return [FT[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass(frozen=True)
class EStep:
    """E-step quantities for the current parameters.

    Attributes: ``chol`` tree Cholesky of K; ``w`` per level ``L^-1 P``; ``Q`` per level
    ``K^-1 P`` (p_l, r_l, N), all levels when scoring, only the levels above the leaves when
    made for the M-step; ``W`` path blocks of ``N K^-1 + Q Q^T`` and ``QQ`` of ``Q Q^T`` for
    the levels above the leaves (None when not needed); ``leaf`` what the M-step needs of the
    leaf level (see :func:`mstep_leaf_terms`; None when not needed); ``loglike`` average
    log-likelihood per sample; ``sample_loglike`` (N,) (per sample only for statistics
    computed without ``sumsq``, as when scoring)."""

    chol: TreeCholesky
    w: tuple[np.ndarray, ...]
    Q: tuple[np.ndarray, ...]
    W: tuple[np.ndarray, ...] | None
    loglike: float
    sample_loglike: np.ndarray = field(repr=False)
    QQ: tuple[np.ndarray, ...] | None = field(default=None, repr=False)
    leaf: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    @property
    def bcast(self) -> tuple:
        """What every chunk of the M-step receives: ``(Q, W, QQ, leaf)``."""
        return (self.Q, self.W, self.QQ, self.leaf)


class Runner(Protocol):
    """Maps a per-chunk task over the feature chunks (see :class:`NumpyRunner`)."""

    bounds: np.ndarray
    plans: list
    n_samples: int

    def map(self, task: Callable, per_chunk: Sequence[Sequence[Any]], bcast: Any = ...,
            what: str = "") -> list: ...


class NumpyRunner:
    """Runs the chunk tasks in a loop on an in-memory array ``Yh`` (N, n), hierarchy order.

    ``bounds`` (k + 1,) chunk boundaries made of whole leaves; ``plans`` their ChunkPlans."""

    def __init__(self, Yh: np.ndarray, tree: FactorTree, bounds: np.ndarray) -> None:
        self.Y = Yh
        self.n_samples = int(Yh.shape[0])
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.plans = [ck.make_plan(tree, int(a), int(b))
                      for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True)]

    def map(self, task: Callable, per_chunk: Sequence[Sequence[Any]], bcast: Any = ...,
            what: str = "") -> list:
        out = []
        for k, plan in enumerate(self.plans):
            args = [a[k] for a in per_chunk]
            if bcast is not ...:
                args.append(bcast)
            out.append(task(self.Y[:, plan.start:plan.stop], plan, *args))
        return out


def split(x: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
    """Slices of ``x`` along its first axis at the chunk boundaries."""
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def reduce_stats(tree: FactorTree, parts: Sequence[ck.ChunkStats]) -> tuple[list, list, float,
                                                                             np.ndarray]:
    """Sum the chunks' statistics (in chunk order): ``K`` path blocks (identity added), ``P``
    per level, ``sum log D`` and the per-sample ``sum_j y_ij^2 / D_j``."""
    N = parts[0].ysq_d.shape[0]
    K = [np.zeros((p, r, int(tree.offsets[lvl + 1])))
         for lvl, (p, r) in enumerate(zip(tree.n_groups, tree.ranks, strict=True))]
    P = [np.zeros((p, r, N)) for p, r in zip(tree.n_groups, tree.ranks, strict=True)]
    sum_logd = 0.0
    ysq_d = np.zeros(N)
    for part in parts:
        for lvl in range(tree.n_levels):
            g0 = int(part.group_lo[lvl])
            k = part.K[lvl].shape[0]
            K[lvl][g0:g0 + k] += part.K[lvl]
            P[lvl][g0:g0 + k] += part.P[lvl]
        sum_logd += part.sum_logd
        ysq_d += part.ysq_d
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        K[lvl][:, :, o0:o1] += np.eye(o1 - o0)
    return K, P, sum_logd, ysq_d


def e_step(tree: FactorTree, parts: Sequence[ck.ChunkStats], *, with_w: bool = True) -> EStep:
    """E-step from the chunk statistics of the current parameters: tree Cholesky of K, the
    posterior means Q, the log-likelihood (``mfm.md`` section 2) and the M-step blocks W."""
    K, P, sum_logd, ysq_d = reduce_stats(tree, parts)
    N = ysq_d.shape[0]
    ch = tree_cholesky(tree, K)
    w = tree_half_solve(tree, ch, P)
    quad = ysq_d - sum(np.einsum("gri,gri->i", x, x) for x in w)  # (N,) y^T Sigma^-1 y
    sample_ll = -0.5 * (tree.n * LOG_2PI + sum_logd + ch.logdet + quad)
    if not with_w:
        return EStep(chol=ch, w=tuple(w), Q=tuple(tree_back_solve(tree, ch, w)), W=None,
                     loglike=float(sample_ll.mean()), sample_loglike=sample_ll)
    L = tree.n_levels
    Q = tree_back_solve(tree, ch, w, levels=L - 1)  # the leaf level is left to the chunks
    Z = selected_inverse(tree, ch)
    QQ = path_gram(tree, Q)
    W = tuple(N * z + qq for z, qq in zip(Z[:L - 1], QQ, strict=True))
    return EStep(chol=ch, w=tuple(w), Q=tuple(Q), W=W, loglike=float(sample_ll.mean()),
                 sample_loglike=sample_ll, QQ=tuple(QQ),
                 leaf=mstep_leaf_terms(ch, w[-1], Z[-1]))


def mstep_leaf_terms(ch: TreeCholesky, w_leaf: np.ndarray, Z_leaf: np.ndarray) -> tuple:
    """Leaf-level terms of the M-step, per leaf c (finest group): ``(w_c, Linv_c, Kinv_c,
    E_c, S_c, Z_c)`` with ``w_c`` (r, N) the leaf rows of ``L^-1 P``, ``Linv_c`` (r, r),
    ``Kinv_c = Linv_c^T Linv_c``, ``E_c = Linv_c^T X_c`` (r, o), ``S_c = Linv_c^T w_c w_c^T
    Linv_c`` and ``Z_c`` (r, R) the leaf rows of the selected inverse.

    The posterior means of the leaf factors are ``q_c = Linv_c^T w_c - E_c q_path`` (the
    last step of the backward solve); the chunks use this form (:func:`chunk.task_em`) so the
    driver never forms ``q_c`` nor ``q_c q_path^T`` (two products of size r N o per leaf)."""
    Li = ch.Linv[-1]
    LiT = np.swapaxes(Li, 1, 2)
    return (w_leaf, Li, LiT @ Li, LiT @ ch.X[-1],
            LiT @ (w_leaf @ np.swapaxes(w_leaf, 1, 2)) @ Li, Z_leaf)


#: Extra columns of the random sketch of the start, beyond the total rank R.
SKETCH_OVERSAMPLE = 10
#: A feature whose variance is below this fraction of the median variance draws a warning.
NEAR_CONSTANT_REL = 1e-10


def _gather(results: Sequence[tuple]) -> tuple[tuple, np.ndarray, list]:
    D = np.concatenate([r[1] for r in results], axis=0)
    return tuple(r[0] for r in results), D, [r[2] for r in results]


def check_variances(mean: np.ndarray, sumsq: np.ndarray, n_samples: int,
                    names: np.ndarray | None = None) -> None:
    """Refuse constant features (InputError) and warn about near-constant ones: the Gaussian
    likelihood is unbounded on a feature without spread (its noise variance would go to 0).
    ``names`` (n,) how to call the features (default their positions)."""
    var = sumsq / max(n_samples, 1)
    const = var <= (64 * np.finfo(float).eps) ** 2 * np.maximum(mean * mean, np.finfo(float).tiny)
    label = np.arange(var.size) if names is None else np.asarray(names)
    if np.any(const):
        idx = np.flatnonzero(const)
        shown = ", ".join(str(x) for x in label[idx[:5]]) + (", ..." if idx.size > 5 else "")
        raise InputError(f"{idx.size} constant feature(s) ({shown}): a factor model needs "
                         "every feature to vary; drop them")
    med = float(np.median(var))
    near = var < NEAR_CONSTANT_REL * med
    if np.any(near):
        idx = np.flatnonzero(near)
        shown = ", ".join(str(x) for x in label[idx[:5]]) + (", ..." if idx.size > 5 else "")
        warnings.warn(f"{idx.size} near-constant feature(s) ({shown}): variance below "
                      f"{NEAR_CONSTANT_REL:g} x the median; their noise variances may collapse "
                      "(consider standardize=True or dropping them)", UserWarning, stacklevel=4)


def start_moments(runner: Runner, centre: bool, sketch: tuple[int, int] | None = None,
                  names: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """First pass: the mean (n,), the column sums of squares of the centred data (n,) and,
    with ``sketch = (k, seed)``, the (N, k) random sketch ``Yc Omega`` of the centred data.
    Raises InputError when Y holds NaN or inf or a constant feature (see
    :func:`check_variances`)."""
    mom = runner.map(ck.task_moments, [], (centre, sketch), what="moments")
    bad = sum(m["bad"] for m in mom)
    if bad:
        raise InputError(f"the data contain {bad} NaN or infinite values")
    mean = np.concatenate([m["mean"] for m in mom])
    sumsq = np.concatenate([m["sumsq"] for m in mom])
    check_variances(mean, sumsq, runner.n_samples, names)
    return mean, sumsq, (sum(m["Z"] for m in mom) if sketch else None)


def _mask_chunks(tree: FactorTree, bounds: np.ndarray) -> list:
    if not tree.masked:
        return [None] * (bounds.size - 1)
    MT = tree.col_mask.T
    return [np.ascontiguousarray(MT[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:],
                                                             strict=True)]


def svd_start(runner: Runner, tree: FactorTree, centre: bool, *, seed: int = 0,
              names: np.ndarray | None = None) -> tuple[FMState, EStep]:
    """SVD start by a randomized range finder: level l takes the next ``r_l`` leading left
    singular directions ``U`` of the centred data ``Yc`` (N, n), ``F = Yc^T U / sqrt(N)``, D the
    leftover variance floored (:func:`chunk.task_init`); masked loadings are zero.

    Three passes over Y, all feature-chunk tasks like the EM's: (1) moments and the sketch
    ``Z = Yc Omega`` (N, k), ``k = min(R + SKETCH_OVERSAMPLE, N, n)``; on the driver ``Qb``,
    an orthonormal basis of range(Z) (QR, O(N k^2)); (2) ``G = sum_c B_c B_c^T`` (k, k) with
    ``B = Qb^T Yc``, whose eigenvectors rotate ``Qb`` into the leading singular directions;
    (3) loadings, noise and their statistics. Cost O(N n k) in all; no N x N or n x n matrix
    is formed. When ``k = min(N, n)`` (few samples or few features) the range is exact and so
    is the start (the p x p route when N > p)."""
    N = runner.n_samples
    R = tree.rank
    k = int(min(R + SKETCH_OVERSAMPLE, N, tree.n))
    mean, sumsq, Z = start_moments(runner, centre, (k, seed), names)
    Qb, _ = np.linalg.qr(Z)
    b = runner.bounds
    G = sum(runner.map(ck.task_range_gram, [split(mean, b)], Qb, what="range"))
    vals, vecs = np.linalg.eigh(G)
    order = np.argsort(vals)[::-1][:R]
    U = Qb @ vecs[:, order]
    tiny = vals.max(initial=0.0) * k * np.finfo(float).eps
    U[:, vals[order] <= tiny] = 0.0
    if U.shape[1] < R:
        U = np.concatenate([U, np.zeros((N, R - U.shape[1]))], axis=1)
    res = runner.map(ck.task_init, [split(mean, b), split(sumsq, b), _mask_chunks(tree, b)],
                     U, what="init")
    FT, D, parts = _gather(res)
    est = e_step(tree, parts)
    return FMState(FT_parts=FT, D=D, mean=mean, loglike_init=est.loglike, sumsq=sumsq), est


def random_start(runner: Runner, tree: FactorTree, centre: bool,
                 rng: np.random.Generator, names: np.ndarray | None = None
                 ) -> tuple[FMState, EStep]:
    """Random start: Gaussian loadings scaled to a tenth of the feature standard deviation,
    D the variance (floored)."""
    mean, sumsq, _ = start_moments(runner, centre, None, names)
    N = runner.n_samples
    var = np.maximum(sumsq / N, ck.FLOOR_ABS)
    F = rng.standard_normal((tree.n, tree.rank)) * np.sqrt(var)[:, None] * 0.1
    F = tree.apply_mask(F)
    return state_from(runner, tree, FMState.from_F(F, D=var.copy(), mean=mean, sumsq=sumsq))


def warm_start(runner: Runner, tree: FactorTree, centre: bool, F: np.ndarray, D: np.ndarray,
               names: np.ndarray | None = None) -> tuple[FMState, EStep]:
    """Start from given loadings ``F`` (n, R) and noise ``D`` (n,) in hierarchy order (masked
    here): the first pass, then the statistics of those parameters."""
    mean, sumsq, _ = start_moments(runner, centre, None, names)
    F = tree.apply_mask(np.asarray(F, dtype=np.float64))
    return state_from(runner, tree, FMState.from_F(F, D=np.asarray(D, dtype=np.float64).copy(),
                                                   mean=mean, sumsq=sumsq))


def resume_from(runner: Runner, tree: FactorTree, centre: bool,
                saved: FMState) -> tuple[FMState, EStep]:
    """Continue from saved parameters: the first pass again (mean, sums of squares, NaN
    check), then the statistics of the saved parameters."""
    mean, sumsq, _ = start_moments(runner, centre)
    state = FMState(FT_parts=saved.FT_parts, D=saved.D, mean=mean, n_iter=saved.n_iter,
                    loglike=saved.loglike, loglike_init=saved.loglike_init, sumsq=sumsq)
    return state_from(runner, tree, state)


def state_from(runner: Runner, tree: FactorTree, state: FMState) -> tuple[FMState, EStep]:
    """Statistics pass for given parameters (``state.sumsq`` known)."""
    b = runner.bounds
    parts = runner.map(ck.task_stats, [split(state.mean, b), state.FT_chunks(b),
                                       split(state.D, b), split(state.sumsq, b)],
                       what="stats")
    est = e_step(tree, parts)
    if not state.loglike and np.isnan(state.loglike_init):
        state = replace(state, loglike_init=est.loglike)
    return state, est


def em_iteration(runner: Runner, tree: FactorTree, state: FMState,
                 est: EStep) -> tuple[FMState, EStep]:
    """One EM iteration: one pass over Y (M-step + statistics per chunk), then the E-step of
    the new parameters on the driver."""
    b = runner.bounds
    op = int(tree.offsets[-2])
    A_leaf = [FT[op:] / Dc for FT, Dc in zip(state.FT_chunks(b), split(state.D, b),
                                                strict=True)]
    res = runner.map(ck.task_em, [split(state.mean, b), split(state.sumsq, b), A_leaf],
                     est.bcast, what="em")
    FT, D, parts = _gather(res)
    new = e_step(tree, parts)
    return replace(state, FT_parts=FT, D=D, n_iter=state.n_iter + 1,
                   loglike=(*state.loglike, new.loglike)), new


def em_step(tree: FactorTree, Yh: np.ndarray, state: FMState) -> FMState:
    """One EM step from ``state`` on in-memory data ``Yh`` (N, n) in hierarchy order (pure
    function; for tests and notebooks: it makes a statistics pass first)."""
    runner = NumpyRunner(Yh, tree, np.array([0, tree.n]))
    state, est = resume_from(runner, tree, True, state)
    return em_iteration(runner, tree, state, est)[0]


def converged(loglike: Sequence[float], prev: float, tol: float) -> bool:
    """Relative increase of the log-likelihood below ``tol``."""
    return (loglike[-1] - prev) <= tol * abs(loglike[-1])


def extrapolate(runner: Runner, tree: FactorTree, s0: FMState, s1: FMState,
                s2: FMState) -> tuple[FMState, EStep] | None:
    """SQUAREM step (Varadhan and Roland's scheme S3) from three successive EM states, on
    ``theta = (F, log D)``: ``r = theta1 - theta0``, ``v = theta2 - 2 theta1 + theta0``,
    ``alpha = -|r| / |v|`` (at most -1), ``theta' = theta0 - 2 alpha r + alpha^2 v``; D floored
    as in the M-step, fixed-zero loadings stay zero. Returns the state and E-step of
    ``theta'`` (one statistics pass), or None when the step is the plain one."""
    F0, F1, F2 = s0.F, s1.F, s2.F
    L0, L1, L2 = np.log(s0.D), np.log(s1.D), np.log(s2.D)
    rF, rL = F1 - F0, L1 - L0
    vF, vL = F2 - 2 * F1 + F0, L2 - 2 * L1 + L0
    nr = float(np.sqrt(np.sum(rF * rF) + np.sum(rL * rL)))
    nv = float(np.sqrt(np.sum(vF * vF) + np.sum(vL * vL)))
    if nv == 0.0 or not np.isfinite(nr / nv):
        return None
    alpha = -max(1.0, min(nr / nv, MAX_STEP))
    if alpha == -1.0:
        return None
    F = F0 - 2 * alpha * rF + alpha * alpha * vF
    D = np.exp(L0 - 2 * alpha * rL + alpha * alpha * vL)
    var = s0.sumsq / runner.n_samples
    D = np.maximum(D, np.maximum(ck.FLOOR_REL * var, ck.FLOOR_ABS))
    if not (np.all(np.isfinite(F)) and np.all(np.isfinite(D))):
        return None
    st = FMState.from_F(tree.apply_mask(F), D=D, mean=s2.mean, n_iter=s2.n_iter,
                        loglike=s2.loglike, loglike_init=s2.loglike_init, sumsq=s2.sumsq)
    return state_from(runner, tree, st)


#: Largest SQUAREM step length |alpha|.
MAX_STEP = 64.0
#: Iterations per accelerated cycle.
CYCLE = 3


def run_em(
    runner: Runner,
    tree: FactorTree,
    state: FMState,
    est: EStep,
    *,
    max_iter: int,
    tol: float,
    callback: Callable[[FMState], None] | None = None,
    accelerate: bool = False,
) -> tuple[FMState, EStep, bool]:
    """Iterate until ``max_iter`` iterations in total (``state.n_iter`` counts those done) or
    convergence; ``callback(state)`` after each iteration. Returns the final state, its
    E-step and whether it converged.

    With ``accelerate``, iterations go by cycles of three, starting at the multiples of 3: two
    EM steps, a SQUAREM extrapolation from them (:func:`extrapolate`, one statistics pass) and
    one EM step from the extrapolated point, kept when its log-likelihood is at least that of
    the second step (else a plain third EM step). The recorded log-likelihoods never decrease,
    every recorded state is an EM image, and the path depends only on the states at the
    multiples of 3 (a fit resumed from one retraces the uninterrupted fit). A cycle costs
    about 3.3 iterations of plain EM and often advances as far as tens."""
    done = False

    def step(st: FMState, es: EStep, report: bool = True) -> tuple[FMState, EStep, bool]:
        prev = st.loglike[-1] if st.loglike else st.loglike_init
        st2, es2 = em_iteration(runner, tree, st, es)
        if report and callback is not None:
            callback(st2)
        return st2, es2, converged(st2.loglike, prev, tol)

    while state.n_iter < max_iter and not done:
        if (not accelerate or state.n_iter % CYCLE or state.n_iter + CYCLE > max_iter
                or state.sumsq is None):
            state, est, done = step(state, est)
            continue
        s0 = state
        s1, e1, done = step(s0, est)
        state, est = s1, e1
        if done:
            break
        s2, e2, done = step(s1, e1)
        state, est = s2, e2
        if done:
            break
        ext = extrapolate(runner, tree, s0, s1, s2)
        if ext is not None:
            s3, e3 = em_iteration(runner, tree, ext[0], ext[1])
            if s3.loglike[-1] >= s2.loglike[-1]:
                state, est = s3, e3
                if callback is not None:
                    callback(state)
                done = converged(state.loglike, s2.loglike[-1], tol)
                continue
        state, est, done = step(s2, e2)
    return state, est, done
