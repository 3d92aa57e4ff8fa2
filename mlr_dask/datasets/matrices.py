"""Dense test matrices for MLR fitting (``mlr.md`` section 5); all seeded, all offline.

Every generator returns a dense float64 array in original order (it materializes m x n numbers).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
from scipy.spatial import cKDTree

from mlr_dask.errors import InputError

__all__ = ["dgt", "radial_kernel", "fiedler", "graph_distances", "hierarchical_covariance",
           "GENERATORS"]

_MAX_ENTRIES = 400_000_000  # 3.2 GB of float64


def _check(m: int, n: int) -> None:
    if m < 1 or n < 1:
        raise InputError(f"matrix sizes must be positive, got {m} x {n}")
    if m * n > _MAX_ENTRIES:
        raise InputError(f"{m} x {n} is too large to generate in memory")


def _pairwise_dist(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    d2 = (X**2).sum(1)[:, None] + (Y**2).sum(1)[None, :] - 2.0 * (X @ Y.T)
    return np.sqrt(np.maximum(d2, 0.0))


def dgt(m: int, n: int | None = None, *, k: float = 5.0, dim: int = 3, seed: int = 0) -> np.ndarray:
    """Discrete Gauss transform ``A_ij = exp(-||t_i - s_j||^2 / delta)``, ``delta = 1/k^2``,
    targets (m) and sources (n) uniform in ``[0, 1]^dim``. (m, n)."""
    n = m if n is None else n
    _check(m, n)
    rng = np.random.default_rng(seed)
    t = rng.uniform(size=(m, dim))
    s = rng.uniform(size=(n, dim))
    return np.exp(-np.square(_pairwise_dist(t, s)) * k**2)


def _sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def radial_kernel(
    m: int, n: int | None = None, *, sigma: float = 0.9, n_scales: int = 3, seed: int = 0
) -> np.ndarray:
    """``A = sum_{l<n_scales} K(D / (sigma 2^-l))`` with ``K(rho) = (1 + rho^2)^-2`` and
    ``D_ij = ||t_i - s_j||`` for two independent uniform point sets on the sphere S^2. (m, n)."""
    n = m if n is None else n
    _check(m, n)
    rng = np.random.default_rng(seed)
    D = _pairwise_dist(_sphere(rng, m), _sphere(rng, n))
    A = np.zeros_like(D)
    for lvl in range(n_scales):
        rho = D / (sigma * 2.0**-lvl)
        A += (1.0 + rho**2) ** -2
    return A


def fiedler(n: int, *, seed: int = 0) -> np.ndarray:
    """Fiedler-type matrix ``A_ij = |a_i - a_j|``, ``a`` uniform in [0, 1]. (n, n), symmetric."""
    _check(n, n)
    a = np.random.default_rng(seed).uniform(size=n)
    return np.abs(a[:, None] - a[None, :])


def graph_distances(n: int, *, radius: float | None = None, seed: int = 0) -> np.ndarray:
    """All-pairs shortest-path distances on a random geometric graph: ``n`` points uniform in the
    unit square, edges between points closer than ``radius`` (default: twice the connectivity
    threshold ``sqrt(log n / (pi n))``) weighted by their length; a minimum spanning tree of
    the complete graph is added so the graph is connected. (n, n), symmetric."""
    _check(n, n)
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, 2))
    if radius is None:
        radius = 2.0 * np.sqrt(np.log(max(n, 2)) / (np.pi * n))
    tree = cKDTree(X)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    w = np.linalg.norm(X[pairs[:, 0]] - X[pairs[:, 1]], axis=1)
    G = sp.coo_matrix((w, (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    n_comp, lab = csgraph.connected_components(G, directed=False)
    if n_comp > 1:  # join components through their nearest points
        reps = [np.flatnonzero(lab == c)[0] for c in range(n_comp)]
        Dr = _pairwise_dist(X[reps], X[reps])
        mst = csgraph.minimum_spanning_tree(Dr).tocoo()
        extra = sp.coo_matrix((mst.data, (np.asarray(reps)[mst.row], np.asarray(reps)[mst.col])),
                              shape=(n, n))
        G = (G + extra.tocsr()).tocsr()
    return csgraph.shortest_path(G, method="D", directed=False)


def hierarchical_covariance(
    n: int = 2000,
    *,
    n_samples: int = 200,
    n_groups: tuple[int, ...] = (4, 16),
    factors: tuple[int, ...] = (4, 2, 1),
    snr: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Sample covariance ``Y^T Y / n_samples`` (n, n) of a synthetic factor model with global
    factors and nested group factors: ``factors[0]`` global factors, ``factors[l]`` factors per
    group of level ``l`` (``n_groups[l-1]`` contiguous groups, features randomly permuted), plus
    noise scaled so that signal variance / noise variance = ``snr``. PSD."""
    _check(n, n)
    if len(factors) != len(n_groups) + 1:
        raise InputError("factors needs one entry for the global level and one per group level")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    S = np.zeros((n_samples, n))
    for lvl, f in enumerate(factors):
        g = 1 if lvl == 0 else n_groups[lvl - 1]
        bounds = np.linspace(0, n, g + 1).round().astype(int)
        for k in range(g):
            a, b = bounds[k], bounds[k + 1]
            F = rng.standard_normal((b - a, f)) / np.sqrt(f)
            S[:, a:b] += rng.standard_normal((n_samples, f)) @ F.T
    noise_sd = np.sqrt(S.var() / snr) if snr > 0 else 1.0
    Y = S + noise_sd * rng.standard_normal(S.shape)
    Y = Y[:, np.argsort(perm)]
    return (Y.T @ Y) / n_samples


GENERATORS = {
    "dgt": dgt,
    "radial": radial_kernel,
    "fiedler": fiedler,
    "distance": graph_distances,
    "hiercov": hierarchical_covariance,
}
