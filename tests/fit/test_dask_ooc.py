"""Out-of-core acceptance run (slow): a large matrix in zarr fitted on a LocalCluster of two
worker processes whose memory limits total ``MLR_OOC_MEMORY`` (default 1 GB), with a given
hierarchy. The relative error must match the same algorithm run on the matrix in memory within
1e-6 relative. Size from ``MLR_OOC_N`` (default 20000: 3.2 GB of float64).

Worker settings for data that is re-read from zarr on every pass: ``connect(out_of_core=True)``
(spilling and the statistical profiler off, large allocations mmapped; the nanny's pause (80 %) and
terminate (95 %) thresholds stay on). The peak resident memory of each worker is sampled and
printed next to the limit, with the pause / spill counts."""

import os
import threading
import time

import numpy as np
import pytest

from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix

pytestmark = pytest.mark.slow


def _write_mlr_plus_noise(path, n, levels, ranks, chunk, noise=0.1, seed=0):
    """Write ``A = MLR + noise`` (n x n, dyadic hierarchy, identity order) chunk by chunk."""
    import zarr

    from mlr_dask.io import atomic_group

    h = Hierarchy.dyadic(n, levels - 1)
    h = h.refine(h.block_sizes(-1))
    truth = MLRMatrix.random(h, h, ranks, rng=seed)
    scale = noise * np.sqrt(float(levels)) / np.sqrt(n)  # about noise * entry size
    with atomic_group(path, "matrix", 1) as g:
        g.attrs["kind"] = "mlr_ooc"
        arr = g.create_array("A", shape=(n, n), dtype="f8", chunks=(chunk, chunk))
        h.write_zarr(g.create_group("rows"))
        h.write_zarr(g.create_group("cols"))
        for i0 in range(0, n, chunk):
            i1 = min(i0 + chunk, n)
            rows = np.zeros((i1 - i0, n))
            for lvl in range(levels):
                Bl, Cl = truth.level(lvl)
                b = h.boundaries[lvl]
                for k in range(b.size - 1):
                    lo, hi = max(b[k], i0), min(b[k + 1], i1)
                    if lo < hi:
                        rows[lo - i0:hi - i0, b[k]:b[k + 1]] += Bl[lo:hi] @ Cl[b[k]:b[k + 1]].T
            rng = np.random.default_rng([seed, i0])
            rows += scale * rng.standard_normal(rows.shape)
            arr[i0:i1] = rows
    del zarr
    return h


def _start_sampler() -> float:
    """Sample this worker's resident memory every 5 ms (its peak); returns the current MiB."""
    import builtins

    import psutil

    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "run": True}

    def loop() -> None:
        while state["run"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(0.005)

    threading.Thread(target=loop, daemon=True).start()
    builtins._mlr_ooc_sampler = state
    return state["peak"] / 2**20


def _read_sampler(dask_worker=None) -> dict:
    import builtins

    state = builtins._mlr_ooc_sampler
    state["run"] = False
    spilled = getattr(getattr(dask_worker, "data", None), "slow", None)
    return {"peak_MiB": state["peak"] / 2**20,
            "spilled_keys": 0 if spilled is None else len(spilled)}


def test_out_of_core_fit_matches_in_memory(tmp_path):
    from mlr_dask.cluster import connect
    from mlr_dask.fit.api import load_matrix_store
    from mlr_dask.fit.dask import fit_mlr_dask

    n = int(os.environ.get("MLR_OOC_N", "20000"))
    mem = int(float(os.environ.get("MLR_OOC_MEMORY", "1e9")))
    epochs = int(os.environ.get("MLR_OOC_EPOCHS", "2"))
    chunk_items = int(os.environ.get("MLR_OOC_CHUNK", "1250"))
    levels = 6
    ranks = [8, 4, 4, 4, 3, 1]
    t0 = time.perf_counter()
    h = _write_mlr_plus_noise(tmp_path / "big.zarr", n, levels, ranks, chunk=1250)
    t_write = time.perf_counter() - t0
    store = load_matrix_store(tmp_path / "big.zarr")
    with connect(n_workers=2, memory_limit=mem // 2, quiet=True, out_of_core=True) as client:
        base = client.run(_start_sampler)
        t0 = time.perf_counter()
        Md = fit_mlr_dask(store, h, h, ranks, max_iter=epochs, tol=0.0,
                          chunk_items=chunk_items, seed=5)
        t_dask = time.perf_counter() - t0
        peaks = client.run(_read_sampler)
        logs = client.get_worker_logs()
        paused = sum("Pausing worker" in msg for v in logs.values() for _, msg in v)
    t0 = time.perf_counter()
    Mn = fit_mlr_dask(store, h, h, ranks, max_iter=epochs, tol=0.0, chunk_items=chunk_items,
                      seed=5, engine="numpy")
    t_mem = time.perf_counter() - t0
    ed, em = Md.history_["rel_error"][-1], Mn.history_["rel_error"][-1]
    print(f"\nOOC n={n}: write {t_write:.0f}s, dask {t_dask:.0f}s, in-memory {t_mem:.0f}s, "
          f"rel error dask {ed:.8f} in-memory {em:.8f}, passes {Md.history_['passes_over_A']}, "
          f"chunks {Md.history_['n_chunks']}, chunk level {Md.history_['chunk_level']}")
    print(f"workers: limit {mem / 2 / 2**20:.0f} MiB each, start "
          f"{[round(v) for v in base.values()]} MiB, peak "
          f"{[round(v['peak_MiB']) for v in peaks.values()]} MiB, spilled keys "
          f"{[v['spilled_keys'] for v in peaks.values()]}, pauses {paused}")
    assert abs(ed - em) <= 1e-6 * em
    assert np.all(np.diff(Md.history_["rel_error"]) <= 1e-12)
