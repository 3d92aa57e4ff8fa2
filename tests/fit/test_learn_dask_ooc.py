"""Out-of-core learned fit (slow): a radial kernel between two random point sets on the sphere
(original order: nothing to read off the stored order), written to zarr tile by tile, and its
MLR model learned on a LocalCluster of one worker process with two threads whose memory limit
is a quarter of the matrix: the start picked on a sample, the top levels by passes over the
tiles, the blocks below as tasks, the matrix rewritten in hierarchy order, the ranks and
factors by the Dask fit. Size from ``MLR_LEARN_N`` (default 20000: 3.2 GB of float64); for
development at a smaller size ``MLR_LEARN_MEM`` sets the worker's limit in bytes instead (the
tasks' memory follows the limit, not the matrix) and ``MLR_LEARN_ITER`` the final epochs.
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


def _worker_trouble(client, pids_before):
    """(restarts, pause times) of the workers: a worker process that was not there at the start
    replaced one (restarted by the nanny, e.g. over its memory limit, under a new address); a
    pause is a status change the scheduler logged (its time.time())."""
    pids = client.run(os.getpid)
    restarts = len(set(pids.values()) - set(pids_before.values()))
    pauses = []
    for addr in set(pids) | set(pids_before):
        pauses += [t for t, ev in client.get_events(addr) if isinstance(ev, dict)
                   and ev.get("action") == "worker-status-change"
                   and ev.get("status") == "paused"]
    return restarts, pauses


def test_learned_fit_out_of_core(tmp_path):
    from distributed.diagnostics import MemorySampler

    from mlr_dask.cluster import connect
    from mlr_dask.fit.api import default_levels, load_matrix_store
    from mlr_dask.fit.dask import fit_mlr_dask
    from mlr_dask.fit.learn_dask import LearnOptions, default_block_items, learn_mlr_dask
    from mlr_dask.hierarchy import Hierarchy

    n = int(os.environ.get("MLR_LEARN_N", "20000"))
    mem = int(os.environ.get("MLR_LEARN_MEM", n * n * 8 // 4))  # a quarter of A
    max_iter = int(os.environ.get("MLR_LEARN_ITER", "1"))
    rank = 16
    L = default_levels(n, n)
    t0 = time.perf_counter()
    _write_radial(tmp_path / "K.zarr", n, chunk=1250)
    t_write = time.perf_counter() - t0
    store = load_matrix_store(tmp_path / "K.zarr")
    stages = []  # (time.time(), stage) at each event
    t_start = time.time()

    def progress(stage, info):  # a line per stage as it starts (visible with -s)
        if not stages or stages[-1][1] != stage:
            print(f"  {time.time() - t_start:7.0f}s {stage} {info}", flush=True)
        stages.append((time.time(), stage))

    with connect(n_workers=1, threads_per_worker=2, memory_limit=mem, quiet=True,
                 out_of_core=True) as client:
        pids = client.run(os.getpid)
        # a shorter final fit than the defaults (an epoch costs about four passes over A):
        # four ranks per growth epoch, two exchanges, one epoch after them
        o = LearnOptions(block_items=default_block_items(client), grow_per_step=4,
                         exchange_steps=2)
        ms = MemorySampler()
        with ms.sample("learned", client=client, interval=1.0):
            M = learn_mlr_dask(store, rank, L, opts=o, max_iter=max_iter, client=client,
                               progress=progress)
        t0 = time.perf_counter()
        one = Hierarchy([np.array([0, n])], np.arange(n))
        with ms.sample("low rank", client=client, interval=1.0):
            lr = fit_mlr_dask(store, one, one, [rank], max_iter=1, client=client,
                              chunk_items=o.block_items)
        t_lr = time.perf_counter() - t0
        stages.append((time.time(), "low rank"))
        restarts, pauses = _worker_trouble(client, pids)
    # the stage of each pause: the next event (events end the steps of a stage)
    paused_in = [min(((t, st) for t, st in stages if t >= tp), default=(0, "after"))[1]
                 for tp in pauses]
    peak = {k: max(v for _, v in s) / mem for k, s in ms.samples.items() if s}
    h = M.history_
    err, err_lr = h["rel_error"][-1], lr.history_["rel_error"][-1]
    print(f"\nlearned fit OOC n={n}, worker limit {mem / 1e9:.2f} GB (2 threads), "
          f"block_items {o.block_items}: write {t_write:.0f}s; start {h['init']} "
          f"{h['start'].get('starts')}; seconds "
          f"{ {k: round(v) for k, v in h['seconds'].items()} }; passes {h['passes']} "
          f"(total {h['passes_over_A']}); reorder {h['reorder']}; ranks {M.ranks}; "
          f"epochs {len(h['rel_error'])}; error {err:.4f} vs low rank {err_lr:.4f} "
          f"({t_lr:.0f}s); peak memory / limit {peak}; restarts {restarts}, pauses {len(pauses)} "
          f"(during {paused_in})")
    assert M.rows.n_levels == M.cols.n_levels == L and M.rank == rank
    assert sorted(M.rows.perm.tolist()) == list(range(n))
    assert np.all(np.minimum(M.rows.block_sizes(-1), M.cols.block_sizes(-1)) == 1)
    assert h["reorder"]["done"] and h["passes"]["reorder"] > 0
    assert {"partition", "reorder", "epoch"} <= {st for _, st in stages}
    assert not [p for p in os.listdir(tmp_path) if ".reorder-" in p]  # the rewrite is gone
    assert np.isfinite(err) and err < 0.8 * err_lr  # MLR well below low rank at equal storage
    # no worker killed or restarted; pauses (the worker over 80% of its limit, a third of
    # which its own process takes) are reported, not failed: the run continues after them
    assert restarts == 0
