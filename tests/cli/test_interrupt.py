"""Ctrl-C in a terminal reaches the whole process group (the CLI and the embedded cluster's
worker processes): the run ends with exactly one ``error: interrupted`` line, status 130."""

import os
import signal
import subprocess
import time

import pytest
from procs import MLR_DASK, clean_env

pytestmark = pytest.mark.skipif(MLR_DASK is None, reason="mlr-dask not on PATH")


def test_ctrl_c_is_one_line_without_worker_tracebacks(tmp_path):
    gen = subprocess.run([MLR_DASK, "generate", "fm", "--n", "2000", "--samples", "100",
                          "--ranks", "3,2,2,1,1", "--out", "d.zarr", "--quiet"], cwd=tmp_path,
                         env=clean_env(), capture_output=True)
    assert gen.returncode == 0
    log = tmp_path / "m.zarr.iterations.jsonl"
    proc = subprocess.Popen(
        [MLR_DASK, "fit-fm", "d.zarr", "--ranks", "3,2,2,1,1", "--max-iter", "100000",
         "--tol", "0", "--chunk-size", "200", "--workers", "2", "--out", "m.zarr"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (log.exists() and len(log.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        # the cluster's workers are busy with EM chunks: what a terminal's Ctrl-C does
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    lines = [ln for ln in err.replace("\r", "\n").splitlines()
             if ln.strip() and not ln.startswith(("em:", "dask dashboard:"))]  # bars, link
    assert lines == ["error: interrupted"], err[-3000:]
    assert out == "" and not (tmp_path / "m.zarr").exists()


def test_broken_pipe_is_one_line(tmp_path):
    """Output piped to a reader that went away (``| head``): one error line, status 1."""
    gen = subprocess.run([MLR_DASK, "generate", "mlr", "--n", "128", "--out", "m.zarr",
                          "--quiet"], cwd=tmp_path, env=clean_env(), capture_output=True)
    assert gen.returncode == 0
    read, write = os.pipe()
    os.close(read)  # nobody will read what the command prints
    proc = subprocess.run([MLR_DASK, "info", "m.zarr", "--json"], cwd=tmp_path,
                          env=clean_env(), stdout=write, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    os.close(write)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: output closed before everything was written"], proc.stderr
