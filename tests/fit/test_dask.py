import dask.array as da
import numpy as np
import pytest

from mlr_dask.datasets.mlr import mlr_plus_noise, write_matrix_store
from mlr_dask.fit import DaskSettings, fit_factors, fit_mlr
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
                    ranks=truth.ranks, allocate_ranks=False, backend="dask",
                    dask=DaskSettings(chunk_items=40), max_iter=1, client=client,
                    baselines=False, method="bcd")
    assert M.history_["n_chunks"] >= 3
    Mn = fit_mlr_dask(da.from_array(A, chunks=64), truth.rows, truth.cols, truth.ranks,
                      engine="numpy", chunk_items=40, max_iter=1)
    np.testing.assert_allclose(M.B, Mn.B, atol=1e-8)
    np.testing.assert_allclose(M.history_["rel_error"], Mn.history_["rel_error"], rtol=1e-10)


def test_zarr_strip_reads_layout_chunks_across_stored_chunks(tmp_path):
    import zarr

    from mlr_dask.fit.dask import ZarrStrip, _ZarrEngine

    A = np.random.default_rng(0).standard_normal((103, 97))
    z = zarr.create_array(tmp_path / "s.zarr", shape=A.shape, chunks=(10, 13), dtype="f8")
    z[:] = A
    rows = np.array([0, 20, 55, 103])
    for cch in (np.array([0, 7, 30, 31, 60, 97]), np.array([0, 13, 26, 39, 97])):
        eng = _ZarrEngine(z, np.arange(103), np.arange(97), rows, cch)
        for i in range(rows.size - 1):  # a chunk row: same rows, consecutive columns
            strip = eng._strip([eng.chunk(i, j) for j in range(cch.size - 1)])
            assert isinstance(strip, ZarrStrip) and strip.axis == 0
            for j, got in enumerate(strip.chunks()):
                assert got.flags.c_contiguous
                np.testing.assert_array_equal(got, A[rows[i]:rows[i + 1], cch[j]:cch[j + 1]])
        eng = _ZarrEngine(z, np.arange(103), np.arange(97), cch, rows)
        for i in range(rows.size - 2):  # a chunk column
            strip = eng._strip([eng.chunk(j, i) for j in range(cch.size - 1)])
            assert isinstance(strip, ZarrStrip) and strip.axis == 1
            for j, got in enumerate(strip.chunks()):
                assert got.flags.c_contiguous
                np.testing.assert_array_equal(got, A[cch[j]:cch[j + 1], rows[i]:rows[i + 1]])
    perm = np.random.default_rng(1).permutation(103)  # rows read by index (a permuted store)
    eng = _ZarrEngine(z, perm, np.arange(97), np.array([0, 50, 103]), np.array([0, 40, 97]))
    strip = eng._strip([eng.chunk(1, j) for j in range(2)])
    for j, got in enumerate(strip.chunks()):
        np.testing.assert_array_equal(got, A[perm[50:]][:, [0, 40][j]:[40, 97][j]])


@pytest.mark.parametrize("hier_order", [True, False])
def test_store_engine_equals_numpy_engine(tmp_path, hier_order):
    """Tasks reading the store themselves (stored chunks not aligned with the layout's; a store
    in original order read by index) run the numpy engine's math and count the same passes."""
    truth, A = mlr_plus_noise(96, 80, rank=8, n_levels=4, noise=0.05, rng=12)
    if hier_order:
        Ah = A[truth.rows.perm][:, truth.cols.perm]
        write_matrix_store(tmp_path / "a.zarr", Ah, kind="mlr", rows=truth.rows, cols=truth.cols,
                           chunk=32)
    else:
        write_matrix_store(tmp_path / "a.zarr", A, kind="mlr", chunk=32)
    store = load_matrix_store(tmp_path / "a.zarr")
    kw = dict(max_iter=3, tol=0.0, chunk_items=30, seed=2)
    Md = fit_mlr_dask(store, truth.rows, truth.cols, truth.ranks, **kw)
    Mn = fit_mlr_dask(store, truth.rows, truth.cols, truth.ranks, engine="numpy", **kw)
    assert Md.history_["n_chunks"] >= 3
    np.testing.assert_allclose(Md.B, Mn.B, atol=1e-10)
    np.testing.assert_allclose(Md.history_["rel_error"], Mn.history_["rel_error"], rtol=1e-12)
    assert Md.history_["passes_over_A"] == Mn.history_["passes_over_A"]


