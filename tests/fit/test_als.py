import numpy as np
import pytest

from mlr_dask.datasets.mlr import mlr_plus_noise
from mlr_dask.fit.als import als_half_step, als_half_step_lstsq, run_als
from mlr_dask.fit.bcd import init_state, run_bcd


def _case(ranks, seed=0):
    truth, A = mlr_plus_noise(96, 80, ranks=[4, 2, 2, 1], n_levels=4, noise=0.05, rng=seed)
    Ap = A[truth.rows.perm][:, truth.cols.perm]
    return truth.rows.boundaries, truth.cols.boundaries, Ap


@pytest.mark.parametrize("ranks", [[4, 2, 2, 1], [3, 0, 2, 0], [0, 0, 0, 1], [5, 1, 0, 0]])
def test_structured_half_step_equals_the_dense_lstsq(ranks):
    rb, cb, Ap = _case(ranks)
    rng = np.random.default_rng(1)
    C = [rng.standard_normal((Ap.shape[1], r)) for r in ranks]
    fast = als_half_step(Ap, rb, cb, C, ranks)
    ref = als_half_step_lstsq(Ap, rb, cb, C, ranks)
    for f, g in zip(fast, ref, strict=True):
        np.testing.assert_allclose(f, g, rtol=1e-7, atol=1e-9)


def test_structured_half_step_rank_deficient_is_minimum_norm():
    ranks = [3, 2, 1, 0]
    rb, cb, Ap = _case(ranks, seed=2)
    rng = np.random.default_rng(3)
    C = [rng.standard_normal((Ap.shape[1], r)) for r in ranks]
    C[1][:, 1] = 0.0  # a zero column: the design is rank deficient
    C[0][:, 2] = C[0][:, 0]  # and two equal columns
    fast = als_half_step(Ap, rb, cb, C, ranks)
    ref = als_half_step_lstsq(Ap, rb, cb, C, ranks)
    for f, g in zip(fast, ref, strict=True):
        np.testing.assert_allclose(f, g, rtol=1e-6, atol=1e-8)


def test_run_als_never_increases_the_loss_and_keeps_the_residual():
    ranks = [4, 2, 2, 1]
    rb, cb, Ap = _case(ranks, seed=4)
    st = init_state(Ap, rb, cb, ranks)
    run_bcd(st, max_iter=1, tol=0.0)
    hist = run_als(Ap, st, max_iter=8, tol=0.0)
    assert np.all(np.diff(hist) <= 1e-12)
    R = Ap.copy()
    for lvl in range(len(ranks)):
        for k in range(rb[lvl].size - 1):
            R[rb[lvl][k]:rb[lvl][k + 1], cb[lvl][k]:cb[lvl][k + 1]] -= (
                st.B[lvl][rb[lvl][k]:rb[lvl][k + 1]] @ st.C[lvl][cb[lvl][k]:cb[lvl][k + 1]].T)
    np.testing.assert_allclose(st.R, R, atol=1e-10)
    np.testing.assert_allclose(st.loss, np.sum(R**2), rtol=1e-10)


def _dense_fit(Ap, rb, cb, B, C, ranks):
    M = np.zeros_like(Ap)
    for lvl in range(len(ranks)):
        for k in range(rb[lvl].size - 1):
            M[rb[lvl][k]:rb[lvl][k + 1], cb[lvl][k]:cb[lvl][k + 1]] += (
                B[lvl][rb[lvl][k]:rb[lvl][k + 1]] @ C[lvl][cb[lvl][k]:cb[lvl][k + 1]].T)
    return M


@pytest.mark.parametrize("ranks", [[4, 2, 2, 1], [3, 0, 2, 0]])
def test_column_step_loss_without_the_residual_equals_the_dense_loss(ranks):
    from mlr_dask.fit.als import _c_step_loss

    rb, cb, Ap = _case(ranks, seed=5)
    st = init_state(Ap, rb, cb, ranks)
    rng = np.random.default_rng(6)
    B = [rng.standard_normal((Ap.shape[0], r)) for r in ranks]
    C, loss = _c_step_loss(np.ascontiguousarray(Ap.T), st, B)
    ref = als_half_step_lstsq(Ap.T, cb, rb, B, ranks)
    for f, g in zip(C, ref, strict=True):
        np.testing.assert_allclose(f, g, rtol=1e-7, atol=1e-9)
    dense = float(np.sum((Ap - _dense_fit(Ap, rb, cb, B, C, ranks)) ** 2))
    np.testing.assert_allclose(loss, dense, rtol=1e-9)


@pytest.mark.parametrize("seed", [7, 8])
def test_momentum_is_monotone_and_no_worse_than_plain_als(seed):
    ranks = [4, 2, 2, 1]
    rb, cb, Ap = _case(ranks, seed=seed)
    out = {}
    for mom in (False, True):
        st = init_state(Ap, rb, cb, ranks)
        run_bcd(st, max_iter=1, tol=0.0)
        hist = run_als(Ap, st, max_iter=15, tol=0.0, momentum=mom)
        assert np.all(np.diff(hist) <= 1e-12)
        R = Ap - _dense_fit(Ap, rb, cb, st.B, st.C, ranks)
        np.testing.assert_allclose(st.R, R, atol=1e-10)
        assert abs(hist[-1] - np.linalg.norm(R) / np.linalg.norm(Ap)) < 1e-12
        out[mom] = hist[-1]
    assert out[True] <= out[False] + 1e-12


def test_callback_stops_the_iterations():
    ranks = [4, 2, 2, 1]
    rb, cb, Ap = _case(ranks, seed=9)
    st = init_state(Ap, rb, cb, ranks)
    run_bcd(st, max_iter=1, tol=0.0)
    hist = run_als(Ap, st, max_iter=20, tol=0.0, callback=lambda it, err: it >= 3)
    assert len(hist) == 4
