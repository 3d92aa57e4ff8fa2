"""xarray in and out: labels kept in the model (and saved), labelled outputs."""

import numpy as np
import pytest

from mlr_dask.fm import MultilevelFactorModel

xr = pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    sector = np.array(list("ABCABCABCABCAB"))
    n = sector.size
    Y = rng.standard_normal((40, 2)) @ rng.standard_normal((2, n)) + rng.standard_normal((40, n))
    tickers = np.array([f"T{i:02d}" for i in range(n)])
    da = xr.DataArray(Y, dims=("sample", "feature"),
                      coords={"feature": tickers, "sector": ("feature", sector),
                              "sample": np.arange(100, 140)})
    m = MultilevelFactorModel(["sector"], [2, 1], max_iter=20).fit(da)
    return da, m


def test_labelled_parameters(data):
    da, m = data
    F = m.loadings_
    assert isinstance(F, xr.DataArray) and F.dims == ("feature", "factor")
    assert list(F.coords["feature"].values) == list(da.coords["feature"].values)
    assert list(F.coords["sector"].values) == list(da.coords["sector"].values)
    assert list(F.coords["level"].values) == ["root", "root", "sector"]
    D = m.noise_variance_
    assert D.dims == ("feature",) and D.sel(feature="T03") == D.values[3]
    assert m.mean_.dims == ("feature",)


def test_labelled_outputs_match_plain_arrays(data):
    da, m = data
    Z = m.transform(da)
    assert Z.dims == ("sample", "factor")
    assert list(Z.coords["sample"].values) == list(range(100, 140))
    assert Z.sizes["factor"] == 2 + 3  # root rank 2, three sectors of rank 1
    assert list(Z.coords["group_label"].values[2:]) == ["A", "B", "C"]
    np.testing.assert_allclose(Z.values, m.transform(da.values))
    s = m.score_samples(da)
    assert s.dims == ("sample",) and np.allclose(s.values, m.score_samples(da.values))
    X = m.sample(5, random_state=0)
    assert X.dims == ("sample", "feature") and list(X.coords["feature"].values)[:2] == \
        ["T00", "T01"]
    # features given in another order are aligned by their labels
    shuffled = da.isel(feature=np.random.default_rng(1).permutation(da.sizes["feature"]))
    np.testing.assert_allclose(m.score_samples(shuffled).values, s.values, rtol=1e-12)


def test_labels_saved_and_loaded(data, tmp_path):
    da, m = data
    m.save(tmp_path / "m.zarr")
    m2 = MultilevelFactorModel.load(tmp_path / "m.zarr")
    assert list(m2.loadings_.coords["feature"].values) == list(da.coords["feature"].values)
    assert list(m2.loadings_.coords["sector"].values) == list(da.coords["sector"].values)
    assert m2.hierarchy_.level_names == m.hierarchy_.level_names
    xr.testing.assert_allclose(m2.transform(da), m.transform(da))
