"""The alternative evaluation paths of the chunk kernels (block level, batched leaf solve,
several chunks) against the dense textbook EM step, and against each other."""

import numpy as np
import pytest
from fm_dense import em_step, small_problem

from mlr_dask.fm import chunk as ck
from mlr_dask.fm import em as fem
from mlr_dask.fm.tree import FactorTree


def _problem():
    h, ranks, Y = small_problem(seed=11, n=90, N=35, levels=4, ranks=(3, 2, 2, 1),
                                max_children=4)
    tree = FactorTree(h, ranks)
    Yh = Y[:, h.perm]
    rng = np.random.default_rng(3)
    F = rng.standard_normal((h.n, tree.rank))
    D = rng.uniform(0.5, 1.5, h.n)
    return tree, Yh, F, D


@pytest.mark.parametrize("block_min", [1, "middle", 10**9])
@pytest.mark.parametrize("batch", [0, 10**9])
@pytest.mark.parametrize("chunk", [None, 12])
def test_em_step_paths_match_dense(monkeypatch, block_min, batch, chunk):
    tree, Yh, F, D = _problem()
    L = tree.n_levels
    if block_min == "middle":  # blocks at a level strictly between the root and the leaves
        block_min = int(tree.n / tree.n_groups[1])
        monkeypatch.setattr(ck, "BLOCK_MIN_FEATURES", block_min)
        assert 0 < ck.block_level(tree) < L - 1
    else:
        monkeypatch.setattr(ck, "BLOCK_MIN_FEATURES", block_min)
        assert ck.block_level(tree) == (L - 1 if block_min == 1 else 0)
    monkeypatch.setattr(ck, "BATCH_MAX_LEAF_SIZE", batch)
    bounds = (np.array([0, tree.n]) if chunk is None
              else tree.hierarchy.leaf_chunks(chunk))
    runner = fem.NumpyRunner(Yh, tree, bounds)
    state = fem.FMState.from_F(F, D=D, mean=Yh.mean(0))
    state, est = fem.resume_from(runner, tree, True, state)
    new = fem.em_iteration(runner, tree, state, est)[0]
    F2, D2 = em_step(tree, F, D, Yh - Yh.mean(0))
    np.testing.assert_allclose(new.F, F2, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(new.D, D2, rtol=1e-9, atol=1e-12)


def test_leaf_solve_batched_equals_loop_and_dense(monkeypatch):
    tree, Yh, F, D = _problem()
    plan = ck.make_plan(tree, 0, tree.n)
    rng = np.random.default_rng(4)
    # W: path blocks of a random symmetric positive definite s x s matrix with the tree pattern
    from mlr_dask.fm.tree import selected_inverse, tree_cholesky

    K = [rng.standard_normal((p, r, int(tree.offsets[lvl + 1]))) * 0.1
         for lvl, (p, r) in enumerate(zip(tree.n_groups, tree.ranks, strict=True))]
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        K[lvl][:, :, o0:o1] = (K[lvl][:, :, o0:o1] + np.swapaxes(K[lvl][:, :, o0:o1], 1, 2)) / 2
        K[lvl][:, :, o0:o1] += 3 * np.eye(o1 - o0)
    W = selected_inverse(tree, tree_cholesky(tree, K))  # nested blocks of an SPD inverse
    VT = rng.standard_normal((tree.rank, tree.n))
    monkeypatch.setattr(ck, "BATCH_MAX_LEAF_SIZE", 0)
    loop = ck.leaf_solve(plan, W, VT)
    monkeypatch.setattr(ck, "BATCH_MAX_LEAF_SIZE", 10**9)
    batched = ck.leaf_solve(plan, W, VT)
    np.testing.assert_allclose(batched, loop, rtol=1e-12, atol=1e-13)
    from mlr_dask.fm.tree import leaf_path_matrices

    leaves = np.arange(tree.n_leaves)
    Wi = leaf_path_matrices(tree, W, leaves)
    lb = tree.bounds[-1]
    for i in leaves:
        a, b = lb[i], lb[i + 1]
        np.testing.assert_allclose(loop[:, a:b], np.linalg.solve(Wi[i], VT[:, a:b]),
                                   rtol=1e-9, atol=1e-11)
