"""``mlr-dask gam``: GAM runs on the motif benchmark (``run``), sweeps (``sweep``), data (``data``).

torch is imported only when a command runs, so ``mlr-dask --help`` works without the ``seq``
extra.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mlr_dask.errors import InputError


def _parser_class(subparsers: argparse._SubParsersAction) -> type:
    try:
        from mlr_dask.cli.main import _Parser

        return _Parser
    except ImportError:  # pragma: no cover - main always defines it
        return type(subparsers._parser_class)  # type: ignore[attr-defined]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``gam`` with its sub-subcommands ``run``, ``sweep`` and ``data``."""
    parser_class = _parser_class(subparsers)
    gam = subparsers.add_parser(
        "gam", parents=[common], help="global autoregressive models (motif benchmark, DPG)",
        description="Global autoregressive models: train r, fit lambda, sample, distil, DPG.",
    )
    sub = gam.add_subparsers(dest="gam_command", metavar="ACTION", parser_class=parser_class)
    sub.required = True

    run = sub.add_parser("run", parents=[common], help="one end-to-end run")
    run.add_argument("--motif", default="10001010001", help="binary motif (default %(default)s)")
    run.add_argument("--features", default="1001111",
                     help="7-character feature code (default %(default)s)")
    run.add_argument("--train-size", type=int, default=1000, help="|D| (default %(default)s)")
    run.add_argument("--hidden", type=int, default=64, help="LSTM hidden units")
    run.add_argument("--seed", type=int, default=1234)
    run.add_argument("--methods", default="distill,dpg,pg",
                     help="comma-separated subset of distill,dpg,pg")
    run.add_argument("--kind", default="motif", choices=["motif", "mam"])
    run.add_argument("--data", default=None, metavar="NPZ",
                     help="splits written by 'gam data' (default: generate them)")
    run.add_argument("--workers", type=int, default=None,
                     help="workers of the embedded cluster (default: one per core)")
    run.add_argument("--out", default=None, metavar="DIR",
                     help="write checkpoints and summary.json here")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any run setting, e.g. --set dpg_steps=500 (repeatable); "
                          "budgets are epochs/steps + early stopping, wall-clock limits "
                          "(r_max_seconds, distill_max_seconds, dpg_max_seconds, "
                          "pg_max_seconds) are off unless set, and reported when they fire")
    run.set_defaults(func=cmd_run, check=_run_config)

    sweep = sub.add_parser(
        "sweep", parents=[common], help="a grid of runs, each configuration a Dask task",
        description="Run motifs x features x |D| x seeds x methods; rows go to "
                    "<out>/results.parquet, the plot to <out>/ce_vs_d.png. In a job file: "
                    "a stage with command = \"gam sweep\" (see pipelines/gam_motif_sweep.toml).")
    sweep.add_argument("--name", default="gam_sweep", help="sweep name (default %(default)s)")
    sweep.add_argument("--motifs", type=_words, default=None, help="comma-separated motifs")
    sweep.add_argument("--features", type=_words, default=None,
                       help="comma-separated 7-character feature codes")
    sweep.add_argument("--train-sizes", type=_words, default=None, help="comma-separated |D|")
    sweep.add_argument("--seeds", type=_words, default=None, help="comma-separated seeds")
    sweep.add_argument("--methods", type=_words, default=None,
                       help="comma-separated subset of distill,dpg,pg")
    sweep.add_argument("--out", default=None, metavar="DIR",
                       help="output directory (default: results/<name>)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any run setting for every configuration (repeatable)")
    sweep.add_argument("--workers", type=int, default=None)
    sweep.set_defaults(func=cmd_sweep, check=_sweep)

    data = sub.add_parser("data", parents=[common], help="write train/valid/test splits (npz)")
    data.add_argument("--motif", required=True)
    data.add_argument("--train-size", type=int, default=20000)
    data.add_argument("--kind", default="motif", choices=["motif", "mam"])
    data.add_argument("--seed", type=int, default=1234)
    data.add_argument("--out", required=True, metavar="NPZ")
    data.set_defaults(func=cmd_data)


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def _settings(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict (TOML values; bare words are strings)."""
    from mlr_dask.cli.run import parse_value

    overrides: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def _run_config(args: argparse.Namespace) -> Any:
    from mlr_dask.sequence.pipeline import GamRunConfig

    overrides = _settings(args.set)
    d: dict[str, Any] = {
        "motif": args.motif,
        "features": args.features,
        "train_size": args.train_size,
        "hidden": args.hidden,
        "seed": args.seed,
        "methods": args.methods,
        "kind": args.kind,
        "data_path": args.data,
    }
    d.update(overrides)
    return GamRunConfig.from_dict(d).validate()


def _sweep(args: argparse.Namespace) -> Any:
    from mlr_dask.sequence.sweep import build_sweep

    return build_sweep(args.name, args.out, motifs=args.motifs, features=args.features,
                       train_sizes=args.train_sizes, seeds=args.seeds, methods=args.methods,
                       run=_settings(args.set))


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("gam needs PyTorch: install the 'seq' extra (pip install "
                         "'mlr-dask[seq]')") from None


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    """``gam run``: validate, connect to Dask, run every stage, return the summary."""
    cfg = _run_config(args)  # bad input fails here, before any work
    _require_torch()
    from mlr_dask.cluster import connect
    from mlr_dask.sequence.pipeline import run_gam

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    with connect(args.scheduler, n_workers=args.workers, quiet=args.quiet) as client:
        summary = run_gam(cfg, client=client, quiet=args.quiet, out_dir=args.out, log=log)
    if not args.json:
        summary.pop("method_details", None)
    return summary


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """``gam sweep``: every configuration as a Dask task; table + plot."""
    from mlr_dask.sequence.sweep import run_sweep

    sweep = _sweep(args)  # validates every configuration
    _require_torch()
    from mlr_dask.cluster import connect

    with connect(args.scheduler, n_workers=args.workers, quiet=args.quiet) as client:
        return run_sweep(sweep, client, quiet=args.quiet)


def cmd_data(args: argparse.Namespace) -> dict[str, Any]:
    """``gam data``: exact samples of the motif process written as npz splits."""
    from mlr_dask.sequence.motif import MotifProcess, make_splits, write_splits

    process = MotifProcess(args.motif, 30, args.kind)
    splits = make_splits(process, args.train_size, args.seed)
    write_splits(args.out, splits, process)
    return {
        "path": args.out,
        "motif": args.motif,
        "sizes": {k: len(v) for k, v in splits.items()},
        "z": process.z,
        "entropy_rate": process.entropy_rate,
    }
