"""MultilevelFactorModel against dense numpy on small problems."""

import numpy as np
import pytest
from fm_dense import compress, em_step, expand, loglike, small_problem

from mlr_dask import InputError
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.fm import em as fem
from mlr_dask.fm.tree import FactorTree
from mlr_dask.hierarchy import Hierarchy


def _dense(model):
    tree, st = model._tree, model._state
    Fh = expand(tree, st.F)
    Sh = Fh @ Fh.T + np.diag(st.D)
    p = model.hierarchy_.perm
    S = np.empty_like(Sh)
    S[np.ix_(p, p)] = Sh
    return S


@pytest.fixture(scope="module")
def fitted():
    h, ranks, Y = small_problem(seed=2, n=36, N=50, levels=3, ranks=(3, 2, 2))
    m = MultilevelFactorModel(h, ranks, max_iter=5).fit(Y)
    return m, h, ranks, Y


def test_covariance_precision_logdet_solve(fitted):
    m, h, ranks, Y = fitted
    S = _dense(m)
    np.testing.assert_allclose(m.get_covariance().to_dense(), S, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.get_precision().to_dense(), np.linalg.inv(S), rtol=1e-9,
                               atol=1e-10)
    assert m.logdet() == pytest.approx(np.linalg.slogdet(S)[1], rel=1e-11)
    b = np.random.default_rng(0).standard_normal((h.n, 3))
    np.testing.assert_allclose(m.solve(b), np.linalg.solve(S, b), rtol=1e-8, atol=1e-10)
    P = m.get_precision()
    assert P.rows == m.get_covariance().rows and not P.symmetric


def test_score_and_score_samples(fitted):
    m, h, ranks, Y = fitted
    S = _dense(m)
    Ynew = m.sample(20, random_state=1) + 0.5
    ref = loglike(S, Ynew - m.mean_)
    np.testing.assert_allclose(m.score_samples(Ynew), ref, rtol=1e-10)
    assert m.score(Ynew) == pytest.approx(ref.mean(), rel=1e-10)
    # the train log-likelihood recorded by the fit is that of the final parameters
    assert m.loglike_[-1] == pytest.approx(loglike(S, Y - Y.mean(0)).mean(), rel=1e-10)


def test_transform_is_posterior_mean(fitted):
    m, h, ranks, Y = fitted
    tree = m._tree
    Fh = expand(tree, m._state.F)
    Yc = (Y - m.mean_)[:, h.perm]
    Sh = Fh @ Fh.T + np.diag(m._state.D)
    Ez = Fh.T @ np.linalg.solve(Sh, Yc.T)
    np.testing.assert_allclose(m.transform(Y), Ez.T, rtol=1e-9, atol=1e-11)


def test_sample_has_model_covariance():
    h = Hierarchy.from_boundaries([[0, 6], [0, 3, 6]])
    m = MultilevelFactorModel.from_parameters(
        h, [1, 1], F=np.arange(12.0).reshape(6, 2) / 10, D=np.full(6, 0.5), mean=np.arange(6.0))
    X = m.sample(200_000, random_state=0)
    S = m.get_covariance().to_dense()
    np.testing.assert_allclose(np.cov(X.T), S, atol=0.03)
    np.testing.assert_allclose(X.mean(0), np.arange(6.0), atol=0.02)


def test_em_step_matches_dense_em():
    h, ranks, Y = small_problem(seed=5, n=30, N=40, levels=3, ranks=(2, 2, 1))
    tree = FactorTree(h, ranks)
    Yh = Y[:, h.perm]
    Yc = Yh - Yh.mean(0)
    rng = np.random.default_rng(0)
    F = rng.standard_normal((h.n, tree.rank))
    D = rng.uniform(0.5, 1.5, h.n)
    state = fem.FMState.from_F(F, D=D, mean=Yh.mean(0))
    new = fem.em_step(tree, Yh, state)
    F2, D2 = em_step(tree, F, D, Yc)
    np.testing.assert_allclose(new.F, F2, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(new.D, D2, rtol=1e-9, atol=1e-12)
    Fh = expand(tree, F2)
    assert new.loglike[-1] == pytest.approx(
        loglike(Fh @ Fh.T + np.diag(D2), Yc).mean(), rel=1e-11)
    assert np.allclose(compress(tree, expand(tree, F2)), F2)


def test_loglike_never_decreases_over_50_iterations():
    h, ranks, Y = small_problem(seed=7, n=48, N=30, levels=4, ranks=(4, 3, 2, 1))
    m = MultilevelFactorModel(h, ranks, max_iter=50, tol=0.0).fit(Y)
    ll = np.array([m.loglike_init_, *m.loglike_])
    assert m.n_iter_ == 50 and len(m.loglike_) == 50
    assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[1:]))
    assert ll[-1] > ll[0]
    assert np.all(m.noise_variance_ > 0)


def test_one_level_equals_sklearn_factor_analysis():
    from sklearn.decomposition import FactorAnalysis

    rng = np.random.default_rng(3)
    n, N, k = 12, 400, 3
    W = rng.standard_normal((n, k))
    X = rng.standard_normal((N, k)) @ W.T + rng.standard_normal((N, n)) * rng.uniform(0.3, 1, n)
    fa = FactorAnalysis(n_components=k, tol=1e-10, max_iter=20000, svd_method="lapack").fit(X)
    h = Hierarchy.from_boundaries([[0, n]])
    m = MultilevelFactorModel(h, [k], max_iter=20000, tol=1e-13).fit(X)
    assert m.score(X) == pytest.approx(fa.score(X), rel=1e-4)
    # and the same with a singleton (diagonal) level given in the hierarchy
    ha = h.refine([n])
    m2 = MultilevelFactorModel(ha, [k], max_iter=20000, tol=1e-13).fit(X)
    assert m2.score(X) == pytest.approx(fa.score(X), rel=1e-4)


