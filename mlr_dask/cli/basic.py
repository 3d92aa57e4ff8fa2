"""``mlr-dask info`` and ``mlr-dask generate mlr``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from mlr_dask.errors import FormatError, InputError
from mlr_dask.io import FORMAT_KEY, VERSION_KEY


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[common], help="describe what is in a zarr store")
    p.add_argument("path", help="a zarr store written by mlr-dask")
    p.set_defaults(func=run_info)

    d = sub.add_parser(
        "demo", parents=[common],
        help="a small end-to-end run on the cluster (embedded LocalCluster by default)",
    )
    d.add_argument("--n", type=int, default=4096, help="matrix size (default 4096)")
    d.add_argument("--rank", type=int, default=24)
    d.add_argument("--workers", type=int, default=2, help="workers of the embedded cluster")
    d.add_argument("--keep", default=None, metavar="DIR", help="keep the data under DIR")
    d.set_defaults(func=run_demo)


def register_generate(gen: Any, common: argparse.ArgumentParser) -> None:
    p = gen.add_parser(
        "mlr",
        parents=[common],
        help="a random MLR matrix plus noise (known hierarchy and ranks) as a dense matrix",
    )
    p.add_argument("--n", type=int, required=True, help="rows (and columns unless --m-cols)")
    p.add_argument("--n-cols", type=int, default=None, help="columns (default: --n)")
    p.add_argument("--rank", type=int, default=24, help="total rank (default 24)")
    p.add_argument("--levels", type=int, default=None, help="levels, the last one atoms")
    p.add_argument("--noise", type=float, default=0.1, help="||E||_F / ||A_true||_F (0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float32", action="store_true", help="store A as float32")
    p.add_argument("--out", required=True, help="output zarr path")
    p.set_defaults(func=run_generate_mlr)


def _describe(group: Any) -> dict[str, Any]:
    keys = set(group.array_keys())
    if "perm" in keys and "bounds_0" in keys:  # a stored Hierarchy: summarize it
        from mlr_dask.hierarchy import Hierarchy

        h = Hierarchy.read_zarr(group)
        return {"hierarchy": {"n": h.n, "n_blocks": list(h.n_blocks),
                              "level_names": h.level_names}}
    arrays = {
        name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks)}
        for name, a in group.arrays()
    }
    groups = {name: _describe(g) for name, g in group.groups()}
    attrs = {k: v for k, v in group.attrs.items() if k not in (FORMAT_KEY, VERSION_KEY)}
    out: dict[str, Any] = {}
    if FORMAT_KEY in group.attrs:
        out["format"] = group.attrs[FORMAT_KEY]
        out["format_version"] = group.attrs.get(VERSION_KEY)
    out.update({"attrs": attrs, "arrays": arrays, "groups": groups})
    return out


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    import zarr

    path = Path(args.path)
    if not path.exists():
        raise FormatError(f"no such store: {str(path)!r}")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise FormatError(f"{str(path)!r} is not a zarr group ({type(exc).__name__})") from None
    desc = _describe(group)
    if "format" not in desc:
        raise FormatError(f"{str(path)!r} is a zarr group but not an mlr-dask store")
    return {"path": str(path), **desc}


def run_generate_mlr(args: argparse.Namespace) -> dict[str, Any]:
    from mlr_dask.datasets.mlr import mlr_plus_noise, write_matrix_store

    if args.n < 2 or (args.n_cols is not None and args.n_cols < 2):
        raise InputError("--n and --n-cols must be at least 2")
    out = Path(args.out)
    if not out.parent.exists():
        raise InputError(f"output directory {str(out.parent)!r} does not exist")
    truth, A = mlr_plus_noise(
        args.n, args.n_cols, rank=args.rank, n_levels=args.levels, noise=args.noise,
        rng=args.seed,
    )
    A_hier = A[np.ix_(truth.rows.perm, truth.cols.perm)]
    if args.float32:
        A_hier = A_hier.astype(np.float32)
    rel = float(np.linalg.norm(A - truth.to_dense()) / np.linalg.norm(A))
    write_matrix_store(
        out, A_hier, kind="mlr+noise", rows=truth.rows, cols=truth.cols, truth=truth,
        attrs={"ranks": list(truth.ranks), "noise": args.noise, "seed": args.seed,
               "noise_rel_norm": rel},
    )
    return {"out": str(out), "shape": list(A.shape), "ranks": list(truth.ranks),
            "n_blocks": list(truth.rows.n_blocks), "noise_rel_norm": rel}


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Generate an MLR-plus-noise matrix into zarr, then measure on the cluster (one pass over
    the stored matrix, chunk by chunk) how far it is from its MLR part (it must equal the
    in-memory figure), and compare the MLR matvec with a dense matvec over the stored chunks."""
    import sys
    import tempfile
    import time

    from mlr_dask.cluster import connect, stage
    from mlr_dask.datasets.mlr import mlr_plus_noise, write_matrix_store
    from mlr_dask.graphs import open_matrix, residual_norms
    from mlr_dask.mlr import MLRMatrix

    if args.n < 64:
        raise InputError("--n must be at least 64")
    if args.keep is not None and not Path(args.keep).is_dir():
        raise InputError(f"--keep directory {args.keep!r} does not exist")

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    seconds: dict[str, float] = {}
    with (
        connect(args.scheduler, n_workers=args.workers, quiet=args.quiet) as client,
        tempfile.TemporaryDirectory(dir=args.keep) as tmp,
    ):
        t0 = time.perf_counter()
        truth, A = mlr_plus_noise(args.n, rank=args.rank, noise=0.1, rng=0)
        rel_in_memory = float(np.linalg.norm(A - truth.to_dense()) / np.linalg.norm(A))
        path = Path(tmp) / "demo.zarr"
        write_matrix_store(path, A[np.ix_(truth.rows.perm, truth.cols.perm)], kind="mlr+noise",
                           rows=truth.rows, cols=truth.cols, truth=truth, chunk=1024)
        seconds["generate"] = time.perf_counter() - t0
        say(f"wrote a {args.n} x {args.n} MLR + noise matrix, ranks {list(truth.ranks)}")
        t0 = time.perf_counter()
        A_hier, _, _, g = open_matrix(path)
        stored_truth = MLRMatrix.read_zarr(g["truth"])
        with stage("residual-pass"):
            res, tot = residual_norms(A_hier, stored_truth).compute()
        seconds["residual_pass"] = time.perf_counter() - t0
        x = np.random.default_rng(1).standard_normal(args.n)
        t0 = time.perf_counter()
        y_dense = np.empty(args.n)
        with stage("dense-matvec"):
            y_dense[truth.rows.perm] = (A_hier @ x[truth.cols.perm]).compute()
        seconds["dense_matvec_dask"] = time.perf_counter() - t0
        truth @ x  # compile the kernels before timing
        t0 = time.perf_counter()
        y_mlr = truth @ x
        seconds["mlr_matvec"] = time.perf_counter() - t0
        n_workers = len(client.scheduler_info()["workers"])
        if args.keep is not None:
            kept = Path(args.keep) / "demo.zarr"
            if kept.exists():
                import shutil

                shutil.rmtree(kept)
            path.rename(kept)
            path = kept
    rel = float(np.sqrt(res / tot))
    return {
        "n": args.n,
        "ranks": list(truth.ranks),
        "workers": n_workers,
        "storage_ratio_dense_to_mlr": args.n * args.n / truth.storage,
        "rel_error_mlr_part": rel,
        "rel_error_in_memory": rel_in_memory,
        "matvec_rel_diff": float(np.linalg.norm(y_dense - y_mlr) / np.linalg.norm(y_dense)),
        "seconds": seconds,
        "store": str(path) if args.keep else None,
    }
