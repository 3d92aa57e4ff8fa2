"""Conditional distributions and expected log-likelihoods of a multilevel factor model
(``mfm.md`` section 3), through the tree-structured capacitance matrix only (never a dense
n x n matrix).

Everything here is in the hierarchy order of a :class:`~mlr_dask.fm.tree.FactorTree`:
``F`` (n, R) compressed loadings, ``D`` (n,) noise variances, ``mean`` (n,).

*Conditioning.* With ``O`` the observed features and ``T`` targets disjoint from ``O`` (the
other features are marginalized), the factors given ``y_O`` are Gaussian with precision
``K_O = I + F_hat_O^T D_O^-1 F_hat_O`` and mean ``K_O^-1 F_hat_O^T D_O^-1 (y_O - mu_O)``.
``K_O`` is ``K`` with the weights ``1 / D_j`` of the unobserved features set to zero, so it has
the tree pattern of ``K`` and the tree Cholesky applies. Then
``E[y_T | y_O] = mu_T + F_hat_T E[z | y_O]`` and
``Cov(y_T | y_O) = F_hat_T K_O^-1 F_hat_T^T + D_T``.

*Expected log-likelihood.* For data from ``N(mu_t, Sigma_t)``, ``Sigma_t = F_t F_t^T + D_t``,
the expected log-likelihood per sample under the model ``N(mu, Sigma)`` is
``-(n/2) log 2 pi - (1/2) logdet Sigma - (1/2) tr(Sigma^-1 Sigma_t) - (1/2) d^T Sigma^-1 d``
with ``d = mu_t - mu``, and
``tr(Sigma^-1 F_t F_t^T) = sum_j |F_t[j]|^2 / D_j - |L^-1 F_hat^T D^-1 F_t|_F^2`` (``L`` the
tree Cholesky factor of ``K``), ``tr(Sigma^-1 D_t) = sum_j D_t[j] (Sigma^-1)_jj``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fm import chunk as ck
from mlr_dask.fm.em import reduce_stats
from mlr_dask.fm.tree import (
    FactorTree,
    TreeCholesky,
    tree_cholesky,
    tree_half_solve,
    tree_solve,
)

__all__ = ["MAX_TARGETS", "conditional_gaussian", "trace_precision_lowrank"]

#: Largest number of target features of :func:`conditional_gaussian` (the covariance it
#: returns is a dense t x t matrix).
MAX_TARGETS = 4096


def _group_of(tree: FactorTree, lvl: int, pos: np.ndarray) -> np.ndarray:
    """Group of level ``lvl`` of each feature position ``pos`` (hierarchy order)."""
    return np.searchsorted(tree.bounds[lvl], pos, side="right") - 1


def _apply_rows(tree: FactorTree, F: np.ndarray, pos: np.ndarray,
                x: Sequence[np.ndarray]) -> np.ndarray:
    """``F_hat[pos] @ x`` for per-level ``x_l`` (p_l, r_l, t): (len(pos), t)."""
    out = np.zeros((pos.size, x[0].shape[-1]))
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        out += np.einsum("ir,irt->it", F[pos, o0:o1], x[lvl][_group_of(tree, lvl, pos)])
    return out


def _rows_as_rhs(tree: FactorTree, F: np.ndarray, pos: np.ndarray) -> list[np.ndarray]:
    """``F_hat[pos]^T`` as per-level right-hand sides (p_l, r_l, len(pos))."""
    out = []
    cols = np.arange(pos.size)
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        R = np.zeros((tree.n_groups[lvl], o1 - o0, pos.size))
        R[_group_of(tree, lvl, pos), :, cols] = F[pos, o0:o1]
        out.append(R)
    return out


def conditional_gaussian(
    tree: FactorTree, F: np.ndarray, D: np.ndarray, mean: np.ndarray, Yh: np.ndarray,
    observed: np.ndarray, targets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the target features given the observed ones.

    ``Yh`` (N, n) data in hierarchy order (entries of unobserved features are ignored and
    may be NaN); ``observed`` (n,) bool; ``targets`` (t,) positions (hierarchy order), none
    observed. Returns ``(mean (N, t), cov (t, t))`` (the covariance is the same for every
    sample). Cost O(N n R) for the products with Y plus tree solves with N + t right-hand
    sides; materializes the dense (t, t) covariance only (``t <= MAX_TARGETS``)."""
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size > MAX_TARGETS:
        raise InputError(f"at most {MAX_TARGETS} targets (dense t x t covariance), got "
                         f"{targets.size}")
    if np.any(observed[targets]):
        raise InputError("targets must not be observed features")
    D_eff = np.where(observed, D, np.inf)  # weight 1 / D_j = 0 for the unobserved
    Yf = np.where(observed[None, :], Yh, mean[None, :])
    plan = ck.make_plan(tree, 0, tree.n)
    part = ck.chunk_stats(Yf, mean, np.ascontiguousarray(F.T), D_eff, plan)
    K, P, _, _ = reduce_stats(tree, [part])
    ch = tree_cholesky(tree, K)
    Ez = tree_solve(tree, ch, P)  # E[z | y_O], per level (p_l, r_l, N)
    cond_mean = mean[targets][:, None] + _apply_rows(tree, F, targets, Ez)
    X = tree_solve(tree, ch, _rows_as_rhs(tree, F, targets))
    cov = _apply_rows(tree, F, targets, X)
    cov = (cov + cov.T) / 2 + np.diag(D[targets])
    return cond_mean.T, cov


