"""``mlr-dask run JOB.toml``: the driver. One job format, one client, a manifest, resumable.

A job file (see ``pipelines/``) is an optional ``[job]`` table and a list of stages; each stage
is an mlr-dask command with its positional arguments and options, exactly as on the command
line::

    [job]
    name = "kernel_compression"         # default: the file name without .toml

    [[stage]]
    name = "data"                       # default: the command ("generate radial")
    command = "generate radial"
    options = { n = 2000, seed = 0, out = "radial.zarr" }

    [[stage]]
    name = "fit"
    command = "fit-mlr"
    args = ["radial.zarr"]
    options = { rank = 28 }

An option ``key = value`` becomes ``--key value`` (underscores turn into dashes); ``true`` the
bare flag, ``false`` nothing; a list one comma-separated value; a table ``{k = v, ...}`` one
``--key k=v`` per entry (the value in TOML syntax: ``set = { hidden = 32 }`` gives
``--set hidden=32``).

What the driver does, in order:

1. **Plan** (:func:`plan_job`): read the file, apply ``--set NAME.KEY=VALUE`` overrides,
   check every stage (keys, command, options, types, paths, which earlier stage writes each
   input) before any work. Errors name the stage and the key.
2. **Connect once** (:func:`mlr_dask.cluster.session`): the embedded LocalCluster, a scheduler
   address, or ``threads``; every stage runs in this process on that one client.
3. **Run** each stage, recording it in the run manifest (JSON next to the outputs, replaced
   atomically at every change): resolved command, status, start/end, seconds, outputs, result.
   A rerun skips the leading stages whose command is unchanged, whose status is ``done`` and
   whose outputs exist; a factor-model fit interrupted with checkpoints resumes from them.

Relative paths are resolved against the directory ``mlr-dask run`` is started from, on the
client, before anything reaches a worker.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlr_dask.errors import InputError
from mlr_dask.events import jsonable

#: keys allowed at the top level of a job file, in ``[job]`` and in a ``[[stage]]``
JOB_KEYS = frozenset({"job", "stage"})
JOB_TABLE_KEYS = frozenset({"name", "description"})
STAGE_KEYS = frozenset({"name", "command", "args", "options"})
#: options of a stage that name what it writes
OUTPUT_OPTIONS = ("out", "plots")
#: positional arguments / options of a stage that name stores it reads
INPUT_DESTS = ("data", "matrix", "model", "path")
#: flags that belong to the whole job (``mlr-dask run --scheduler ...``), not to one stage
DRIVER_ONLY = frozenset({"scheduler", "json", "quiet", "report", "workers", "memory_limit",
                         "debug"})

MANIFEST_FORMAT = "mlr-dask-run-manifest"
MANIFEST_VERSION = 1


class StageError(Exception):
    """A stage failed while running; ``cause`` is the original exception."""

    def __init__(self, stage: str, command: str, cause: BaseException,
                 stores: list[str] | None = None) -> None:
        super().__init__(f"stage {stage!r} ({command}): {cause}")
        self.stage = stage
        self.command = command
        self.cause = cause
        self.stores = list(stores or [])


@dataclass
class Stage:
    """One planned stage: its name, command words, argv (paths resolved, no driver flags), the
    parsed arguments, and the resolved store paths it writes and reads."""

    index: int
    name: str
    command: str
    argv: list[str]
    parsed: argparse.Namespace
    outputs: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)

    @property
    def command_line(self) -> str:
        return " ".join(self.argv)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run the stages of a TOML job file",
                       description="Run a job file: plan and check every stage, connect once, "
                                   "run the stages, record them in a manifest; a rerun skips "
                                   "what is complete.")
    p.add_argument("job", help="a TOML job file (see pipelines/)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="STAGE.KEY=VALUE",
                   help="override a stage option (TOML value syntax; repeatable), e.g. "
                        "--set data.n=500 --set fit.ranks=[4,2,1]")
    p.add_argument("--dry-run", action="store_true", help="print the resolved stages only")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--overwrite", action="store_true",
                   help="let stages replace existing outputs that this job did not record")
    p.add_argument("--manifest", default=None, metavar="JSON",
                   help="run manifest (default: <job name>.manifest.json in the current "
                        "directory)")
    p.add_argument("--workers", type=int, default=None,
                   help="workers of the embedded cluster (default: one per core)")
    p.add_argument("--memory-limit", default="auto",
                   help="per-worker memory limit of the embedded cluster")
    p.set_defaults(func=run_job)


# ----------------------------------------------------------------------------- job files


def read_job(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed TOML of a job file; InputError for a missing, unreadable or invalid file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"no such job file: {str(p)!r}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{str(p)!r} is not a text (UTF-8) TOML file") from None
    except OSError as exc:
        raise InputError(f"cannot read {str(p)!r}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{str(p)!r} is not valid TOML: {exc}") from None


def parse_value(text: str) -> Any:
    """A TOML value (``5``, ``1e-3``, ``[4,2]``, ``true``, ``"x"``); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if any(c in text for c in "[]{}\"'=") or not text.strip():
            raise InputError(f"not a TOML value: {text!r}") from None
        return text


