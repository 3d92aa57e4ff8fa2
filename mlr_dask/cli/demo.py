"""``mlr-dask demo``: the product end to end on a cluster, small enough for a laptop.

1. MLR matrix: write an MLR-plus-noise matrix to zarr; on the cluster, one chunked pass over
   the store measures its distance to the true MLR part (equal to the in-memory figure); then
   fit an MLR matrix to the store on the cluster (given hierarchy and ranks) and reach the
   noise level.
2. Factor model: write a synthetic multilevel factor-model data set to zarr and fit it by EM on
   the cluster (one pass over the data per iteration); report the train log-likelihood trace
   and the held-out log-likelihood next to the true model's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mlr_dask.errors import InputError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser(
        "demo", parents=[common],
        help="a small end-to-end run on the cluster (embedded LocalCluster by default)",
    )
    d.add_argument("--n", type=int, default=2048, help="MLR matrix size (default 2048)")
    d.add_argument("--rank", type=int, default=24, help="MLR total rank (default 24)")
    d.add_argument("--fm-features", type=int, default=5000,
                   help="factor-model features (default 5000; 0 skips the stage)")
    d.add_argument("--epochs", type=int, default=3, help="MLR fitting epochs (default 3)")
    d.add_argument("--iters", type=int, default=10, help="EM iterations (default 10)")
    d.add_argument("--workers", type=int, default=2, help="workers of the embedded cluster")
    d.add_argument("--keep", default=None, metavar="DIR",
                   help="write the data under DIR and keep it (a shared path on a cluster)")
    d.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from mlr_dask.cluster import connect, worker_count

    if args.n < 64:
        raise InputError("--n must be at least 64")
    if args.fm_features and args.fm_features < 160:
        raise InputError("--fm-features must be 0 or at least 160")
    if args.epochs < 1 or args.iters < 1:
        raise InputError("--epochs and --iters must be at least 1")
    if args.keep is not None and not Path(args.keep).is_dir():
        raise InputError(f"--keep directory {args.keep!r} does not exist")

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    out: dict[str, Any] = {}
    with connect(args.scheduler, n_workers=args.workers, quiet=args.quiet) as client:
        out["workers"] = worker_count(client)
        with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
            where = Path(args.keep) if args.keep is not None else Path(tmp)
            out["mlr"] = _mlr_stage(args, where, client, say)
            if args.fm_features:
                out["fm"] = _fm_stage(args, where, say)
    out["store_dir"] = args.keep
    return out


def _mlr_stage(args: argparse.Namespace, where: Path, client: Any, say: Any) -> dict[str, Any]:
    from mlr_dask.cluster import stage
    from mlr_dask.datasets.mlr import mlr_plus_noise, write_matrix_store
    from mlr_dask.fit import DaskSettings, fit_mlr
    from mlr_dask.graphs import open_matrix, residual_norms
    from mlr_dask.mlr import MLRMatrix

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    truth, A = mlr_plus_noise(args.n, rank=args.rank, noise=0.1, rng=0)
    rel_in_memory = float(np.linalg.norm(A - truth.to_dense()) / np.linalg.norm(A))
    path = where / "demo_mlr.zarr"
    write_matrix_store(path, A[np.ix_(truth.rows.perm, truth.cols.perm)], kind="mlr+noise",
                       rows=truth.rows, cols=truth.cols, truth=truth, chunk=1024,
                       overwrite=True)
    del A
    seconds["generate"] = time.perf_counter() - t0
    say(f"wrote {path.name}: a {args.n} x {args.n} MLR + noise matrix, ranks "
        f"{list(truth.ranks)}")

    t0 = time.perf_counter()
    A_hier, _, _, g = open_matrix(path)
    with stage("residual-pass"):
        res, tot = residual_norms(A_hier, MLRMatrix.read_zarr(g["truth"])).compute()
    seconds["residual_pass"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    with stage("fit-mlr"):
        fitted = fit_mlr(str(path), partition="given", ranks=list(truth.ranks),
                         allocate_ranks=False, backend="dask", client=client,
                         max_iter=args.epochs, dask=DaskSettings(chunk_items=1024))
    seconds["fit"] = time.perf_counter() - t0
    history = getattr(fitted, "history_", {})
    errors = list(history.get("rel_error", [])) if isinstance(history, dict) else []
    say(f"fitted on the cluster: relative error {errors[-1] if errors else float('nan'):.4f} "
        f"(noise level {rel_in_memory:.4f})")
    return {
        "n": args.n,
        "ranks": list(truth.ranks),
        "storage_ratio_dense_to_mlr": args.n * args.n / truth.storage,
        "rel_error_of_true_mlr_on_cluster": float(np.sqrt(res / tot)),
        "rel_error_of_true_mlr_in_memory": rel_in_memory,
        "fit_rel_error_per_epoch": errors,
        "seconds": seconds,
    }


def _fm_stage(args: argparse.Namespace, where: Path, say: Any) -> dict[str, Any]:
    from sklearn.exceptions import ConvergenceWarning

    from mlr_dask.cluster import stage
    from mlr_dask.fm import MultilevelFactorModel
    from mlr_dask.fm.data import generate_fm, write_fm

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    problem = generate_fm(args.fm_features, 280, seed=1001)
    path = where / "demo_fm.zarr"
    write_fm(path, problem, overwrite=True)
    seconds["generate"] = time.perf_counter() - t0
    say(f"wrote {path.name}: {problem.Y.shape[0]} samples x {problem.Y.shape[1]} features, "
        f"ranks {list(problem.ranks)}")
    t0 = time.perf_counter()
    with stage("fit-fm"):
        model = MultilevelFactorModel(None, problem.ranks, max_iter=args.iters, tol=0.0)
        with warnings.catch_warnings():  # a fixed number of iterations, on purpose
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(str(path))
    seconds["fit"] = time.perf_counter() - t0
    test = float(model.score(str(path), array="Y_test"))
    truth = MultilevelFactorModel.from_parameters(
        problem.hierarchy, problem.ranks, problem.F, problem.D
    )
    true_test = float(truth.score(problem.Y_test))
    say(f"EM on the cluster: train log-likelihood {model.loglike_[0]:.1f} -> "
        f"{model.loglike_[-1]:.1f}; held-out {test:.1f} (true model {true_test:.1f})")
    return {
        "n_features": int(problem.Y.shape[1]),
        "n_samples": int(problem.Y.shape[0]),
        "ranks": list(problem.ranks),
        "loglike": [float(x) for x in model.loglike_],
        "test_loglike": test,
        "true_model_test_loglike": true_test,
        "seconds_per_iter": float(np.mean(model.iter_seconds_)),
        "seconds": seconds,
    }
