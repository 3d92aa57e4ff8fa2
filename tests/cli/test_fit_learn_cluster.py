"""``mlr-dask fit-mlr --backend dask`` on a store with no hierarchy, against ``dask scheduler``
and ``dask worker`` processes on 127.0.0.1: the hierarchy and ranks are learned on the cluster
and the JSON reports the passes over A per stage next to the low-rank error."""

from __future__ import annotations

import numpy as np
import pytest
from procs import ProcessCluster, json_out, mlr_dask

pytestmark = pytest.mark.slow  # about a minute on 2 busy cores; .ci/run runs tests/cli slow


def test_fit_mlr_learns_on_a_process_cluster(tmp_path):
    from mlr_dask.datasets.matrices import radial_kernel
    from mlr_dask.datasets.mlr import write_matrix_store

    A = radial_kernel(300, seed=2)
    write_matrix_store(tmp_path / "K.zarr", A, kind="radial", chunk=100)
    with ProcessCluster(tmp_path / "cluster") as c:
        out = json_out(mlr_dask(["fit-mlr", str(tmp_path / "K.zarr"), "--rank", "12",
                                 "--backend", "dask", "--scheduler", c.address,
                                 "--block-items", "120", "--sample-items", "160",
                                 "--max-iter", "10", "--out", str(tmp_path / "M.zarr"),
                                 "--json", "--quiet"], cwd=tmp_path, timeout=300))
    assert out["passes"]["top_splits"] > 0 and out["passes"]["blocks"] > 0
    assert out["passes_over_A"] == sum(out["passes"].values()) or abs(
        out["passes_over_A"] - sum(out["passes"].values())) < 1e-2
    assert sum(out["ranks"]) == 12 and out["blocks"][1] == 2
    assert out["rel_error"] < 0.7 * out["lowrank_rel_error"]
    from mlr_dask.mlr import MLRMatrix

    M = MLRMatrix.load(tmp_path / "M.zarr")
    err = np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)
    assert abs(err - out["rel_error"]) <= 1e-8