def test_centred_data_and_random_init():
    h, ranks, Y = small_problem(seed=9)
    Yc = Y - Y.mean(0)
    a = MultilevelFactorModel(h, ranks, max_iter=3, assume_centered=True).fit(Yc)
    b = MultilevelFactorModel(h, ranks, max_iter=3).fit(Y)
    np.testing.assert_allclose(a.loglike_, b.loglike_, rtol=1e-10)
    assert np.all(a.mean_ == 0)
    c = MultilevelFactorModel(h, ranks, max_iter=30, init="random", random_state=0).fit(Y)
    assert c.loglike_[-1] > c.loglike_init_


def test_save_load_roundtrip(fitted, tmp_path):
    m, h, ranks, Y = fitted
    m.save(tmp_path / "model.zarr")
    m2 = MultilevelFactorModel.load(tmp_path / "model.zarr")
    assert m2.hierarchy_ == m.hierarchy_ and m2.ranks_ == m.ranks_
    np.testing.assert_array_equal(m2.loadings_, m.loadings_)
    assert m2.loglike_ == m.loglike_ and m2.n_iter_ == m.n_iter_
    assert m2.score(Y) == pytest.approx(m.score(Y), rel=1e-13)


def test_xarray_with_coordinate_names():
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(0)
    sector = np.array(list("ABCABCABCABCAB"))
    sub = np.array([f"{s}{i % 2}" for i, s in enumerate(sector)])
    Y = rng.standard_normal((30, sector.size))
    da = xr.DataArray(Y, dims=("sample", "feature"),
                      coords={"sector": ("feature", sector), "sub": ("feature", sub)})
    m = MultilevelFactorModel(["sector", "sub"], [2, 1, 1], max_iter=3).fit(da)
    h = Hierarchy.from_labels([sector, sub])
    ref = MultilevelFactorModel(h, [2, 1, 1], max_iter=3).fit(Y)
    np.testing.assert_allclose(m.loglike_, ref.loglike_, rtol=1e-12)
    assert m.score(da) == pytest.approx(ref.score(Y), rel=1e-12)
    assert m.score(da.transpose("feature", "sample")) == pytest.approx(ref.score(Y), rel=1e-12)


@pytest.mark.parametrize("case", ["inf", "features", "ranks_long", "cover", "ranks_type",
                                  "dims"])
def test_bad_inputs_raise_before_work(case):
    h, ranks, Y = small_problem(seed=1)
    hier, r, data = h, list(ranks), Y.copy()
    if case == "inf":
        data[0, 0] = np.inf
    elif case == "features":
        data = data[:, :-1]
    elif case == "ranks_long":
        r = r + [1]
    elif case == "cover":
        hier = Hierarchy.from_boundaries([[0, h.n + 5]])
        r = [1]
    elif case == "ranks_type":
        r = [0] * len(r)
    elif case == "dims":
        data = data[None]
    with pytest.raises(InputError):
        MultilevelFactorModel(hier, r, max_iter=2).fit(data)


def test_em_publishes_one_event_per_iteration():
    from mlr_dask import events

    h, ranks, Y = small_problem(seed=3)
    got, infos = [], []
    unsubscribe = events.subscribe(got.append)
    try:
        m = MultilevelFactorModel(h, ranks, max_iter=6, tol=0).fit(Y, callback=infos.append)
    finally:
        unsubscribe()
    em_events = [e for e in got if e["stage"] == "em"]
    assert [e["step"] for e in em_events] == [1, 2, 3, 4, 5, 6]
    assert all(e["total"] == 6 for e in em_events)
    np.testing.assert_allclose([e["loglike"] for e in em_events], m.loglike_, rtol=1e-12)
    assert [i["iteration"] for i in infos] == [1, 2, 3, 4, 5, 6]  # callback= still works


def test_accelerated_em_is_monotone_and_faster_than_plain_em():
    h, ranks, Y = small_problem(seed=12, n=40, N=50, levels=3, ranks=(3, 2, 1))
    tree = FactorTree(h, ranks)
    Yh = Y[:, h.perm]

    def fit(accelerate, iters):
        runner = fem.NumpyRunner(Yh, tree, np.array([0, tree.n]))
        st, est = fem.svd_start(runner, tree, True)
        return fem.run_em(runner, tree, st, est, max_iter=iters, tol=0.0,
                          accelerate=accelerate)[0]

    acc, plain = fit(True, 60), fit(False, 60)
    ll = np.array([acc.loglike_init, *acc.loglike])
    assert acc.n_iter == 60 and np.all(np.diff(ll) >= -1e-9 * np.abs(ll[1:]))
    assert acc.loglike[-1] > plain.loglike[-1]
    # the first two steps of each cycle are plain EM steps from the cycle's start
    np.testing.assert_allclose(acc.loglike[:2], plain.loglike[:2], rtol=1e-13)
    long_plain = fit(False, 3000)
    assert acc.loglike[-1] >= long_plain.loglike[-1] - 1e-3 * abs(long_plain.loglike[-1])