def test_all_coarse_levels_are_cut_into_chunks():
    """A hierarchy whose finest blocks exceed a chunk (plain low rank here) is still read
    chunk by chunk, and the fit is the same as on the matrix in memory."""
    from mlr_dask.hierarchy import Hierarchy

    rng = np.random.default_rng(4)
    A = rng.standard_normal((60, 6)) @ rng.standard_normal((6, 50))
    A += 0.01 * rng.standard_normal(A.shape)
    rows, cols = Hierarchy([[0, 60]]), Hierarchy([[0, 50]])
    c, rch, cch = chunk_layout(rows, cols, 16)
    assert c == 1 and rch.size == cch.size == 5 and np.diff(rch).max() <= 16
    kw = dict(max_iter=4, tol=0.0, chunk_items=16, seed=1)
    Md = fit_mlr_dask(da.from_array(A, chunks=16), rows, cols, [6], **kw)
    Mn = fit_mlr_dask(da.from_array(A, chunks=16), rows, cols, [6], engine="numpy", **kw)
    assert Md.history_["n_chunks"] == 4
    np.testing.assert_allclose(Md.history_["rel_error"], Mn.history_["rel_error"], rtol=1e-10)
    s = np.linalg.svd(A, compute_uv=False)
    best = np.sqrt(np.sum(s[6:] ** 2) / np.sum(s**2))
    assert Md.history_["rel_error"][-1] <= best * (1 + 1e-6)


def _spectrum_block(rng, n, psd=False, decay=0.93, k=60):
    U = np.linalg.qr(rng.standard_normal((n, k)))[0]
    V = U if psd else np.linalg.qr(rng.standard_normal((n, k)))[0]
    A = (U * decay ** np.arange(k)) @ V.T + 1e-3 * rng.standard_normal((n, n))
    return 0.5 * (A + A.T) if psd else A


@pytest.mark.parametrize("psd", [False, True])
def test_product_level_gains_converge_to_the_exact_tail(psd):
    """A level fitted through products (here the root, cut into chunks) keeps the next
    GAIN_DEPTH singular vectors of its blocks as the warm start of its next fit, as the
    in-memory randomized level fit does: refitting the unchanged level makes the predicted
    gains converge to the dense tail singular values, and the tail vectors are unit vectors
    orthogonal to the factors."""
    from mlr_dask.fit.bcd import GAIN_DEPTH
    from mlr_dask.fit.dask import _Factors, _NumpyEngine, _product_level
    from mlr_dask.hierarchy import Hierarchy

    n, r = 400, 4
    A = _spectrum_block(np.random.default_rng(7), n, psd)
    rows = cols = Hierarchy([[0, n]])
    c, rch, cch = chunk_layout(rows, cols, 150)
    assert c == 1  # the root is a product level
    eng = _NumpyEngine(A, rch, cch)
    F = _Factors(rows, cols, [r], psd)
    rng = np.random.default_rng(0)
    _product_level(eng, F, 0, 0, rng)
    if psd:
        exact = np.maximum(np.linalg.eigvalsh(A)[::-1][r:r + GAIN_DEPTH], 0) ** 2
    else:
        exact = np.linalg.svd(A, compute_uv=False)[r:r + GAIN_DEPTH] ** 2
    first = np.abs(F.gains[0] - exact).max() / exact[0]
    for _ in range(15):
        _product_level(eng, F, 0, 0, rng)
    last = np.abs(F.gains[0] - exact).max() / exact[0]
    assert last < 1e-3 < first
    assert F.dp[0] == F.gains[0, 0]
    T = F.tB[0]
    np.testing.assert_allclose(np.linalg.norm(T, axis=0), 1.0, atol=1e-8)
    assert np.abs(T.T @ F.B[0]).max() < 1e-6 * np.abs(F.B[0]).max()


def test_fine_tasks_carry_their_tail_vectors():
    """The fine levels are swept by tasks that start from scratch; their tail vectors travel
    with the factors, so the predicted gains of a randomized fine level converge over the
    sweeps to the dense tail singular values of its blocks."""
    from mlr_dask.fit.bcd import GAIN_DEPTH
    from mlr_dask.fit.dask import _Factors, _fine_sweep, _NumpyEngine
    from mlr_dask.hierarchy import Hierarchy

    rng = np.random.default_rng(8)
    n, r = 600, 4
    A = 1e-3 * rng.standard_normal((n, n))
    A[:300, :300] = _spectrum_block(rng, 300, decay=0.97, k=100)
    A[300:, 300:] = _spectrum_block(rng, 300, decay=0.97, k=100)
    rows = cols = Hierarchy([[0, n], [0, 300, n]])
    c, rch, cch = chunk_layout(rows, cols, 300)
    assert c == 1 and rch.size == 3
    eng = _NumpyEngine(A, rch, cch)
    F = _Factors(rows, cols, [0, r], False)
    exact = sum(np.linalg.svd(A[a:b, a:b], compute_uv=False)[r:r + GAIN_DEPTH] ** 2
                for a, b in ((0, 300), (300, n)))
    _fine_sweep(eng, F, c, rch, cch, [1], 20, 0)
    first = np.abs(F.gains[1] - exact).max() / exact[0]
    for _ in range(15):
        _fine_sweep(eng, F, c, rch, cch, [1], 20, 0)
    last = np.abs(F.gains[1] - exact).max() / exact[0]
    assert last < 1e-3 < first
    assert np.any(F.tB[1]) and np.any(F.tC[1])
