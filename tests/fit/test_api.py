import numpy as np
import pytest
import scipy.sparse.linalg as spla

import mlr_dask.fit.api as api
from mlr_dask.datasets.mlr import mlr_plus_noise
from mlr_dask.errors import InputError
from mlr_dask.fit import Allocation, DaskSettings, Partitioning, fit_mlr, lowrank
from mlr_dask.hierarchy import Hierarchy


@pytest.fixture
def no_work(monkeypatch):
    def boom(*a, **k):  # pragma: no cover - reached only when validation is missing
        raise AssertionError("work started before the input was validated")

    import mlr_dask.fit.pipeline as pipeline

    monkeypatch.setattr(api, "init_state", boom)
    monkeypatch.setattr(pipeline, "run", boom)
    monkeypatch.setattr(pipeline, "spectral_partition", boom)


@pytest.mark.parametrize(
    "A, kwargs, match",
    [
        (np.full((8, 8), np.nan), {"rank": 2}, "NaN"),
        (np.ones((8, 10)), {"rank": 2, "symmetric": True}, "square"),
        (np.ones((8, 10)), {"rank": 2, "psd": True}, "square"),
        (np.ones((8, 10)), {"rank": 9}, "larger than min"),
        (np.ones((8, 8)), {"rank": 2, "hierarchy": Hierarchy.dyadic(9, 2)}, "sizes"),
        (np.ones((8, 8)), {"rank": 2, "method": "sgd"}, "method"),
        (np.ones((8, 8)), {"rank": 3, "ranks": [1, 1]}, "sum"),
        (np.ones((8, 8)), {"rank": 2, "partition": "given"}, "given"),
        (np.ones((8,)), {"rank": 1}, "2-D"),
        (np.ones((8, 8)), {"rank": 2, "levels": 7}, "levels need"),
        (np.ones((8, 8)), {"rank": 2, "init": "middle"}, "init"),
        (np.ones((8, 8)), {"rank": 2, "partitioning": Partitioning(split_vectors=0)},
         "split_vectors"),
        (np.ones((8, 8)), {"rank": 2, "partitioning": Partitioning(split="median")}, "split"),
        (np.ones((8, 8)), {"rank": 2, "allocation": Allocation(max_rank_moves=0)},
         "max_rank_moves"),
        (np.ones((8, 8)), {"rank": 2, "threads": 0}, "threads"),
        (np.ones((8, 8)), {"rank": 2, "allocation": Allocation(grow_trials=0)}, "grow_trials"),
        (np.ones((8, 8)), {"rank": 2, "allocation": Allocation(late_trials=0)}, "late_trials"),
        (np.ones((8, 8)), {"rank": 2, "allocation": DaskSettings()}, "Allocation"),
        (np.ones((8, 8)), {"rank": 2, "dask": DaskSettings(sample_items=8)}, "sample_items"),
        (np.ones((8, 8)), {"rank": 2, "dask": DaskSettings(reorder="sometimes")}, "reorder"),
        (np.ones((8, 8)), {"rank": 2, "dask": DaskSettings(scratch="/no/such/dir")},
         "scratch directory .* does not exist"),
    ],
)
def test_bad_input_raises_before_work(no_work, A, kwargs, match):
    with pytest.raises(InputError, match=match):
        fit_mlr(A, **kwargs)


def test_fit_mlr_learned_beats_lowrank_and_has_history():
    truth, A = mlr_plus_noise(128, 96, rank=10, n_levels=4, noise=0.02, rng=7)
    M = fit_mlr(A, 10, levels=4, max_iter=50)
    err = np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)
    lr = np.linalg.norm(A - lowrank(A, 10).to_dense()) / np.linalg.norm(A)
    assert err < 0.5 * lr
    assert M.rank == 10 and M.storage == (128 + 96) * 10
    h = M.history_
    assert set(h["seconds"]) >= {"partition", "rank_allocation", "fit"}
    assert abs(h["rel_error"][-1] - err) < 1e-10
    assert np.all(np.diff(h["rel_error"]) <= 1e-12)


def test_fit_mlr_given_hierarchy_fixed_ranks():
    truth, A = mlr_plus_noise(64, 64, rank=8, n_levels=3, noise=0.05, rng=1)
    M = fit_mlr(A, hierarchy=(truth.rows, truth.cols), ranks=truth.ranks, allocate_ranks=False)
    assert M.ranks == truth.ranks and M.rows == truth.rows
    assert np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A) < 0.06


def test_fit_mlr_psd_and_dyadic(rng):
    X = rng.standard_normal((64, 200))
    S = X @ X.T / 200
    M = fit_mlr(S, 12, psd=True, levels=4)
    assert M.symmetric
    assert np.linalg.eigvalsh(M.to_dense()).min() > -1e-10
    D = fit_mlr(S, 12, partition="dyadic", levels=4, allocate_ranks=False, baselines=False)
    assert D.rows.n_blocks == (1, 2, 4, 64)


