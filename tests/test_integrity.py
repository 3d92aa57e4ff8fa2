"""Damaged stores through the CLI: a deleted, truncated or same-size garbage chunk ends the run
with exit status 2 and one ``error:`` line naming the array and the chunk, and no output is
written. Outputs that would destroy data are refused the same way."""

from pathlib import Path

import numpy as np
import pytest

from mlr_dask.cli.main import main

FM_RANKS = "3,2,1,1,1"


def run(argv, capsys):
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    return lines[0]


def damage(chunk: Path, how: str) -> None:
    raw = chunk.read_bytes()
    if how == "delete":
        chunk.unlink()
    elif how == "truncate":
        chunk.write_bytes(raw[: len(raw) // 3])
    else:  # same size, different bytes
        chunk.write_bytes(np.random.default_rng(1).bytes(len(raw)))


@pytest.fixture(scope="module")
def fm_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("fm")
    assert main(["generate", "fm", "--n", "160", "--samples", "12", "--ranks", FM_RANKS,
                 "--out", str(d / "d.zarr"), "--quiet"]) == 0
    return d / "d.zarr"


@pytest.fixture(scope="module")
def matrix_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("mat")
    assert main(["generate", "radial", "--n", "48", "--seed", "0", "--chunk", "16",
                 "--out", str(d / "A.zarr"), "--quiet"]) == 0
    return d / "A.zarr"


def _copy(src: Path, dst_dir: Path) -> Path:
    import shutil

    dst = dst_dir / src.name
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("how", ["delete", "truncate", "garbage"])
def test_fit_fm_damaged_data(fm_store, tmp_path, capsys, how):
    data = _copy(fm_store, tmp_path)
    damage(data / "Y" / "c" / "0" / "3", how)
    out = tmp_path / "m.zarr"
    code, stdout, err = run(["fit-fm", str(data), "--ranks", FM_RANKS, "--out", str(out),
                             "--scheduler", "threads", "--quiet", "--max-iter", "2",
                             "--checkpoint-every", "1"], capsys)
    line = _one_error_line(err)
    assert code == 2 and stdout == ""
    assert "'Y'" in line and "chunk (0, 3)" in line and "d.zarr" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


@pytest.mark.parametrize("how", ["delete", "garbage"])
def test_score_damaged_data_and_model(fm_store, tmp_path, capsys, how):
    data = _copy(fm_store, tmp_path)
    model = tmp_path / "m.zarr"
    assert main(["fit-fm", str(data), "--ranks", FM_RANKS, "--out", str(model),
                 "--scheduler", "threads", "--quiet", "--max-iter", "2"]) == 0
    (tmp_path / "good").mkdir()
    good = _copy(data, tmp_path / "good")
    damage(data / "Y_test" / "c" / "0" / "5", how)
    code, _, err = run(["score", str(model), str(data), "--scheduler", "threads",
                        "--quiet"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "'Y_test'" in line and "chunk (0, 5)" in line
    damage(model / "F" / "c" / "0" / "0", how)
    code, _, err = run(["score", str(model), str(good), "--scheduler", "threads",
                        "--quiet"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "'F'" in line and "chunk (0, 0)" in line and "m.zarr" in line


@pytest.mark.parametrize("how", ["delete", "truncate", "garbage"])
def test_fit_mlr_damaged_matrix(matrix_store, tmp_path, capsys, how):
    A = _copy(matrix_store, tmp_path)
    damage(A / "A" / "c" / "1" / "2", how)
    out = tmp_path / "M.zarr"
    code, _, err = run(["fit-mlr", str(A), "--rank", "4", "--out", str(out), "--quiet",
                        "--max-iter", "2"], capsys)
    line = _one_error_line(err)
    assert code == 2 and "'A'" in line and "chunk (1, 2)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.zarr"]


def test_fit_mlr_dask_backend_damaged_matrix(matrix_store, tmp_path, capsys):
    """Chunks read inside Dask tasks: the error names the chunk all the same."""
    A = _copy(matrix_store, tmp_path)
    damage(A / "A" / "c" / "2" / "0", "garbage")
    code, _, err = run(["fit-mlr", str(A), "--rank", "4", "--backend", "dask", "--scheduler",
                        "threads", "--partition", "dyadic", "--no-rank-alloc", "--quiet",
                        "--max-iter", "2", "--out", str(tmp_path / "M.zarr")], capsys)
    line = _one_error_line(err)
    assert code == 2 and "'A'" in line and "chunk (2, 0)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.zarr"]


# ------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("command", ["generate", "fit-fm", "fit-mlr"])
def test_outputs_that_destroy_data_are_refused(fm_store, matrix_store, tmp_path, capsys,
                                               command):
    precious = tmp_path / "dir.zarr"
    precious.mkdir()
    (precious / "precious.txt").write_text("keep")
    a_file = tmp_path / "file.zarr"
    a_file.write_text("keep")
    if command == "generate":
        base = ["generate", "radial", "--n", "20", "--seed", "0", "--quiet"]
        own = None
    elif command == "fit-fm":
        base = ["fit-fm", str(fm_store), "--ranks", FM_RANKS, "--scheduler", "threads",
                "--quiet", "--max-iter", "1"]
        own = fm_store
    else:
        base = ["fit-mlr", str(matrix_store), "--rank", "3", "--quiet", "--max-iter", "1"]
        own = matrix_store
    targets = [(precious, "not an mlr-dask store"), (a_file, "is a file")]
    if own is not None:
        targets.append((own, "input"))
    for target, why in targets:
        for extra in ([], ["--overwrite"]):
            code, _, err = run([*base, "--out", str(target), *extra], capsys)
            assert code == 2 and why in _one_error_line(err)
    assert (precious / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in precious.iterdir()) == ["precious.txt"]
    assert a_file.read_text() == "keep"
    # a store of the same kind: refused without --overwrite, replaced with it
    out = tmp_path / "new.zarr"
    assert main([*base, "--out", str(out)]) == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run([*base, "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in _one_error_line(err)
    assert main([*base, "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary left


def test_generate_mlr_output_rules(tmp_path, capsys):
    out = tmp_path / "m.zarr"
    base = ["generate", "mlr", "--n", "64", "--rank", "6", "--quiet", "--out", str(out)]
    assert main(base) == 0
    code, _, err = run(base, capsys)
    assert code == 2 and "--overwrite" in _one_error_line(err)
    assert main([*base, "--overwrite", "--seed", "1"]) == 0
    code, _, err = run(["generate", "fm", "--n", "160", "--samples", "12", "--ranks", FM_RANKS,
                        "--out", str(out), "--overwrite", "--quiet"], capsys)
    assert code == 2 and "'matrix' store, not 'fm-data'" in _one_error_line(err)


def test_fit_fm_leftover_checkpoints_need_resume_or_overwrite(fm_store, tmp_path, capsys):
    from mlr_dask.fm.checkpoint import prepare

    out = tmp_path / "m.zarr"
    prepare(out, resume=False, meta={}, create=True)
    base = ["fit-fm", str(fm_store), "--ranks", FM_RANKS, "--scheduler", "threads", "--quiet",
            "--max-iter", "1", "--out", str(out)]
    code, _, err = run(base, capsys)
    assert code == 2 and "--resume" in _one_error_line(err)
    assert main([*base, "--overwrite"]) == 0
    from mlr_dask.io import store_kind

    assert store_kind(out) == "fm-model"


def test_url_stores_follow_the_same_rules(capsys):
    """fsspec URL stores (written in place, no rename) are refused and replaced alike."""
    base = "memory://integrity-test"
    A, M = f"{base}/A.zarr", f"{base}/M.zarr"
    assert main(["generate", "radial", "--n", "24", "--seed", "0", "--out", A, "--quiet"]) == 0
    fit = ["fit-mlr", A, "--rank", "3", "--quiet", "--max-iter", "1", "--partition", "dyadic"]
    assert main([*fit, "--out", M]) == 0
    code, _, err = run([*fit, "--out", M], capsys)
    assert code == 2 and "--overwrite" in _one_error_line(err)
    code, _, err = run([*fit, "--out", A, "--overwrite"], capsys)
    assert code == 2 and "input" in _one_error_line(err)
    assert main([*fit, "--out", M, "--overwrite"]) == 0
    code, _, err = run([*fit, "--out", A.replace("A.zarr", "M.zarr/inner.zarr")], capsys)
    assert code == 2 and "inside the zarr store 'memory://integrity-test/M.zarr'" in \
        _one_error_line(err)


def test_info_verify_reads_every_checksum(matrix_store, tmp_path, capsys):
    import json

    A = _copy(matrix_store, tmp_path)
    code, out, _ = run(["info", str(A), "--verify", "--json"], capsys)
    assert code == 0 and json.loads(out)["integrity"] == {"ok": True, "arrays": 1,
                                                          "chunks_checked": 9}
    damage(A / "A" / "c" / "2" / "2", "garbage")
    assert main(["info", str(A), "--quiet"]) == 0  # presence only
    code, _, err = run(["info", str(A), "--verify"], capsys)
    assert code == 2 and "chunk (2, 2)" in _one_error_line(err)
