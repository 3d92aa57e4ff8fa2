"""Missing values against dense-Gaussian references on small cases."""

import numpy as np
import pytest
from fm_dense import expand, small_problem

from mlr_dask import InputError
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.fm import em as fem
from mlr_dask.fm import missing as fmm
from mlr_dask.fm.tree import FactorTree
from mlr_dask.hierarchy import Hierarchy


def _with_nan(Y, frac, seed):
    rng = np.random.default_rng(seed)
    Y = Y.copy()
    Y[rng.random(Y.shape) < frac] = np.nan
    return Y


def _dense(model):
    tree, st = model._tree, model._state
    Fh = expand(tree, st.F)
    p = model.hierarchy_.perm
    S = np.empty((tree.n, tree.n))
    S[np.ix_(p, p)] = Fh @ Fh.T + np.diag(st.D)
    return S


@pytest.fixture(scope="module")
def fitted():
    h, ranks, Y = small_problem(seed=6, n=30, N=60, levels=3, ranks=(2, 2, 1))
    Yn = _with_nan(Y, 0.15, 0)
    m = MultilevelFactorModel(h, ranks, max_iter=40, tol=0).fit(Yn)
    return m, Y, Yn


def test_fit_with_nan_increases_the_observed_likelihood(fitted):
    m, Y, Yn = fitted
    assert m.missing_
    ll = np.array([m.loglike_init_, *m.loglike_])
    assert np.all(np.diff(ll) >= -1e-9 * np.abs(ll[1:])) and ll[-1] > ll[0]
    assert m.loglike_[-1] == pytest.approx(m.score(Yn), rel=1e-10)


def test_score_transform_impute_match_dense_gaussian(fitted):
    m, Y, Yn = fitted
    S = _dense(m)
    mu = m.mean_
    ll, Ez, Yimp = [], [], Yn.copy()
    tree = m._tree
    Fh = np.empty((tree.n, tree.s))
    Fh[m.hierarchy_.perm] = expand(tree, m._state.F)
    for i in range(Yn.shape[0]):
        o = np.isfinite(Yn[i])
        r = Yn[i, o] - mu[o]
        Soo = S[np.ix_(o, o)]
        x = np.linalg.solve(Soo, r)
        ll.append(-0.5 * (o.sum() * np.log(2 * np.pi) + np.linalg.slogdet(Soo)[1] + r @ x))
        Ez.append(Fh[o].T @ x)
        Yimp[i, ~o] = mu[~o] + S[np.ix_(~o, o)] @ x
    np.testing.assert_allclose(m.score_samples(Yn), ll, rtol=1e-10)
    np.testing.assert_allclose(m.transform(Yn), np.array(Ez), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m.impute(Yn), Yimp, rtol=1e-10)
    assert np.array_equal(m.impute(Yn)[np.isfinite(Yn)], Yn[np.isfinite(Yn)])


def _dense_missing_em_step(tree, F, D, mean, Yh):
    """EM step with missing entries treated as latent, in the dense expanded factor space."""
    N, n = Yh.shape
    Fh = expand(tree, F)
    s = tree.s
    M = expand(tree, tree.col_mask.astype(float)) != 0
    A = np.zeros((s + 1, s + 1))
    Ezz_i, q_i = [], []
    for i in range(N):
        o = np.isfinite(Yh[i])
        Fo = Fh[o] / D[o][:, None]
        Sig = np.linalg.inv(np.eye(s) + Fh[o].T @ Fo)
        q = Sig @ Fo.T @ (Yh[i, o] - mean[o])
        E = np.zeros((s + 1, s + 1))
        E[:s, :s] = Sig + np.outer(q, q)
        E[:s, s] = E[s, :s] = q
        E[s, s] = 1.0
        A += E
        Ezz_i.append(E)
        q_i.append(q)
    Fn, Dn, mn = np.zeros_like(Fh), np.zeros(n), np.zeros(n)
    for j in range(n):
        idx = np.append(M[j], True)
        beta_old = np.append(Fh[j], mean[j])
        b = np.zeros(s + 1)
        ey2 = 0.0
        for i in range(N):
            if np.isfinite(Yh[i, j]):
                b += np.append(q_i[i], 1.0) * Yh[i, j]
                ey2 += Yh[i, j] ** 2
            else:
                b += Ezz_i[i] @ beta_old
                ey2 += beta_old @ Ezz_i[i] @ beta_old + D[j]
        beta = np.zeros(s + 1)
        beta[idx] = np.linalg.solve(A[np.ix_(idx, idx)], b[idx])
        Fn[j], mn[j] = beta[:s], beta[s]
        Dn[j] = (ey2 - beta @ b) / N
    from fm_dense import compress
    return compress(tree, Fn), Dn, mn


def test_em_step_with_nan_matches_dense_reference():
    h = Hierarchy.from_boundaries([[0, 9], [0, 4, 9], [0, 2, 4, 6, 9]])
    tree = FactorTree(h, [2, 1, 1])
    rng = np.random.default_rng(2)
    Y = _with_nan(rng.standard_normal((25, 9)) * 2 + 1, 0.2, 3)
    Y[0] = np.nan  # a sample with nothing observed
    F = tree.apply_mask(rng.standard_normal((9, tree.rank)))
    D = rng.uniform(0.5, 1.5, 9)
    mean = rng.standard_normal(9)
    est = fmm.estep_missing(tree, F, D, mean, Y, stats=True)
    F1, D1, m1 = fmm.mstep_missing(tree, F, est, np.nanvar(Y, axis=0), True)
    F2, D2, m2 = _dense_missing_em_step(tree, F, D, mean, Y)
    np.testing.assert_allclose(F1, F2, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(D1, D2, rtol=1e-9)
    np.testing.assert_allclose(m1, m2, rtol=1e-9, atol=1e-11)


def test_without_nan_the_missing_step_is_the_complete_step():
    h, ranks, Y = small_problem(seed=8, n=20, N=30, levels=2, ranks=(2, 1))
    tree = FactorTree(h, ranks)
    Yh = Y[:, h.perm]
    rng = np.random.default_rng(0)
    F = rng.standard_normal((h.n, tree.rank))
    D = rng.uniform(0.5, 1.5, h.n)
    new = fem.em_step(tree, Yh, fem.FMState.from_F(F, D=D, mean=Yh.mean(0)))
    est = fmm.estep_missing(tree, F, D, Yh.mean(0), Yh, stats=True)
    F1, D1, m1 = fmm.mstep_missing(tree, F, est, Yh.var(0), True)
    np.testing.assert_allclose(F1, new.F, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(D1, new.D, rtol=1e-9)
    np.testing.assert_allclose(m1, Yh.mean(0), rtol=1e-10)


def test_missing_value_errors():
    h, ranks, Y = small_problem(seed=1)
    Y = Y.copy()
    Y[:-1, 3] = np.nan
    with pytest.raises(InputError, match="fewer than 2 observed"):
        MultilevelFactorModel(h, ranks).fit(Y)
