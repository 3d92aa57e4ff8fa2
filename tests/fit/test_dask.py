import dask.array as da
import numpy as np
import pytest

from mlr_dask.datasets.mlr import mlr_plus_noise, write_matrix_store
from mlr_dask.fit import fit_factors, fit_mlr
from mlr_dask.fit.api import load_matrix_store
from mlr_dask.fit.dask import chunk_layout, fit_mlr_dask


@pytest.fixture(scope="module")
def problem():
    truth, A = mlr_plus_noise(160, 128, rank=10, n_levels=5, noise=0.05, rng=11)
    return truth, A


def test_chunk_layout_respects_blocks(problem):
    truth, _ = problem
    c, rch, cch = chunk_layout(truth.rows, truth.cols, 50)
    assert 0 < c < truth.rows.n_levels
    assert rch.size == cch.size and rch.size > 2
    for lvl in range(c, truth.rows.n_levels):  # fine levels: chunk bounds are block bounds
        assert set(rch.tolist()) <= set(truth.rows.boundaries[lvl].tolist())
        assert set(cch.tolist()) <= set(truth.cols.boundaries[lvl].tolist())
    for lvl in range(c):  # coarse levels: no chunk straddles a block
        b = truth.rows.boundaries[lvl]
        for a, z in zip(rch[:-1], rch[1:], strict=True):
            assert np.searchsorted(b, a, side="right") == np.searchsorted(b, z - 1, side="right")


@pytest.mark.parametrize("psd", [False, True])
def test_dask_path_equals_numpy_path(problem, psd):
    truth, A = problem
    rows, cols, ranks = truth.rows, truth.cols, truth.ranks
    if psd:
        A = A[:128, :128] @ A[:128, :128].T / 128
        rows = cols = truth.cols
    Ad = da.from_array(A, chunks=(37, 41))
    kw = dict(psd=psd, max_iter=4, tol=0.0, chunk_items=40, seed=3)
    Mn = fit_mlr_dask(Ad, rows, cols, ranks, engine="numpy", **kw)
    Md = fit_mlr_dask(Ad, rows, cols, ranks, engine="dask", **kw)
    assert Md.history_["n_chunks"] >= 3
    np.testing.assert_allclose(Md.B, Mn.B, atol=1e-8)
    np.testing.assert_allclose(Md.C, Mn.C, atol=1e-8)
    np.testing.assert_allclose(Md.history_["rel_error"], Mn.history_["rel_error"], rtol=1e-10)
    h = np.array(Md.history_["rel_error"])
    assert np.all(np.diff(h) <= 1e-12)
    err = np.linalg.norm(A - Md.to_dense()) / np.linalg.norm(A)
    assert abs(err - h[-1]) < 1e-10
    # product passes per epoch: coarse level fits read A twice when warm, plus one loss pass
    assert Md.history_["passes_over_A"] > 0


def test_dask_path_matches_in_memory_fit(tmp_path):
    truth, A = mlr_plus_noise(96, 80, rank=8, n_levels=4, noise=0.05, rng=12)
    Ah = A[truth.rows.perm][:, truth.cols.perm]
    write_matrix_store(tmp_path / "a.zarr", Ah, kind="mlr", rows=truth.rows, cols=truth.cols,
                       chunk=32)
    store = load_matrix_store(tmp_path / "a.zarr")
    Md = fit_mlr_dask(store, truth.rows, truth.cols, truth.ranks, max_iter=200, tol=1e-10,
                      chunk_items=30)
    Mi = fit_factors(A, truth.rows, truth.cols, truth.ranks, max_iter=200, tol=1e-10)
    assert Md.history_["n_chunks"] >= 3
    ed = np.linalg.norm(A - Md.to_dense()) / np.linalg.norm(A)
    ei = np.linalg.norm(A - Mi.to_dense()) / np.linalg.norm(A)
    assert abs(ed - ei) <= 1e-6 * ei


def test_fit_mlr_backend_dask_with_distributed_client(problem):
    from distributed import Client, LocalCluster

    truth, A = problem
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        M = fit_mlr(da.from_array(A, chunks=64), hierarchy=(truth.rows, truth.cols),
                    ranks=truth.ranks, allocate_ranks=False, backend="dask", chunk_items=40,
                    max_iter=1, client=client)
    assert M.history_["n_chunks"] >= 3
    Mn = fit_mlr_dask(da.from_array(A, chunks=64), truth.rows, truth.cols, truth.ranks,
                      engine="numpy", chunk_items=40, max_iter=1)
    np.testing.assert_allclose(M.B, Mn.B, atol=1e-8)
    np.testing.assert_allclose(M.history_["rel_error"], Mn.history_["rel_error"], rtol=1e-10)