def test_fit_mlr_zarr_store_and_dask_array(tmp_path):
    import dask.array as da

    from mlr_dask.datasets.mlr import write_matrix_store

    truth, A = mlr_plus_noise(64, 48, rank=6, n_levels=3, noise=0.05, rng=2)
    Ah = A[truth.rows.perm][:, truth.cols.perm]
    write_matrix_store(tmp_path / "m.zarr", Ah, kind="mlr", rows=truth.rows, cols=truth.cols)
    M1 = fit_mlr(str(tmp_path / "m.zarr"), 6, partition="given", ranks=truth.ranks,
                 allocate_ranks=False)
    M2 = fit_mlr(A, 6, hierarchy=(truth.rows, truth.cols), ranks=truth.ranks,
                 allocate_ranks=False)
    np.testing.assert_allclose(M1.to_dense(), M2.to_dense(), atol=1e-10)
    M3 = fit_mlr(da.from_array(A, chunks=16), 6, hierarchy=(truth.rows, truth.cols),
                 ranks=truth.ranks, allocate_ranks=False, backend="numpy")
    np.testing.assert_allclose(M3.to_dense(), M2.to_dense(), atol=1e-10)


def test_fit_mlr_operator_matvec_only(rng):
    truth, A = mlr_plus_noise(64, 64, rank=6, n_levels=3, noise=0.0, rng=4, permute=False)
    op = spla.aslinearoperator(A)
    M = fit_mlr(op, ranks=truth.ranks, partition="dyadic", allocate_ranks=False, max_iter=30,
                tol=1e-10)
    assert np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A) < 1e-4
    assert np.all(np.diff(M.history_["rel_error"]) <= 1e-12)


def test_als_affordable_counts_blocks_of_finest_used_level():
    h = Hierarchy.dyadic(64, 3)  # 1, 2, 4 blocks
    h = h.refine(h.block_sizes(-1))  # + 64 atoms
    b = h.boundaries
    assert api.als_affordable(b, b, [4, 2, 2, 0])  # 4 blocks * 8 <= 64
    assert not api.als_affordable(b, b, [4, 2, 1, 1])  # 64 atoms * 8 > 64
    assert not api.als_affordable(b, b, [0, 0, 0, 0])
    assert api.als_affordable(b, b, [16, 0, 0, 0])


def test_fit_mlr_auto_method_choice():
    truth, A = mlr_plus_noise(96, 80, rank=6, n_levels=3, noise=0.05, rng=3)
    kw = dict(hierarchy=(truth.rows, truth.cols), ranks=[4, 2, 0], allocate_ranks=False,
              max_iter=20)
    auto = fit_mlr(A, **kw)
    als = fit_mlr(A, method="als", **kw)
    bcd = fit_mlr(A, method="bcd", **kw)
    assert auto.history_["method"] == "als" and bcd.history_["method"] == "bcd"
    np.testing.assert_allclose(auto.to_dense(), als.to_dense(), rtol=0, atol=1e-12)
    # rank on the 80 atoms: ALS would be slow (80 solves * r 6 > 80), auto takes BCD
    many = fit_mlr(A, hierarchy=(truth.rows, truth.cols), ranks=[3, 2, 1],
                   allocate_ranks=False, max_iter=5)
    assert truth.rows.n_blocks[-1] == 80 and many.history_["method"] == "bcd"
    S = A[:80, :80] @ A[:80, :80].T
    P = fit_mlr(S, 6, psd=True, levels=3, max_iter=5)
    assert P.history_["method"] == "bcd"


def test_start_ranks():
    caps = [64, 32, 16, 1]
    assert api.start_ranks("bottom", 10, 4, caps) == [0, 0, 0, 1]
    assert api.start_ranks("top", 10, 4, caps) == [10, 0, 0, 0]
    for init in set(api.INITS) - {"best"}:
        rk = api.start_ranks(init, 10, 4, caps)
        assert len(rk) == 4 and all(0 <= r <= c for r, c in zip(rk, caps, strict=True))
        assert init == "bottom" or sum(rk) == 10
    assert api.start_ranks("bottom", 10, 1, [64]) == [10]


@pytest.mark.parametrize("init", api.INITS)
def test_fit_mlr_init_equal_storage_and_never_worse_than_its_start(init):
    from mlr_dask.datasets.matrices import radial_kernel

    A = radial_kernel(120, 100, seed=1)
    M = fit_mlr(A, 8, levels=5, init=init, max_iter=30)
    h = M.history_
    assert sum(M.ranks) == 8 and M.storage == (120 + 100) * 8
    err = np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)
    assert abs(err - h["rel_error"][-1]) < 1e-10
    start = h["partition"][-1]  # the start of the rank exchange (after growth for "bottom")
    assert err <= start + 1e-12
    errs = [start] + [mv["rel_error"] for mv in h["rank_moves"] if mv["src"] is not None]
    assert np.all(np.diff(errs) < 0)
    if init == "best":
        assert set(h["starts"]) == set(api.BEST_INITS) and h["init"] in api.BEST_INITS
        assert abs(min(h["starts"].values()) - err) < 1e-10
    if h["init"] == "bottom":
        grown = [mv for mv in h["rank_moves"] if mv["src"] is None]
        assert len(grown) == 7 and grown[-1]["ranks"][-1] <= 1
        assert np.all(np.diff([mv["rel_error"] for mv in grown]) < 0)
