"""``mlr-dask fit-fm``, ``mlr-dask score`` and ``mlr-dask generate fm``: multilevel factor
models on data stored in zarr.

"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.paths import store_exists


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None


def _shrinkage(text: str) -> Any:
    """``auto`` or a number in [0, 1)."""
    if text.strip() == "auto":
        return "auto"
    try:
        a = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None
    if not 0.0 <= a < 1.0:
        raise argparse.ArgumentTypeError(f"--shrinkage must lie in [0, 1), got {a}")
    return a


def _ranks(text: str) -> Any:
    """``auto``, or one entry per factor level separated by commas, each an int or the ranks of
    the level's groups separated by ``/`` (e.g. ``3,2`` or ``3,2/1/2``)."""
    if text.strip() == "auto":
        return "auto"
    try:
        out: list[Any] = []
        for x in text.split(","):
            if not x.strip():
                continue
            parts = [int(v) for v in x.split("/")]
            out.append(parts[0] if len(parts) == 1 else parts)
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or comma-separated ranks (per-group ranks joined by '/'), got "
            f"{text!r}") from None


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    from mlr_dask.fm.model import MAX_ITER, TOL

    p = sub.add_parser("fit-fm", parents=[common],
                       help="fit a multilevel factor model by EM (Dask, out of core)")
    p.add_argument("data", help="zarr data store (fm-data, or an xarray store with --levels)")
    p.add_argument("--ranks", type=_ranks, required=True, help="one rank per factor level, e.g. "
                   "30,20,10,5,4 (each capped at every group's size); per-group ranks of a level "
                   "joined by '/' (3,2/1/2); or 'auto' (greedy, by held-out log-likelihood)")
    p.add_argument("--out", required=True, help="output model store (zarr)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is a model (or checkpoint) store of mlr-dask")
    p.add_argument("--max-iter", type=int, default=MAX_ITER)
    p.add_argument("--tol", type=float, default=TOL,
                   help="stop when the log-likelihood grows by less than tol * |loglike|")
    p.add_argument("--init", choices=("svd", "random"), default="svd")
    p.add_argument("--seed", type=int, default=None, help="seed for --init random")
    p.add_argument("--array", default=None, help="array (or variable) to fit (default Y)")
    p.add_argument("--levels", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="coordinate names along 'feature' holding the level labels (xarray "
                   "store), coarse to fine")
    p.add_argument("--centered", action="store_true", help="data are centred (fit no mean)")
    p.add_argument("--standardize", action="store_true",
                   help="fit on features scaled by their train std (results in original units)")
    p.add_argument("--learn", type=int, default=None, metavar="L",
                   help="learn a hierarchy of L factor levels from the training correlations "
                   "(a data store or an xarray store)")
    p.add_argument("--shrinkage", type=_shrinkage, default=None, metavar="A",
                   help="shrink the correlations by 1 - A (A in [0, 1)) or 'auto' (by "
                   "cross-validation); default: auto with --ranks auto, else 0")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="checkpoint into the output store every K iterations")
    p.add_argument("--resume", action="store_true", help="resume from the output's checkpoint")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="features per Dask chunk (whole leaves; default ~64 MiB per chunk)")
    p.add_argument("--workers", type=int, default=None, help="embedded cluster workers")
    p.add_argument("--memory-limit", default="auto", help="per-worker memory limit (embedded)")
    p.set_defaults(func=run_fit_fm)

    s = sub.add_parser("score", parents=[common],
                       help="average log-likelihood per sample of a factor model on data")
    s.add_argument("model", help="model store written by fit-fm")
    s.add_argument("data", help="zarr data store")
    s.add_argument("--array", default=None, help="array to score (default Y_test if present, "
                   "else Y)")
    s.add_argument("--workers", type=int, default=None, help="embedded cluster workers")
    s.set_defaults(func=run_score)


