"""Conditional mean/covariance (imputation) and the exact expected log-likelihood against a
known model, checked against dense numpy on small problems."""

import numpy as np
import pytest
from fm_dense import LOG_2PI, small_problem

from mlr_dask import InputError
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.hierarchy import Hierarchy


@pytest.fixture(scope="module")
def model():
    h, ranks, Y = small_problem(seed=21, n=50, N=60, levels=3, ranks=(3, 2, 2))
    return MultilevelFactorModel(h, ranks, max_iter=3).fit(Y), Y


def _sigma(m):
    return m.get_covariance().to_dense()


@pytest.mark.parametrize("marginalized", [False, True])
def test_conditional_matches_dense(model, marginalized):
    m, Y = model
    n = m.n_features_in_
    rng = np.random.default_rng(1)
    order = rng.permutation(n)
    targets = order[:5]
    observed = np.zeros(n, dtype=bool)
    observed[order[5:40] if marginalized else order[5:]] = True
    Ynew = Y[:7].copy()
    Ynew[:, ~observed] = np.nan  # unobserved entries are ignored
    mean, cov = m.conditional(Ynew, observed, targets)
    S = _sigma(m)
    O = np.flatnonzero(observed)
    T = targets
    G = np.linalg.solve(S[np.ix_(O, O)], S[np.ix_(O, T)])  # Sigma_OO^-1 Sigma_OT
    ref_mean = m.mean_[T] + (Y[:7, O] - m.mean_[O]) @ G
    ref_cov = S[np.ix_(T, T)] - S[np.ix_(T, O)] @ G
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-9, atol=1e-11)
    # a single sample, observed given as indices, default targets (all unobserved)
    mean1, cov1 = m.conditional(Ynew[0], O)
    U = np.flatnonzero(~observed)
    G1 = np.linalg.solve(S[np.ix_(O, O)], S[np.ix_(O, U)])
    np.testing.assert_allclose(mean1, m.mean_[U] + (Y[0, O] - m.mean_[O]) @ G1,
                               rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(cov1, S[np.ix_(U, U)] - S[np.ix_(U, O)] @ G1, rtol=1e-9,
                               atol=1e-11)


def test_conditional_bad_input(model):
    m, Y = model
    n = m.n_features_in_
    obs = np.ones(n, dtype=bool)
    obs[:3] = False
    with pytest.raises(InputError, match="observed"):
        m.conditional(Y, obs, [0, 5])
    with pytest.raises(InputError, match="features"):
        m.conditional(Y[:, :-1], obs)
    Yb = Y.copy()
    Yb[0, 10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        m.conditional(Yb, obs)


def _dense_expected(m, t):
    S, St = _sigma(m), _sigma(t)
    n = S.shape[0]
    d = t.mean_ - m.mean_
    return -0.5 * (n * LOG_2PI + np.linalg.slogdet(S)[1] + np.trace(np.linalg.solve(S, St))
                   + d @ np.linalg.solve(S, d))


def test_expected_score_same_hierarchy(model):
    m, Y = model
    rng = np.random.default_rng(2)
    h = m.hierarchy_
    F = rng.standard_normal((h.n, int(sum(m.ranks_))))
    t = MultilevelFactorModel.from_parameters(h, m.ranks_, F, rng.uniform(0.5, 2, h.n),
                                              mean=rng.standard_normal(h.n))
    assert m.expected_score(t) == pytest.approx(_dense_expected(m, t), rel=1e-10)
    # against itself (equal means): -(n/2)(log 2 pi + 1) - logdet/2
    n = h.n
    assert m.expected_score(m) == pytest.approx(
        -0.5 * (n * LOG_2PI + m.logdet() + n), rel=1e-10)


def test_expected_score_other_hierarchy(model):
    m, Y = model
    n = m.n_features_in_
    ht = Hierarchy.random(n, 3, max_children=3, permute=True, rng=5)
    ranks_t = [max(1, min(2, int(ht.block_sizes(lvl).min()))) for lvl in range(3)]
    rng = np.random.default_rng(3)
    t = MultilevelFactorModel.from_parameters(
        ht, ranks_t, rng.standard_normal((n, sum(ranks_t))), rng.uniform(0.5, 2, n))
    assert m.expected_score(t) == pytest.approx(_dense_expected(m, t), rel=1e-10)
    # the truth scores best in expectation
    assert t.expected_score(t) > m.expected_score(t)
