"""mlr-dask generate fm / fit-fm / score."""

import json

import numpy as np
import pytest
import zarr

from mlr_dask.cli.main import main
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.fm.data import generate_fm


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("fm") / "data.zarr"
    assert main(["generate", "fm", "--n", "400", "--samples", "60", "--ranks", "6,4,3,2,2",
                 "--out", str(path), "--quiet"]) == 0
    return path


def test_generator_is_the_specified_sequence():
    p = generate_fm(n=200, n_samples=30, seed=1001)
    assert p.hierarchy.n_blocks == (1, 3, 7, 16, 32)
    rng = np.random.default_rng(1001)
    F = rng.standard_normal((200, 69))
    np.testing.assert_array_equal(p.F, F)
    D = rng.uniform(0, 2 * np.mean(np.sum(F**2, axis=1)) / 4, 200)
    np.testing.assert_array_equal(p.D, D)
    rng = np.random.default_rng(2001)  # train samples: the first draw is the root's z
    z = rng.standard_normal((30, 30))
    assert p.Y.shape == (30, 200) and np.allclose(p.Y.mean(0), 0)
    b = p.hierarchy.boundaries
    assert list(b[1]) == [0, 50, 100, 200] and len(b[2]) == 8
    # Y minus the root's contribution is uncorrelated with z (a weak check of the order)
    root = z @ F[:, :30].T
    assert np.corrcoef(root.ravel(), p.Y.ravel())[0, 1] > 0.3


