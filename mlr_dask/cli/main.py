"""Entry point of the ``mlr-dask`` command.

Every subcommand module in :data:`SUBCOMMAND_MODULES` exposes
``register(subparsers, common)`` and optionally ``register_generate(gen_subparsers, common)``
(for ``mlr-dask generate KIND``): it adds its parsers (passing ``parents=[common]`` so the
shared flags ``--scheduler``, ``--json`` and ``--quiet`` are accepted after the subcommand) and
sets ``func`` to a callable ``func(args) -> dict``. The returned dict is printed as one JSON
object with ``--json``, or as ``key: value`` lines otherwise.

Exit status: 0 success; 2 bad input (one ``error:`` line on stderr, before any work); 1 a
failure while working (one ``error:`` line naming the command or stage and the store; the
traceback goes to a log file named on that line, or to stderr with ``--debug``); 130 interrupted.

Every path-valued argument (:data:`PATH_DESTS`) is resolved on the client before the command
runs (:func:`resolve_paths`), so workers never see a path relative to their own directory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from typing import Any

from mlr_dask.errors import InputError
from mlr_dask.events import jsonable

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
    common.add_argument("--debug", action="store_true",
                        help="print the full traceback of a failure on stderr")
    return common


#: argument names that hold a store or file path (resolved on the client before any work)
PATH_DESTS = ("data", "matrix", "model", "path", "out", "plots", "keep", "report", "job",
              "manifest")


def resolve_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve every path-valued argument in place (absolute local paths, URLs unchanged)."""
    from mlr_dask.paths import resolve_store

    for dest in PATH_DESTS:
        v = getattr(args, dest, None)
        if isinstance(v, str) and v:
            setattr(args, dest, resolve_store(v))
    return args


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


def emit(result: dict[str, Any] | None, as_json: bool) -> None:
    """Print a command's result: one JSON object, or ``key: value`` lines."""
    if result is None:
        return
    if as_json:
        print(json.dumps(jsonable(result)))
        return
    for key, value in result.items():
        print(f"{key}: {json.dumps(jsonable(value))}")


def _what(args: argparse.Namespace | None) -> str:
    """The command and its input store, for an error line: ``fit-fm on '/data/Y.zarr'``."""
    if args is None:
        return "mlr-dask"
    words = [getattr(args, "command", None), getattr(args, "kind", None),
             getattr(args, "gam_command", None)]
    what = " ".join(w for w in words if w)
    stores = [getattr(args, d) for d in ("data", "matrix", "model", "path")
              if isinstance(getattr(args, d, None), str)]
    return what + (f" on {stores[0]!r}" if stores else "")


def _log_traceback(exc: BaseException) -> str:
    """Write the traceback of ``exc`` to a log file; returns its path."""
    folder = os.environ.get("MLR_DASK_LOG_DIR") or tempfile.gettempdir()
    path = os.path.join(folder, f"mlr-dask-error-{time.strftime('%Y%m%d-%H%M%S')}-"
                                f"{os.getpid()}.log")
    try:
        with open(path, "w") as f:
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        return "(no log: cannot write one)"
    return path


def _describe_failure(exc: BaseException, args: argparse.Namespace | None) -> tuple[str, int]:
    """(one-line message, exit status) for an exception raised while a command ran."""
    from mlr_dask.cli.run import StageError

    where = _what(args)
    cause = exc
    if isinstance(exc, StageError):
        store = f" on {exc.stores[0]!r}" if exc.stores else ""
        where = f"stage {exc.stage!r} ({exc.command}{store})"
        cause = exc.cause
    if isinstance(cause, InputError):
        return f"{where}: {cause}", 2
    lost = _lost_scheduler(cause)
    if lost:
        return f"{where}: {lost}", 1
    if isinstance(cause, MemoryError):
        return f"{where}: out of memory", 1
    if type(cause).__name__ == "KilledWorker":
        task = getattr(cause, "task", "?")
        return (f"{where}: workers died running task {task!r} again and again (out of memory? "
                "raise the workers' memory limit or use smaller chunks)"), 1
    text = str(cause).strip().splitlines()
    msg = text[0] if text else ""
    return f"{where}: {type(cause).__name__}" + (f": {msg}" if msg else ""), 1


def _lost_scheduler(exc: BaseException) -> str | None:
    """A message when ``exc`` means the connection to the scheduler was lost."""
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"CommClosedError", "FutureCancelledError", "CancelledError"}:
        from mlr_dask import cluster

        address = cluster.SESSION.get("address") or "the scheduler"
        return (f"lost the Dask scheduler ({address}); start a scheduler and workers and "
                "rerun the same command (a job resumes from its manifest and checkpoints)")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        out.append(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    import logging
    import warnings

    warnings.showwarning = _show_warning  # one "warning: ..." line each, no source lines
    # a Ctrl-C in the middle of a gather leaves asyncio futures whose "exception was never
    # retrieved" reports would follow the one error line
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    parser = build_parser()
    args = None
    try:
        try:
            args = parser.parse_args(argv)
            if not args.debug:
                # the client's own reports (a lost scheduler, a reconnect) would precede the
                # one error line that says the same; --debug keeps them
                import distributed  # noqa: F401  (its import sets its loggers' levels)

                for name in ["distributed", *logging.root.manager.loggerDict]:
                    if name.startswith("distributed"):
                        logging.getLogger(name).setLevel(logging.CRITICAL)
            resolve_paths(args)
            from mlr_dask import cluster

            cluster.SESSION["report"] = getattr(args, "report", None)
            result = args.func(args)
            emit(result, args.json)
            sys.stdout.flush()
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # the reader of our output went away (e.g. `| head`): stop quietly, one line
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            print("error: output closed before everything was written", file=sys.stderr)
            return 1
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            message, status = _describe_failure(exc, args)
            if status == 2:
                print(f"error: {message}", file=sys.stderr)
                return 2
            if args is not None and getattr(args, "debug", False):
                traceback.print_exception(exc, file=sys.stderr)
                print(f"error: {message}", file=sys.stderr)
            else:
                print(f"error: {message} (traceback in {_log_traceback(exc)})",
                      file=sys.stderr)
            return status
    except KeyboardInterrupt:  # a second Ctrl-C while handling the first
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
