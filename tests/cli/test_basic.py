import json
import subprocess
import sys

import numpy as np
import pytest

from mlr_dask import MLRMatrix
from mlr_dask.cli.main import main


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_then_info(tmp_path, capsys):
    out = tmp_path / "A.zarr"
    code, stdout, _ = run(["generate", "mlr", "--n", "256", "--rank", "12", "--out", str(out),
                           "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["shape"] == [256, 256] and sum(summary["ranks"]) == 12
    assert 0.09 < summary["noise_rel_norm"] < 0.11
    code, stdout, _ = run(["info", str(out), "--json"], capsys)
    assert code == 0
    info = json.loads(stdout)
    assert info["format"] == "matrix" and info["format_version"] == 1
    assert info["arrays"]["A"]["shape"] == [256, 256]
    assert {"rows", "cols", "truth"} <= set(info["groups"])
    # the stored matrix minus its stored truth is the noise
    import zarr

    g = zarr.open_group(str(out), mode="r")
    truth = MLRMatrix.read_zarr(g["truth"])
    A_hier = g["A"][:]
    A = np.empty_like(A_hier)
    A[np.ix_(truth.rows.perm, truth.cols.perm)] = A_hier
    rel = np.linalg.norm(A - truth.to_dense()) / np.linalg.norm(A)
    assert rel == pytest.approx(summary["noise_rel_norm"], rel=1e-12)


def test_info_missing_store(tmp_path, capsys):
    code, stdout, err = run(["info", str(tmp_path / "missing.zarr")], capsys)
    assert code == 2 and stdout == ""
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_info_non_mlr_dask_store(tmp_path, capsys):
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    code, _, err = run(["info", str(tmp_path / "plain.zarr")], capsys)
    assert code == 2 and "not an mlr-dask store" in err


def test_generate_bad_rank_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "B.zarr"
    code, _, err = run(["generate", "mlr", "--n", "256", "--rank", "2", "--out", str(out)],
                       capsys)
    assert code == 2 and err.startswith("error:")
    assert list(tmp_path.iterdir()) == []


def test_usage_error_exit_2(capsys):
    assert main(["generate", "mlr", "--n", "not-a-number", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--n" in err and len(err.strip().splitlines()) == 1
    assert main(["no-such-command"]) == 2


def test_console_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mlr_dask.cli.main", "info", str(tmp_path / "nope.zarr")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_demo_on_local_cluster(tmp_path, capsys):
    report = tmp_path / "report.html"
    code, stdout, _ = run(["demo", "--n", "256", "--rank", "8", "--fm-features", "400",
                           "--epochs", "2", "--iters", "3", "--workers", "1", "--json",
                           "--quiet", "--report", str(report), "--keep", str(tmp_path)], capsys)
    assert code == 0
    assert report.stat().st_size > 1000
    out = json.loads(stdout)
    mlr = out["mlr"]
    assert mlr["rel_error_of_true_mlr_on_cluster"] == pytest.approx(
        mlr["rel_error_of_true_mlr_in_memory"], rel=1e-10)
    errors = mlr["fit_rel_error_per_epoch"]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(errors, errors[1:]))
    assert len(errors) >= 2 and errors[-1] < errors[0]
    ll = out["fm"]["loglike"]
    assert len(ll) == 3 and all(b >= a - 1e-8 * abs(a) for a, b in zip(ll, ll[1:]))
    assert (tmp_path / "demo_mlr.zarr").exists() and (tmp_path / "demo_fm.zarr").exists()