def register_generate(gen: Any, common: argparse.ArgumentParser) -> None:
    p = gen.add_parser("fm", parents=[common],
                       help="synthetic multilevel factor model data (train, test, truth)")
    p.add_argument("--n", type=int, default=10_000, help="features (default 10000)")
    p.add_argument("--samples", type=int, default=280, help="train samples N (default 280)")
    p.add_argument("--test-samples", type=int, default=None, help="test samples (default N)")
    p.add_argument("--seed", type=int, default=1001)
    p.add_argument("--ranks", type=_ints, default=[30, 20, 10, 5, 4])
    p.add_argument("--points", type=_ints, default=[2, 5, 9, 17, 33],
                   help="linspace points G per level (default 2,5,9,17,33)")
    p.add_argument("--leaves", type=int, default=None, help="leaves of the last level "
                   "(a multiple of 16 keeps the levels nested)")
    p.add_argument("--float32", action="store_true", help="store Y as float32")
    p.add_argument("--out", required=True, help="output zarr store")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is an fm-data store written by mlr-dask")
    p.set_defaults(func=run_generate_fm)


@contextlib.contextmanager
def _scheduler(args: argparse.Namespace, **kw: Any) -> Iterator[None]:
    from mlr_dask.cluster import connect

    with connect(args.scheduler, quiet=args.quiet, **kw):
        yield


def _open_input(args: argparse.Namespace) -> tuple[Any, Any]:
    """(data, hierarchy) for the model: a store path, or an xarray DataArray with --levels."""
    if not store_exists(args.data):
        raise InputError(f"no such data store: {args.data!r}")
    from mlr_dask.io import store_kind

    if not args.levels and (args.learn is None or store_kind(args.data) == "fm-data"):
        return args.data, None
    return _xarray_variable(args.data, args.array), args.levels


def _xarray_variable(path: str, name: str | None) -> Any:
    """Variable ``name`` (default: the only or first data variable) of an xarray zarr store,
    read lazily through the checked store."""
    from mlr_dask.io import open_dataset

    ds = open_dataset(path)
    name = name or next(iter(ds.data_vars), None)
    if name not in ds.data_vars:
        raise InputError(f"{path!r} has no variable {name!r} (variables: {list(ds.data_vars)})")
    return ds[name]


def run_fit_fm(args: argparse.Namespace) -> dict[str, Any]:
    from mlr_dask.events import ProgressBars
    from mlr_dask.fm import MultilevelFactorModel

    if args.max_iter < 0:
        raise InputError("--max-iter must be >= 0")
    if args.checkpoint_every < 0:
        raise InputError("--checkpoint-every must be >= 0")
    if args.resume and not args.checkpoint_every:
        raise InputError("--resume needs --checkpoint-every")
    from mlr_dask.io import check_output, store_kind

    out = Path(check_output(args.out, "fm-model", overwrite=args.overwrite, inputs=[args.data],
                            what="--out"))
    if store_kind(out) == "fm-checkpoints" and not (args.resume or args.overwrite):
        raise InputError(f"--out {str(out)!r} holds the checkpoints of an unfinished fit; use "
                         "--resume to continue it or --overwrite to start again")
    if args.learn is not None and args.levels:
        raise InputError("--learn and --levels exclude each other")
    if args.learn is not None and args.learn < 1:
        raise InputError("--learn needs at least 1 level")
    data, hier = _open_input(args)
    learn = args.learn is not None
    if learn:
        hier = "learn"
    model = MultilevelFactorModel(hier, args.ranks, levels=args.learn, max_iter=args.max_iter,
                                  tol=args.tol, init=args.init, random_state=args.seed,
                                  assume_centered=args.centered, standardize=args.standardize,
                                  chunk_size=args.chunk_size, shrinkage=args.shrinkage)
    array = args.array if isinstance(data, str) else None
    if not learn and args.ranks != "auto":
        model.prepare(data, array=array)  # all checks, no work
    else:
        model._check_params()
    log_path = out.with_name(out.name + ".iterations.jsonl")
    bars = ProgressBars(file=sys.stderr, disable=args.quiet)  # driven by the EM's events
    log = {"file": None}

    def on_iter(info: dict) -> None:
        if log["file"] is None:
            log["file"] = open(log_path, "a" if args.resume else "w")  # noqa: SIM115
        log["file"].write(json.dumps({**info, "time": time.time()}) + "\n")
        log["file"].flush()

    ckpt = out if args.checkpoint_every else None
    t0 = time.perf_counter()
    try:
        with _scheduler(args, n_workers=args.workers, memory_limit=args.memory_limit), bars, \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(data, array=array, checkpoint=ckpt, checkpoint_every=args.checkpoint_every,
                      resume=args.resume, callback=on_iter)
    finally:
        if log["file"] is not None:
            log["file"].close()
    for w in caught:
        if issubclass(w.category, UserWarning):  # ConvergenceWarning and data warnings
            print(f"warning: {w.message}", file=sys.stderr)
    total = time.perf_counter() - t0
    model.save(out, overwrite=args.overwrite)
    secs = model.iter_seconds_
    return {
        "out": str(out),
        "loglike": model.loglike_,
        "loglike_init": model.loglike_init_,
        "n_iter": model.n_iter_,
        "converged": model.converged_,
        "seconds_per_iter": float(np.mean(secs)) if secs else None,
        "seconds_start": model.start_seconds_,
        "seconds_total": total,
        "n_features": model.n_features_in_,
        "n_samples": model.n_samples_,
        "ranks": list(model.ranks_),
        "group_ranks": [g.tolist() for g in model.group_ranks_],
        "rank_caps": model.rank_caps_,
        "shrinkage": model.shrinkage_,
        "n_groups": list(model.hierarchy_.n_blocks),
        "passes": model.n_passes_,
        "log": str(log_path),
    }


