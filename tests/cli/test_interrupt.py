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
    proc = subprocess.Popen(
        [MLR_DASK, "demo", "--n", "2048", "--fm-features", "0", "--epochs", "50",
         "--workers", "2"], cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = ""
        deadline = time.time() + 120
        while "wrote demo_mlr.zarr" not in seen and time.time() < deadline:
            seen += proc.stderr.readline()
        assert "wrote demo_mlr.zarr" in seen  # the cluster is up and working
        time.sleep(2)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["error: interrupted"], err[-3000:]
    assert out == ""


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
