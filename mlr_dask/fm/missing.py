"""Missing values (missing at random) in the factor model: an exact EM on the observed entries.

Each sample ``i`` sees the features ``O_i``. Given ``y_O`` the factors are Gaussian with
precision ``K_O = I + F_hat_O^T D_O^-1 F_hat_O`` (``K`` with the weights ``1 / D_j`` of the
missing features set to zero: the tree pattern of ``K``, so the tree Cholesky applies) and mean
``q_i = K_O^-1 F_hat_O^T D_O^-1 (y_O - mu_O)``. Samples are grouped by missingness pattern; each
pattern costs one tree Cholesky and one selected inverse.

The EM treats the missing entries as latent too (complete data ``(z, y)``), so its M-step keeps
the shape of the complete-data one, one regression per feature on the path factors and a
constant (the mean is re-estimated with the loadings): with ``y_hat_ij = E[y_ij | y_O]`` (the
datum when observed) and ``Sigma_p`` the posterior covariance of pattern ``p``,

- ``A_c = sum_i E[z~ z~^T]`` on leaf ``c``'s path plus the constant (one per leaf),
- ``b_j = sum_i y_hat_ij [q_i; 1] + sum_{p: j missing} n_p [Sigma_p f_j; 0]``,
- ``[f_j; m_j] = A_c^-1 b_j``,
  ``D_j = (sum_i E[y_ij^2] - [f_j; m_j] . b_j) / N`` with ``E[y_ij^2] = y_hat_ij^2 +
  f_j^T Sigma_p f_j + D_j`` for a missing entry.

Every iteration increases the observed-data log-likelihood. Without missing entries it is the
complete-data EM step. Cost per iteration: O(N n R) for the products with the data (one
statistics pass), plus per missingness pattern O(m R^2) for its ``K_O`` (m missing features) and
the tree work (Cholesky, solves, selected inverse: ``O(sum_l p_l o_{l+1}^2 r_l)``), plus O(R^2)
per missing entry; in memory (numpy) only. With random missing entries nearly every sample has
its own pattern, so the tree work runs about N times per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fm import chunk as ck
from mlr_dask.fm.em import LOG_2PI, reduce_stats
from mlr_dask.fm.tree import (
    FactorTree,
    leaf_path_matrices,
    path_gram,
    selected_inverse,
    tree_back_solve,
    tree_cholesky,
    tree_half_solve,
)

__all__ = ["MissingEStep", "estep_missing", "mstep_missing", "patterns"]


def patterns(Yh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Missingness patterns of ``Yh`` (N, n): ``(masks (P, n) bool observed, inverse (N,))``."""
    obs = np.isfinite(Yh)
    packed = np.packbits(obs, axis=1)
    _, first, inv = np.unique(packed, axis=0, return_index=True, return_inverse=True)
    return obs[first], inv.reshape(-1)


def _feature_leaf(tree: FactorTree) -> np.ndarray:
    return np.repeat(np.arange(tree.n_leaves), np.diff(tree.bounds[-1]))


def _rows_times(tree: FactorTree, F: np.ndarray, pos: np.ndarray, q: list) -> np.ndarray:
    """``F_hat[pos] @ q`` for per-level ``q_l`` (p_l, r_l, t) -> (len(pos), t)."""
    out = np.zeros((pos.size, q[0].shape[-1]))
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        g = np.searchsorted(tree.bounds[lvl], pos, side="right") - 1
        out += np.einsum("ir,irt->it", F[pos, o0:o1], q[lvl][g])
    return out


@dataclass
class MissingEStep:
    """E-step with missing entries. ``Q`` per level (p_l, r_l, N) posterior factor means;
    ``sample_loglike`` (N,) observed-data log-likelihoods; ``Yhat`` (N, n) the data with the
    missing entries replaced by ``E[y_ij | y_O]``; for the M-step (``stats``): ``Zsum`` path
    blocks of ``sum_p n_p Sigma_p``, ``corr`` (n, R) ``sum_{p: j missing} n_p Sigma_p f_j``
    and ``corr_sq`` (n,) ``sum_{p: j missing} n_p (f_j^T Sigma_p f_j + D_j)``."""

    Q: list
    sample_loglike: np.ndarray
    Yhat: np.ndarray
    Zsum: list | None = None
    corr: np.ndarray | None = None
    corr_sq: np.ndarray | None = None

    @property
    def loglike(self) -> float:
        return float(self.sample_loglike.mean())