def stage_name(stage: dict[str, Any], index: int) -> str:
    name = stage.get("name", stage.get("command"))
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"stage {index} has no 'name' or 'command' string")
    return name.strip()


def apply_overrides(stages: list[dict[str, Any]], overrides: list[str]) -> None:
    """Apply ``NAME.KEY=VALUE`` (``KEY`` may be dotted into a table option, or ``args``) in
    place; the stage name may be given with dashes for spaces."""
    by_name = {}
    for i, st in enumerate(stages):
        name = stage_name(st, i)
        by_name[name] = st
        by_name.setdefault(name.replace(" ", "-"), st)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set expects STAGE.KEY=VALUE, got {item!r}")
        target, text = item.split("=", 1)
        # the stage name is the longest prefix naming a stage
        parts = target.strip().split(".")
        for cut in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:cut])
            if name in by_name:
                keys = parts[cut:]
                break
        else:
            names = ", ".join(repr(stage_name(s, i)) for i, s in enumerate(stages))
            raise InputError(f"--set {item!r}: no stage named {parts[0]!r} (stages: {names})")
        stage = by_name[name]
        value = parse_value(text.strip())
        if keys == ["args"]:
            stage["args"] = value if isinstance(value, list) else [value]
            continue
        table = stage.setdefault("options", {})
        for key in keys[:-1]:
            table = table.setdefault(key.replace("-", "_"), {})
            if not isinstance(table, dict):
                raise InputError(f"--set {item!r}: option {key!r} of stage {name!r} is not "
                                 "a table")
        table[keys[-1].replace("-", "_")] = value


def stage_argv(stage: dict[str, Any], index: int) -> list[str]:
    """The command line of one stage (command words, args, then options)."""
    name = stage_name(stage, index)
    where = f"stage {name!r}"
    command = stage.get("command")
    if not isinstance(command, str) or not command.strip():
        raise InputError(f"{where} has no 'command' string")
    unknown = set(stage) - STAGE_KEYS
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)} (allowed: "
                         f"{sorted(STAGE_KEYS)})")
    argv = command.split()
    args = stage.get("args", [])
    if not isinstance(args, list):
        raise InputError(f"{where}: 'args' must be a list")
    argv += [str(a) for a in args]
    options = stage.get("options", {})
    if not isinstance(options, dict):
        raise InputError(f"{where}: 'options' must be a table")
    for key, value in options.items():
        if key in DRIVER_ONLY:
            raise InputError(f"{where}: option {key!r} belongs to the whole job: give it to "
                             f"'mlr-dask run' (--{key.replace('_', '-')})")
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False:
            continue
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        elif isinstance(value, dict):
            for k, v in value.items():
                argv += [flag, f"{k}={_toml_value(v, where, key)}"]
        else:
            argv += [flag, str(value)]
    return argv


def _toml_value(v: Any, where: str, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x, where, key) for x in v) + "]"
    raise InputError(f"{where}: option {key!r} holds a value of type {type(v).__name__}")


def _known_dests(parser: argparse.ArgumentParser, words: list[str]) -> set[str] | None:
    """The option dests of the subcommand named by ``words`` (None when not found)."""
    p: Any = parser
    for w in words:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or w not in subs[0].choices:
            return None
        p = subs[0].choices[w]
    return {a.dest for a in p._actions if a.option_strings}


