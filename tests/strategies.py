"""Hypothesis strategies shared by the tests: random nested partitions and MLR matrices."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from mlr_dask import Hierarchy, MLRMatrix


def tree_shape(draw, n_levels: int, max_children: int = 3) -> list[list[int]]:
    """Children counts: shape[l][k] = number of level-(l+1) children of block k of level l."""
    shape, width = [], 1
    for _ in range(n_levels - 1):
        kids = draw(st.lists(st.integers(1, max_children), min_size=width, max_size=width))
        shape.append(kids)
        width = sum(kids)
    return shape


def bounds_from_leaf_sizes(shape: list[list[int]], leaf_sizes: np.ndarray) -> list[np.ndarray]:
    """Boundaries of every level given the finest block sizes and the tree shape."""
    sizes = [np.asarray(leaf_sizes)]
    for kids in reversed(shape):
        ends = np.cumsum(kids)
        starts = ends - np.asarray(kids)
        fine = sizes[0]
        sizes.insert(0, np.array([fine[a:b].sum() for a, b in zip(starts, ends, strict=True)]))
    return [np.concatenate(([0], np.cumsum(s))) for s in sizes]


@st.composite
def hierarchy_pairs(draw, max_levels: int = 4, max_leaf: int = 4, square: bool = False):
    """(rows, cols) hierarchies with the same blocks per level, random sizes and perms."""
    n_levels = draw(st.integers(1, max_levels))
    shape = tree_shape(draw, n_levels)
    n_leaves = sum(shape[-1]) if shape else 1
    rs = np.array(draw(st.lists(st.integers(1, max_leaf), min_size=n_leaves, max_size=n_leaves)))
    cs = rs if square else np.array(
        draw(st.lists(st.integers(1, max_leaf), min_size=n_leaves, max_size=n_leaves))
    )
    rb, cb = bounds_from_leaf_sizes(shape, rs), bounds_from_leaf_sizes(shape, cs)
    m, n = int(rb[0][-1]), int(cb[0][-1])
    rp = np.array(draw(st.permutations(range(m))))
    cp = np.array(draw(st.permutations(range(n))))
    return Hierarchy.from_boundaries(rb, rp), Hierarchy.from_boundaries(cb, cp)


@st.composite
def mlr_matrices(draw, max_rank: int = 3, square: bool = False, symmetric: bool = False):
    rows, cols = draw(hierarchy_pairs(square=square or symmetric))
    ranks = draw(st.lists(st.integers(0, max_rank), min_size=rows.n_levels,
                          max_size=rows.n_levels))
    seed = draw(st.integers(0, 2**32 - 1))
    return MLRMatrix.random(rows, None if symmetric else cols, ranks, rng=seed)


def dense_reference(A: MLRMatrix) -> np.ndarray:
    """Dense matrix built block by block from the factors, independently of MLRMatrix."""
    m, n = A.shape
    Ap = np.zeros((m, n))
    for lvl in range(A.n_levels):
        a, b = A.offsets[lvl], A.offsets[lvl + 1]
        rb, cb = A.rows.boundaries[lvl], A.cols.boundaries[lvl]
        for k in range(rb.size - 1):
            Ap[rb[k]:rb[k + 1], cb[k]:cb[k + 1]] += (
                A.B[rb[k]:rb[k + 1], a:b] @ A.C[cb[k]:cb[k + 1], a:b].T
            )
    out = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            out[A.rows.perm[i], A.cols.perm[j]] = Ap[i, j]
    return out