def estep_missing(tree: FactorTree, F: np.ndarray, D: np.ndarray, mean: np.ndarray,
                  Yh: np.ndarray, *, stats: bool = False) -> MissingEStep:
    """E-step for data ``Yh`` (N, n) in hierarchy order with NaN at the missing entries and
    parameters ``F`` (n, R), ``D``, ``mean`` (n,) in hierarchy order.

    One statistics pass over all samples with the missing entries set to the mean (they then
    add nothing to ``P`` nor to the squared norms), giving ``P`` and ``K`` of all features;
    per missingness pattern ``K_O = K - sum_{j missing} b_j b_j^T`` (``b_j = f_j / sqrt(D_j)``,
    O(R^2) per missing feature), one tree Cholesky and solves for its samples (and, with
    ``stats``, one selected inverse). Cost O(N n R) + per pattern O(m R^2 + tree)."""
    N, n = Yh.shape
    masks, inv = patterns(Yh)
    obs_all = np.isfinite(Yh)
    plan = ck.make_plan(tree, 0, n)
    FT = np.ascontiguousarray(F.T)
    Yf = np.where(obs_all, Yh, mean[None, :])
    Kfull, Pfull, _, ysq_d = reduce_stats(tree, [ck.chunk_stats(Yf, mean, FT, D, plan)])
    Q = [np.zeros((p, r, N)) for p, r in zip(tree.n_groups, tree.ranks, strict=True)]
    ll = np.zeros(N)
    Yhat = Yf.copy()
    logD = np.log(D)
    Bn = F / np.sqrt(D)[:, None]
    group_of = [np.searchsorted(b, np.arange(n), side="right") - 1 for b in tree.bounds]
    leaf_of = _feature_leaf(tree)
    Zsum = corr = corr_sq = None
    if stats:
        Zsum = [np.zeros((p, r, int(tree.offsets[lvl + 1])))
                for lvl, (p, r) in enumerate(zip(tree.n_groups, tree.ranks, strict=True))]
        corr = np.zeros((n, tree.rank))
        corr_sq = np.zeros(n)
    for k, obs in enumerate(masks):
        rows = np.flatnonzero(inv == k)
        miss = np.flatnonzero(~obs)
        K = Kfull
        if miss.size:
            K = [x.copy() for x in Kfull]
            bm = Bn[miss]
            for lvl in range(tree.n_levels):
                o0, o1 = tree.span(lvl)
                np.subtract.at(K[lvl], group_of[lvl][miss],
                               np.einsum("mr,ms->mrs", bm[:, o0:o1], bm[:, :o1]))
        ch = tree_cholesky(tree, K)
        w = tree_half_solve(tree, ch, [p[:, :, rows] for p in Pfull])
        quad = ysq_d[rows] - sum(np.einsum("gri,gri->i", x, x) for x in w)
        n_o = n - miss.size
        ll[rows] = -0.5 * (n_o * LOG_2PI + float(logD.sum() - logD[miss].sum()) + ch.logdet
                           + quad)
        q = tree_back_solve(tree, ch, w)
        for lvl in range(tree.n_levels):
            Q[lvl][:, :, rows] = q[lvl]
        if miss.size:
            Yhat[np.ix_(rows, miss)] = mean[miss] + _rows_times(tree, F, miss, q).T
        if stats:
            Z = selected_inverse(tree, ch)
            for lvl in range(tree.n_levels):
                Zsum[lvl] += rows.size * Z[lvl]
            if miss.size:
                S = leaf_path_matrices(tree, Z, leaf_of[miss])  # (m, R, R)
                Sf = np.einsum("mrs,ms->mr", S, F[miss])
                corr[miss] += rows.size * Sf
                corr_sq[miss] += rows.size * (np.einsum("mr,mr->m", Sf, F[miss]) + D[miss])
    return MissingEStep(Q=Q, sample_loglike=ll, Yhat=Yhat, Zsum=Zsum, corr=corr,
                        corr_sq=corr_sq)


def mstep_missing(tree: FactorTree, F: np.ndarray, est: MissingEStep, var: np.ndarray,
                  centre: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """M-step (module docstring) from the E-step ``est`` of the parameters with loadings ``F``:
    returns the new ``(F, D, mean)`` in hierarchy order; ``var`` (n,) observed variances (for
    the noise floor); with ``centre=False`` the mean stays zero. O(N n R + leaves R^3)."""
    Yh = est.Yhat
    N, n = Yh.shape
    R = tree.rank
    W = [z + qq for z, qq in zip(est.Zsum, path_gram(tree, est.Q), strict=True)]
    Wleaf = leaf_path_matrices(tree, W, np.arange(tree.n_leaves))  # (k, R, R)
    qsum = [q.sum(axis=2) for q in est.Q]  # (p_l, r_l)
    # V = sum_i q_i,path(j) y_hat_ij, per level and group: (n, R)
    V = np.zeros((n, R))
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        b = tree.bounds[lvl]
        for g in range(tree.n_groups[lvl]):
            V[b[g]:b[g + 1], o0:o1] = Yh[:, b[g]:b[g + 1]].T @ est.Q[lvl][g].T
    V += est.corr
    ysum = Yh.sum(axis=0)
    S2 = np.einsum("ij,ij->j", Yh, Yh) + est.corr_sq
    Fn = np.empty((n, R))
    mean = np.zeros(n)
    lb = tree.bounds[-1]
    anc = tree.leaf_anc
    for c in range(tree.n_leaves):
        a, b = int(lb[c]), int(lb[c + 1])
        s = np.concatenate([qsum[lvl][anc[c, lvl]] for lvl in range(tree.n_levels)])
        if centre:
            A = np.empty((R + 1, R + 1))
            A[:R, :R] = Wleaf[c]
            A[:R, R] = A[R, :R] = s
            A[R, R] = N
            B = np.concatenate([V[a:b].T, ysum[None, a:b]], axis=0)
            beta = np.linalg.solve(A, B)
            Fn[a:b] = beta[:R].T
            mean[a:b] = beta[R]
        else:
            B = V[a:b].T
            beta = np.linalg.solve(Wleaf[c], B)
            Fn[a:b] = beta.T
        S2[a:b] -= np.einsum("kj,kj->j", beta, B)
    Fn = tree.apply_mask(Fn)
    D = np.maximum(S2 / N, np.maximum(ck.FLOOR_REL * var, ck.FLOOR_ABS))
    return Fn, D, mean


def check_missing(Yh: np.ndarray) -> None:
    """Refuse infinite entries and features with fewer than two observed values."""
    if np.isinf(Yh).any():
        raise InputError("Y contains infinite values (NaN marks a missing entry; inf is refused)")
    counts = np.isfinite(Yh).sum(axis=0)
    if np.any(counts < 2):
        raise InputError(f"{int(np.sum(counts < 2))} feature(s) have fewer than 2 observed "
                         "values")
