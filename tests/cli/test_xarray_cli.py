"""fit-fm, score and info accept the same xarray stores (a (sample, feature) variable with one
label coordinate per level along ``feature``)."""

import json
import warnings

import numpy as np
import pytest

from mlr_dask.cli.main import main


@pytest.fixture
def returns_store(tmp_path):
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(0)
    n, N = 60, 80
    Y = rng.standard_normal((N, n)) + rng.standard_normal((N, 1))
    ds = xr.Dataset(
        {"returns": (("sample", "feature"), Y)},
        coords={"feature": [f"s{j}" for j in range(n)],
                "sector": ("feature", np.repeat(["a", "b", "c"], 20)),
                "industry": ("feature", np.repeat([f"i{k}" for k in range(6)], 10))})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(tmp_path / "returns.zarr", mode="w")
        perm = np.random.default_rng(1).permutation(n)
        ds.isel(feature=perm).to_zarr(tmp_path / "shuffled.zarr", mode="w")
    return tmp_path


def _json(argv, capsys):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_fit_score_info_on_one_xarray_store(returns_store, capsys, monkeypatch):
    monkeypatch.chdir(returns_store)
    fit = _json(["fit-fm", "returns.zarr", "--array", "returns", "--levels", "sector,industry",
                 "--ranks", "2,1,1", "--max-iter", "5", "--out", "m.zarr", "--scheduler",
                 "threads", "--json", "--quiet"], capsys)
    score = _json(["score", "m.zarr", "returns.zarr", "--scheduler", "threads", "--json"],
                  capsys)
    assert score["array"] == "returns" and score["n_samples"] == 80
    # the store's features in another order: matched by label, the same score
    shuffled = _json(["score", "m.zarr", "shuffled.zarr", "--scheduler", "threads", "--json"],
                     capsys)
    assert shuffled["score"] == pytest.approx(score["score"], rel=1e-12)
    assert np.isfinite(fit["loglike"][-1])
    info = _json(["info", "returns.zarr", "--json"], capsys)
    assert info["dims"] == {"sample": 80, "feature": 60}
    assert main(["score", "m.zarr", "returns.zarr", "--array", "nope", "--scheduler",
                 "threads"]) == 2
    assert "no variable 'nope'" in capsys.readouterr().err
