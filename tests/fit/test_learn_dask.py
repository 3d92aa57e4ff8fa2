"""The learned Dask path: passes over tiles against dense numpy, the top splits against the
in-memory split, and the whole path (zarr store, Dask tasks and futures) against the in-memory
pipeline."""

import dask
import numpy as np
import pytest

from mlr_dask.datasets.matrices import radial_kernel
from mlr_dask.datasets.mlr import write_matrix_store
from mlr_dask.errors import InputError
from mlr_dask.fit import DaskSettings, fit_mlr
from mlr_dask.fit.api import default_levels, load_matrix_store
from mlr_dask.fit.learn_dask import (
    LearnOptions,
    TileSource,
    _Level,
    _pass,
    learn_mlr_dask,
    split_below,
    top_splits,
)


def _rel(A, M):
    return np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)


@pytest.mark.parametrize("zero_diag", [False, True])
def test_pass_matches_dense(zero_diag):
    rng = np.random.default_rng(0)
    m = n = 90
    A = rng.standard_normal((m, n))
    ts = TileSource(A, tile=32)
    pr, pc = rng.permutation(m), rng.permutation(n)
    lv = _Level(pr, pc, [np.array([0, m]), np.array([0, 40, m])],
                [np.array([0, n]), np.array([0, 50, n])])
    br, bc = lv.ids(m, n)
    X, Y = rng.standard_normal((n, 3)), rng.standard_normal((m, 2))
    WX, WtY = _pass(ts, br, bc, X, Y, zero_diag)
    W = np.where(br[:, None] == bc[None, :], A**2, 0.0)
    if zero_diag:
        np.fill_diagonal(W, 0.0)
    np.testing.assert_allclose(WX, W @ X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(WtY, W.T @ Y, rtol=1e-12, atol=1e-12)
    assert ts.passes == pytest.approx(1.0)


def _planted(n, k, seed, symmetric):
    """A permuted block-diagonal matrix of ``k`` blocks plus weak noise."""
    rng = np.random.default_rng(seed)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    labels = np.repeat(np.arange(k), sizes)
    A = np.where(labels[:, None] == labels[None, :], 1.0, 0.0) + 0.05 * rng.random((n, n))
    if symmetric:
        A = 0.5 * (A + A.T)
        p = rng.permutation(n)
        return A[np.ix_(p, p)], labels[p], labels[p]
    pr, pc = rng.permutation(n), rng.permutation(n)
    return A[np.ix_(pr, pc)], labels[pr], labels[pc]


@pytest.mark.parametrize("symmetric", [False, True])
def test_top_splits_recover_planted_blocks(symmetric):
    A, lr, lc = _planted(256, 4, 1, symmetric)
    ts = TileSource(A, tile=64)
    lv = top_splits(ts, 6, [0] * 5 + [1], LearnOptions(block_items=100, symmetric=symmetric,
                                                         balanced=True, seed=2))
    assert len(lv.rb) == 3  # root, 2 blocks, 4 blocks: each at most 100 wide afterwards
    for k in range(4):
        rows = lv.pr[lv.rb[-1][k]:lv.rb[-1][k + 1]]
        cols = lv.pc[lv.cb[-1][k]:lv.cb[-1][k + 1]]
        assert np.unique(lr[rows]).size == 1  # each learned block is one planted block
        assert np.unique(lc[cols]).size == 1
        assert lr[rows][0] == lc[cols][0]
    # per level: 2 q + 3 passes for the embedding, 1 + rounds for the cuts, and up to two
    # per refinement round; the second level reads only the tiles that meet its blocks
    per_level = 2 * 2 + 3 + 1 + 2
    assert per_level < ts.passes <= 2 * (per_level + 2 * 3) + 1e-9


def test_split_below_builds_a_valid_hierarchy():
    A = radial_kernel(300, seed=3)
    ts = TileSource(A, tile=64)
    o = LearnOptions(block_items=100)
    L = default_levels(300, 300)
    rk = [0] * (L - 1) + [1]
    lv = top_splits(ts, L, rk, o)
    rows, cols = split_below(ts, lv, L, rk, o)
    assert rows.n_levels == cols.n_levels == L
    assert rows.n_blocks[-1] == cols.n_blocks[-1]  # atoms: the shorter side single items
    assert np.all(np.minimum(rows.block_sizes(-1), cols.block_sizes(-1)) == 1)
    assert sorted(rows.perm.tolist()) == list(range(300))
    for lvl in range(len(lv.rb)):  # the top levels are kept as learned
        np.testing.assert_array_equal(rows.boundaries[lvl], lv.rb[lvl])


@pytest.fixture(scope="module")
def radial_store(tmp_path_factory):
    n = 640
    A = radial_kernel(n, seed=5)
    path = tmp_path_factory.mktemp("learn") / "radial.zarr"
    write_matrix_store(path, A, kind="radial", chunk=128)
    return A, path


def test_uniform_start_splits_the_residual_like_in_memory():
    """MLR plus noise in a hidden order: the uniform start fits the coarse levels before each
    split (the residual through the passes, then inside the block tasks); the learned Dask
    path is as good as the in-memory pipeline from the same start (lower in our runs)."""
    from mlr_dask.datasets.mlr import mlr_plus_noise

    _, A = mlr_plus_noise(400, 400, rank=16, n_levels=6, noise=0.1, rng=1)
    A = A[np.ix_(np.random.default_rng(1).permutation(400),
                 np.random.default_rng(2).permutation(400))]
    M = learn_mlr_dask(A, 16, default_levels(400, 400),
                       opts=LearnOptions(block_items=120, init="uniform"), max_iter=30)
    assert M.history_["init"] == "uniform" and M.history_["passes"]["top_splits"] > 0
    Mm = fit_mlr(A, 16, init="uniform", baselines=False)
    assert _rel(A, M) <= 1.02 * Mm.history_["rel_error"][-1]


@pytest.mark.slow  # about a minute on 2 cores; the final fit in one chunk (the product levels
# of the fit are checked in test_dask.py)
def test_learned_dask_path_within_2_percent_of_in_memory(radial_store):
    """Hierarchy and ranks learned on the Dask path (zarr tiles read in tasks, the blocks
    below as tasks, the start trials as futures of an in-process cluster) against the
    in-memory pipeline with its default start. At this size the error of either depends on
    the seed by 10-20 percent (0.083 to 0.107 in memory), so the mean over three seeds is
    compared."""
    from distributed import Client, LocalCluster

    A, path = radial_store
    dask_errs, mem_errs = [], []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as lc, Client(lc) as client:
        for seed in range(3):
            Md = fit_mlr(str(path), 20, backend="dask", client=client, seed=seed, max_iter=30,
                         dask=DaskSettings(block_items=200, sample_items=256,
                                           chunk_items=4096))
            h = Md.history_
            assert h["learned"] == "dask"
            assert h["passes"]["top_splits"] > 0 and h["passes"]["blocks"] > 0
            assert set(h["start"]["starts"]) == {"bottom", "uniform"}
            assert Md.rows.n_blocks[1] == 2 and Md.rank == 20
            dask_errs.append(_rel(A, Md))
            assert dask_errs[-1] == pytest.approx(h["rel_error"][-1], rel=1e-9)
            mem_errs.append(fit_mlr(A, 20, seed=seed).history_["mlr_rel_error"])
    print(f"learned on Dask {np.round(dask_errs, 5)}, in memory {np.round(mem_errs, 5)}")
    assert np.mean(dask_errs) <= 1.02 * np.mean(mem_errs)


def test_learned_dask_path_on_a_dask_array_with_threads():
    import dask.array as da

    A = radial_kernel(300, seed=7)
    with dask.config.set(scheduler="threads"):
        M = learn_mlr_dask(da.from_array(A, chunks=(100, 100)), 12, default_levels(300, 300),
                           opts=LearnOptions(block_items=120, sample_items=200), max_iter=5)
    assert _rel(A, M) == pytest.approx(M.history_["rel_error"][-1], rel=1e-9)
    assert M.rank == 12 and sum(M.ranks) == 12


def test_learned_dask_path_bad_input(radial_store):
    _, path = radial_store
    store = load_matrix_store(path)
    with pytest.raises(InputError, match="block_items"):
        learn_mlr_dask(store, 10, 6, opts=LearnOptions(block_items=4))
    with pytest.raises(InputError, match="rank 700"):
        learn_mlr_dask(store, 700, 6)
    with pytest.raises(InputError, match="ranks are learned"):
        fit_mlr(str(path), 10, ranks=[5, 5], levels=2, backend="dask")


def test_learned_dask_path_symmetric_psd():
    """A PSD kernel learned as symmetric PSD on the Dask path: one hierarchy for both sides,
    ``B B^T`` factors, and the error of the returned model."""
    from mlr_dask.datasets.matrices import hierarchical_covariance

    A = hierarchical_covariance(256, seed=1)
    A = A[np.ix_(*[np.random.default_rng(0).permutation(256)] * 2)]  # hide the groups
    M = learn_mlr_dask(A, 10, 6, opts=LearnOptions(block_items=80, sample_items=128,
                                                   symmetric=True, psd=True), max_iter=10)
    assert np.array_equal(M.rows.perm, M.cols.perm)
    assert M.rows.n_blocks[1] == 2
    D = M.to_dense()
    np.testing.assert_allclose(D, D.T, atol=1e-10)
    assert _rel(A, M) == pytest.approx(M.history_["rel_error"][-1], rel=1e-9)
    assert _rel(A, M) < 0.5


def test_reorder_before_the_final_fit_changes_reads_not_results(tmp_path):
    """A store in original order: the final fit on the matrix rewritten in hierarchy order
    (a temporary store next to the input, removed afterwards) gives the same model as the fit
    reading the scattered chunks of the input, and the rewrite is counted in the passes."""
    A = radial_kernel(192, seed=4)
    path = tmp_path / "K.zarr"
    write_matrix_store(path, A, kind="radial", chunk=64)
    store = load_matrix_store(path)
    out = {}
    with dask.config.set(scheduler="sync"):
        for mode in ("never", "auto"):
            out[mode] = learn_mlr_dask(store, 8, default_levels(192, 192), max_iter=2,
                                       opts=LearnOptions(block_items=80, init="uniform",
                                                         exchange_steps=1, reorder=mode))
    h0, h1 = out["never"].history_, out["auto"].history_
    assert h0["reorder"]["done"] is False and h1["reorder"]["done"] is True
    assert h1["reorder"]["amplification"] > 2.0  # learned blocks scattered over the chunks
    assert h1["passes"]["reorder"] >= 4.0 and h0["passes"]["reorder"] == 0.0
    assert h1["passes_over_A"] == pytest.approx(h0["passes_over_A"] + h1["passes"]["reorder"],
                                                abs=1e-2)
    assert "reorder" in h1["seconds"]
    np.testing.assert_array_equal(out["never"].rows.perm, out["auto"].rows.perm)
    assert out["never"].ranks == out["auto"].ranks
    np.testing.assert_allclose(h1["rel_error"], h0["rel_error"], rtol=1e-9)
    np.testing.assert_allclose(out["auto"].to_dense(), out["never"].to_dense(), atol=1e-9)
    assert _rel(A, out["auto"]) == pytest.approx(h1["rel_error"][-1], rel=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["K.zarr"]  # the rewrite is gone
    with pytest.raises(InputError, match="reorder"):
        learn_mlr_dask(store, 10, 6, opts=LearnOptions(reorder="sometimes"))


def test_default_block_items_leaves_the_worker_process_its_memory():
    """The block side follows the worker's free share of its limit: the process's own memory
    (outside the managed data) is taken off first, and the smallest worker counts."""
    from mlr_dask.fit.learn_dask import BLOCK_MEMORY_SHARE, default_block_items

    class Client:
        def __init__(self, workers):
            self.workers = workers

        def scheduler_info(self):
            return {"workers": {f"w{i}": w for i, w in enumerate(self.workers)}}

    def worker(limit, threads, memory, managed=0):
        return {"memory_limit": limit, "nthreads": threads,
                "metrics": {"memory": memory, "managed_bytes": managed}}

    assert default_block_items(None) == 2048
    assert default_block_items(Client([worker(0, 2, 10**8)])) == 2048  # no limit
    b = default_block_items(Client([worker(800 * 10**6, 2, 340 * 10**6)]))
    expect = np.sqrt((BLOCK_MEMORY_SHARE * 800e6 - 340e6) / 2 / 64)
    assert b == int(expect)
    # two tasks of eight copies each stay within the share the process leaves
    assert 2 * 8 * 8 * b * b + 340e6 <= BLOCK_MEMORY_SHARE * 800e6
    # managed data is not the process's own memory; the smaller worker counts
    assert default_block_items(Client([worker(800 * 10**6, 2, 440 * 10**6, 10**8)])) == b
    assert default_block_items(Client([worker(800 * 10**6, 2, 340 * 10**6),
                                       worker(400 * 10**6, 1, 300 * 10**6)])) < b
    assert default_block_items(Client([worker(64 * 10**9, 4, 10**9)])) == 4096
