import json

import numpy as np
import pytest

from mlr_dask.cli.main import main
from mlr_dask.fit.api import load_matrix_store
from mlr_dask.mlr import MLRMatrix


@pytest.fixture(scope="module")
def radial_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    assert main(["generate", "radial", "--n", "96", "--m", "80", "--seed", "3",
                 "--out", str(d / "rad.zarr"), "--quiet"]) == 0
    return d / "rad.zarr"


@pytest.mark.parametrize("kind", ["dgt", "radial", "fiedler", "distance", "hiercov"])
def test_generate_writes_matrix_store(tmp_path, kind, capsys):
    out = tmp_path / f"{kind}.zarr"
    assert main(["generate", kind, "--n", "40", "--seed", "1", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    st = load_matrix_store(out)
    assert st.shape == (40, 40) and st.rows is None
    assert st.attrs["kind"] == kind and st.attrs["seed"] == 1
    A = st.dense_original()
    assert np.isfinite(A).all()
    assert abs(np.linalg.norm(A) - info["fro_norm"]) < 1e-9 * info["fro_norm"]


def test_fit_mlr_cli_json_model_and_plots(tmp_path, radial_store, capsys):
    out, plots = tmp_path / "model.zarr", tmp_path / "plots"
    rc = main(["fit-mlr", str(radial_store), "--rank", "8", "--levels", "5", "--json",
               "--quiet", "--out", str(out), "--plots", str(plots), "--max-iter", "20"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert {"rel_error", "storage", "ranks", "seconds", "lowrank_rel_error"} <= set(res)
    assert sum(res["ranks"]) == 8 and len(res["ranks"]) == 5
    assert res["storage"] == (80 + 96) * 8
    assert res["rel_error"] < res["lowrank_rel_error"]
    M = MLRMatrix.load(out)
    A = load_matrix_store(radial_store).dense_original()
    err = np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)
    assert abs(err - res["rel_error"]) < 1e-9
    assert (plots / "error_history.png").stat().st_size > 0
    assert (plots / "rank_allocation.png").stat().st_size > 0


@pytest.mark.parametrize("init", ["bottom", "spread"])
def test_fit_mlr_cli_init(radial_store, capsys, init):
    rc = main(["fit-mlr", str(radial_store), "--rank", "8", "--levels", "5", "--json",
               "--quiet", "--max-iter", "10", "--init", init])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["init"] == init and sum(res["ranks"]) == 8 and res["storage"] == (80 + 96) * 8
    assert res["rel_error"] < res["lowrank_rel_error"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--rank", "500"], "larger than min"),
        (["--rank", "4", "--psd"], "square"),
        (["--rank", "4", "--partition", "given"], "stored hierarch"),
        (["--rank", "0"], "positive"),
        (["--rank", "4", "--levels", "12"], "levels need"),
        (["--rank", "4", "--init", "middle"], "invalid choice"),
        (["--rank", "4", "--split-vectors", "0"], "positive"),
        (["--rank", "4", "--backend", "dask", "--scratch", "/no/such/dir"], "does not exist"),
        (["--rank", "4", "--reorder", "sometimes"], "invalid choice"),
    ],
)
def test_fit_mlr_cli_bad_input_exit_2_no_output(tmp_path, radial_store, capsys, extra, match):
    out, plots = tmp_path / "model.zarr", tmp_path / "plots"
    rc = main(["fit-mlr", str(radial_store), *extra, "--out", str(out), "--plots", str(plots),
               "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and match in err[-1]
    assert list(tmp_path.iterdir()) == []


def test_fit_mlr_cli_missing_store(tmp_path, capsys):
    rc = main(["fit-mlr", str(tmp_path / "nope.zarr"), "--rank", "3", "--quiet"])
    assert rc == 2
    assert "error:" in capsys.readouterr().err


def test_fit_mlr_cli_nan_matrix(tmp_path, capsys):
    from mlr_dask.datasets.mlr import write_matrix_store

    A = np.ones((20, 20))
    A[3, 4] = np.nan
    write_matrix_store(tmp_path / "nan.zarr", A, kind="custom")
    rc = main(["fit-mlr", str(tmp_path / "nan.zarr"), "--rank", "3", "--quiet",
               "--out", str(tmp_path / "m.zarr")])
    assert rc == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "m.zarr").exists()


def test_fit_mlr_cli_split_vectors_reach_the_partition(radial_store, capsys, monkeypatch):
    import mlr_dask.fit.partition as partition

    seen = []
    real = partition.split_block

    def spy(*args, **kwargs):
        seen.append(kwargs["n_vectors"])
        return real(*args, **kwargs)

    monkeypatch.setattr(partition, "split_block", spy)
    rc = main(["fit-mlr", str(radial_store), "--rank", "8", "--levels", "5", "--json",
               "--quiet", "--max-iter", "5", "--init", "bottom", "--split-vectors", "2"])
    assert rc == 0
    assert seen and set(seen) == {2}
    assert json.loads(capsys.readouterr().out)["rel_error"] > 0
