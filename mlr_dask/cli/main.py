"""Entry point of the ``mlr-dask`` command.

Every subcommand module in :data:`SUBCOMMAND_MODULES` exposes
``register(subparsers, common)`` and optionally ``register_generate(gen_subparsers, common)``
(for ``mlr-dask generate KIND``): it adds its parsers (passing ``parents=[common]`` so the
shared flags ``--scheduler``, ``--json`` and ``--quiet`` are accepted after the subcommand) and
sets ``func`` to a callable ``func(args) -> dict``. The returned dict is printed as one JSON
object with ``--json``, or as ``key: value`` lines otherwise.

Exit status: 0 success, 2 bad input (one ``error:`` line on stderr), 1 internal failure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlr_dask.errors import InputError

SUBCOMMAND_MODULES = (
    "mlr_dask.cli.basic",
    "mlr_dask.cli.demo",
    "mlr_dask.cli.fm",
    "mlr_dask.cli.fit",
    "mlr_dask.cli.gam",
    "mlr_dask.cli.run",
)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors raise :class:`InputError` (one ``error:`` line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message}")


def common_flags() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="address of a running Dask scheduler (default: an embedded LocalCluster on "
        "127.0.0.1); 'threads' or 'synchronous' run Dask in this process with no cluster",
    )
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    common.add_argument(
        "--report", metavar="HTML", default=None,
        help="save a Dask performance report of the cluster work to this HTML file",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_flags()
    parser = _Parser(
        prog="mlr-dask",
        description="Multilevel low rank matrices, factor models and GAMs on Dask.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    gen = sub.add_parser("generate", help="write synthetic test data to zarr")
    gen_sub = gen.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser)
    gen_sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an optional group whose extra is not installed
            if exc.name == name:
                continue
            raise
        module.register(sub, common)
        if hasattr(module, "register_generate"):
            module.register_generate(gen_sub, common)
    return parser


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def emit(result: dict[str, Any] | None, as_json: bool) -> None:
    """Print a command's result: one JSON object, or ``key: value`` lines."""
    if result is None:
        return
    if as_json:
        print(json.dumps(_jsonable(result)))
        return
    for key, value in result.items():
        print(f"{key}: {json.dumps(_jsonable(value))}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        from mlr_dask import cluster

        cluster.SESSION["report"] = getattr(args, "report", None)
        result = args.func(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
