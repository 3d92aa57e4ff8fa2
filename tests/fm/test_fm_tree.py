"""Tree Cholesky, solves and selected inverse of the capacitance matrix vs dense numpy."""

import numpy as np
import pytest
from fm_dense import expand
from hypothesis import given
from hypothesis import strategies as st

from mlr_dask.fm.tree import (
    FactorTree,
    path_gram,
    selected_inverse,
    tree_back_solve,
    tree_cholesky,
    tree_half_solve,
    tree_solve,
)
from mlr_dask.hierarchy import Hierarchy


def _path_blocks(tree, M):
    out = []
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        blk = np.zeros((tree.n_groups[lvl], o1 - o0, o1))
        for g in range(tree.n_groups[lvl]):
            for m in range(lvl + 1):
                a = tree.group_anc[lvl][g, m]
                m0, m1 = tree.span(m)
                blk[g][:, m0:m1] = M[tree.expand_index(lvl, g), tree.expand_index(m, a)]
        out.append(blk)
    return out


def _problem(seed, n, levels, max_children):
    rng = np.random.default_rng(seed)
    h = Hierarchy.random(n, levels, max_children=max_children, permute=False, rng=seed)
    ranks = [int(min(3 - lvl % 2, h.block_sizes(lvl).min())) for lvl in range(levels)]
    tree = FactorTree(h, ranks)
    F = rng.standard_normal((n, tree.rank))
    D = rng.uniform(0.3, 2.0, n)
    Fh = expand(tree, F)
    K = np.eye(tree.s) + Fh.T @ (Fh / D[:, None])
    return tree, F, D, Fh, K


@given(seed=st.integers(0, 10_000), n=st.integers(6, 40), levels=st.integers(1, 4),
       max_children=st.integers(1, 4))
def test_tree_cholesky_matches_dense(seed, n, levels, max_children):
    tree, F, D, Fh, K = _problem(seed, n, levels, max_children)
    Kb = _path_blocks(tree, K)
    np.testing.assert_allclose(tree.blocks_to_dense(Kb), K)
    ch = tree_cholesky(tree, Kb)
    assert ch.logdet == pytest.approx(np.linalg.slogdet(K)[1], rel=1e-10, abs=1e-10)
    P = np.random.default_rng(seed).standard_normal((tree.s, 3))
    Pl = tree.expanded_to_levels(P)
    Q = tree.levels_to_expanded(tree_solve(tree, ch, Pl))
    np.testing.assert_allclose(Q, np.linalg.solve(K, P), rtol=1e-9, atol=1e-10)
    w = tree_half_solve(tree, ch, Pl)
    np.testing.assert_allclose(tree.levels_to_expanded(tree_back_solve(tree, ch, w)), Q,
                               rtol=1e-12, atol=1e-12)
    assert np.sum(tree.levels_to_expanded(w) ** 2) == pytest.approx(np.sum(P * Q), rel=1e-10)
    # selected inverse: every block between nested groups equals the dense inverse
    Z = tree.blocks_to_dense(selected_inverse(tree, ch))
    mask = tree.blocks_to_dense([np.ones_like(b) for b in Kb]) != 0
    Kinv = np.linalg.inv(K)
    np.testing.assert_allclose(Z[mask], Kinv[mask], rtol=1e-9, atol=1e-11)
    assert np.all(Z[~mask] == 0)
    # path Gram of Q
    QQ = tree.blocks_to_dense(path_gram(tree, tree.expanded_to_levels(Q)))
    np.testing.assert_allclose(QQ[mask], (Q @ Q.T)[mask], rtol=1e-10, atol=1e-12)
