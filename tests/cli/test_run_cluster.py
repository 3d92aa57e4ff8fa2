"""The driver and the CLI against a real cluster: ``dask scheduler`` + two ``dask worker``
processes on 127.0.0.1, started in another directory than the client's.

Default suite: relative paths, the worker count, and a worker killed (SIGKILL) in the middle
of a factor-model fit and of a Dask MLR fit (same result as undisturbed, to 1e-10).
Slow: every ``pipelines/*.toml`` equal to its embedded-cluster run; the driver killed in the
middle of a stage; the scheduler killed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from procs import DASK, MLR_DASK, ProcessCluster, clean_env, json_out, mlr_dask

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(DASK is None or MLR_DASK is None,
                                reason="dask / mlr-dask not on PATH")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ProcessCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended before {what}: {err[-2000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_demo_reports_workers_and_relative_paths(cluster, tmp_path):
    res = json_out(mlr_dask(["demo", "--n", "256", "--fm-features", "0", "--epochs", "1",
                             "--scheduler", cluster.address, "--json", "--quiet"], tmp_path))
    assert res["workers"] == 2
    # relative store paths work although the workers run in another directory
    json_out(mlr_dask(["generate", "fm", "--n", "200", "--samples", "30", "--ranks", "2,2,1,1,1",
                       "--out", "rel.zarr", "--json", "--quiet"], tmp_path))
    res = json_out(mlr_dask(["fit-fm", "rel.zarr", "--ranks", "2,2,1,1,1", "--max-iter", "2",
                             "--out", "relmodel.zarr", "--scheduler", cluster.address,
                             "--json", "--quiet"], tmp_path))
    assert res["n_iter"] == 2 and (tmp_path / "relmodel.zarr").is_dir()


def test_fit_fm_events_reach_another_client(cluster, tmp_path):
    """A fit-fm run from the CLI publishes one event per EM iteration on the scheduler's
    event log; a second client (this test process) reads them."""
    json_out(mlr_dask(["generate", "fm", "--n", "300", "--samples", "40", "--ranks", "2,2,1,1,1",
                       "--out", "ev.zarr", "--json", "--quiet"], tmp_path))
    with cluster.client() as c:
        before = {id_ for _, e in c.get_events("mlr-dask") for id_ in [e.get("job")]}
        res = json_out(mlr_dask(["fit-fm", "ev.zarr", "--ranks", "2,2,1,1,1", "--max-iter",
                                 "5", "--tol", "0", "--out", "evmodel.zarr", "--scheduler",
                                 cluster.address, "--json", "--quiet"], tmp_path))
        time.sleep(0.5)
        got = [e for _, e in c.get_events("mlr-dask")
               if e.get("job") not in before and e.get("stage") == "em"]
    assert len({e["job"] for e in got}) == 1
    steps = [e["step"] for e in got]
    assert steps == sorted(steps) and len(steps) == res["n_iter"] == 5
    assert all(isinstance(e["loglike"], float) for e in got)
    assert [e["loglike"] for e in got] == pytest.approx(res["loglike"][-5:], rel=1e-12)


def _run_and_kill_a_worker(cluster, argv, cwd, ready, what: str) -> str:
    """Run the CLI; once ``ready()`` holds (while it still runs), SIGKILL one worker process.
    Returns the run's stdout after checking it succeeded."""
    proc = subprocess.Popen([MLR_DASK, *argv], cwd=cwd, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, 300, what, proc)
        assert proc.poll() is None  # the work is still running when the worker dies
        cluster.kill_one_worker()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return out


def _fit_fm_args(address: str, out: str) -> list[str]:
    return ["fit-fm", "fm.zarr", "--ranks", "4,3,2,2,1", "--max-iter", "8", "--tol", "0",
            "--chunk-size", "250", "--out", out, "--scheduler", address, "--json", "--quiet"]


def test_worker_killed_mid_fit_fm_same_result(cluster, tmp_path):
    json_out(mlr_dask(["generate", "fm", "--n", "3000", "--samples", "200", "--ranks",
                       "4,3,2,2,1", "--out", "fm.zarr", "--json", "--quiet"], tmp_path))
    calm = json_out(mlr_dask(_fit_fm_args(cluster.address, "calm.zarr"), tmp_path))
    log = tmp_path / "hit.zarr.iterations.jsonl"
    out = _run_and_kill_a_worker(
        cluster, _fit_fm_args(cluster.address, "hit.zarr"), tmp_path,
        lambda: log.exists() and len(log.read_text().splitlines()) >= 2,
        "the second EM iteration")
    hit = json.loads(out)
    assert hit["n_iter"] == calm["n_iter"] == 8
    for a, b in zip(hit["loglike"], calm["loglike"], strict=True):
        assert math.isclose(a, b, rel_tol=1e-10, abs_tol=0)
    cluster.wait_for_workers(2)


def test_worker_killed_mid_dask_fit_mlr_same_result(cluster, tmp_path):
    json_out(mlr_dask(["generate", "mlr", "--n", "512", "--rank", "16", "--out", "A.zarr",
                       "--json", "--quiet"], tmp_path))

    def args(out: str) -> list[str]:
        return ["fit-mlr", "A.zarr", "--rank", "16", "--partition", "given", "--no-rank-alloc",
                "--backend", "dask", "--chunk-items", "128", "--max-iter", "2", "--tol", "0",
                "--out", out, "--scheduler", cluster.address, "--json", "--quiet"]

    calm = json_out(mlr_dask(args("calm.zarr"), tmp_path))
    with cluster.client() as c:
        out = _run_and_kill_a_worker(cluster, args("hit.zarr"), tmp_path,
                                     lambda: any(c.processing().values()),
                                     "tasks on the workers")
    hit = json.loads(out)
    assert math.isclose(hit["rel_error"], calm["rel_error"], rel_tol=1e-10)
    cluster.wait_for_workers(2)


