"""NaN in a matrix store on the Dask path: one input error naming where, exit 2, no output."""

import zarr

from mlr_dask.cli.main import main


def test_nan_in_store_on_dask_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "mlr", "--n", "256", "--rank", "8", "--out", "A.zarr",
                 "--quiet"]) == 0
    zarr.open_group("A.zarr", mode="r+")["A"][3, 5] = float("nan")
    capsys.readouterr()
    code = main(["fit-mlr", "A.zarr", "--rank", "8", "--partition", "given", "--no-rank-alloc",
                 "--backend", "dask", "--chunk-items", "64", "--scheduler", "threads",
                 "--out", "o.zarr", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "NaN or inf" in err[0], err
    assert not (tmp_path / "o.zarr").exists()
