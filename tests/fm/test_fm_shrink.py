"""Fold moments, equivalent rows, the dense EM of the rank search and the shrinkage option,
against dense-Gaussian references."""

import numpy as np
import pytest
from fm_dense import em_step, expand, loglike, small_problem

from mlr_dask import InputError
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.fm import moments as mom
from mlr_dask.fm.dense import DenseEM
from mlr_dask.fm.model import make_tree
from mlr_dask.hierarchy import Hierarchy


def test_fold_moments_numpy_and_dask_match_direct_covariances():
    import dask.array as da

    rng = np.random.default_rng(0)
    Y = rng.standard_normal((90, 7)) * 3 + 5
    for Yin in (Y, da.from_array(Y, chunks=(25, 4))):
        fm = mom.fold_moments(Yin, 3, seed=1)
        assert fm.count.sum() == 90
        for k in range(3):
            tr, va = Y[fm.folds != k], Y[fm.folds == k]
            C, mu, m = fm.covariance([i for i in range(3) if i != k], None)
            np.testing.assert_allclose(mu, tr.mean(0), rtol=1e-12)
            np.testing.assert_allclose(C, np.cov(tr.T, bias=True), rtol=1e-10, atol=1e-12)
            assert m == tr.shape[0]
            Cv, _, _ = fm.covariance([k], mu)  # about the training mean
            np.testing.assert_allclose(Cv, (va - mu).T @ (va - mu) / va.shape[0],
                                       rtol=1e-10, atol=1e-12)
    S, mean, N = mom.moments(Y, centre=False)
    np.testing.assert_allclose(S, Y.T @ Y / 90, rtol=1e-12)
    assert N == 90 and not mean.any()
    Y[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        mom.fold_moments(Y, 3)


def test_equivalent_rows_give_the_em_and_likelihood_of_the_data():
    h, ranks, Y = small_problem(seed=3, n=18, N=50, levels=2, ranks=(2, 1))
    tree = make_tree(h, ranks)[0]
    Yh = Y[:, h.perm]
    Yc = Yh - Yh.mean(0)
    S = Yc.T @ Yc / Yc.shape[0]
    X = mom.equivalent_rows(S)
    assert X.shape == (18, 18)
    np.testing.assert_allclose(X.T @ X / 18, S, rtol=1e-10, atol=1e-12)
    rng = np.random.default_rng(0)
    F = tree.apply_mask(rng.standard_normal((tree.n, tree.rank)))
    D = rng.uniform(0.5, 2, tree.n)
    F1, D1 = em_step(tree, F, D, Yc)
    F2, D2 = em_step(tree, F, D, X)
    np.testing.assert_allclose(F2, F1, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(D2, D1, rtol=1e-8)
    Fh = expand(tree, F)
    Sigma = Fh @ Fh.T + np.diag(D)
    assert loglike(Sigma, X).mean() == pytest.approx(loglike(Sigma, Yc).mean(), rel=1e-10)
    # a singular S (fewer samples than features) through the eigendecomposition
    S2 = Yc[:5].T @ Yc[:5] / 5
    X2 = mom.equivalent_rows(S2)
    np.testing.assert_allclose(X2.T @ X2 / 18, S2, atol=1e-10)


def test_shrink():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((30, 4))
    S = A.T @ A
    S2 = mom.shrink(S, 0.25)
    np.testing.assert_allclose(np.diag(S2), np.diag(S))
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(S2[off], 0.75 * S[off])
    with pytest.raises(InputError, match="shrinkage"):
        mom.shrink(S, 1.0)


def _masked_problem():
    h, ranks, Y = small_problem(seed=5, n=24, N=120, levels=3, ranks=(2, 2, 1))
    sizes = [h.block_sizes(lvl) for lvl in range(3)]
    spec = [2, np.minimum(np.where(np.arange(sizes[1].size) % 2 == 0, 2, 1), sizes[1]),
            np.where(np.arange(sizes[2].size) % 3 == 0, 0, 1)]
    tree = make_tree(h, spec)[0]
    assert tree.masked
    Yh = Y[:, h.perm]
    Yc = Yh - Yh.mean(0)
    return h, spec, tree, Yc


def test_dense_em_step_matches_the_textbook_step_with_group_ranks():
    h, spec, tree, Yc = _masked_problem()
    S = Yc.T @ Yc / Yc.shape[0]
    dem = DenseEM(tree, S, exact_root=False)
    rng = np.random.default_rng(2)
    F = tree.apply_mask(rng.standard_normal((tree.n, tree.rank)))
    D = rng.uniform(0.5, 2, tree.n)
    Fn, Dn, ll = dem.step(F, D)
    Fr, Dr = em_step(tree, F, D, Yc)
    np.testing.assert_allclose(Fn, Fr, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(Dn, Dr, rtol=1e-8)
    Fh = expand(tree, F)
    assert ll == pytest.approx(loglike(Fh @ Fh.T + np.diag(D), Yc).mean(), rel=1e-10)
    assert dem.loglike(F, D) == pytest.approx(ll, rel=1e-12)
    # with the exact root step: the textbook EM step from the root's maximizer
    dex = DenseEM(tree, S)
    assert dex.has_root
    Fx = dex.root_step(F, D)
    Fn, Dn, ll = dex.step(F, D)
    Fr, Dr = em_step(tree, Fx, D, Yc)
    np.testing.assert_allclose(Fn, Fr, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(Dn, Dr, rtol=1e-8)
    assert ll == pytest.approx(dem.loglike(Fx, D), rel=1e-12)


def test_root_step_maximizes_over_the_root_loadings():
    """The exact root step beats every perturbation of the root loadings, the rest held."""
    h, spec, tree, Yc = _masked_problem()
    S = Yc.T @ Yc / Yc.shape[0]
    dem = DenseEM(tree, S)
    rng = np.random.default_rng(5)
    F = tree.apply_mask(rng.standard_normal((tree.n, tree.rank)))
    D = rng.uniform(0.5, 2, tree.n)
    Fx = dem.root_step(F, D)
    np.testing.assert_array_equal(np.delete(Fx, np.s_[slice(*tree.span(0))], 1),
                                  np.delete(F, np.s_[slice(*tree.span(0))], 1))
    best = dem.loglike(Fx, D)
    assert best > dem.loglike(F, D)
    o0, o1 = tree.span(0)
    for scale in (1e-3, 1e-2, 1e-1):
        for _ in range(5):
            Fp = Fx.copy()
            Fp[:, o0:o1] += scale * rng.standard_normal((tree.n, o1 - o0))
            assert dem.loglike(Fp, D) <= best + 1e-12


def test_root_step_of_factor_analysis_matches_the_general_step():
    """Root alone (Psi = D, the shortcut) against the Cholesky route of trees with lower
    levels; the signs of the root columns follow the input's."""
    rng = np.random.default_rng(3)
    n, k = 12, 3
    Y = rng.standard_normal((200, 4)) @ rng.standard_normal((4, n)) + rng.standard_normal((200, n))
    S = np.cov(Y.T, bias=True)
    tree = make_tree(Hierarchy.from_boundaries([[0, n], [0, 5, n]]), [k, 0])[0]
    dem = DenseEM(tree, S)
    assert not dem._lower
    F = tree.apply_mask(rng.standard_normal((n, tree.rank)))
    D = rng.uniform(0.5, 2, n)
    fast = dem.root_step(F, D)
    dem._lower = True
    slow = dem.root_step(F, D)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)
    o0, o1 = tree.span(0)
    assert np.all(np.einsum("ij,ij->j", fast[:, o0:o1], F[:, o0:o1]) >= 0)


def test_dense_em_reaches_factor_analysis_on_nearly_collinear_data():
    """Root alone: the dense EM (exact root step, factor-analysis start) reaches scikit-learn's
    factor analysis on features that are nearly linear combinations of each other, where EM
    alone from the SVD start stalls at a lower likelihood."""
    from sklearn.decomposition import FactorAnalysis

    rng = np.random.default_rng(0)
    N, n, k = 400, 30, 12
    Z = rng.standard_normal((N, 6))
    Y = Z @ rng.standard_normal((6, n)) + 0.05 * rng.standard_normal((N, 1)) * \
        rng.uniform(0, 3, n) + 0.01 * rng.standard_normal((N, n)) * rng.uniform(0.1, 3, n)
    Y = (Y - Y.mean(0)) / Y.std(0)
    S = Y.T @ Y / N
    h = Hierarchy.from_boundaries([[0, n]])
    tree = make_tree(h, [k])[0]
    fa = FactorAnalysis(k, tol=1e-10, max_iter=20000).fit(Y)
    dem = DenseEM(tree, S)
    F, D, _ = dem.fit(*dem.start(), max_iter=5000, tol=1e-10)
    assert dem.loglike(F, D) >= fa.score(Y) - 1e-3
    plain = DenseEM(tree, S, exact_root=False)
    F2, D2, _ = plain.fit(*plain.svd_start(), max_iter=5000, tol=1e-10)
    assert plain.loglike(F2, D2) <= dem.loglike(F, D) + 1e-6


def test_dense_em_fit_rises_and_reaches_the_data_em_optimum():
    h, spec, tree, Yc = _masked_problem()
    S = Yc.T @ Yc / Yc.shape[0]
    dem = DenseEM(tree, S)
    F0, D0 = dem.start()
    lls = [dem.loglike(F0, D0)]
    F, D = F0, D0
    for _ in range(6):  # accelerated cycles never lower the likelihood
        F, D, _ = dem.fit(F, D, max_iter=3, tol=0.0)
        lls.append(dem.loglike(F, D))
    assert np.all(np.diff(lls) >= -1e-10)
    F, D, it = dem.fit(F0, D0, max_iter=5000, tol=1e-12)
    assert it < 5000
    hid = Hierarchy(tree.hierarchy.boundaries)  # Yc is in hierarchy order
    m = MultilevelFactorModel(hid, spec, max_iter=5000, tol=1e-12,
                              assume_centered=True).fit(Yc)
    assert dem.loglike(F, D) == pytest.approx(m.loglike_[-1], abs=1e-6)
    # a fixed point of the textbook step
    Fr, Dr = em_step(tree, F, D, Yc)
    np.testing.assert_allclose(Dr, D, rtol=1e-4)


def test_shrinkage_fits_the_shrunk_covariance():
    h, ranks, Y = small_problem(seed=7, n=20, N=60, levels=2, ranks=(2, 1))
    Y = Y * np.linspace(0.5, 20, h.n)
    a = 0.1
    m = MultilevelFactorModel(h, ranks, shrinkage=a, max_iter=3000, tol=1e-12).fit(Y)
    assert m.shrinkage_ == a and m.n_samples_ == 60
    np.testing.assert_allclose(m.mean_, Y.mean(0), rtol=1e-12)
    S = np.cov(Y.T, bias=True)
    Sa = mom.shrink(S, a)
    Sigma = m.get_covariance().to_dense()
    n = h.n
    obj = -0.5 * (n * np.log(2 * np.pi) + np.linalg.slogdet(Sigma)[1]
                  + np.trace(np.linalg.solve(Sigma, Sa)))
    assert m.loglike_[-1] == pytest.approx(obj, rel=1e-9)  # the fitted objective
    # a fixed point of the dense EM on S_a (hierarchy order)
    tree = m._tree
    dem = DenseEM(tree, Sa[np.ix_(h.perm, h.perm)])
    F1, D1, _ = dem.step(m._state.F, m._state.D)
    np.testing.assert_allclose(D1, m._state.D, rtol=1e-5)
    # the score is the plain Gaussian log-likelihood of the data under Sigma
    ref = loglike(Sigma, Y - Y.mean(0)).mean()
    assert m.score(Y) == pytest.approx(ref, rel=1e-10)
    # shrinkage towards the diagonal is scale equivariant: standardize changes nothing
    ms = MultilevelFactorModel(h, ranks, shrinkage=a, standardize=True, max_iter=3000,
                               tol=1e-12).fit(Y)
    assert ms.score(Y) == pytest.approx(m.score(Y), abs=1e-5)
    # and it pays over maximum likelihood on few samples of many correlated features
    m0 = MultilevelFactorModel(h, ranks, shrinkage=0.0, max_iter=3000).fit(Y)
    assert m0.shrinkage_ == 0.0 and m0.loglike_[-1] > m.loglike_[-1]


def test_shrinkage_input_errors_and_save(tmp_path):
    h, ranks, Y = small_problem(seed=7, n=12, N=40, levels=2, ranks=(2, 1))
    for bad in (1.0, -0.1, "yes"):
        with pytest.raises(InputError, match="shrinkage"):
            MultilevelFactorModel(h, ranks, shrinkage=bad).fit(Y)
    Yn = Y.copy()
    Yn[0, 0] = np.nan
    with pytest.raises(InputError, match="complete data"):
        MultilevelFactorModel(h, ranks, shrinkage=0.1).fit(Yn)
    m = MultilevelFactorModel(h, ranks, shrinkage=0.05, max_iter=200).fit(Y)
    m.save(tmp_path / "m.zarr")
    m2 = MultilevelFactorModel.load(tmp_path / "m.zarr")
    assert m2.shrinkage_ == 0.05 and m2.score(Y) == pytest.approx(m.score(Y), rel=1e-12)


def test_shrinkage_auto_for_fixed_ranks_by_cross_validation():
    h, ranks, Y = small_problem(seed=8, n=30, N=45, levels=2, ranks=(3, 1))
    m = MultilevelFactorModel(h, ranks, shrinkage="auto", max_iter=500, random_state=0).fit(Y)
    from mlr_dask.fm import select

    K = select.n_folds(Y.shape[0])
    tried = {t["shrinkage"] for t in m.rank_trials_}
    assert tried == set(select.SHRINKAGE_GRID)
    assert all(t["ranks"] == list(m.ranks_) for t in m.rank_trials_)  # ranks kept
    best = max(m.rank_trials_, key=lambda t: t["validation"])
    # the chosen value scaled for the K/(K-1) times larger data of the final fit
    assert m.shrinkage_ == pytest.approx(best["shrinkage"] * (K - 1) / K, rel=1e-12)
