"""``mlr-dask run JOB.toml``: run the stages of a job file in order.

A job file (see ``pipelines/``) lists stages; each is an mlr-dask command with its positional
arguments and options, exactly as on the command line::

    [[stage]]
    command = "generate radial"        # subcommand words
    options = { n = 2000, seed = 0, out = "radial.zarr" }

    [[stage]]
    command = "fit-mlr"
    args = ["radial.zarr"]
    options = { rank = 28, levels = 10 }

An option ``key = value`` becomes ``--key value`` (underscores turn into dashes); ``true``
becomes the bare flag ``--key`` and ``false`` leaves it out; a list becomes one comma-separated
value. ``--scheduler`` and ``--quiet`` given to ``run`` apply to every stage. Every stage is
parsed and checked before the first one runs.
"""

from __future__ import annotations

import argparse
import time
import tomllib
from pathlib import Path
from typing import Any

from mlr_dask.errors import InputError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run the stages of a TOML job file")
    p.add_argument("job", help="a TOML job file (see pipelines/)")
    p.add_argument("--dry-run", action="store_true", help="print the stage command lines only")
    p.set_defaults(func=run_job)


def stage_argv(stage: dict[str, Any], index: int) -> list[str]:
    """The command line of one stage."""
    command = stage.get("command")
    if not isinstance(command, str) or not command.strip():
        raise InputError(f"stage {index} has no 'command' string")
    unknown = set(stage) - {"command", "args", "options"}
    if unknown:
        raise InputError(f"stage {index} has unknown keys {sorted(unknown)}")
    argv = command.split()
    args = stage.get("args", [])
    if not isinstance(args, list):
        raise InputError(f"stage {index}: 'args' must be a list")
    argv += [str(a) for a in args]
    options = stage.get("options", {})
    if not isinstance(options, dict):
        raise InputError(f"stage {index}: 'options' must be a table")
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            continue
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, dict):
            raise InputError(f"stage {index}: option {key!r} must not be a table")
        else:
            argv += [flag, str(value)]
    return argv


def run_job(args: argparse.Namespace) -> dict[str, Any]:
    from mlr_dask.cli.main import build_parser

    path = Path(args.job)
    if not path.is_file():
        raise InputError(f"no such job file: {str(path)!r}")
    try:
        job = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{str(path)!r} is not valid TOML: {exc}") from None
    stages = job.get("stage")
    if not isinstance(stages, list) or not stages:
        raise InputError(f"{str(path)!r} has no [[stage]] entries")
    parser = build_parser()
    planned = []
    for i, stage in enumerate(stages):
        argv = stage_argv(stage, i)
        if argv[0] == "run":
            raise InputError(f"stage {i}: a job cannot run another job")
        if args.scheduler and "--scheduler" not in argv:
            argv += ["--scheduler", args.scheduler]
        if args.quiet and "--quiet" not in argv:
            argv.append("--quiet")
        try:
            parsed = parser.parse_args(argv)
        except InputError as exc:
            raise InputError(f"stage {i} ({' '.join(argv)}): {exc}") from None
        planned.append((argv, parsed))
    if args.dry_run:
        return {"job": str(path), "stages": [" ".join(a) for a, _ in planned]}
    results = []
    for argv, parsed in planned:
        t0 = time.perf_counter()
        result = parsed.func(parsed)
        results.append({"command": " ".join(argv), "seconds": time.perf_counter() - t0,
                        "result": result})
    return {"job": str(path), "stages": results}
