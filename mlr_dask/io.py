"""Zarr stores written by mlr-dask: safe outputs, checksummed arrays, checked reads.

Format. Every group written by the library carries two attributes: ``mlr_dask_format`` (what it
holds, e.g. ``"mlr-matrix"``) and ``format_version`` (an integer).

Outputs (:func:`check_output`, :func:`atomic_group`). An output location is refused, before any
work, when it is a regular file, a directory that is not an mlr-dask store, a store of another
kind, a store of the same kind without ``overwrite``, or the same as (inside, or around) an input
of the command; also when its parent directory is missing or not writable. A local store is
written under a temporary name next to the target and renamed into place only when complete: a
crash (or an exception) leaves the previous result untouched, and a replaced store is moved aside
and deleted only after the new one is in place. Object stores (``memory://``, ``s3://``, ...)
have no rename: there the store is written in place (an existing store of the same kind is
cleared first, and a failed write is removed), so replacement is not atomic.

Integrity. Every array is written by :func:`create_array`: compressed (zstd unless asked
otherwise), then a crc32c checksum (zarr 3's ``Crc32cCodec``) after the compression, named
dimensions (zarr 3 ``dimension_names``, so that ``xarray.open_zarr`` reads every store), and
every chunk written (also chunks equal to the fill value), which the array attribute
``mlr_dask_all_chunks`` records. Stores are read through ``mlr_dask._checked.CheckedStore``: a
missing chunk of such an array, or a chunk whose checksum does not match (truncated,
overwritten), raises :class:`~mlr_dask.errors.DataError` naming the store, the array and the
chunk, also inside Dask tasks (the store travels with the pickled array). :func:`open_group`
also lists the store once and refuses it when a chunk is missing (:func:`check_array`), so
that most damage is found before any work. Stores written before these rules (no checksum,
chunks equal to the fill value not written) still open; their decode errors become a
``DataError`` through :func:`read_region`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlr_dask.errors import DataError, FormatError, InputError
from mlr_dask.paths import fs_of, is_url, resolve_store, store_exists

__all__ = [
    "FORMAT_KEY", "VERSION_KEY", "COMPLETE_KEY", "SUPERSEDES",
    "store_kind", "check_output", "atomic_group", "create_array",
    "open_group", "open_array", "open_dataset", "check_array", "verify_store", "read_region",
]

FORMAT_KEY = "mlr_dask_format"
VERSION_KEY = "format_version"
COMPLETE_KEY = "mlr_dask_all_chunks"
#: kinds of store that a finished result may replace without ``overwrite`` (the checkpoints of
#: a fit are replaced by its final model)
SUPERSEDES: dict[str, tuple[str, ...]] = {"fm-model": ("fm-checkpoints",)}

_NOT_A_STORE = object()


# ---------------------------------------------------------------------------------- outputs
def _read_root_meta(loc: str) -> Any:
    """The root ``zarr.json`` of a location as a dict, or ``_NOT_A_STORE``."""
    try:
        if is_url(loc):
            fs, path = fs_of(loc)
            raw = fs.cat_file(path.rstrip("/") + "/zarr.json")
        else:
            raw = (Path(loc) / "zarr.json").read_bytes()
        meta = json.loads(raw)
    except (OSError, ValueError, KeyError):
        return _NOT_A_STORE
    return meta if isinstance(meta, dict) else _NOT_A_STORE


def store_kind(path: str | os.PathLike) -> str | None:
    """The ``mlr_dask_format`` of the zarr group at ``path``; None when there is none (no
    store, not a zarr 3 group, or a group not written by mlr-dask). Reads one small file."""
    meta = _read_root_meta(resolve_store(path))
    if meta is _NOT_A_STORE or meta.get("node_type") != "group":
        return None
    kind = (meta.get("attributes") or {}).get(FORMAT_KEY)
    return kind if isinstance(kind, str) else None


def _same_or_nested(a: str, b: str) -> bool:
    """Whether two resolved locations are equal or one lies inside the other."""
    if not is_url(a) and not is_url(b):
        a, b = os.path.realpath(a), os.path.realpath(b)
        sep = os.sep
    elif is_url(a) and is_url(b):
        a, b = a.rstrip("/"), b.rstrip("/")
        sep = "/"
    else:
        return False
    return a == b or a.startswith(b + sep) or b.startswith(a + sep)


def _enclosing_store(loc: str) -> str | None:
    """The nearest enclosing directory of ``loc`` that is a zarr store (has ``zarr.json`` or
    ``.zgroup``), or None. One existence check per level."""
    if is_url(loc):
        fs, fpath = fs_of(loc)
        prefix = loc[: len(loc) - len(fpath.lstrip("/"))] if loc.endswith(fpath.lstrip("/")) \
            else None
        parts = fpath.rstrip("/").split("/")
        for i in range(len(parts) - 1, 0, -1):
            anc = "/".join(parts[:i])
            if anc and any(fs.exists(f"{anc}/{m}") for m in ("zarr.json", ".zgroup")):
                return (prefix + anc.lstrip("/")) if prefix is not None else anc
        return None
    for anc in Path(loc).parents:
        if (anc / "zarr.json").is_file() or (anc / ".zgroup").is_file():
            return str(anc)
    return None


def _tag() -> str:
    """Suffix of temporary names: the writer's host and process id, and a random part."""
    host = "".join(c for c in os.uname().nodename if c.isalnum() or c == "-")[:32]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _dead_writer(name: str) -> bool:
    """Whether a temporary name was made by a process of this host that no longer runs."""
    try:
        host, pid = name.rsplit("-", 2)[:2]
        pid_i = int(pid)
    except ValueError:
        return False
    if host != _tag().rsplit("-", 2)[0]:
        return False
    try:
        os.kill(pid_i, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _recover(target: Path) -> None:
    """Clean up after writers of ``target`` that were killed: a store moved aside by a replace
    interrupted between its two renames is moved back when ``target`` is missing (else
    removed); their temporary groups are removed. Writers still running are left alone."""
    try:
        siblings = list(target.parent.glob(f".{target.name}.*-*"))
    except OSError:
        return
    for kind in ("old", "tmp"):
        prefix = f".{target.name}.{kind}-"
        for p in sorted(siblings):
            if not p.name.startswith(prefix) or not _dead_writer(p.name[len(prefix):]):
                continue
            if kind == "old" and not target.exists():
                with contextlib.suppress(OSError):
                    os.replace(p, target)
                continue
            shutil.rmtree(p, ignore_errors=True)


def _check_writable(directory: Path, what: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".mlr-dask-probe-", dir=directory)
    except OSError as exc:
        raise InputError(
            f"{what} directory {str(directory)!r} is not writable ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def _check_replace(loc: str, kind: str, overwrite: bool, what: str) -> None:
    meta = _read_root_meta(loc)
    found = None
    if meta is not _NOT_A_STORE and meta.get("node_type") == "group":
        found = (meta.get("attributes") or {}).get(FORMAT_KEY)
    if not isinstance(found, str):
        raise InputError(f"{what} {loc!r} exists and is not an mlr-dask store; refusing to "
                         "replace it (choose another path)")
    if found in SUPERSEDES.get(kind, ()):
        return
    if found != kind:
        raise InputError(f"{what} {loc!r} holds an mlr-dask {found!r} store, not {kind!r}; "
                         "refusing to replace it")
    if not overwrite:
        raise InputError(f"{what} {loc!r} exists (an mlr-dask {kind!r} store); use --overwrite "
                         "(overwrite=True) to replace it")


def check_output(
    path: str | os.PathLike,
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    what: str = "output",
    nbytes: int | None = None,
) -> str:
    """Check an output location before any work; returns it resolved (absolute path or URL).

    Refused with an InputError naming the path and the reason: an input of the same command
    (equal, inside it or containing it, symlinks resolved), a regular file, a directory that is
    not an mlr-dask store, a store of another kind, a store of kind ``kind`` without
    ``overwrite``; for local paths also a missing or read-only parent directory (checked by
    creating and removing a probe file; leftovers of killed writers of this path are cleaned
    up first, see ``_recover``), and with ``nbytes`` (an estimate of the store's size)
    a filesystem with less free space (a replaced store's space is not counted as free). A
    store of a kind in ``SUPERSEDES[kind]`` may be replaced without ``overwrite``; a location
    inside another zarr store is refused. Cost: a few stat calls and one small read."""
    loc = resolve_store(path)
    for item in inputs:
        if item is None:
            continue
        src = resolve_store(item)
        if _same_or_nested(loc, src):
            raise InputError(f"{what} {loc!r} would overwrite the input {src!r} of this command; "
                             "write the result elsewhere")
    outer = _enclosing_store(loc)
    if outer is not None:
        raise InputError(f"{what} {loc!r} lies inside the zarr store {outer!r}; refusing to "
                         "write into another store")
    if is_url(loc):
        fs, fpath = fs_of(loc)
        if fs.exists(fpath):
            if fs.isfile(fpath):
                raise InputError(f"{what} {loc!r} is a file, not a store; refusing to replace it")
            _check_replace(loc, kind, overwrite, what)
        return loc
    target = Path(loc)
    _recover(target)
    if target.is_symlink() or target.exists():
        if not target.is_dir():
            raise InputError(f"{what} {loc!r} is a file, not a store; refusing to replace it")
        _check_replace(loc, kind, overwrite, what)
    if not target.parent.is_dir():
        raise InputError(f"{what} directory {str(target.parent)!r} does not exist")
    _check_writable(target.parent, what)
    if nbytes is not None:
        free = shutil.disk_usage(target.parent).free
        if nbytes > free:
            raise InputError(f"{what} {loc!r} needs about {_size(nbytes)} but its filesystem "
                             f"has {_size(free)} free")
    return loc


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


@contextlib.contextmanager
def atomic_group(
    path: str | os.PathLike,
    kind: str,
    version: int,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Iterator[Any]:
    """Yield a new, empty zarr group (``FORMAT_KEY = kind``, ``VERSION_KEY = version``) that
    becomes the store at ``path`` when the block ends without error.

    The location is checked first by :func:`check_output` (same arguments). Local paths: the
    group is built under a temporary name next to the target and renamed into place (a replaced
    store is renamed aside first and deleted afterwards); an exception in the block deletes the
    temporary group and leaves ``path`` as it was. URLs: written in place (not atomic; a failed
    write is removed). Write arrays with :func:`create_array`."""
    import zarr

    inputs = tuple(inputs)
    loc = check_output(path, kind, overwrite=overwrite, inputs=inputs)
    if is_url(loc):
        group = zarr.open_group(loc, mode="w", zarr_format=3)
        group.attrs.update({FORMAT_KEY: kind, VERSION_KEY: version})
        try:
            yield group
        except BaseException:
            with contextlib.suppress(Exception):
                fs, fpath = fs_of(loc)
                fs.rm(fpath, recursive=True)
            raise
        return
    target = Path(loc)
    tmp = target.with_name(f".{target.name}.tmp-{_tag()}")
    try:
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        group.attrs.update({FORMAT_KEY: kind, VERSION_KEY: version})
        yield group
        # the location may have changed while the group was written
        check_output(loc, kind, overwrite=overwrite, inputs=inputs)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{_tag()}")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _codecs(compress: bool) -> list[Any]:
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0), Crc32cCodec()] if compress else [Crc32cCodec()]


def create_array(
    group: Any,
    name: str,
    *,
    dims: Sequence[str],
    data: Any = None,
    shape: Sequence[int] | None = None,
    dtype: Any = None,
    chunks: Any = "auto",
    compress: bool = True,
    attrs: dict[str, Any] | None = None,
) -> Any:
    """Create array ``name`` in ``group`` the way every mlr-dask array is stored: zstd
    compression (none with ``compress=False``) followed by a crc32c checksum, dimension names
    ``dims`` (one per axis), and every chunk written, also those equal to the fill value
    (attribute ``COMPLETE_KEY``). With ``data`` the array is written from it (shape and dtype
    taken from it); otherwise give ``shape`` and ``dtype`` and fill ALL of it."""
    dims = tuple(str(d) for d in dims)
    attributes = {COMPLETE_KEY: True, **(attrs or {})}
    kw = dict(name=name, chunks=chunks, compressors=_codecs(compress), dimension_names=dims,
              config={"write_empty_chunks": True}, attributes=attributes)
    if data is not None:
        data = np.asarray(data)
        if data.ndim != len(dims):
            raise ValueError(f"array {name!r}: {data.ndim} axes but dims {dims}")
        arr = group.create_array(shape=data.shape, dtype=data.dtype, **kw)
        arr[...] = data
        return arr
    if shape is None or dtype is None:
        raise ValueError("create_array needs data or shape and dtype")
    if len(shape) != len(dims):
        raise ValueError(f"array {name!r}: {len(shape)} axes but dims {dims}")
    return group.create_array(shape=tuple(int(s) for s in shape), dtype=dtype, **kw)


# ---------------------------------------------------------------------------------- reading
def _chunk_key_parts(key: str) -> tuple[str, tuple[int, ...]] | None:
    """(array path, chunk index) of a chunk key in zarr 3's default encoding, else None."""
    parts = key.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "c":
            rest = parts[i + 1:]
            if all(p.isdigit() for p in rest):
                return "/".join(parts[:i]), tuple(int(p) for p in rest)
            return None
        if not parts[i].isdigit():
            return None
    return None


def _array_flags(meta: dict[str, Any]) -> tuple[bool, bool]:
    """(every chunk must exist, last codec is crc32c) from an array's zarr.json dict."""
    if meta.get("node_type") != "array":
        return False, False
    strict = bool((meta.get("attributes") or {}).get(COMPLETE_KEY))
    enc = meta.get("chunk_key_encoding") or {}
    if isinstance(enc, dict) and enc.get("name", "default") != "default":
        return False, False
    codecs = meta.get("codecs") or []
    last = codecs[-1] if codecs else None
    name = last.get("name") if isinstance(last, dict) else last
    return strict, name == "crc32c"


def _damaged(label: str, array: str, idx: tuple[int, ...], why: str) -> DataError:
    where = f"chunk {idx}" if idx else "its only chunk"
    return DataError(f"damaged store {label!r}: array {array or '/'!r}, {where}: {why}")


def _raw_store(loc: str) -> Any:
    from zarr.storage import FsspecStore, LocalStore

    if is_url(loc):
        fs_of(loc)  # a clear InputError when the filesystem package is missing
        return FsspecStore.from_url(loc, read_only=True)
    return LocalStore(loc, read_only=True)


def _checked(loc: str) -> Any:
    from mlr_dask._checked import CheckedStore

    return CheckedStore(_raw_store(loc), loc)


def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


def _store_and_prefix(arr: Any) -> tuple[Any, str]:
    sp = arr.store_path
    return sp.store, sp.path


def _label_of(store: Any) -> str:
    return str(getattr(store, "_label", store))


def check_array(arr: Any, name: str | None = None) -> None:
    """Raise DataError when an array that records that every chunk was written misses one:
    one listing of the array's keys (for a local store, a directory walk). Arrays without that
    record (older stores) are not checked."""
    if not arr.attrs.get(COMPLETE_KEY):
        return
    store, prefix = _store_and_prefix(arr)
    name = prefix if name is None else name
    base = f"{prefix}/" if prefix else ""

    async def _keys() -> set[str]:
        return {k[len(base):] async for k in store.list_prefix(base)}

    present = _sync(_keys())
    grid = [range(int(c)) for c in arr.cdata_shape]
    missing = [idx for idx in itertools.product(*grid)
               if arr.metadata.encode_chunk_key(idx) not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _damaged(_label_of(store), name, tuple(missing[0]), f"missing{more}")


def _arrays(group: Any) -> Iterator[tuple[str, Any]]:
    for path, node in group.members(max_depth=None):
        if hasattr(node, "cdata_shape"):
            yield path, node


def open_group(
    path: str | os.PathLike, kind: str | None = None, max_version: int = 1, *,
    verify: bool = True,
) -> Any:
    """Open an mlr-dask zarr group read-only through a ``CheckedStore``, checking its
    format name and version (FormatError) and, with ``verify``, that no chunk is missing
    (DataError; one listing of the store)."""
    import zarr

    loc = resolve_store(path)
    if not store_exists(loc):
        raise FormatError(f"no such store: {loc!r}")
    store = _checked(loc)
    try:
        group = zarr.open_group(store, mode="r", zarr_format=3)
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise FormatError(f"{loc!r} is not a zarr 3 group ({type(exc).__name__}: {exc})") \
            from None
    found = group.attrs.get(FORMAT_KEY)
    if found is None:
        raise FormatError(f"{loc!r} is not an mlr-dask store (no {FORMAT_KEY!r} attribute)")
    if kind is not None and found != kind:
        raise FormatError(f"{loc!r} holds {found!r}, expected {kind!r}")
    version = group.attrs.get(VERSION_KEY)
    if not isinstance(version, int) or version > max_version:
        raise FormatError(
            f"{loc!r} has format version {version!r}; this mlr-dask reads up to {max_version}"
        )
    if verify:
        try:
            arrays = list(_arrays(group))
        except (ValueError, KeyError, TypeError) as exc:  # unreadable array metadata
            raise FormatError(f"{loc!r} has an array whose metadata is damaged "
                              f"({type(exc).__name__}: {exc})") from None
        for name, arr in arrays:
            store.note_array(arr.store_path.path, arr.metadata.to_dict())
            check_array(arr, name)
    return group


def open_array(path: str | os.PathLike, name: str) -> Any:
    """Array ``name`` of the store at ``path``, read-only through a ``CheckedStore``, with
    no format check or listing (for tasks that read a block of a store checked before)."""
    import zarr

    loc = resolve_store(path)
    store = _checked(loc)
    arr = zarr.open_array(store, path=name, mode="r", zarr_format=3)
    store.note_array(arr.store_path.path, arr.metadata.to_dict())
    return arr


def open_dataset(path: str | os.PathLike, group: str | None = None) -> Any:
    """``xarray.open_zarr`` of any zarr 3 store (mlr-dask's or another's) through a
    ``CheckedStore``: lazy, and a chunk that fails its crc32c, or is missing from an array that
    records that every chunk was written, raises DataError naming the store, the array and the
    chunk (also inside Dask tasks). FormatError when xarray cannot open it."""
    import xarray as xr

    loc = resolve_store(path)
    if not store_exists(loc):
        raise FormatError(f"no such store: {loc!r}")
    try:
        return xr.open_zarr(_checked(loc), group=group, consolidated=False, zarr_format=3)
    except InputError:
        raise
    except Exception as exc:
        raise FormatError(f"{loc!r} is not an xarray zarr store ({type(exc).__name__}: {exc})") \
            from None


def verify_store(path: str | os.PathLike, *, checksums: bool = False) -> dict[str, int]:
    """Check an mlr-dask store before work: format attributes, no missing chunk and, with
    ``checksums``, the crc32c of every chunk (reads the whole store, without decompressing).
    Raises FormatError / DataError naming the array and the chunk; returns counts
    ``{"arrays", "chunks_checked"}``."""
    from zarr.core.buffer import default_buffer_prototype

    group = open_group(path, max_version=10**6, verify=True)
    n_arrays = n_chunks = 0
    for _, arr in _arrays(group):
        n_arrays += 1
        if not checksums:
            continue
        store, prefix = _store_and_prefix(arr)
        base = f"{prefix}/" if prefix else ""
        for idx in itertools.product(*[range(int(c)) for c in arr.cdata_shape]):
            _sync(store.get(base + arr.metadata.encode_chunk_key(idx),
                            default_buffer_prototype()))
            n_chunks += 1
    return {"arrays": n_arrays, "chunks_checked": n_chunks}


def _chunks_in(arr: Any, selection: Any) -> Iterator[tuple[int, ...]]:
    """Chunk indices that a basic selection (slices / ints / Ellipsis) touches; all chunks for
    any other selection."""
    shape, chunks = arr.shape, arr.chunks
    sel = selection if isinstance(selection, tuple) else (selection,)
    if any(s is Ellipsis for s in sel):
        k = sel.index(Ellipsis)
        sel = sel[:k] + (slice(None),) * (len(shape) - len(sel) + 1) + sel[k + 1:]
    sel = sel + (slice(None),) * (len(shape) - len(sel))
    ranges = []
    for s, n, c in zip(sel, shape, chunks, strict=False):
        if isinstance(s, slice) and s.step in (None, 1):
            lo, hi, _ = s.indices(n)
            ranges.append(range(lo // c, max(lo // c, (max(hi, 1) - 1) // c) + 1))
        elif isinstance(s, int | np.integer):
            i = int(s) % n if n else 0
            ranges.append(range(i // c, i // c + 1))
        else:
            ranges.append(range(-(-n // c)))
    return itertools.product(*ranges)


def read_region(arr: Any, selection: Any = Ellipsis, *, name: str | None = None) -> np.ndarray:
    """``arr[selection]`` where any failure to read or decode a chunk becomes a DataError naming
    the store, the array and the chunk (found by reading the touched chunks one by one, only
    after a failure). For reads of older stores without checksums; stores opened by
    :func:`open_group` / :func:`open_array` already raise DataError for checksum errors."""
    try:
        return arr[selection]
    except InputError:
        raise
    except Exception as exc:
        store, prefix = _store_and_prefix(arr)
        label, name = _label_of(store), prefix if name is None else name
        for idx in _chunks_in(arr, selection):
            region = tuple(slice(i * c, min((i + 1) * c, n))
                           for i, c, n in zip(idx, arr.chunks, arr.shape, strict=True))
            try:
                arr[region]
            except Exception as inner:
                raise _damaged(label, name, tuple(idx),
                               f"does not decode ({type(inner).__name__}: {inner})") from None
        raise DataError(f"damaged store {label!r}: array {name!r} cannot be read "
                        f"({type(exc).__name__}: {exc})") from None