def trace_precision_lowrank(
    tree: FactorTree, ch: TreeCholesky, F: np.ndarray, D: np.ndarray, Ft: np.ndarray,
    groups_t: Sequence[Sequence[np.ndarray]], offsets_t: np.ndarray,
) -> float:
    """``tr(Sigma^-1 F_hat_t F_hat_t^T)`` for the model ``(F, D)`` with tree Cholesky ``ch``
    and another multilevel factor model's loadings ``Ft`` (n, R_t), both in this tree's
    hierarchy order. ``groups_t[l]`` lists the feature positions of each group of level
    ``l`` of the other model, ``offsets_t`` its column offsets.

    ``F_hat^T D^-1 F_hat_t`` is formed group by group of the other model over the smallest
    run of whole leaves of this tree covering the group (its own rows when the hierarchies
    agree), then ``|L^-1 .|_F^2`` by tree half solves, one per level of the other model."""
    total = float(np.sum(np.einsum("ij,ij->i", Ft, Ft) / D))
    lb = tree.bounds[-1]
    FT = np.ascontiguousarray(F.T)
    for lvl_t, groups in enumerate(groups_t):
        c0, c1 = int(offsets_t[lvl_t]), int(offsets_t[lvl_t + 1])
        r = c1 - c0
        U = [np.zeros((p, rr, r * len(groups)))
             for p, rr in zip(tree.n_groups, tree.ranks, strict=True)]
        for g, pos in enumerate(groups):
            a = int(lb[np.searchsorted(lb, pos.min(), side="right") - 1])
            b = int(lb[np.searchsorted(lb, pos.max(), side="right")])
            Y = np.zeros((r, b - a))
            Y[:, pos - a] = Ft[pos, c0:c1].T
            plan = ck.make_plan(tree, a, b)
            part = ck.chunk_stats(Y, np.zeros(b - a), FT[:, a:b], D[a:b], plan)
            for lvl in range(tree.n_levels):
                g0 = int(part.group_lo[lvl])
                U[lvl][g0:g0 + part.P[lvl].shape[0], :, g * r:(g + 1) * r] = part.P[lvl]
        w = tree_half_solve(tree, ch, U)
        total -= float(sum(np.sum(x * x) for x in w))
    return total
