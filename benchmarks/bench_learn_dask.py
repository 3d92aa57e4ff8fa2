"""Benchmark of learning on the Dask path against the in-memory pipeline.

For a radial kernel (or MLR plus noise) of size n (a zarr store in original order, tiles of
``--tile``), the hierarchy and ranks are learned twice: by the in-memory pipeline (``fit_mlr``
defaults, the matrix loaded) and on the Dask path (``fit_mlr(store, backend="dask")``: the start
picked on a sample by futures, top splits by passes over the tiles, blocks below as tasks,
growth and exchange of the ranks on the whole matrix) on an embedded cluster of ``--workers``
single-threaded workers. Several seeds, since both depend on the seed by a few percent. Prints
the relative errors, their ratio (Dask / in memory; the target is at most 1.02), the time
ratio, and the passes over A and the seconds per stage of the Dask path (``reorder``: the
store rewritten in hierarchy order before the final fit).

``python -m benchmarks learn_dask [--n 8000] [--rank 28] [--seeds 0,1] [--block-items 2048]
[--kind radial|mlr]`` (``mlr``: MLR plus 10% noise in a hidden order, rank 30 by default)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _matrix(kind: str, n: int) -> np.ndarray:
    if kind == "radial":
        from mlr_dask.datasets.matrices import radial_kernel

        return radial_kernel(n, seed=5)
    from mlr_dask.datasets.mlr import mlr_plus_noise

    levels = int(np.ceil(np.log2(n))) - 2
    _, A = mlr_plus_noise(n, n, rank=30, n_levels=levels, noise=0.1, rng=3)
    rng = np.random.default_rng(1)
    return A[np.ix_(rng.permutation(n), rng.permutation(n))]


def run(n: int, rank: int, seeds: list[int], block_items: int, sample_items: int, tile: int,
        workers: int, kind: str = "radial") -> dict[str, Any]:
    from mlr_dask.cluster import connect
    from mlr_dask.datasets.mlr import write_matrix_store
    from mlr_dask.fit import DaskSettings, fit_mlr

    A = _matrix(kind, n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "K.zarr"
        write_matrix_store(path, A, kind=kind, chunk=tile)
        for seed in seeds:
            with connect(n_workers=workers, quiet=True) as client:
                t0 = time.perf_counter()
                Md = fit_mlr(str(path), rank, backend="dask", client=client, seed=seed,
                             dask=DaskSettings(block_items=block_items,
                                               sample_items=sample_items), baselines=False)
                t_dask = time.perf_counter() - t0
            t0 = time.perf_counter()
            Mm = fit_mlr(A, rank, seed=seed, baselines=False, threads=workers)
            t_mem = time.perf_counter() - t0
            rows.append({"seed": seed, "dask": float(Md.history_["rel_error"][-1]),
                         "memory": float(Mm.history_["rel_error"][-1]),
                         "dask_s": t_dask, "memory_s": t_mem,
                         "passes": Md.history_["passes"], "ranks": list(Md.ranks),
                         "seconds": {k: round(v, 2) for k, v in
                                     Md.history_.get("seconds", {}).items()},
                         "reorder": Md.history_.get("reorder")})
    mean_d = float(np.mean([r["dask"] for r in rows]))
    mean_m = float(np.mean([r["memory"] for r in rows]))
    return {"kind": kind, "n": n, "rank": rank, "runs": rows, "error_ratio": mean_d / mean_m,
            "time_ratio": float(np.sum([r["dask_s"] for r in rows])
                                / np.sum([r["memory_s"] for r in rows]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks learn_dask", description=__doc__)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--kind", choices=["radial", "mlr"], default="radial")
    ap.add_argument("--rank", type=int, default=None, help="default: 28 radial, 30 mlr")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--block-items", type=int, default=2048)
    ap.add_argument("--sample-items", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=1000, help="zarr chunk side")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rank = a.rank or (28 if a.kind == "radial" else 30)
    out = run(a.n, rank, [int(s) for s in a.seeds.split(",")], a.block_items,
              a.sample_items, a.tile, a.workers, a.kind)
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['kind']} n = {out['n']}, rank {out['rank']}")
    stages = ("pick_start", "top_splits", "blocks", "reorder", "fit")
    print(f"{'seed':>4}  {'Dask path':>10}  {'in memory':>10}  passes over A and seconds per "
          f"stage ({' / '.join(stages)})")
    for r in out["runs"]:
        p, t = r["passes"], r["seconds"]
        print(f"{r['seed']:>4}  {r['dask']:>10.5f}  {r['memory']:>10.5f}  "
              + " / ".join(f"{p.get(k, 0):.0f}" for k in stages) + "   "
              + " / ".join(f"{t.get(k, 0):.0f}s" for k in stages)
              + f"   ({r['dask_s']:.0f}s against {r['memory_s']:.0f}s in memory)")
    print(f"error ratio (mean Dask / mean in memory): {out['error_ratio']:.4f}   "
          f"time ratio: {out['time_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
