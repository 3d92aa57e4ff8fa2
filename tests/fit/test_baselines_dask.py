import dask.array as da
import numpy as np

from mlr_dask.datasets.mlr import write_matrix_store
from mlr_dask.fit import DaskSettings, fit_mlr, lowrank_plus_diagonal
from mlr_dask.fit.api import load_matrix_store
from mlr_dask.fit.baselines_dask import fit_baselines_dask, keep_best
from mlr_dask.hierarchy import Hierarchy


def _lowrank_plus_diag(n, r, seed):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, r))
    d = 1.0 + rng.random(n) * 4.0
    A = U @ U.T / r + np.diag(d) + 0.01 * rng.standard_normal((n, n))
    return A


def _err(A, M):
    return float(np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A))


def test_baselines_match_dense_references():
    A = np.random.default_rng(0).standard_normal((90, 70)) @ np.diag(0.9 ** np.arange(70))
    r = 6
    out = fit_baselines_dask(da.from_array(A, chunks=(25, 30)), r, chunk_items=32, tol=0.0)
    s = np.linalg.svd(A, compute_uv=False)
    exact = float(np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2)))
    lr = out["lowrank"]
    assert list(lr.ranks) == [r] and lr.storage == (90 + 70) * r
    assert abs(_err(A, lr) - exact) <= 1e-3 * exact
    assert abs(lr.history_["rel_error"][-1] - _err(A, lr)) < 1e-10
    lrd = out["lowrank_diag"]
    ref = lowrank_plus_diagonal(A, r)
    assert list(lrd.ranks) == [r - 1, 1] and lrd.storage == ref.storage
    assert _err(A, lrd) <= _err(A, ref) * 1.01


def test_diagonal_is_the_original_diagonal_of_a_permuted_store(tmp_path):
    A = _lowrank_plus_diag(120, 4, seed=1)
    perm = np.random.default_rng(2).permutation(120)
    h = Hierarchy([[0, 120], [0, 60, 120]], perm)
    write_matrix_store(tmp_path / "a.zarr", A[perm][:, perm], kind="test", rows=h, cols=h,
                       chunk=32)
    store = load_matrix_store(tmp_path / "a.zarr")
    out = fit_baselines_dask(store, 5, chunk_items=40, tol=0.0)
    lrd = out["lowrank_diag"]
    # low rank 4 + diagonal fit exactly up to the 1% noise; a diagonal on the wrong pairs
    # would leave the whole diagonal (most of the norm) in the residual
    assert _err(A, lrd) < 0.02
    assert _err(A, lrd) < 0.3 * _err(A, out["lowrank"])


def test_dask_fit_never_returns_worse_than_the_baselines():
    A = _lowrank_plus_diag(128, 4, seed=3)
    # a fixed hierarchy that cannot hold the diagonal: two levels of contiguous halves
    h = Hierarchy([[0, 128], [0, 64, 128]])
    M = fit_mlr(da.from_array(A, chunks=64), hierarchy=h, ranks=[3, 2], allocate_ranks=False,
                backend="dask", dask=DaskSettings(chunk_items=64), max_iter=3)
    hist = M.history_
    assert hist["returned"] == "lowrank_diag"
    assert hist["lowrank_diag_rel_error"] < hist["mlr_rel_error"]
    assert hist["lowrank_diag_rel_error"] <= hist["lowrank_rel_error"]
    assert list(M.ranks) == [4, 1] and M.storage == 2 * 128 * 5
    assert abs(hist["rel_error"][-1] - _err(A, M)) < 1e-10
    assert hist["passes_over_A"] > 0 and hist["seconds"]["baselines"] > 0


def test_keep_best_prefers_the_mlr_fit_on_ties():
    A = np.random.default_rng(4).standard_normal((40, 40))
    out = fit_baselines_dask(da.from_array(A, chunks=20), 3, chunk_items=20)
    M = out["lowrank"]
    M.history_ = {**M.history_, "rel_error": list(M.history_["rel_error"])}
    best = keep_best(M, {"lowrank": out["lowrank"]}, 0.0)
    assert best is M and best.history_["returned"] == "mlr"
