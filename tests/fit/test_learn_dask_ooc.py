"""Out-of-core learning (slow): a radial kernel between two random point sets on the sphere
(original order: nothing to read off the stored order), written to zarr tile by tile, and its
hierarchy learned on a LocalCluster of one worker process with two threads whose memory limit
is a quarter of the matrix: the start picked on a sample, the top levels by passes over the
tiles, the blocks below as tasks. Size from ``MLR_LEARN_N`` (default 20000: 3.2 GB of float64).

Not covered: the final fit on the learned order out of core. Its tasks read chunks in
hierarchy order, which are scattered over the stored tiles of a store in original order (each
chunk decodes most of the stored tiles); the matrix must first be rewritten in hierarchy order.
"""

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


def test_learned_hierarchy_out_of_core(tmp_path):
    from mlr_dask.cluster import connect
    from mlr_dask.fit.api import default_levels, load_matrix_store
    from mlr_dask.fit.learn_dask import (
        LearnOptions,
        TileSource,
        default_block_items,
        pick_start,
        split_below,
        top_splits,
    )
    from mlr_dask.fit.pipeline import _short_caps, start_ranks

    n = int(os.environ.get("MLR_LEARN_N", "20000"))
    rank = 16
    L = default_levels(n, n)
    t0 = time.perf_counter()
    _write_radial(tmp_path / "K.zarr", n, chunk=1250)
    t_write = time.perf_counter() - t0
    ts = TileSource(load_matrix_store(tmp_path / "K.zarr"))
    mem = n * n * 8 // 4  # the worker (two threads): a quarter of A
    with connect(n_workers=1, threads_per_worker=2, memory_limit=mem, quiet=True,
                 out_of_core=True) as client:
        o = LearnOptions(block_items=default_block_items(client))
        t0 = time.perf_counter()
        start, info = pick_start(ts, rank, L, o, client)
        t_pick, p_pick = time.perf_counter() - t0, ts.passes
        rk0 = start_ranks(start, rank, L, _short_caps(n, n, L))
        t0 = time.perf_counter()
        lv = top_splits(ts, L, rk0, o)
        t_top, p_top = time.perf_counter() - t0, ts.passes - p_pick
        t0 = time.perf_counter()
        rows, cols = split_below(ts, lv, L, rk0, o)
        t_blocks, p_blocks = time.perf_counter() - t0, ts.passes - p_pick - p_top
        logs = client.get_worker_logs()
    restarts = sum("exceeded" in msg and "memory" in msg for v in logs.values() for _, msg in v)
    print(f"\nlearned hierarchy OOC n={n}: write {t_write:.0f}s, start {start} ({t_pick:.0f}s, "
          f"{info['starts']}), top splits {len(lv.rb) - 1} levels {t_top:.0f}s {p_top:.0f} "
          f"passes, blocks {lv.rb[-1].size - 1} {t_blocks:.0f}s {p_blocks:.0f} passes, "
          f"block_items {o.block_items}, blocks per level {rows.n_blocks[:8]}")
    assert rows.n_levels == cols.n_levels == L
    assert sorted(rows.perm.tolist()) == list(range(n))
    assert np.all(np.minimum(rows.block_sizes(-1), cols.block_sizes(-1)) == 1)
    assert max(np.diff(lv.rb[-1]).max(), np.diff(lv.cb[-1]).max()) <= o.block_items
    assert restarts == 0
