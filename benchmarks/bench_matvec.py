"""MLR matvec vs dense numpy matvec (same matrix), and the achieved bandwidth of factor reads.

Setup: an n x n MLR matrix, dyadic hierarchy with the last level diagonal (atoms, rank 1), total
rank r spread over the other levels; the dense baseline is the same matrix as a numpy array.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.timing import best_time
from mlr_dask import Hierarchy, MLRMatrix
from mlr_dask.datasets.mlr import default_ranks


def build(n: int, rank: int, n_levels: int, seed: int = 0) -> MLRMatrix:
    h = Hierarchy.dyadic(n, n_levels - 1)
    h = h.refine(h.block_sizes(-1)).with_perm(np.random.default_rng(seed).permutation(n))
    return MLRMatrix.random(h, h.with_perm(np.random.default_rng(seed + 1).permutation(n)),
                            default_ranks(rank, n_levels), rng=seed)


def run_one(n: int, rank: int, n_levels: int) -> dict:
    A = build(n, rank, n_levels)
    D = A.to_dense()
    x = np.random.default_rng(1).standard_normal(n)
    err = float(np.abs(A @ x - D @ x).max() / np.abs(D @ x).max())
    t_mlr = best_time(lambda: A @ x)
    t_dense = best_time(lambda: D @ x)
    t_rmlr = best_time(lambda: A.T @ x)
    factor_bytes = (A.B.nbytes + A.C.nbytes)
    return {
        "n": n,
        "rank": rank,
        "levels": n_levels,
        "ranks": list(A.ranks),
        "speedup_matvec": t_dense / t_mlr,
        "speedup_rmatvec": t_dense / t_rmlr,
        "mlr_factor_GBps": factor_bytes / t_mlr / 1e9,
        "dense_GBps": n * n * 8 / t_dense / 1e9,
        "max_rel_diff": err,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks matvec", description=__doc__)
    p.add_argument("--sizes", default="4000,16000", help="comma-separated n (default 4000,16000)")
    p.add_argument("--rank", type=int, default=50)
    p.add_argument("--levels", type=int, default=8, help="levels incl. the diagonal (default 8)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = [run_one(int(n), args.rank, args.levels) for n in args.sizes.split(",")]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'n':>7} {'ranks':<28} {'dense/MLR':>10} {'dense/MLR^T':>12} "
          f"{'MLR GB/s':>9} {'dense GB/s':>10} {'max rel diff':>12}")
    for r in rows:
        print(f"{r['n']:>7} {str(r['ranks']):<28} {r['speedup_matvec']:>10.1f} "
              f"{r['speedup_rmatvec']:>12.1f} {r['mlr_factor_GBps']:>9.2f} "
              f"{r['dense_GBps']:>10.2f} {r['max_rel_diff']:>12.1e}")
    return 0
