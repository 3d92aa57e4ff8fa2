"""Out-of-core check of the factor model: the generator's problem (default n = 100,000,
N = 280) stored in zarr, fitted on a LocalCluster of 2 single-threaded worker processes whose
``memory_limit`` totals a quarter of the size of Y, against the in-memory fit (same chunks) of
the same data: the log-likelihoods must agree.

A worker process's baseline (Python, numpy, dask, numba imported) is larger than such a limit
at this n, so the nanny's pause / terminate thresholds cannot be applied literally: they are
switched off and instead the peak resident memory of each worker above its baseline is
measured (a sampling thread in each worker) and printed next to the limit. The baseline is
taken after the fixed costs that do not depend on the data: the library imported, the kernels
compiled and one element of the store read (zarr imports its codecs on the first read, about
3 MiB). The workers use ``connect(out_of_core=True)``: among others, Dask's statistical
profiler is off (it caches the source lines of every sampled frame, 6-8 MiB per worker over a
few iterations, memory a tightly limited worker should not spend).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _start_sampler(path: str) -> int:
    import gc

    import psutil
    import zarr

    import mlr_dask.fm.dask  # noqa: F401  (the code the tasks run: imported before the baseline)
    import mlr_dask.fm.model  # noqa: F401

    zarr.open_group(path, mode="r")["Y"][:1, :1]  # zarr's codecs are imported on first read
    gc.collect()

    proc = psutil.Process()
    state = {"base": proc.memory_info().rss, "peak": 0, "run": True}

    def loop() -> None:
        while state["run"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.005)

    threading.Thread(target=loop, daemon=True).start()
    globals()["_FM_SAMPLER"] = state
    return state["base"]


def _read_sampler() -> dict:
    state = globals()["_FM_SAMPLER"]
    state["run"] = False
    return {"base": state["base"], "peak": state["peak"]}


def run(n: int = 100_000, iters: int = 5, chunk_size: int = 3125, workers: int = 2,
        tmpdir: str | None = None) -> dict:
    import dask
    import zarr

    from mlr_dask.cluster import connect
    from mlr_dask.fm import MultilevelFactorModel
    from mlr_dask.fm.data import generate_fm, write_fm
    from mlr_dask.hierarchy import Hierarchy

    with tempfile.TemporaryDirectory(dir=tmpdir) as tmp:
        path = Path(tmp) / "fm.zarr"
        prob = generate_fm(n, 280, 1001)
        write_fm(path, prob)
        y_bytes = prob.Y.nbytes
        del prob
        limit = y_bytes // 4 // workers
        Y = zarr.open_group(str(path), mode="r")["Y"][:]
        t0 = time.perf_counter()
        h = Hierarchy.read_zarr(zarr.open_group(str(path), mode="r")["features"])
        ref = MultilevelFactorModel(h, [30, 20, 10, 5, 4], max_iter=iters, tol=0.0,
                                    chunk_size=chunk_size).fit(Y)
        t_mem = time.perf_counter() - t0
        del Y
        # the out-of-core worker profile (spilling and profiler off, large allocations
        # mmapped); the pause / terminate thresholds are off too (see the module docstring)
        cfg = {"distributed.worker.memory.pause": False,
               "distributed.worker.memory.terminate": False}
        with dask.config.set(cfg), connect(n_workers=workers, memory_limit=int(limit),
                                           quiet=True, out_of_core=True) as client:
            client.run(_start_sampler, str(path))
            t0 = time.perf_counter()
            m = MultilevelFactorModel(None, [30, 20, 10, 5, 4], max_iter=iters, tol=0.0,
                                      chunk_size=chunk_size).fit(str(path))
            t_dask = time.perf_counter() - t0
            mem = client.run(_read_sampler)
        growth = [v["peak"] - v["base"] for v in mem.values()]
        rel = np.abs(np.array(m.loglike_) - np.array(ref.loglike_)) / np.abs(ref.loglike_)
        return {
            "n": n, "N": 280, "iters": iters, "chunk_size": chunk_size,
            "Y_MiB": y_bytes / 2**20,
            "worker_memory_limit_MiB": limit / 2**20,
            "workers": workers,
            "worker_peak_growth_MiB": [g / 2**20 for g in growth],
            "worker_baseline_MiB": [v["base"] / 2**20 for v in mem.values()],
            "loglike_dask": m.loglike_, "loglike_memory": ref.loglike_,
            "max_rel_diff_loglike": float(rel.max()),
            "seconds_dask": t_dask, "seconds_memory": t_mem,
            "passes": m.n_passes_,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks fm_ooc", description=__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--chunk-size", type=int, default=3125)
    p.add_argument("--tmpdir", default=None)
    args = p.parse_args(argv)
    print(json.dumps(run(args.n, args.iters, args.chunk_size, tmpdir=args.tmpdir)), flush=True)
    return 0