# ------------------------------------------------------------------------------ slow ones

#: small sizes for every job in pipelines/ (relative paths, as the files have them)
SMALL = {
    "asset_covariance": ["--set", "data.n=400", "--set", "data.samples=60",
                         "--set", "fit.max_iter=4", "--set", "fit.checkpoint_every=2"],
    "kernel_compression": ["--set", "data.n=160", "--set", "fit.rank=8",
                           "--set", "fit.max_iter=3"],
    "mlr_demo": ["--set", "data.n=128"],
    "gam_motif_sweep_small": [],
    "gam_motif_sweep": ["--set", 'sweep.motifs=["0110"]', "--set", "sweep.train_sizes=[60]",
                        *[x for kv in ("n=8", "hidden=8", "test_size=200", "r_max_epochs=3",
                                       "pool_size=2000", "distill_samples=100",
                                       "max_proposals=20000", "distill_max_epochs=2",
                                       "dpg_steps=3", "dpg_batch=200", "free_samples=100")
                          for x in ("--set", f"sweep.set.{kv}")]],
}

#: result keys that differ between runs by nature (times, paths, ids)
VOLATILE = ("seconds", "time", "out", "path", "log", "table", "plot", "run_id", "dashboard",
            "matrix", "data", "model", "job_id", "manifest", "store_dir", "source")


def _comparable(obj):
    if isinstance(obj, dict):
        return {k: _comparable(v) for k, v in obj.items()
                if not any(w in k for w in VOLATILE)}
    if isinstance(obj, list):
        return [_comparable(v) for v in obj]
    return obj


def _assert_close(a, b, where=""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-10, abs_tol=1e-12), (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("job", sorted(SMALL))
def test_pipeline_on_cluster_equals_embedded(cluster, tmp_path, job):
    pytest.importorskip("torch")
    path = str(REPO / "pipelines" / f"{job}.toml")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    remote = json_out(mlr_dask(["run", path, *SMALL[job], "--scheduler", cluster.address,
                                "--json", "--quiet"], tmp_path / "a"))
    embedded = json_out(mlr_dask(["run", path, *SMALL[job], "--workers", "2", "--json",
                                  "--quiet"], tmp_path / "b"))
    assert [s["status"] for s in remote["stages"]] == ["done"] * len(remote["stages"])
    _assert_close(_comparable([s["result"] for s in remote["stages"]]),
                  _comparable([s["result"] for s in embedded["stages"]]))


ASSET = ["--set", "data.n=3000", "--set", "data.samples=200", "--set", "fit.max_iter=12",
         "--set", "fit.checkpoint_every=2", "--set", "fit.tol=0"]


@pytest.mark.slow
def test_driver_killed_mid_fit_resumes(cluster, tmp_path):
    job = str(REPO / "pipelines" / "asset_covariance.toml")
    (tmp_path / "calm").mkdir()
    calm = json_out(mlr_dask(["run", job, *ASSET, "--scheduler", cluster.address, "--json",
                              "--quiet"], tmp_path / "calm"))
    work = tmp_path / "hit"
    work.mkdir()
    proc = subprocess.Popen([MLR_DASK, "run", job, *ASSET, "--scheduler", cluster.address,
                             "--quiet"], cwd=work, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    marker = work / "asset_model.zarr" / "latest.json"
    try:
        _wait_for(lambda: marker.exists() and json.loads(marker.read_text())["n_iter"] >= 4,
                  300, "a checkpoint at iteration 4", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    man = json.loads((work / "asset_covariance.manifest.json").read_text())
    assert [s["status"] for s in man["stages"]] == ["done", "running", "pending"]
    again = json_out(mlr_dask(["run", job, *ASSET, "--scheduler", cluster.address, "--json",
                               "--quiet"], work))
    assert [s["skipped"] for s in again["stages"]] == [True, False, False]
    log = (work / "asset_model.zarr.iterations.jsonl").read_text().splitlines()
    iterations = [json.loads(line)["iteration"] for line in log]
    # resumed from a checkpoint (the log is appended to), not started again from iteration 1
    assert iterations.count(1) == 1 and iterations[-1] == 12
    for key in ("loglike", "n_iter"):
        _assert_close(again["stages"][1]["result"][key], calm["stages"][1]["result"][key])
    _assert_close(again["stages"][2]["result"]["score"], calm["stages"][2]["result"]["score"])


@pytest.mark.slow
def test_scheduler_killed_then_job_resumes_on_a_new_one(tmp_path):
    job = str(REPO / "pipelines" / "asset_covariance.toml")
    work = tmp_path / "w"
    work.mkdir()
    first = ProcessCluster(tmp_path / "c1").start()
    try:
        proc = subprocess.Popen([MLR_DASK, "run", job, *ASSET, "--scheduler", first.address,
                                 "--quiet"], cwd=work, env=clean_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        marker = work / "asset_model.zarr" / "latest.json"
        _wait_for(lambda: marker.exists(), 300, "a first checkpoint", proc)
        first.kill_scheduler()
        _, err = proc.communicate(timeout=120)
    finally:
        first.stop()
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stage 'fit'"), err
    assert "scheduler" in lines[0] and "rerun" in lines[0]
    with ProcessCluster(tmp_path / "c2") as second:
        res = json_out(mlr_dask(["run", job, *ASSET, "--scheduler", second.address, "--json",
                                 "--quiet"], work))
    assert [s["skipped"] for s in res["stages"]] == [True, False, False]
    assert res["stages"][1]["result"]["n_iter"] == 12
    assert os.path.isdir(work / "asset_model.zarr")
