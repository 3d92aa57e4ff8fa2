"""symmetric=True on a matrix far from symmetric warns (one warning line on the CLI)."""

import pytest

from mlr_dask.datasets.matrices import radial_kernel
from mlr_dask.fit import fit_mlr


def test_symmetric_on_asymmetric_matrix_warns():
    A = radial_kernel(120, seed=0)  # a kernel between two point sets: not symmetric
    with pytest.warns(UserWarning, match="far from symmetric"):
        fit_mlr(A, 6, symmetric=True, max_iter=2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_mlr((A + A.T) / 2, 6, symmetric=True, max_iter=2)


def test_cli_prints_one_warning_line(tmp_path):
    import subprocess

    from procs import MLR_DASK, clean_env

    def run(*args):
        return subprocess.run([MLR_DASK, *args], cwd=tmp_path, env=clean_env(),
                              capture_output=True, text=True, timeout=300)

    assert run("generate", "radial", "--n", "120", "--seed", "0", "--out", "r.zarr",
               "--quiet").returncode == 0
    fit = run("fit-mlr", "r.zarr", "--rank", "6", "--symmetric", "--max-iter", "2",
              "--scheduler", "threads", "--quiet")
    assert fit.returncode == 0
    err = [ln for ln in fit.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: symmetric=True"), err
