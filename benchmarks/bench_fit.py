"""Benchmark of MLR fitting: quality at equal storage and time per stage.

For each case (radial kernel, DGT or MLR plus noise; size; threads): relative error and storage
of the learned MLR fit (``fit_mlr`` defaults) next to low rank (truncated SVD) and low rank plus
diagonal at the same storage, with seconds per stage. Also the cost of
one BCD epoch (n = 2000, L = 12, r = 30 by default) relative to one dense product ``A @ X``
with ``X`` of shape (n, r), measured in the same run.

The pipeline time is also given in units of one dense SVD of the same matrix (``numpy.linalg.
svd``, thin, with the same thread count), measured in the same run, per stage; and in CPU
seconds of the process against the SVD's CPU seconds (steadier on a busy machine).

``--small 128`` instead times the whole ``fit_mlr`` (defaults) on small matrices (radial kernel
and MLR plus noise, rank 10): the median of several runs, with the error next to LR and LR+D.

Usage: ``python -m benchmarks fit [--cases mlr:2000:1,radial:5000:2] [--rank R]
[--init bottom,uniform,best] [--grow-trials K] [--small N]``
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
             init: str | None = None, split_vectors: int | None = None,
             threads: int = 1, grow_trials: int | None = None) -> dict[str, object]:
    from threadpoolctl import threadpool_limits

    from mlr_dask.fit import Allocation, Partitioning, fit_mlr

    A, noise = _matrix(kind, n, rank)
    m, nn = A.shape
    nrm = float(np.linalg.norm(A))
    fit_mlr(A[:64, :64], 4, threads=1)  # compile the numba kernels outside the timing
    kw: dict[str, object] = {} if init is None else {"init": init}
    if split_vectors is not None:
        kw["partitioning"] = Partitioning(split_vectors=split_vectors)
    if grow_trials is not None:
        kw["allocation"] = Allocation(grow_trials=grow_trials)
    t0, c0 = time.perf_counter(), time.process_time()
    M = fit_mlr(A, rank, max_iter=max_iter, tol=tol, threads=threads, **kw)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    err = float(np.linalg.norm(A - M.to_dense()) / nrm)
    with threadpool_limits(limits=threads):  # the unit: one dense SVD of the same matrix
        t0, c0 = time.perf_counter(), time.process_time()
        s = np.linalg.svd(A, full_matrices=False)[1]
        t_svd, c_svd = time.perf_counter() - t0, time.process_time() - c0
    lr = float(np.sqrt(max(nrm**2 - float(np.sum(s[:rank] ** 2)), 0.0)) / nrm)
    h = M.history_
    secs = {k: round(v, 2) for k, v in h["seconds"].items()}
    units = {k: round(v / t_svd, 2) for k, v in h["seconds"].items() if k != "load"}
    out: dict[str, object] = {
        "kind": kind, "shape": [m, nn], "rank": rank, "threads": threads,
        "init": init or "default", "split_vectors": split_vectors or "default",
        "grow_trials": grow_trials or "default",
        "storage": M.storage,
        "mlr_rel_error": err, "lr_rel_error": lr,
        "lrd_rel_error": h.get("lowrank_diag_rel_error"),
        "returned": h.get("returned"),
        "mlr_over_lr": err / lr, "ranks": list(M.ranks), "epochs": len(h["rel_error"]) - 1,
        "rank_moves": len(h["rank_moves"]), "final_fit": h["method"],
        "init_used": h.get("init"), "starts": h.get("starts"),
        "dense_svd_s": round(t_svd, 2), "pipeline_s": round(total, 2),
        "pipeline_in_svds": round(total / t_svd, 2),
        "pipeline_cpu_s": round(cpu, 2), "dense_svd_cpu_s": round(c_svd, 2),
        "pipeline_in_svds_cpu": round(cpu / c_svd, 2),
        "seconds": secs, "stage_in_svds": units,
    }
    if noise is not None:
        out["noise_rel_norm"] = noise
    return out


def _small(n: int, repeats: int) -> None:
    """Whole ``fit_mlr`` (defaults, one thread) at n x n, rank 10: median seconds of
    ``repeats`` runs after one warm-up, per stage, with the errors."""
    from mlr_dask.datasets.matrices import radial_kernel
    from mlr_dask.datasets.mlr import mlr_plus_noise
    from mlr_dask.fit import fit_mlr

    mats = {"radial": radial_kernel(n, seed=0),
            "mlr": mlr_plus_noise(n, n, rank=10, noise=0.1, rng=0)[1]}
    for kind, A in mats.items():
        fit_mlr(A, 10, threads=1)  # warm-up (numba compilation, caches)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            c0 = time.process_time()
            M = fit_mlr(A, 10, threads=1)
            runs.append((time.perf_counter() - t0, time.process_time() - c0, M))
        runs.sort(key=lambda x: x[0])
        wall, cpu, M = runs[len(runs) // 2]
        h = M.history_
        res = {"bench": "fit_small", "kind": kind, "n": n, "rank": 10, "wall_s": round(wall, 3),
               "cpu_s": round(cpu, 3), "all_wall_s": [round(x[0], 3) for x in runs],
               "rel_error": h["rel_error"][-1], "lr_rel_error": h.get("lowrank_rel_error"),
               "lrd_rel_error": h.get("lowrank_diag_rel_error"), "init": h.get("init"),
               "starts": h.get("starts"),
               "seconds": {k: round(v, 3) for k, v in h["seconds"].items()}}
        print(json.dumps(res), flush=True)
        print(f"{kind} n={n} r=10: fit_mlr {wall:.3f} s wall ({cpu:.3f} s CPU; median of "
              f"{repeats}), error {res['rel_error']:.4f} (LR {res['lr_rel_error']:.4f}, LR+D "
              f"{res['lrd_rel_error']:.4f}), start {res['init']}", flush=True)


def _check_pick(kind: str, n: int, rank: int) -> None:
    from mlr_dask.fit import fit_mlr
    from mlr_dask.fit.options import Options
    from mlr_dask.fit.pipeline import BEST_INITS, pick_start

    A, _ = _matrix(kind, n, rank)
    fit_mlr(A[:64, :64], 4, threads=1)
    c0 = time.process_time()
    picked, sub, t_pick = pick_start(A, rank, Options(threads=1), None)
    c_pick = time.process_time() - c0
    full, secs, cpu = {}, {}, {}
    for init in (*BEST_INITS, "best"):
        t0, c0 = time.perf_counter(), time.process_time()
        M = fit_mlr(A, rank, init=init, threads=1, baselines=False)
        secs[init] = round(time.perf_counter() - t0, 2)
        cpu[init] = round(time.process_time() - c0, 2)
        full[init] = float(M.history_["rel_error"][-1])
    best = min(BEST_INITS, key=lambda k: full[k])
    over = cpu["best"] / cpu[picked] - 1.0 if picked else None
    res = {"bench": "fit_pick", "kind": kind, "shape": list(A.shape), "rank": rank,
           "picked": picked, "submatrix_errors": sub, "full_errors": full, "full_best": best,
           "agree": picked == best, "pick_s": round(t_pick, 2), "pick_cpu_s": round(c_pick, 2),
           "full_s": secs, "full_cpu_s": cpu, "best_over_one_start_cpu": over}
    print(json.dumps(res), flush=True)
    over_s = f"{100 * over:.0f}%" if over is not None else "n/a"
    print(f"{kind} {list(A.shape)} r={rank}: picked {picked} on the submatrix in {t_pick:.1f} s "
          f"({c_pick:.1f} s CPU; {', '.join(f'{k} {v:.4f}' for k, v in sub.items())}); in full "
          f"{', '.join(f'{k} {full[k]:.4f} ({cpu[k]} s CPU)' for k in BEST_INITS)} -> "
          f"{'agree' if picked == best else 'DISAGREE'}; init='best' {cpu['best']} s CPU, "
          f"{over_s} over the picked start alone", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks fit", description=__doc__)
    p.add_argument("--cases", default="mlr:2000:1,radial:5000:2",
                   help="comma-separated KIND:N:THREADS (kinds: radial, dgt, mlr)")
    p.add_argument("--rank", type=int, default=None,
                   help="total rank (default: 30 for mlr, 28 for the kernels)")
    p.add_argument("--max-iter", type=int, default=100, help="epochs of the final fit")
    p.add_argument("--tol", type=float, default=1e-3, help="stopping rule of the final fit")
    p.add_argument("--init", default=None,
                   help="starting allocation of the learned hierarchy, comma-separated for "
                        "several (default: the fit_mlr default)")
    p.add_argument("--split-vectors", default=None,
                   help="embedding dimension of the partition's splits, comma-separated for "
                        "several (default: the fit_mlr default)")
    p.add_argument("--grow-trials", type=int, default=None,
                   help="levels tried per growth step (default: the fit_mlr default)")
    p.add_argument("--small", type=int, default=None, metavar="N",
                   help="instead: time the whole fit_mlr (defaults, one thread) at N x N")
    p.add_argument("--epoch-n", type=int, default=2000)
    p.add_argument("--epoch-levels", type=int, default=12)
    p.add_argument("--epoch-rank", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-epoch", action="store_true", help="no BCD epoch timing")
    p.add_argument("--skip-quality", action="store_true", help="only the epoch timing")
    p.add_argument("--check-pick", default=None, metavar="KIND:N,...",
                   help="instead: compare the start init='best' picks on a submatrix with both "
                        "starts run in full (single-threaded)")
    args = p.parse_args(argv)
    if args.small:
        _small(args.small, max(3, args.repeats))
        return 0
    if args.check_pick:
        for case in args.check_pick.split(","):
            kind, n = case.strip().split(":")[:2]
            rank = args.rank if args.rank is not None else (30 if kind == "mlr" else 28)
            _check_pick(kind, int(n), rank)
        return 0
    if not args.skip_epoch:
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
    for case in args.cases.split(","):
        parts = case.strip().split(":")
        kind, n = parts[0], int(parts[1])
        threads = int(parts[2]) if len(parts) > 2 else 1
        rank = args.rank if args.rank is not None else (30 if kind == "mlr" else 28)
        for init in inits:
            for k in vecs:
                _report(_quality(kind, n, rank, args.max_iter, args.tol, init, k, threads,
                                 args.grow_trials), kind, rank)
    return 0


def _report(res: dict[str, object], kind: str, rank: int) -> None:
    print(json.dumps({"bench": "fit_quality", **res}), flush=True)
    lrd = res["lrd_rel_error"]
    lrd_s = f"{lrd:.4f}" if isinstance(lrd, float) else "n/a"
    stages = ", ".join(f"{k} {v}" for k, v in res["stage_in_svds"].items()  # type: ignore
                       if k != "total")
    print(f"{kind} {res['shape']} r={rank} threads={res['threads']}: MLR {res['mlr_rel_error']:.4f}"
          f"  LR {res['lr_rel_error']:.4f}  LR+D {lrd_s}  (returned {res['returned']}, init "
          f"{res['init_used']}); pipeline {res['pipeline_s']} s = {res['pipeline_in_svds']} "
          f"dense SVDs ({res['dense_svd_s']} s each); per stage in SVDs: {stages}; CPU time "
          f"{res['pipeline_cpu_s']} s = {res['pipeline_in_svds_cpu']} dense SVDs "
          f"({res['dense_svd_cpu_s']} s each)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
