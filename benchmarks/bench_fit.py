"""Benchmark of MLR fitting: quality at equal storage and time per stage.

For each matrix (radial kernel, DGT, MLR plus noise) and size: relative error and storage of
the learned MLR fit (spectral partition + rank allocation + BCD) next to low rank (truncated
SVD) and low rank plus diagonal at the same storage, with seconds per stage. Also the cost of
one BCD epoch (n = 2000, L = 12, r = 30 by default) relative to one dense product ``A @ X``
with ``X`` of shape (n, r), measured in the same run.

Usage: ``python -m benchmarks fit [--n 2000,5000] [--kinds radial,dgt,mlr] [--rank 28]``
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np


def _epoch_ratio(n: int, levels: int, rank: int, repeats: int) -> dict[str, float]:
    from mlr_dask.datasets.matrices import radial_kernel
    from mlr_dask.fit.bcd import epoch_levels, init_state, run_bcd, sweep
    from mlr_dask.hierarchy import Hierarchy

    A = radial_kernel(n, seed=1)
    h = Hierarchy.dyadic(n, levels - 1)
    h = h.refine(h.block_sizes(-1))
    base, extra = divmod(rank - 1, levels - 1)
    ranks = [base + (1 if i < extra else 0) for i in range(levels - 1)] + [1]
    st = init_state(A, h.boundaries, h.boundaries, ranks)
    run_bcd(st, max_iter=1, tol=0.0)  # compile + warm start
    epoch = []  # an epoch as run_bcd runs it from its second epoch on
    for _ in range(repeats):
        t0 = time.perf_counter()
        sweep(st, epoch_levels(levels, 2))
        epoch.append(time.perf_counter() - t0)
    X = np.random.default_rng(0).standard_normal((n, rank))
    prod = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        A @ X
        prod.append(time.perf_counter() - t0)
    e, p = float(np.median(epoch)), float(np.median(prod))
    return {"n": n, "levels": levels, "rank": rank, "epoch_s": e, "dense_product_s": p,
            "epoch_over_product": e / p}


def _matrix(kind: str, n: int, rank: int) -> tuple[np.ndarray, float | None]:
    from mlr_dask.datasets.matrices import dgt, radial_kernel
    from mlr_dask.datasets.mlr import mlr_plus_noise

    if kind == "radial":
        return radial_kernel(n, seed=0), None
    if kind == "dgt":
        return dgt(n, int(round(n * 1.4)), seed=0), None
    truth, A = mlr_plus_noise(n, n, rank=rank, noise=0.1, rng=0)
    noise = float(np.linalg.norm(A - truth.to_dense()) / np.linalg.norm(A))
    return A, noise


def _quality(kind: str, n: int, rank: int, max_iter: int, tol: float,
             init: str | None = None, split_vectors: int | None = None) -> dict[str, object]:
    from mlr_dask.fit import fit_mlr, lowrank_plus_diagonal
    from mlr_dask.fit.baselines import truncated_svd

    A, noise = _matrix(kind, n, rank)
    m, nn = A.shape
    nrm = float(np.linalg.norm(A))
    t0 = time.perf_counter()
    kw: dict[str, object] = {} if init is None else {"init": init}
    if split_vectors is not None:
        kw["split_vectors"] = split_vectors
    M = fit_mlr(A, rank, max_iter=max_iter, tol=tol, **kw)
    total = time.perf_counter() - t0
    err = float(np.linalg.norm(A - M.to_dense()) / nrm)
    t0 = time.perf_counter()
    _, s, _ = truncated_svd(A, rank)
    lr = float(np.sqrt(max(nrm**2 - float(np.sum(s**2)), 0.0)) / nrm)
    t_lr = time.perf_counter() - t0
    t0 = time.perf_counter()
    D = lowrank_plus_diagonal(A, rank, max_iter=30, tol=1e-4)
    lrd = float(np.linalg.norm(A - D.to_dense()) / nrm)
    t_lrd = time.perf_counter() - t0
    out: dict[str, object] = {
        "kind": kind, "shape": [m, nn], "rank": rank, "init": init or "default",
        "split_vectors": split_vectors or "default",
        "storage": M.storage,
        "mlr_rel_error": err, "lr_rel_error": lr, "lrd_rel_error": lrd,
        "mlr_over_lr": err / lr, "ranks": list(M.ranks), "epochs": len(M.history_["rel_error"]) - 1,
        "rank_moves": len(M.history_["rank_moves"]), "final_fit": M.history_["method"],
        "init_used": M.history_.get("init"), "starts": M.history_.get("starts"),
        "seconds": {**{k: round(v, 2) for k, v in M.history_["seconds"].items()},
                    "pipeline_total": round(total, 2), "lr": round(t_lr, 2),
                    "lrd": round(t_lrd, 2)},
    }
    if noise is not None:
        out["noise_rel_norm"] = noise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks fit", description=__doc__)
    p.add_argument("--n", default="2000,5000", help="comma-separated sizes (rows)")
    p.add_argument("--kinds", default="radial,dgt,mlr", help="radial, dgt, mlr")
    p.add_argument("--rank", type=int, default=28)
    p.add_argument("--max-iter", type=int, default=100, help="epochs of the final fit")
    p.add_argument("--tol", type=float, default=1e-3, help="stopping rule of the final fit")
    p.add_argument("--init", default=None,
                   help="starting allocation of the learned hierarchy, comma-separated for "
                        "several (default: the fit_mlr default)")
    p.add_argument("--split-vectors", default=None,
                   help="embedding dimension of the partition's splits, comma-separated for "
                        "several (default: the fit_mlr default)")
    p.add_argument("--epoch-n", type=int, default=2000)
    p.add_argument("--epoch-levels", type=int, default=12)
    p.add_argument("--epoch-rank", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-quality", action="store_true", help="only the epoch timing")
    args = p.parse_args(argv)
    ratio = _epoch_ratio(args.epoch_n, args.epoch_levels, args.epoch_rank, args.repeats)
    print(json.dumps({"bench": "bcd_epoch", **ratio}), flush=True)
    print(f"BCD epoch n={ratio['n']} L={ratio['levels']} r={ratio['rank']}: "
          f"{ratio['epoch_s']:.3f} s = {ratio['epoch_over_product']:.1f} x one dense "
          f"A @ (n x r) product", flush=True)
    if args.skip_quality:
        return 0
    inits = [None] if args.init is None else [x.strip() for x in args.init.split(",")]
    vecs = ([None] if args.split_vectors is None
            else [int(x) for x in args.split_vectors.split(",")])
    for kind in args.kinds.split(","):
        for n in (int(x) for x in args.n.split(",")):
            for init in inits:
                for k in vecs:
                    _report(_quality(kind.strip(), n, args.rank, args.max_iter, args.tol, init,
                                     k), kind, args.rank)
    return 0


def _report(res: dict[str, object], kind: str, rank: int) -> None:
    print(json.dumps({"bench": "fit_quality", **res}), flush=True)
    print(f"{kind} {res['shape']} r={rank} init={res['init']} split_vectors="
          f"{res['split_vectors']}: MLR {res['mlr_rel_error']:.4f}  "
          f"LR {res['lr_rel_error']:.4f}  LR+D {res['lrd_rel_error']:.4f}  "
          f"(MLR/LR {res['mlr_over_lr']:.3f}); stages {res['seconds']}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