def plan_job(
    path: str | os.PathLike, overrides: list[str] | None = None
) -> tuple[str, list[Stage]]:
    """Read, override and check a whole job; returns (job name, stages). No work is done and
    nothing is written; every error names the stage and the key."""
    from mlr_dask.cli.main import build_parser, resolve_paths

    job = read_job(path)
    unknown = set(job) - JOB_KEYS
    if unknown:
        raise InputError(f"{str(path)!r}: unknown top-level keys {sorted(unknown)} (allowed: "
                         "[job] and [[stage]])")
    meta = job.get("job", {})
    if not isinstance(meta, dict):
        raise InputError(f"{str(path)!r}: 'job' must be a table")
    bad = set(meta) - JOB_TABLE_KEYS
    if bad:
        raise InputError(f"{str(path)!r}: unknown keys in [job]: {sorted(bad)}")
    name = str(meta.get("name", Path(path).stem))
    raw = job.get("stage")
    if not isinstance(raw, list) or not raw or not all(isinstance(s, dict) for s in raw):
        raise InputError(f"{str(path)!r} has no [[stage]] entries")
    raw = copy.deepcopy(raw)
    apply_overrides(raw, overrides or [])
    parser = build_parser()
    stages: list[Stage] = []
    seen: set[str] = set()
    written: dict[str, str] = {}
    for i, st in enumerate(raw):
        sname = stage_name(st, i)
        if sname in seen:
            raise InputError(f"two stages are named {sname!r}: give each a unique 'name'")
        seen.add(sname)
        argv = stage_argv(st, i)
        if argv[0] == "run":
            raise InputError(f"stage {sname!r}: a job cannot run another job")
        words = str(st["command"]).split()
        dests = _known_dests(parser, words)
        if dests is None:
            raise InputError(f"stage {sname!r}: unknown command {st['command']!r}")
        for key, value in (st.get("options") or {}).items():
            if key not in dests:
                raise InputError(f"stage {sname!r}: {st['command']} has no option {key!r}")
            if isinstance(value, dict) and key != "set":
                raise InputError(f"stage {sname!r}: option {key!r} must not be a table")
        try:
            parsed = parser.parse_args(argv)
        except InputError as exc:
            raise InputError(f"stage {sname!r} ({' '.join(argv)}): {exc}") from None
        resolve_paths(parsed)
        check = getattr(parsed, "check", None)
        if check is not None:  # the command's own checks that need no input data
            try:
                check(parsed)
            except InputError as exc:
                raise InputError(f"stage {sname!r}: {exc}") from None
        argv = _resolved_argv(argv, parsed)
        stage = Stage(i, sname, " ".join(words), argv, parsed)
        for key in OUTPUT_OPTIONS:
            v = getattr(parsed, key, None)
            if isinstance(v, str):
                stage.outputs.append(v)
        for key in INPUT_DESTS:
            v = getattr(parsed, key, None)
            if isinstance(v, str):
                stage.inputs.append(v)
        from mlr_dask.paths import store_exists

        for inp in stage.inputs:
            if inp not in written and not store_exists(inp):
                raise InputError(f"stage {sname!r}: input {inp!r} does not exist and no "
                                 "earlier stage writes it")
        for out in stage.outputs:
            if out in stage.inputs:
                raise InputError(f"stage {sname!r}: output {out!r} is also its input")
            written[out] = sname
        stages.append(stage)
    return name, stages


def _resolved_argv(argv: list[str], parsed: argparse.Namespace) -> list[str]:
    """``argv`` with every path-valued positional argument and option replaced by its resolved
    form (as :func:`mlr_dask.cli.main.resolve_paths` set it in ``parsed``)."""
    from mlr_dask.cli.main import PATH_DESTS
    from mlr_dask.paths import resolve_store

    out = list(argv)
    values = {getattr(parsed, d) for d in PATH_DESTS if isinstance(getattr(parsed, d, None), str)}
    for i, a in enumerate(out):
        if a.startswith("-"):
            continue
        try:
            r = resolve_store(a)
        except InputError:
            continue
        if r in values and r != a:
            out[i] = r
    return out


# ----------------------------------------------------------------------------- manifest


