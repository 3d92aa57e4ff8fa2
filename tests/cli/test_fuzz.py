"""Fuzzing the command line, job files and damaged stores (hypothesis, bounded examples).

Every run must end with exit status 0, 1 or 2; a non-zero exit prints exactly one ``error:``
line and no traceback; no input and no unrelated file changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlr_dask.cli.main import main

REPO = Path(__file__).resolve().parents[2]

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def tree_digest(root: Path) -> dict[str, str]:
    """Content hash of every file under ``root`` (relative path -> sha1)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # --help and --version print and exit 0
        code = exc.code if isinstance(exc.code, int) else 0
    out = capsys.readouterr()
    return code, out.out, out.err


def check_outcome(code: int, err: str) -> None:
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err, err
    if code != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert len(errors) == 1 and lines[-1].startswith("error:"), err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory with a small fm-data store, a matrix store, a regular file and a precious
    file that no command may touch."""
    root = tmp_path_factory.mktemp("fuzz")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["generate", "fm", "--n", "160", "--samples", "20", "--ranks", "2,1,1,1,1",
                     "--out", "fm.zarr", "--quiet"]) == 0
        assert main(["generate", "mlr", "--n", "96", "--rank", "4", "--out", "A.zarr",
                     "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    (root / "notes.txt").write_text("a regular file\n")
    (root / "keep").mkdir()
    (root / "keep" / "precious.txt").write_text("do not touch\n")
    return root


COMMANDS = {
    ("info",): ["--json"],
    ("score",): ["--array", "--json"],
    ("fit-fm",): ["--ranks", "--out", "--max-iter", "--tol", "--init", "--chunk-size",
                  "--checkpoint-every", "--resume", "--array", "--levels", "--overwrite"],
    ("fit-mlr",): ["--rank", "--levels", "--partition", "--method", "--max-iter", "--tol",
                   "--backend", "--chunk-items", "--out", "--psd", "--init", "--overwrite"],
    ("generate", "mlr"): ["--n", "--rank", "--noise", "--seed", "--out", "--levels"],
    ("generate", "fm"): ["--n", "--samples", "--ranks", "--points", "--seed", "--out"],
    ("generate", "radial"): ["--n", "--m", "--seed", "--out", "--chunk"],
    ("run",): ["--set", "--dry-run", "--force", "--manifest"],
}

VALUES = st.one_of(
    st.integers(-3, 120).map(str),
    st.sampled_from(["0", "1e-3", "nan", "inf", "-1", "abc", "", "2,1", "4,2,1,1,1", "[1,2]",
                     "fm.zarr", "A.zarr", "notes.txt", "keep", "missing.zarr", "new.zarr",
                     "out/new.zarr", "memory://fuzz.zarr", "/", "x=1", "data.n=5", "given",
                     "spectral", "bcd", "numpy", "dask", "svd", "random", "Y", "Y_test"]),
)


@st.composite
def cli_args(draw):
    words = draw(st.sampled_from(sorted(COMMANDS)))
    argv = list(words)
    positional = {"info": 1, "score": 2, "fit-fm": 1, "fit-mlr": 1, "run": 1}.get(words[0], 0)
    for _ in range(draw(st.integers(0, positional))):
        argv.append(draw(st.sampled_from(["fm.zarr", "A.zarr", "notes.txt", "keep",
                                          "missing.zarr", str(REPO / "pipelines" /
                                                              "mlr_demo.toml")])))
    for _ in range(draw(st.integers(0, 4))):
        argv.append(draw(st.sampled_from(COMMANDS[words])))
        if draw(st.booleans()):
            argv.append(draw(VALUES))
    if words[0] in ("fit-fm", "fit-mlr", "score", "run"):
        argv += ["--scheduler", "threads"]
    if words[0] == "fit-fm" and "--max-iter" not in argv:
        argv += ["--max-iter", "1"]
    return argv + ["--quiet"]


@FUZZ
@given(argv=cli_args())
def test_fuzz_command_lines(workspace, capsys, monkeypatch, argv):
    monkeypatch.chdir(workspace)
    before = {k: v for k, v in tree_digest(workspace).items()
              if k.split(os.sep)[0] in ("fm.zarr", "A.zarr", "notes.txt", "keep")}
    code, _, err = run_cli(argv, capsys)
    check_outcome(code, err)
    after = tree_digest(workspace)
    assert {k: after.get(k) for k in before} == before, argv
    # leave the workspace as it was for the next example
    for p in workspace.iterdir():
        if p.name not in ("fm.zarr", "A.zarr", "notes.txt", "keep"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


JOB = (REPO / "pipelines" / "mlr_demo.toml").read_text()


@FUZZ
@given(cut=st.integers(0, len(JOB)), junk=st.sampled_from(
    ["", "\x00\xff", "[[stage]]\n", "[other]\nx = 1\n", "name = 3\n", 'command = "run"\n',
     "options = { n = -5 }\n", "= =\n", 'args = "x"\n', "[job]\nname = 1\n", "\ufeff"]),
    data=st.booleans())
def test_fuzz_job_files(tmp_path_factory, capsys, cut, junk, data):
    root = tmp_path_factory.mktemp("job")
    text = JOB[:cut] + junk + JOB[cut:]
    (root / "job.toml").write_bytes(text.encode("utf-8", "surrogatepass"))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        argv = ["run", "job.toml", "--scheduler", "threads", "--quiet"]
        if not data:
            argv.append("--dry-run")
        code, _, err = run_cli(argv, capsys)
    finally:
        os.chdir(cwd)
    check_outcome(code, err)
    assert (root / "job.toml").read_bytes() == text.encode("utf-8", "surrogatepass")


DAMAGE = ("delete", "truncate", "garbage", "empty", "metadata")


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(how=st.sampled_from(DAMAGE), which=st.integers(0, 10_000),
       command=st.sampled_from(["fit-fm", "score", "info"]))
def test_fuzz_damaged_stores(workspace, tmp_path_factory, capsys, how, which, command):
    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(workspace / "fm.zarr", root / "fm.zarr")
    chunks = sorted(p for p in (root / "fm.zarr" / "Y" / "c").rglob("*") if p.is_file())
    target = chunks[which % len(chunks)]
    if how == "delete":
        target.unlink()
    elif how == "truncate":
        target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 2)])
    elif how == "garbage":
        target.write_bytes(os.urandom(target.stat().st_size))
    elif how == "empty":
        target.write_bytes(b"")
    else:
        (root / "fm.zarr" / "Y" / "zarr.json").write_text('{"zarr_format": 3, "node_type"')
    if command == "score":
        shutil.copytree(workspace / "fm.zarr", root / "good.zarr")
        cwd = os.getcwd()
        os.chdir(root)
        try:
            assert main(["fit-fm", "good.zarr", "--ranks", "2,1,1,1,1", "--max-iter", "1",
                         "--out", "model.zarr", "--scheduler", "threads", "--quiet"]) == 0
        finally:
            os.chdir(cwd)
        capsys.readouterr()
        argv = ["score", str(root / "model.zarr"), str(root / "fm.zarr"), "--array", "Y"]
    elif command == "fit-fm":
        argv = ["fit-fm", str(root / "fm.zarr"), "--ranks", "2,1,1,1,1", "--max-iter", "1",
                "--out", str(root / "out.zarr")]
    else:
        argv = ["info", str(root / "fm.zarr")]
    before = tree_digest(root / "fm.zarr")
    code, _, err = run_cli([*argv, "--scheduler", "threads", "--quiet"], capsys)
    check_outcome(code, err)
    if command != "info":  # info only describes metadata; the data commands must notice
        assert code == 2, (how, err)
    assert not (root / "out.zarr").exists()
    assert tree_digest(root / "fm.zarr") == before
