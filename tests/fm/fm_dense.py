"""Dense numpy references for the factor-model tests (small problems only)."""

from __future__ import annotations

import numpy as np

from mlr_dask.fm.tree import FactorTree
from mlr_dask.hierarchy import Hierarchy

LOG_2PI = np.log(2 * np.pi)


def small_problem(seed: int = 0, n: int = 40, N: int = 60, levels: int = 3,
                  ranks=(3, 2, 1), max_children: int = 3, hierarchy: Hierarchy | None = None):
    """A random hierarchy (factor levels only), ranks clipped to the group sizes, and data
    (N, n) in ORIGINAL order drawn from a model of that shape."""
    rng = np.random.default_rng(seed)
    h = hierarchy if hierarchy is not None else Hierarchy.random(
        n, levels, max_children=max_children, permute=True, rng=seed)
    n = h.n
    ranks = [max(1, min(r, int(h.block_sizes(lvl).min()))) for lvl, r in enumerate(ranks)]
    tree = FactorTree(h, ranks)
    F = rng.standard_normal((n, tree.rank))
    D = rng.uniform(0.5, 2.0, n)
    Fh = expand(tree, F)
    Yh = rng.standard_normal((N, tree.s)) @ Fh.T + rng.standard_normal((N, n)) * np.sqrt(D)
    Yh += rng.standard_normal(n) * 3.0  # a nonzero mean
    Y = np.empty_like(Yh)
    Y[:, h.perm] = Yh
    return h, ranks, Y


def expand(tree: FactorTree, F: np.ndarray) -> np.ndarray:
    """Dense expanded loadings (n, s) in hierarchy order from compressed F (n, R)."""
    Fh = np.zeros((tree.n, tree.s))
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        b = tree.bounds[lvl]
        for g in range(tree.n_groups[lvl]):
            Fh[b[g]:b[g + 1], tree.expand_index(lvl, g)] = F[b[g]:b[g + 1], o0:o1]
    return Fh


def compress(tree: FactorTree, Fh: np.ndarray) -> np.ndarray:
    F = np.zeros((tree.n, tree.rank))
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        b = tree.bounds[lvl]
        for g in range(tree.n_groups[lvl]):
            F[b[g]:b[g + 1], o0:o1] = Fh[b[g]:b[g + 1], tree.expand_index(lvl, g)]
    return F


def mask(tree: FactorTree) -> np.ndarray:
    return expand(tree, np.ones((tree.n, tree.rank))) != 0


def loglike(Sigma: np.ndarray, Yc: np.ndarray) -> np.ndarray:
    """Per-sample Gaussian log-likelihood of centred rows Yc (N, n)."""
    n = Sigma.shape[0]
    _, logdet = np.linalg.slogdet(Sigma)
    quad = np.einsum("ij,ij->i", Yc, np.linalg.solve(Sigma, Yc.T).T)
    return -0.5 * (n * LOG_2PI + logdet + quad)


def em_step(tree: FactorTree, F: np.ndarray, D: np.ndarray, Yc: np.ndarray):
    """Textbook EM step of factor analysis with the block-sparse loadings (hierarchy order,
    centred data): returns the new compressed F and D."""
    N = Yc.shape[0]
    Fh = expand(tree, F)
    Sigma = Fh @ Fh.T + np.diag(D)
    beta = np.linalg.solve(Sigma, Fh).T  # (s, n)
    Ez = beta @ Yc.T
    Ezz = N * (np.eye(tree.s) - beta @ Fh) + Ez @ Ez.T
    V = Yc.T @ Ez.T
    M = mask(tree)
    Fn = np.zeros_like(Fh)
    for j in range(tree.n):
        idx = M[j]
        Fn[j, idx] = np.linalg.solve(Ezz[np.ix_(idx, idx)], V[j, idx])
    Dn = (np.einsum("ij,ij->j", Yc, Yc) - np.einsum("ij,ij->i", Fn, V)) / N
    return compress(tree, Fn), Dn
