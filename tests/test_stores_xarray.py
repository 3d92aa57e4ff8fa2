"""Every store kind mlr-dask writes opens with xarray.open_zarr, with named dimensions and the
values the library reads; older stores without dimension names still load."""

import json

import numpy as np
import pytest
import xarray as xr
import zarr

from mlr_dask import io
from mlr_dask.cli.main import main
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.fm.data import generate_fm
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix


def _open(path, group=None):
    return xr.open_zarr(str(path), group=group, consolidated=False)


def _dims(ds):
    return {name: v.dims for name, v in ds.data_vars.items()}


def _check_hierarchy(path, group, h):
    ds = _open(path, group)
    assert ds["perm"].dims == ("item",)
    for i in range(h.n_levels):
        assert ds[f"bounds_{i}"].dims == (f"bounds_{i}_edge",)
    assert Hierarchy.from_dict({k: ds[k].values for k in ds.data_vars}) == h


def test_matrix_stores(tmp_path):
    rad = tmp_path / "rad.zarr"
    assert main(["generate", "radial", "--n", "40", "--seed", "0", "--chunk", "16",
                 "--out", str(rad), "--quiet"]) == 0
    ds = _open(rad)
    assert _dims(ds) == {"A": ("row", "col")}
    np.testing.assert_array_equal(ds["A"].values, zarr.open_group(str(rad))["A"][:])
    mlr = tmp_path / "mlr.zarr"
    assert main(["generate", "mlr", "--n", "64", "--rank", "6", "--out", str(mlr),
                 "--quiet"]) == 0
    assert _dims(_open(mlr)) == {"A": ("row", "col")}
    truth = MLRMatrix.read_zarr(io.open_group(mlr, "matrix")["truth"])
    t = _open(mlr, "truth")
    assert _dims(t) == {"B": ("row", "factor"), "C": ("col", "factor")}
    np.testing.assert_array_equal(t["B"].values, truth.B)
    _check_hierarchy(mlr, "rows", truth.rows)
    _check_hierarchy(mlr, "truth/cols", truth.cols)


def test_mlr_model_store(tmp_path):
    rows, cols = Hierarchy.dyadic(32, 3), Hierarchy.dyadic(24, 3)
    M = MLRMatrix.random(rows, cols, [3, 2, 1], rng=0)
    M.save(tmp_path / "M.zarr")
    ds = _open(tmp_path / "M.zarr")
    assert _dims(ds) == {"B": ("row", "factor"), "C": ("col", "factor")}
    assert ds.attrs["mlr_dask_format"] == "mlr-matrix"
    np.testing.assert_array_equal(ds["C"].values, M.C)
    S = MLRMatrix.random(rows, None, [3, 2, 1], rng=1)
    S.save(tmp_path / "S.zarr")
    assert _dims(_open(tmp_path / "S.zarr")) == {"B": ("row", "factor")}
    _check_hierarchy(tmp_path / "S.zarr", "rows", rows)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fm_data_model_and_checkpoints(tmp_path):
    data = tmp_path / "d.zarr"
    assert main(["generate", "fm", "--n", "160", "--samples", "12", "--test-samples", "9",
                 "--ranks", "3,2,1,1,1", "--out", str(data), "--quiet"]) == 0
    ds = _open(data)
    assert _dims(ds) == {"Y": ("sample", "feature"), "Y_test": ("test_sample", "feature")}
    assert ds.sizes["sample"] == 12 and ds.sizes["test_sample"] == 9
    np.testing.assert_array_equal(ds["Y"].values, zarr.open_group(str(data))["Y"][:])
    truth = _open(data, "truth")
    assert _dims(truth) == {"F": ("feature", "factor"), "D": ("feature",),
                            "mean": ("feature",)}
    assert not np.isnan(truth["mean"].values).any()  # zeros are not masked as missing
    np.testing.assert_array_equal(truth["mean"].values, 0.0)

    prob = generate_fm(160, 12, seed=3, ranks=(3, 2, 1, 1, 1))
    ck = tmp_path / "ck.zarr"
    model = MultilevelFactorModel(prob.hierarchy, prob.ranks, max_iter=2, tol=0)
    model.fit(prob.Y, checkpoint=ck, checkpoint_every=1)
    latest = json.loads((ck / "latest.json").read_text())["group"]
    c = _open(ck, latest)
    assert _dims(c) == {"F": ("feature", "factor"), "D": ("feature",), "mean": ("feature",)}
    assert c.attrs["n_iter"] == 2
    # the final model replaces its checkpoints without overwrite
    model.save(ck)
    m = _open(ck)
    assert m.attrs["mlr_dask_format"] == "fm-model"
    assert _dims(m) == {"F": ("feature", "factor"), "D": ("feature",), "mean": ("feature",)}
    np.testing.assert_allclose(MultilevelFactorModel.load(ck).noise_variance_,
                               model.noise_variance_)
    _check_hierarchy(ck, "hierarchy", Hierarchy.read_zarr(io.open_group(ck)["hierarchy"]))


def test_old_stores_without_dimension_names_still_load(tmp_path):
    """A store as written before dimension names and checksums: the library reads it."""
    rows = Hierarchy.dyadic(16, 2)
    M = MLRMatrix.random(rows, rows, [2, 1], rng=0)
    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    g.attrs.update({io.FORMAT_KEY: "mlr-matrix", io.VERSION_KEY: 1, "ranks": [2, 1],
                    "shape": [16, 16], "symmetric": False})
    g.create_array("B", data=M.B)
    g.create_array("C", data=M.C)
    for name in ("rows", "cols"):
        h = g.create_group(name)
        for key, arr in rows.to_dict().items():
            h.create_array(key, data=arr)
        h.attrs["n_levels"] = rows.n_levels
    old = MLRMatrix.load(tmp_path / "old.zarr")
    np.testing.assert_array_equal(old.to_dense(), M.to_dense())
    assert main(["info", str(tmp_path / "old.zarr")]) == 0


@pytest.mark.filterwarnings("ignore:The data type")
def test_info_describes_an_xarray_store(tmp_path, capsys):
    ds = xr.Dataset(
        {"returns": (("sample", "feature"), np.arange(12.0).reshape(3, 4))},
        coords={"feature": ["a", "b", "c", "d"], "sector": ("feature", ["x", "x", "y", "y"])},
        attrs={"source": "test"},
    )
    ds.to_zarr(tmp_path / "x.zarr", consolidated=False, zarr_format=3)
    assert main(["info", str(tmp_path / "x.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "xarray"
    assert info["dims"] == {"sample": 3, "feature": 4}
    assert info["data_vars"]["returns"]["dims"] == ["sample", "feature"]
    assert set(info["coords"]) == {"feature", "sector"}
    assert info["attrs"] == {"source": "test"}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("kind", ["matrix", "fm-model"])
def test_info_lists_dimension_names(tmp_path, capsys, kind):
    path = tmp_path / "s.zarr"
    if kind == "matrix":
        assert main(["generate", "fiedler", "--n", "20", "--seed", "0", "--out", str(path),
                     "--quiet"]) == 0
        want = {"A": ["row", "col"]}
    else:
        prob = generate_fm(160, 12, seed=3, ranks=(3, 2, 1, 1, 1))
        MultilevelFactorModel(prob.hierarchy, prob.ranks, max_iter=1).fit(prob.Y).save(path)
        want = {"F": ["feature", "factor"], "D": ["feature"], "mean": ["feature"]}
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == 0
    arrays = json.loads(capsys.readouterr().out)["arrays"]
    assert {k: v["dims"] for k, v in arrays.items()} == want
