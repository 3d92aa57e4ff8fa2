"""fit-mlr reads a 2-D zarr array or an xarray variable, not only mlr-dask's matrix layout."""

import json
import warnings

import numpy as np
import pytest

from mlr_dask.cli.main import main
from mlr_dask.datasets.matrices import radial_kernel


def _fit(argv, capsys):
    code = main([*argv, "--rank", "6", "--max-iter", "5", "--scheduler", "threads", "--json",
                 "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


@pytest.fixture
def stores(tmp_path):
    import xarray as xr
    import zarr

    K = radial_kernel(120, seed=0)
    zarr.create_array(str(tmp_path / "bare.zarr"), data=K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xr.Dataset({"K": (("row", "col"), K), "other": (("row", "col"), K.T),
                    "v": (("row",), K[0])}).to_zarr(tmp_path / "ds.zarr", mode="w")
    zarr.create_array(str(tmp_path / "cube.zarr"), data=np.zeros((4, 4, 4)))
    return tmp_path


def test_fit_mlr_on_other_layouts_equals_own_layout(stores, capsys, monkeypatch):
    monkeypatch.chdir(stores)
    assert main(["generate", "radial", "--n", "120", "--seed", "0", "--out", "own.zarr",
                 "--quiet"]) == 0
    capsys.readouterr()
    own = _fit(["fit-mlr", "own.zarr"], capsys)
    bare = _fit(["fit-mlr", "bare.zarr"], capsys)
    var = _fit(["fit-mlr", "ds.zarr", "--array", "K"], capsys)
    assert bare["rel_error"] == pytest.approx(own["rel_error"], rel=1e-9)
    assert var["rel_error"] == pytest.approx(own["rel_error"], rel=1e-9)


@pytest.mark.parametrize("argv,needle", [
    (["fit-mlr", "ds.zarr"], "name one with --array"),
    (["fit-mlr", "ds.zarr", "--array", "nope"], "has no array 'nope'"),
    (["fit-mlr", "cube.zarr"], "must be 2-D"),
    (["fit-mlr", "bare.zarr", "--array", "K"], "single array"),
])
def test_fit_mlr_layout_errors(stores, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(stores)
    assert main([*argv, "--rank", "4", "--scheduler", "threads"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