def test_generate_fit_score(store, tmp_path, capsys):
    out = tmp_path / "model.zarr"
    code, stdout, err = run(["fit-fm", str(store), "--ranks", "6,4,3,2,2", "--max-iter", "4",
                             "--out", str(out), "--scheduler", "threads", "--json",
                             "--chunk-size", "100", "--quiet"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["n_iter"] == 4 and len(res["loglike"]) == 4
    assert res["n_features"] == 400 and res["n_samples"] == 60
    assert res["seconds_per_iter"] > 0
    assert np.all(np.diff(res["loglike"]) > 0)
    log = [json.loads(x) for x in (tmp_path / "model.zarr.iterations.jsonl").read_text()
           .splitlines()]
    assert [x["iteration"] for x in log] == [1, 2, 3, 4]
    # same as the in-memory fit on the stored train array
    Y = zarr.open_group(str(store), mode="r")["Y"][:]
    m = MultilevelFactorModel.load(out)
    ref = MultilevelFactorModel(m.hierarchy_, [6, 4, 3, 2, 2], max_iter=4,
                                chunk_size=100).fit(Y)
    np.testing.assert_allclose(res["loglike"], ref.loglike_, rtol=1e-10)
    code, stdout, _ = run(["score", str(out), str(store), "--scheduler", "threads", "--json"],
                          capsys)
    assert code == 0
    sc = json.loads(stdout)
    Yt = zarr.open_group(str(store), mode="r")["Y_test"][:]
    assert sc["array"] == "Y_test" and sc["score"] == pytest.approx(ref.score(Yt), rel=1e-10)


@pytest.mark.parametrize("argv,msg", [
    (["--ranks", "6,4,3,2,2,1"], "ranks"),
    (["--ranks", "6,4,3,2,-1"], ">= 0"),
    (["--ranks", "6,4,3,2,2/1"], "given for its"),
    (["--ranks", "6,4,3,2,2", "--array", "nope"], "no array"),
])
def test_fit_bad_input_exit_2_no_output(store, tmp_path, capsys, argv, msg):
    out = tmp_path / "bad.zarr"
    code, stdout, err = run(["fit-fm", str(store), "--out", str(out), "--scheduler", "threads",
                             "--quiet", *argv], capsys)
    assert code == 2 and stdout == "" and msg in err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_fit_caps_and_convergence_warning(store, tmp_path, capsys):
    out = tmp_path / "capped.zarr"
    code, stdout, err = run(["fit-fm", str(store), "--ranks", "6,4,3,2,200", "--max-iter", "2",
                             "--out", str(out), "--scheduler", "threads", "--json", "--quiet"],
                            capsys)
    assert code == 0, err
    res = json.loads(stdout)
    caps = res["rank_caps"]
    assert caps and all(c["level"] == 4 and c["requested"] == 200 for c in caps)
    assert all(c["rank"] == c["size"] for c in caps)
    assert res["ranks"][-1] == max(res["group_ranks"][-1]) <= 200
    warn = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(warn) == 1 and "max_iter=2" in warn[0]
    m = MultilevelFactorModel.load(out)
    assert [g.tolist() for g in m.group_ranks_] == res["group_ranks"]


def test_cli_and_python_defaults_agree():
    import argparse

    from mlr_dask.cli import fm as cli_fm

    sub = argparse.ArgumentParser().add_subparsers()
    cli_fm.register(sub, argparse.ArgumentParser(add_help=False))
    p = sub.choices["fit-fm"]
    args = p.parse_args(["d", "--ranks", "1", "--out", "o"])
    m = MultilevelFactorModel()
    assert (args.max_iter, args.tol, args.init) == (m.max_iter, m.tol, m.init)


def test_fit_nan_in_store_exit_2_no_output(tmp_path, capsys):
    data = tmp_path / "nan.zarr"
    assert main(["generate", "fm", "--n", "200", "--samples", "20", "--ranks", "3,2,2,1,1",
                 "--out", str(data), "--quiet"]) == 0
    zarr.open_group(str(data), mode="r+")["Y"][3, 5] = np.nan
    out = tmp_path / "m.zarr"
    code, _, err = run(["fit-fm", str(data), "--ranks", "3,2,2,1,1", "--out", str(out),
                        "--scheduler", "threads", "--checkpoint-every", "1", "--quiet"], capsys)
    assert code == 2 and "NaN" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.zarr"]


def test_fit_resume_cli(store, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    base = ["fit-fm", str(store), "--ranks", "6,4,3,2,2", "--out", str(out), "--scheduler",
            "threads", "--quiet", "--json", "--checkpoint-every", "2", "--tol", "0"]
    code, stdout, _ = run([*base, "--max-iter", "4"], capsys)
    assert code == 0
    first = json.loads(stdout)
    # a finished model is not a checkpoint store: resuming from it is refused
    code, _, err = run([*base, "--max-iter", "6", "--resume"], capsys)
    assert code == 2 and ("not checkpoints" in err or "fm-model" in err)
    full = tmp_path / "full.zarr"
    code, stdout, _ = run(["fit-fm", str(store), "--ranks", "6,4,3,2,2", "--out", str(full),
                           "--scheduler", "threads", "--quiet", "--json", "--max-iter", "4",
                           "--tol", "0"], capsys)
    assert json.loads(stdout)["loglike"] == first["loglike"]


def test_fit_killed_after_checkpoint_then_resumed(store, tmp_path):
    """A real kill (SIGKILL) of `mlr-dask fit-fm` after its first checkpoint; `--resume` ends
    with the same model as an uninterrupted fit."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "k.zarr"
    base = [sys.executable, "-m", "mlr_dask.cli.main", "fit-fm", str(store), "--ranks",
            "6,4,3,2,2", "--out", str(out), "--scheduler", "threads", "--quiet", "--tol", "0",
            "--checkpoint-every", "2", "--chunk-size", "100"]
    slow = [*base, "--max-iter", "400"]
    proc = subprocess.Popen(slow, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = out / "latest.json"
    t0 = time.time()
    while not marker.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "no checkpoint was written before the kill"
    done = json.loads(marker.read_text())["n_iter"]
    assert 0 < done < 400
    resumed = subprocess.run([*base, "--max-iter", str(done + 4), "--resume", "--json"],
                             env=env, capture_output=True, text=True, check=True)
    res = json.loads(resumed.stdout)
    assert res["n_iter"] == done + 4
    m = MultilevelFactorModel.load(out)
    ref = MultilevelFactorModel(m.hierarchy_, [6, 4, 3, 2, 2], max_iter=done + 4, tol=0,
                                chunk_size=100).fit(
        zarr.open_group(str(store), mode="r")["Y"][:])
    np.testing.assert_allclose(m.loglike_, ref.loglike_, rtol=1e-12)
    np.testing.assert_allclose(m.loadings_, ref.loadings_, rtol=0,
                               atol=1e-10 * np.abs(ref.loadings_).max())


def test_float32_store(tmp_path, capsys):
    data = tmp_path / "f32.zarr"
    assert main(["generate", "fm", "--n", "300", "--samples", "40", "--ranks", "4,3,2,2,1",
                 "--float32", "--out", str(data), "--quiet"]) == 0
    capsys.readouterr()
    Y = zarr.open_group(str(data), mode="r")["Y"]
    assert Y.dtype == np.float32
    out = tmp_path / "m.zarr"
    code, stdout, _ = run(["fit-fm", str(data), "--ranks", "4,3,2,2,1", "--out", str(out),
                           "--max-iter", "3", "--scheduler", "threads", "--quiet", "--json"],
                          capsys)
    assert code == 0
    m = MultilevelFactorModel.load(out)
    ref = MultilevelFactorModel(m.hierarchy_, [4, 3, 2, 2, 1], max_iter=3).fit(
        Y[:].astype(np.float64))
    np.testing.assert_allclose(json.loads(stdout)["loglike"], ref.loglike_, rtol=1e-10)


@pytest.mark.filterwarnings("ignore:The data type")  # zarr: string coordinates in v3
def test_fit_xarray_store_with_levels(tmp_path, capsys):
    xr = pytest.importorskip("xarray")
    from mlr_dask.hierarchy import Hierarchy

    rng = np.random.default_rng(0)
    n, N = 60, 40
    sector = rng.choice(list("ABC"), n)
    industry = np.array([f"{s}{rng.integers(2)}" for s in sector])
    Y = rng.standard_normal((N, n))
    ds = xr.Dataset({"returns": (("sample", "feature"), Y)},
                    coords={"sector": ("feature", sector), "industry": ("feature", industry)})
    store = tmp_path / "returns.zarr"
    ds.to_zarr(store, consolidated=False)
    out = tmp_path / "m.zarr"
    code, stdout, err = run(["fit-fm", str(store), "--levels", "sector,industry", "--array",
                             "returns", "--ranks", "2,1,1", "--max-iter", "3", "--out",
                             str(out), "--scheduler", "threads", "--quiet", "--json"], capsys)
    assert code == 0, err
    h = Hierarchy.from_labels([sector, industry])
    ref = MultilevelFactorModel(h, [2, 1, 1], max_iter=3).fit(Y)
    np.testing.assert_allclose(json.loads(stdout)["loglike"], ref.loglike_, rtol=1e-10)
    code, _, err = run(["fit-fm", str(store), "--levels", "sector,nope", "--ranks", "2,1,1",
                        "--out", str(tmp_path / "x.zarr"), "--scheduler", "threads"], capsys)
    assert code == 2 and "nope" in err and not (tmp_path / "x.zarr").exists()


def test_fit_xarray_store_learn_auto_standardize(tmp_path, capsys):
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(0)
    n, N = 12, 200
    Y = rng.standard_normal((N, 2)) @ rng.standard_normal((2, n)) * 3 + rng.standard_normal((N, n))
    Y *= np.linspace(1, 50, n)
    ds = xr.Dataset({"returns": (("sample", "feature"), Y)},
                    coords={"feature": [f"S{i}" for i in range(n)]})
    data = tmp_path / "ret.zarr"
    ds.to_zarr(data, consolidated=False)
    out = tmp_path / "m.zarr"
    code, stdout, err = run(["fit-fm", str(data), "--learn", "2", "--ranks", "auto",
                             "--standardize", "--out", str(out), "--scheduler", "threads",
                             "--json", "--quiet"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert len(res["ranks"]) == 2 and res["n_features"] == n
    m = MultilevelFactorModel.load(out)
    assert m.hierarchy_.n_blocks == (1, 2)
    np.testing.assert_allclose(m.scale_, Y.std(0), rtol=1e-10)
    assert list(m.loadings_.coords["feature"].values) == [f"S{i}" for i in range(n)]
    code, stdout, err = run(["score", str(out), str(data), "--scheduler", "threads", "--json"],
                            capsys)
    assert code == 0, err
    assert json.loads(stdout)["score"] == pytest.approx(m.score(Y), rel=1e-10)


def test_fit_data_store_learn_with_shrinkage(tmp_path, capsys):
    from mlr_dask.fm.data import generate_fm, write_fm

    prob = generate_fm(40, 150, 5, ranks=[2, 1], points=[2, 3])
    data = tmp_path / "fm.zarr"
    write_fm(data, prob)
    out = tmp_path / "m.zarr"
    code, stdout, err = run(["fit-fm", str(data), "--learn", "2", "--ranks", "2,1",
                             "--shrinkage", "0.05", "--out", str(out), "--scheduler", "threads",
                             "--json", "--quiet"], capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["shrinkage"] == 0.05 and res["n_features"] == 40
    m = MultilevelFactorModel.load(out)
    ref = MultilevelFactorModel("learn", [2, 1], levels=2, shrinkage=0.05).fit(prob.Y)
    assert m.hierarchy_ == ref.hierarchy_ and m.shrinkage_ == 0.05
    assert m.score(prob.Y_test) == pytest.approx(ref.score(prob.Y_test), rel=1e-6)
    code, _, err = run(["fit-fm", str(data), "--ranks", "2,1", "--shrinkage", "1.5", "--out",
                        str(tmp_path / "bad.zarr"), "--scheduler", "threads", "--quiet"], capsys)
    assert code == 2 and "shrinkage" in err and not (tmp_path / "bad.zarr").exists()