def run_score(args: argparse.Namespace) -> dict[str, Any]:
    from mlr_dask.fm import MultilevelFactorModel
    from mlr_dask.fm.inputs import open_data

    model = MultilevelFactorModel.load(args.model)
    if not store_exists(args.data):
        raise InputError(f"no such data store: {args.data!r}")
    from mlr_dask.io import store_kind

    if store_kind(args.data) is None:  # an xarray store (what fit-fm --levels accepts)
        da = _xarray_variable(args.data, args.array)
        with _scheduler(args, n_workers=args.workers):
            ll = np.asarray(model.score_samples(da))
        return {"score": float(ll.mean()), "n_samples": int(ll.size), "array": da.name,
                "model": args.model, "data": args.data}
    array = args.array
    if array is None:
        _, _, g = open_data(args.data)
        array = "Y_test" if "Y_test" in g.array_keys() else "Y"
    open_data(args.data, array)  # checks before starting a cluster
    with _scheduler(args, n_workers=args.workers):
        ll = model.score_samples(args.data, array=array)
    return {"score": float(ll.mean()), "n_samples": int(ll.size), "array": array,
            "model": args.model, "data": args.data}


def run_generate_fm(args: argparse.Namespace) -> dict[str, Any]:
    from mlr_dask.fm import MultilevelFactorModel
    from mlr_dask.fm.data import generate_fm, write_fm
    from mlr_dask.io import check_output

    n_test = args.test_samples or args.samples
    out = check_output(args.out, "fm-data", overwrite=args.overwrite, what="--out",
                       nbytes=(4 if args.float32 else 8) * args.n * (args.samples + n_test))
    from mlr_dask.bounds import check_disk, check_memory

    cells = (args.samples + (args.test_samples or args.samples)) * args.n
    check_memory(3 * 8 * cells, f"generate fm --n {args.n} --samples {args.samples}")
    check_disk(out, (4 if args.float32 else 8) * cells, "generate fm")
    if args.n < 2 or args.samples < 2:
        raise InputError("--n and --samples must be at least 2")
    if len(args.ranks) != len(args.points):
        raise InputError(f"{len(args.ranks)} ranks for {len(args.points)} levels (--points)")
    t0 = time.perf_counter()
    prob = generate_fm(args.n, args.samples, args.seed, ranks=args.ranks, points=args.points,
                       leaves=args.leaves, n_test=args.test_samples)
    truth = MultilevelFactorModel.from_parameters(prob.hierarchy, prob.ranks, prob.F, prob.D)
    attrs = {"seed": args.seed, "points": args.points, "leaves": args.leaves,
             "true_loglike_train": truth.score(prob.Y),
             "true_loglike_test": truth.score(prob.Y_test)}
    write_fm(out, prob, dtype=np.float32 if args.float32 else np.float64, attrs=attrs,
             overwrite=args.overwrite)
    return {"out": str(out), "n_features": args.n, "n_samples": args.samples,
            "n_test": int(prob.Y_test.shape[0]), "ranks": list(prob.ranks),
            "n_groups": list(prob.hierarchy.n_blocks),
            "true_loglike_train": attrs["true_loglike_train"],
            "true_loglike_test": attrs["true_loglike_test"],
            "seconds": time.perf_counter() - t0}