class Manifest:
    """The run manifest: a JSON file replaced atomically at every change."""

    def __init__(self, path: Path, job: str, job_file: str, scheduler: str | None,
                 job_id: str) -> None:
        self.path = path
        self.previous = self._read(path)
        self.doc: dict[str, Any] = {
            "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "job": job,
            "job_file": job_file, "job_id": job_id, "scheduler": scheduler or "embedded",
            "status": "running", "started": _now(), "finished": None, "stages": [],
        }

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            raise InputError(f"run manifest {str(path)!r} is unreadable; remove it or pass "
                             "--force") from None
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise InputError(f"{str(path)!r} is not an mlr-dask run manifest")
        return doc

    def previous_entry(self, stage: Stage) -> dict[str, Any] | None:
        if not self.previous:
            return None
        for e in self.previous.get("stages", []):
            if e.get("name") == stage.name:
                return e
        return None

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(jsonable(self.doc), indent=1))
        os.replace(tmp, self.path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _complete(stage: Stage, entry: dict[str, Any] | None) -> bool:
    """Whether a previous run finished ``stage`` with the same command and its outputs exist."""
    from mlr_dask.paths import store_exists

    return (entry is not None and entry.get("status") == "done"
            and entry.get("command") == stage.command_line
            and all(store_exists(o) for o in stage.outputs))


def _prepare_rerun(stage: Stage, entry: dict[str, Any] | None, overwrite: bool) -> None:
    """Before running ``stage`` again: allow it to replace outputs this job recorded, and resume
    an interrupted factor-model fit from its checkpoints."""
    from mlr_dask.paths import store_exists

    recorded = set(entry.get("outputs", [])) if entry else set()
    existing = [o for o in stage.outputs if store_exists(o)]
    if existing and (overwrite or all(o in recorded for o in existing)):
        stage.parsed.overwrite = True
    if (stage.command == "fit-fm" and getattr(stage.parsed, "checkpoint_every", 0)
            and entry is not None and entry.get("status") in ("running", "failed")
            and entry.get("command") == stage.command_line and existing):
        stage.parsed.resume = True


def run_job(args: argparse.Namespace) -> dict[str, Any]:
    """Plan, connect once, run the stages with a manifest; returns the job summary."""
    from mlr_dask import events
    from mlr_dask.cluster import session

    name, stages = plan_job(args.job, args.overrides)
    if args.dry_run:
        return {"job": name, "stages": [
            {"name": s.name, "command": s.command_line, "outputs": s.outputs,
             "inputs": s.inputs} for s in stages]}
    manifest_path = Path(args.manifest or f"{name}.manifest.json").absolute()
    if not manifest_path.parent.is_dir():
        raise InputError(f"manifest directory {str(manifest_path.parent)!r} does not exist")
    if not os.access(manifest_path.parent, os.W_OK):
        raise InputError(f"cannot write the manifest in {str(manifest_path.parent)!r}")
    job_id = events.new_job_id()
    manifest = Manifest(manifest_path, name, str(Path(args.job).absolute()), args.scheduler,
                        job_id)
    entries = [{"name": s.name, "command": s.command_line, "status": "pending",
                "outputs": s.outputs, "start": None, "end": None, "seconds": None,
                "result": None} for s in stages]
    manifest.doc["stages"] = entries
    manifest.write()
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    ran_any = False
    with events.job(job_id, name=name), \
            session(args.scheduler, quiet=args.quiet, n_workers=args.workers,
                    memory_limit=args.memory_limit) as client:
        manifest.doc["dashboard"] = getattr(client, "dashboard_link", None)
        for stage, entry in zip(stages, entries):
            prev = manifest.previous_entry(stage)
            if not args.force and not ran_any and _complete(stage, prev):
                entry.update(status="done", skipped=True, start=prev.get("start"),
                             end=prev.get("end"), seconds=prev.get("seconds"),
                             result=prev.get("result"))
                manifest.write()
                events.publish("driver", stage.index + 1, len(stages), stage_name=stage.name,
                               status="skipped")
                say(f"[{stage.name}] complete in the manifest: skipped")
                continue
            ran_any = True
            stage.parsed.quiet = args.quiet  # the job's --quiet holds for every stage
            _prepare_rerun(stage, prev, args.overwrite)
            entry.update(status="running", start=_now())
            manifest.write()
            events.publish("driver", stage.index, len(stages), stage_name=stage.name,
                           status="running")
            say(f"[{stage.name}] {stage.command_line}")
            t0 = time.perf_counter()
            try:
                result = stage.parsed.func(stage.parsed)
            except BaseException as exc:
                entry.update(status="failed" if not isinstance(exc, KeyboardInterrupt)
                             else "interrupted", end=_now(),
                             seconds=time.perf_counter() - t0,
                             error=f"{type(exc).__name__}: {exc}")
                manifest.doc.update(status="failed", finished=_now())
                manifest.write()
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise StageError(stage.name, stage.command, exc, stage.inputs) from exc
            entry.update(status="done", end=_now(), seconds=time.perf_counter() - t0,
                         result=jsonable(result))
            manifest.write()
            events.publish("driver", stage.index + 1, len(stages), stage_name=stage.name,
                           status="done", seconds=entry["seconds"])
    manifest.doc.update(status="done", finished=_now())
    manifest.write()
    return {"job": name, "job_id": job_id, "manifest": str(manifest_path),
            "stages": [{k: e[k] for k in ("name", "command", "status", "seconds", "result")}
                       | {"skipped": bool(e.get("skipped"))} for e in entries]}
