"""Out-of-core learned fit (slow): a radial kernel between two random point sets on the sphere
(original order: nothing to read off the stored order), written to zarr tile by tile, and its
hierarchy, ranks and factors learned on a LocalCluster of one worker process with two threads
whose memory limit is a quarter of the matrix. Growth by four ranks per epoch and two
exchanges bound the passes of the final fit. Size from ``MLR_LEARN_N`` (default 20000: 3.2 GB
of float64)."""

import os
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _write_radial(path, n, chunk, seed=0, sigma=0.9, n_scales=3):
    """``A_ij = sum_l (1 + (|t_i - s_j| / (sigma 2^-l))^2)^-2``, written row strip by row strip
    (the same kernel as :func:`mlr_dask.datasets.matrices.radial_kernel`)."""
    from mlr_dask.io import atomic_group

    rng = np.random.default_rng(seed)

    def sphere(k):
        x = rng.standard_normal((k, 3))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    T, S = sphere(n), sphere(n)
    with atomic_group(path, "matrix", 1) as g:
        g.attrs["kind"] = "radial_ooc"
        arr = g.create_array("A", shape=(n, n), dtype="f8", chunks=(chunk, chunk))
        for i0 in range(0, n, chunk):
            t = T[i0:i0 + chunk]
            D2 = np.maximum((t**2).sum(1)[:, None] + (S**2).sum(1)[None, :] - 2 * t @ S.T, 0)
            strip = np.zeros_like(D2)
            for lvl in range(n_scales):
                strip += (1.0 + D2 / (sigma * 2.0**-lvl) ** 2) ** -2
            arr[i0:i0 + chunk] = strip


def test_learned_fit_out_of_core(tmp_path):
    from mlr_dask.cluster import connect
    from mlr_dask.fit.api import default_levels, load_matrix_store
    from mlr_dask.fit.dask import fit_mlr_dask
    from mlr_dask.fit.learn_dask import LearnOptions, default_block_items, learn_mlr_dask
    from mlr_dask.hierarchy import Hierarchy

    n = int(os.environ.get("MLR_LEARN_N", "20000"))
    rank = 16
    t0 = time.perf_counter()
    _write_radial(tmp_path / "K.zarr", n, chunk=1250)
    t_write = time.perf_counter() - t0
    store = load_matrix_store(tmp_path / "K.zarr")
    mem = n * n * 8 // 4  # the worker (two threads): a quarter of A
    with connect(n_workers=1, threads_per_worker=2, memory_limit=mem, quiet=True,
                 out_of_core=True) as client:
        t0 = time.perf_counter()
        def show(stage, info):  # MLR_LEARN_VERBOSE=1: each step as it goes
            if os.environ.get("MLR_LEARN_VERBOSE"):
                print(f"{time.perf_counter() - t0:7.1f}s {stage} {info}", flush=True)

        o = LearnOptions(block_items=default_block_items(client), grow_per_step=4,
                         exchange_steps=2)
        M = learn_mlr_dask(store, rank, default_levels(n, n), opts=o, client=client,
                           max_iter=2, tol=0.0, progress=show)
        t_fit = time.perf_counter() - t0
        LR = fit_mlr_dask(store, Hierarchy([[0, n]]), Hierarchy([[0, n]]), [rank], max_iter=1,
                          tol=0.0, chunk_items=o.block_items)
        logs = client.get_worker_logs()
    h = M.history_
    killed = sum("memory" in msg.lower() and "kill" in msg.lower()
                 for v in logs.values() for _, msg in v)
    err, lr = h["rel_error"][-1], LR.history_["rel_error"][-1]
    print(f"\nlearned OOC n={n}: write {t_write:.0f}s, fit {t_fit:.0f}s {h['seconds']}, "
          f"passes {h['passes']}, ranks {list(M.ranks)}, blocks {M.rows.n_blocks[:6]}, "
          f"rel error {err:.5f} (low rank {lr:.5f}), start {h['start']}")
    assert h["learned"] == "dask" and M.rows.n_levels > 6
    assert sorted(M.rows.perm[:50].tolist()) != list(range(50))  # a learned order
    assert np.isfinite(err) and err < 0.8 * lr
    assert killed == 0
