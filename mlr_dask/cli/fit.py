"""``mlr-dask fit-mlr`` and ``mlr-dask generate dgt|radial|fiedler|distance|hiercov``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fit.api import DEFAULT_INIT, DEFAULT_MAX_RANK_MOVES, INITS

GEN_HELP = {
    "dgt": "discrete Gauss transform exp(-k^2 ||t_i - s_j||^2), points in [0,1]^3",
    "radial": "radial kernel with three scales on two point sets of the sphere",
    "fiedler": "Fiedler-type matrix |a_i - a_j|",
    "distance": "shortest-path distances on a random geometric graph",
    "hiercov": "sample covariance of a hierarchical factor model (PSD)",
}


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "fit-mlr", parents=[common], help="fit an MLR matrix to a dense matrix store",
        description="Fit a multilevel low rank matrix (learned or stored hierarchy, rank "
                    "allocation, BCD/ALS) to a dense matrix store (zarr, format 'matrix').")
    p.add_argument("matrix", help="dense matrix store (zarr) written by 'mlr-dask generate'")
    p.add_argument("--array", default=None, metavar="NAME",
                   help="the 2-D array (or xarray variable) of a zarr store that mlr-dask did "
                        "not write (default: its only 2-D array)")
    p.add_argument("--rank", type=_positive_int, required=True, help="total rank r")
    p.add_argument("--levels", type=_positive_int, default=None,
                   help="number of levels (default: bisection to 1-2 items, then atoms)")
    p.add_argument("--partition", choices=["spectral", "given", "dyadic"], default="spectral",
                   help="learn the hierarchy, use the store's, or bisect in stored order")
    p.add_argument("--init", choices=list(INITS), default=DEFAULT_INIT,
                   help="starting rank allocation of a learned hierarchy (best: the better "
                        "fit of bottom and uniform; bottom: partition A o A with rank only on "
                        "the atoms, then grow the ranks greedily)")
    p.add_argument("--split-vectors", type=_positive_int, default=4,
                   help="dimension of the spectral embedding in which each split of a learned "
                        "hierarchy searches its cut (1: the leading vector alone)")
    p.add_argument("--no-rank-alloc", action="store_true", help="keep the starting ranks")
    p.add_argument("--max-rank-moves", type=_positive_int, default=DEFAULT_MAX_RANK_MOVES,
                   help="bound on the steps of rank allocation (growth and exchange together)")
    p.add_argument("--grow-trials", type=_positive_int, default=1,
                   help="levels tried per rank-growth step of init bottom (each with one BCD "
                        "epoch, in parallel threads; 3 fits kernels a little better, slower)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads of the in-memory fit (BLAS and rank-allocation trials; "
                        "default: the cores available)")
    p.add_argument("--method", choices=["auto", "bcd", "als"], default="auto",
                   help="final fit: ALS when affordable and not --psd (auto), BCD, or ALS")
    p.add_argument("--psd", action="store_true", help="symmetric PSD model B B^T")
    p.add_argument("--symmetric", action="store_true", help="same hierarchy for rows and cols")
    p.add_argument("--max-iter", type=_positive_int, default=100, help="epochs of the final fit")
    p.add_argument("--tol", type=float, default=1e-3, help="relative loss decrease to stop")
    p.add_argument("--backend", choices=["auto", "numpy", "dask"], default="auto")
    p.add_argument("--chunk-items", type=_positive_int, default=None,
                   help="rows/cols per chunk on the Dask path (default 4096)")
    p.add_argument("--block-items", type=_positive_int, default=None,
                   help="learned Dask path: largest block side a task learns in memory "
                        "(default: from the workers' memory limit, at most 4096)")
    p.add_argument("--sample-items", type=_positive_int, default=1024,
                   help="learned Dask path: sampled rows/cols on which --init best picks")
    p.add_argument("--grow-per-step", type=_positive_int, default=1,
                   help="learned Dask path: ranks added per growth epoch of the final fit")
    p.add_argument("--exchange-steps", type=int, default=8,
                   help="learned Dask path: bound on the rank exchanges of the final fit")
    p.add_argument("--reorder", choices=["auto", "always", "never"], default="auto",
                   help="learned Dask path: rewrite the store in hierarchy order before the "
                        "final fit (auto: when its chunks would be scattered over the store)")
    p.add_argument("--scratch", metavar="DIR", default=None,
                   help="learned Dask path: directory of that rewrite, one every worker sees "
                        "(default: next to the input store; needs about twice its size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="MODEL", default=None, help="write the model (zarr)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is an MLR model store written by mlr-dask")
    p.add_argument("--plots", metavar="DIR", default=None, help="write PNG plots into DIR")
    p.set_defaults(func=run_fit)


def _check_output(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.parent.exists():
        raise InputError(f"{what} directory {str(p.parent)!r} does not exist")
    return p


def _plots(dirpath: Path, M: Any) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirpath.mkdir(exist_ok=True)
    h = M.history_
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    moves = [mv["rel_error"] for mv in h.get("rank_moves", [])]
    part = h.get("partition", [])
    series = list(part) + moves + list(h["rel_error"])
    ax.semilogy(series, marker=".")
    if moves:
        ax.axvspan(len(part) - 0.5, len(part) + len(moves) - 0.5, alpha=0.15,
                   label="rank moves")
        ax.legend()
    ax.set_xlabel("partition / rank move / epoch")
    ax.set_ylabel("relative error")
    ax.set_title("MLR fit: error history")
    fig.tight_layout()
    fig.savefig(dirpath / "error_history.png", dpi=100)
    plt.close(fig)
    out.append(str(dirpath / "error_history.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(np.arange(len(M.ranks)), M.ranks)
    ax.set_xlabel("level (0 = root)")
    ax.set_ylabel("rank")
    ax.set_title(f"rank allocation (total {M.rank})")
    fig.tight_layout()
    fig.savefig(dirpath / "rank_allocation.png", dpi=100)
    plt.close(fig)
    out.append(str(dirpath / "rank_allocation.png"))
    return out


def run_fit(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib
    import time

    from mlr_dask.fit.api import fit_mlr, load_matrix_store

    store = load_matrix_store(args.matrix, args.array)  # format checks, before any work
    m, n = store.shape
    if args.rank > min(m, n):
        raise InputError(f"--rank {args.rank} is larger than min(m, n) = {min(m, n)}")
    if (args.symmetric or args.psd) and m != n:
        raise InputError(f"--symmetric/--psd need a square matrix, got {m} x {n}")
    if args.partition == "given" and store.rows is None:
        raise InputError("--partition given needs a store with stored hierarchies")
    from mlr_dask.bounds import check_chunk_items

    check_chunk_items(args.chunk_items)
    if not np.isfinite(args.tol) or args.tol < 0:
        raise InputError("--tol must be a finite non-negative number")
    from mlr_dask.fit.settings import Allocation, DaskSettings, Partitioning

    partitioning = Partitioning(split_vectors=args.split_vectors)
    allocation = Allocation(max_rank_moves=args.max_rank_moves, grow_trials=args.grow_trials)
    dask_settings = DaskSettings(chunk_items=args.chunk_items, block_items=args.block_items,
                                 sample_items=args.sample_items,
                                 grow_per_step=args.grow_per_step,
                                 exchange_steps=args.exchange_steps,
                                 reorder=args.reorder, scratch=args.scratch)
    for group in (partitioning, allocation, dask_settings):
        group.check()  # before any output or work
    out = None
    if args.out is not None:
        from mlr_dask.io import check_output

        out = check_output(args.out, "mlr-matrix", overwrite=args.overwrite,
                           inputs=[args.matrix], what="--out")
    plots = _check_output(args.plots, "--plots")
    from mlr_dask.events import ProgressBars

    bars = ProgressBars(file=sys.stderr, disable=args.quiet)  # driven by the fit's events
    # Dask's in-process schedulers mean no cluster: the in-memory pipeline runs
    from mlr_dask.cluster import LOCAL_SCHEDULERS

    in_process = args.scheduler in LOCAL_SCHEDULERS
    use_dask = args.backend == "dask" or (args.backend == "auto" and args.scheduler is not None
                                          and not in_process)
    ctx: Any = contextlib.nullcontext(None)
    if use_dask:
        from mlr_dask.cluster import connect

        ctx = connect(args.scheduler, quiet=args.quiet)
    t0 = time.perf_counter()
    with ctx as client:
        with bars:
            M = fit_mlr(store, args.rank, levels=args.levels, partition=args.partition,
                        init=args.init, allocate_ranks=not args.no_rank_alloc,
                        method=args.method, symmetric=args.symmetric, psd=args.psd,
                        max_iter=args.max_iter, tol=args.tol, seed=args.seed,
                        threads=args.threads, backend="dask" if use_dask else args.backend,
                        client=client, partitioning=partitioning, allocation=allocation,
                        dask=dask_settings)
        h = M.history_
        # both paths compare the MLR fit with low rank and low rank + diagonal
        lr_err = h.get("lowrank_rel_error")
        lrd_err = h.get("lowrank_diag_rel_error")
    seconds = dict(h.get("seconds", {}))
    seconds["total"] = time.perf_counter() - t0
    rel = float(h["rel_error"][-1])
    result: dict[str, Any] = {
        "matrix": str(args.matrix),
        "shape": [m, n],
        "rel_error": rel,
        "lowrank_rel_error": lr_err,
        "lowrank_diag_rel_error": lrd_err,
        "returned": h.get("returned", "mlr"),
        "storage": int(M.storage),
        "rank": int(M.rank),
        "ranks": list(M.ranks),
        "blocks": list(M.rows.n_blocks),
        "epochs": len(h["rel_error"]) - 1,
        "rank_moves": len(h.get("rank_moves", [])),
        "init": h.get("init"),
        "starts": h.get("starts"),
        "seconds": seconds,
    }
    if "passes_over_A" in h:
        result["passes_over_A"] = h["passes_over_A"]
        if "passes" in h:
            result["passes"] = h["passes"]
    if out is not None:
        from mlr_dask.io import atomic_group

        with atomic_group(out, "mlr-matrix", 1, overwrite=args.overwrite,
                          inputs=[args.matrix]) as g:
            M.write_zarr(g)
            g.attrs["fit"] = json.loads(json.dumps({
                "rel_error": h["rel_error"], "rank_moves": h.get("rank_moves", []),
                "seconds": seconds, "source": str(args.matrix)}, default=float))
        result["out"] = str(out)
    if plots is not None:
        result["plots"] = _plots(plots, M)
    return result


def register_generate(gen_subparsers: Any, common: argparse.ArgumentParser) -> None:
    for kind, text in GEN_HELP.items():
        p = gen_subparsers.add_parser(kind, parents=[common], help=text, description=text)
        p.add_argument("--n", type=_positive_int, required=True,
                       help="columns (and rows unless --m)")
        if kind in ("dgt", "radial"):
            p.add_argument("--m", type=_positive_int, default=None, help="rows (default n)")
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--out", required=True, help="output store (zarr)")
        p.add_argument("--chunk", type=_positive_int, default=2048, help="zarr chunk side")
        p.add_argument("--overwrite", action="store_true",
                       help="replace --out when it is a matrix store written by mlr-dask")
        p.set_defaults(func=run_generate, gen_kind=kind)


def run_generate(args: argparse.Namespace) -> dict[str, Any]:
    from mlr_dask.datasets.matrices import GENERATORS, _check
    from mlr_dask.datasets.mlr import write_matrix_store

    kind = args.gen_kind
    n = args.n
    m = getattr(args, "m", None) or n
    _check(m, n)
    from mlr_dask.io import check_output

    out = check_output(args.out, "matrix", overwrite=args.overwrite, what="--out",
                       nbytes=8 * m * n)
    from mlr_dask.bounds import check_disk, check_memory

    check_memory(3 * 8 * m * n, f"generate {kind} ({m} x {n})")
    check_disk(out, 8 * m * n, f"generate {kind}")
    if kind in ("dgt", "radial"):
        A = GENERATORS[kind](m, n, seed=args.seed)
        params = {"m": m, "n": n, "seed": args.seed}
    else:
        A = GENERATORS[kind](n, seed=args.seed)
        params = {"n": n, "seed": args.seed}
    write_matrix_store(out, A, kind=kind, attrs=params, chunk=args.chunk,
                       overwrite=args.overwrite)
    return {"out": str(out), "kind": kind, "shape": list(A.shape),
            "fro_norm": float(np.linalg.norm(A))}
