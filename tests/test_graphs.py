import dask
import numpy as np

from mlr_dask import Hierarchy, MLRMatrix
from mlr_dask.datasets.mlr import mlr_plus_noise, write_matrix_store
from mlr_dask.graphs import open_matrix, residual_norms


def test_residual_norms_match_dense(tmp_path):
    truth, A = mlr_plus_noise(100, 70, rank=6, n_levels=3, noise=0.3, rng=4)
    path = tmp_path / "A.zarr"
    write_matrix_store(path, A[np.ix_(truth.rows.perm, truth.cols.perm)], kind="t",
                       rows=truth.rows, cols=truth.cols, truth=truth, chunk=32)
    A_hier, rows, cols, g = open_matrix(path)
    assert A_hier.numblocks == (4, 3)
    assert rows == truth.rows and cols == truth.cols
    with dask.config.set(scheduler="threads"):
        res, tot = residual_norms(A_hier, MLRMatrix.read_zarr(g["truth"])).compute()
    assert np.isclose(res, np.linalg.norm(A - truth.to_dense()) ** 2, rtol=1e-12)
    assert np.isclose(tot, np.linalg.norm(A) ** 2, rtol=1e-12)


def test_mlr_plus_noise_shapes():
    truth, A = mlr_plus_noise(40, 64, rank=7, n_levels=3, rng=0)
    assert A.shape == (40, 64) and truth.shape == (40, 64)
    assert truth.rows.n_blocks == truth.cols.n_blocks
    assert truth.rows.n_blocks[-1] == 40  # row atoms: min(m, n) blocks
    assert isinstance(truth.rows, Hierarchy)
