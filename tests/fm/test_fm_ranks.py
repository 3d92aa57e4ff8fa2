"""Ranks per group: caps at the group sizes, explicit per-group ranks, masked loadings stay
exactly zero and the EM step equals the dense textbook step with that sparsity."""

import numpy as np
import pytest
from fm_dense import compress, expand, loglike

from mlr_dask import InputError
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.fm import em as fem
from mlr_dask.fm.model import make_tree
from mlr_dask.hierarchy import Hierarchy


def _sector_problem(seed=0, N=80):
    """A root and 4 sectors, one of them a single feature."""
    h = Hierarchy.from_boundaries([[0, 11], [0, 4, 5, 8, 11]])
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((N, 2)) @ rng.standard_normal((2, 11))
    for a, b in zip(h.boundaries[1][:-1], h.boundaries[1][1:]):
        Y[:, a:b] += rng.standard_normal((N, 1)) @ rng.standard_normal((1, b - a))
    return h, Y + 0.5 * rng.standard_normal((N, 11))


def test_one_feature_group_accepts_ranks_and_reports_caps():
    h, Y = _sector_problem()
    m = MultilevelFactorModel(h, [3, 2], max_iter=40).fit(Y)
    assert m.ranks_ == (3, 2)
    assert [g.tolist() for g in m.group_ranks_] == [[3], [2, 1, 2, 2]]
    assert m.rank_caps_ == [{"level": 1, "group": 1, "size": 1, "requested": 2, "rank": 1}]
    F = m.loadings_
    assert np.all(F[4, 4] == 0.0)  # feature 4 is the one-feature sector: its 2nd factor
    ll = np.array([m.loglike_init_, *m.loglike_])
    assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[1:]))


def test_explicit_group_ranks_and_zero_rank_groups():
    h, Y = _sector_problem(seed=1)
    m = MultilevelFactorModel(h, [2, [1, 0, 2, 0]], max_iter=30).fit(Y)
    assert [g.tolist() for g in m.group_ranks_] == [[2], [1, 0, 2, 0]]
    F = m.loadings_
    assert np.all(F[0:4, 3] == 0) and np.all(F[4, 2:] == 0) and np.all(F[8:, 2:] == 0)
    assert np.all(F[5:8, 2:] != 0)
    with pytest.raises(InputError, match="given for its"):
        MultilevelFactorModel(h, [2, [1, 0]]).fit(Y)
    with pytest.raises(InputError, match="all ranks are 0"):
        MultilevelFactorModel(h, [0, 0]).fit(Y)


def _dense_masked_em_step(tree, F, D, Yc):
    """Textbook EM step with the loadings restricted to the tree's free entries."""
    N = Yc.shape[0]
    Fh = expand(tree, F)
    Sigma = Fh @ Fh.T + np.diag(D)
    beta = np.linalg.solve(Sigma, Fh).T
    Ez = beta @ Yc.T
    Ezz = N * (np.eye(tree.s) - beta @ Fh) + Ez @ Ez.T
    V = Yc.T @ Ez.T
    M = expand(tree, tree.col_mask.astype(float)) != 0
    Fn = np.zeros_like(Fh)
    for j in range(tree.n):
        idx = M[j]
        if idx.any():
            Fn[j, idx] = np.linalg.solve(Ezz[np.ix_(idx, idx)], V[j, idx])
    Dn = (np.einsum("ij,ij->j", Yc, Yc) - np.einsum("ij,ij->i", Fn, V)) / N
    return compress(tree, Fn), Dn


def test_masked_em_step_matches_dense():
    h, Y = _sector_problem(seed=2, N=50)
    tree, _ = make_tree(h, [3, [2, 1, 0, 2]])
    rng = np.random.default_rng(0)
    F = tree.apply_mask(rng.standard_normal((h.n, tree.rank)))
    D = rng.uniform(0.5, 1.5, h.n)
    state = fem.FMState.from_F(F, D=D, mean=Y.mean(0))
    new = fem.em_step(tree, Y, state)
    F2, D2 = _dense_masked_em_step(tree, F, D, Y - Y.mean(0))
    np.testing.assert_allclose(new.F, F2, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(new.D, D2, rtol=1e-9)
    assert np.all(new.F[~tree.col_mask] == 0.0)  # exactly
    Fh = expand(tree, F2)
    assert new.loglike[-1] == pytest.approx(
        loglike(Fh @ Fh.T + np.diag(D2), Y - Y.mean(0)).mean(), rel=1e-11)


def test_caps_saved_and_loaded(tmp_path):
    h, Y = _sector_problem(seed=3)
    m = MultilevelFactorModel(h, [3, 2], max_iter=5).fit(Y)
    m.save(tmp_path / "m.zarr")
    m2 = MultilevelFactorModel.load(tmp_path / "m.zarr")
    assert [g.tolist() for g in m2.group_ranks_] == [g.tolist() for g in m.group_ranks_]
    assert m2.score(Y) == pytest.approx(m.score(Y), rel=1e-13)
