import dask.array as da
import numpy as np
import pytest

from mlr_dask.datasets.mlr import mlr_plus_noise
from mlr_dask.fit.als import als_half_step
from mlr_dask.fit.als_dask import _col_step, _row_step, diag_products, run_als_dask
from mlr_dask.fit.dask import _DaskEngine, _Factors, _NumpyEngine, chunk_layout, fit_mlr_dask


@pytest.fixture(scope="module")
def problem():
    truth, A = mlr_plus_noise(150, 120, rank=9, n_levels=5, noise=0.1, rng=21)
    Ah = np.ascontiguousarray(A[truth.rows.perm][:, truth.cols.perm])
    return truth, A, Ah


def _factors(truth, seed):
    F = _Factors(truth.rows, truth.cols, truth.ranks, psd=False)
    rng = np.random.default_rng(seed)
    for lvl in range(len(F.ranks)):
        F.B[lvl][:] = rng.standard_normal(F.B[lvl].shape)
        F.C[lvl][:] = rng.standard_normal(F.C[lvl].shape)
    return F


def _model(F):
    """The dense model ``sum_l blockdiag_l(B_l C_l^T)`` of the factors, in hierarchy order."""
    M = np.zeros((F.rb[0][-1], F.cb[0][-1]))
    for lvl in range(len(F.ranks)):
        rb, cb = F.rb[lvl], F.cb[lvl]
        for k in range(rb.size - 1):
            M[rb[k]:rb[k + 1], cb[k]:cb[k + 1]] += (F.B[lvl][rb[k]:rb[k + 1]]
                                                    @ F.C[lvl][cb[k]:cb[k + 1]].T)
    return M


def _dense_diag(Ah, rb, cb, X, transpose):
    out = np.zeros(((cb if transpose else rb)[-1], X.shape[1]))
    for k in range(rb.size - 1):
        blk = Ah[rb[k]:rb[k + 1], cb[k]:cb[k + 1]]
        if transpose:
            out[cb[k]:cb[k + 1]] = blk.T @ X[rb[k]:rb[k + 1]]
        else:
            out[rb[k]:rb[k + 1]] = blk @ X[cb[k]:cb[k + 1]]
    return out


@pytest.mark.parametrize("engine", ["numpy", "dask"])
@pytest.mark.parametrize("transpose", [False, True])
def test_diag_products_match_dense_blocks(problem, engine, transpose):
    truth, _, Ah = problem
    c, rch, cch = chunk_layout(truth.rows, truth.cols, 40)
    assert 0 < c < truth.rows.n_levels  # coarse levels by products, fine ones in chunks
    eng = (_NumpyEngine(Ah, rch, cch) if engine == "numpy"
           else _DaskEngine(da.from_array(Ah, chunks=50), rch, cch))
    F = _factors(truth, 1)
    X = F.B if transpose else F.C
    P = diag_products(eng, F, c, rch, cch, X, transpose)
    for lvl in range(len(F.ranks)):
        ref = _dense_diag(Ah, F.rb[lvl], F.cb[lvl], X[lvl], transpose)
        np.testing.assert_allclose(P[lvl], ref, atol=1e-10)
    assert eng.passes > 0


def test_half_steps_equal_the_in_memory_half_step(problem):
    """The row and column steps are the in-memory half steps, and the column step's loss
    (from its right-hand sides) is the dense loss of the new factors."""
    truth, _, Ah = problem
    c, rch, cch = chunk_layout(truth.rows, truth.cols, 40)
    F = _factors(truth, 2)
    eng = _NumpyEngine(Ah, rch, cch)
    B = _row_step(eng, F, c, rch, cch, F.C)
    ref = als_half_step(Ah, F.rb, F.cb, F.C, F.ranks)
    for g, r in zip(B, ref, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-8)
    C, loss = _col_step(eng, F, c, rch, cch, B, float(np.sum(Ah**2)))
    ref = als_half_step(np.ascontiguousarray(Ah.T), F.cb, F.rb, B, F.ranks)
    for g, r in zip(C, ref, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-8)
    F.B[:], F.C[:] = B, C
    assert loss == pytest.approx(float(np.sum((Ah - _model(F)) ** 2)), rel=1e-9)


@pytest.mark.parametrize("seed", [4, 5])
def test_momentum_als_is_monotone_and_no_worse_than_plain(problem, seed):
    truth, _, Ah = problem
    c, rch, cch = chunk_layout(truth.rows, truth.cols, 40)
    norm2 = float(np.sum(Ah**2))
    out = {}
    for momentum in (False, True):
        F = _factors(truth, seed)
        eng = _NumpyEngine(Ah, rch, cch)

        def loss(F=F):
            return float(np.sum((Ah - _model(F)) ** 2))

        h = run_als_dask(eng, F, c, rch, cch, loss, loss(), norm2, max_iter=12, tol=0.0,
                         momentum=momentum)
        assert np.all(np.diff(h) <= 1e-12)
        assert h[-1] == pytest.approx(np.sqrt(loss() / norm2), rel=1e-10)
        out[momentum] = h[-1]
    assert out[True] <= out[False] * (1 + 1e-9)


def test_als_fit_on_dask_equals_numpy_engine_and_beats_bcd(problem):
    truth, A, _ = problem
    Ad = da.from_array(A, chunks=(37, 41))
    kw = dict(max_iter=30, tol=1e-6, chunk_items=40, seed=3)
    Mn = fit_mlr_dask(Ad, truth.rows, truth.cols, truth.ranks, engine="numpy", method="als",
                      **kw)
    Md = fit_mlr_dask(Ad, truth.rows, truth.cols, truth.ranks, engine="dask", method="als",
                      **kw)
    assert Md.history_["method"] == "als"
    np.testing.assert_allclose(Md.history_["rel_error"], Mn.history_["rel_error"], rtol=1e-8)
    h = np.array(Md.history_["rel_error"])
    assert np.all(np.diff(h) <= 1e-12)
    err = np.linalg.norm(A - Md.to_dense()) / np.linalg.norm(A)
    assert abs(err - h[-1]) < 1e-10
    Mb = fit_mlr_dask(Ad, truth.rows, truth.cols, truth.ranks, engine="numpy", method="bcd",
                      max_iter=3, tol=1e-6, chunk_items=40, seed=3)
    assert h[-1] < Mb.history_["rel_error"][-1]


def test_als_is_refused_for_unknown_methods(problem):
    from mlr_dask.errors import InputError

    truth, A, _ = problem
    with pytest.raises(InputError, match="method"):
        fit_mlr_dask(da.from_array(A, chunks=60), truth.rows, truth.cols, truth.ranks,
                     method="sgd")
