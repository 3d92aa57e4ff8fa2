"""Rewrite a stored matrix in another order, out of core: ``B = A[pr][:, pc]`` for a zarr
array ``A`` too large for a worker, in two passes of tasks whose memory is bounded by a
number of matrix entries (``band_items``), not by the matrix.

Why: a fit on a learned hierarchy reads its chunks in hierarchy order. When the store is in
another order (the original order of the items), the rows of one chunk of the fit are scattered
over all stored row chunks, so each chunk of the fit decodes most of the store. Rewritten once
in hierarchy order, every chunk of the fit is a contiguous region of the new store.

The two passes (each a set of independent tasks, run by the current Dask scheduler):

1. columns: one task per band of ``h`` consecutive stored rows (``h n <= band_items``) reads
   the band window by window along the stored column chunks, puts every column at its new
   position, and writes the band into an intermediate array ``T = A[:, pc]`` (chunks
   ``h x w``). A band thinner than a stored row chunk decodes that chunk once per band.
2. rows: one task per band of ``w`` consecutive columns of ``T`` (``m w <= band_items``)
   reads the band chunk by chunk (each chunk of ``T`` decoded once), puts every row at its new
   position, and writes the band into ``B`` (chunks ``w x w``).

A pass whose permutation is the identity is skipped. Cost: the matrix read and written twice
(once when one side is already in order); memory per task: a band (``band_items`` numbers)
plus a stored chunk being decoded and a window of the band. Nothing is held between tasks.

The new store (format ``matrix`` v1, with the ``rows`` / ``cols`` hierarchies whose ``perm``
maps its positions to the original items) lives in a temporary directory:
:func:`scratch_location` puts it next to the input store by default (a hidden sibling with a
unique name), where every worker that reads the input also sees it; :class:`ScratchStore`
removes it when done, also after an error, and leftovers of killed writers on this host are
removed by the next one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy

__all__ = ["read_amplification", "reorder_array", "scratch_location", "scratch_bytes",
           "check_scratch_space", "ScratchSpaceError", "ScratchStore"]


# ------------------------------------------------------------------------------ planning
def _tiles_met(pos: np.ndarray, bounds: np.ndarray, step: int) -> int:
    """Stored chunks (of ``step`` items) met by the pieces ``pos[bounds[k]:bounds[k+1]]``,
    summed over the pieces."""
    return int(sum(np.unique(pos[a:b] // step).size
                   for a, b in zip(bounds[:-1], bounds[1:], strict=True)))


def read_amplification(ir: np.ndarray, ic: np.ndarray, rch: np.ndarray, cch: np.ndarray,
                       chunks: tuple[int, int]) -> float:
    """Stored chunks decoded by one pass of a fit over chunks ``rch`` x ``cch`` (boundaries
    in hierarchy positions; ``ir`` / ``ic``: stored row / column of each position), over the
    stored chunks (``chunks``: their shape): 1 when the fit's chunks are contiguous and
    aligned, up to the number of the fit's chunks when each meets every stored chunk. Cost
    O(m + n)."""
    sr, sc = int(chunks[0]), int(chunks[1])
    gr, gc = -(-ir.size // sr), -(-ic.size // sc)
    return (_tiles_met(ir, rch, sr) / gr) * (_tiles_met(ic, cch, sc) / gc)


def _bands(size: int, width: int) -> list[tuple[int, int]]:
    return [(a, min(a + width, size)) for a in range(0, size, width)]


def _decoded(bands: list[tuple[int, int]], step: int, size: int) -> float:
    """Stored chunks (``step`` items along the axis) met by the bands, summed, over the
    stored chunks along the axis: the passes over the store that reading the bands costs."""
    return sum((b - 1) // step - a // step + 1 for a, b in bands) / -(-size // step)


# ------------------------------------------------------------------------------ tasks
def _read(arr: Any, rs: slice, cs: slice) -> np.ndarray:
    return np.asarray(arr[rs, cs])


def columns_task(src: Any, r0: int, r1: int, inv_c: np.ndarray, dst: Any) -> int:
    """Pass 1 on rows ``r0:r1``: ``dst[r0:r1, inv_c[s]] = src[r0:r1, s]`` for every stored
    column ``s``, read window by window along ``src``'s column chunks. Memory: the band
    (``(r1 - r0) x n``) and one window. Returns the rows written."""
    n = int(src.shape[1])
    step = int(src.chunks[1])
    out = np.empty((r1 - r0, n), dtype=dst.dtype)
    for c0, c1 in _bands(n, step):
        out[:, inv_c[c0:c1]] = _read(src, slice(r0, r1), slice(c0, c1))
    dst[r0:r1, :] = out
    return r1 - r0


def rows_task(src: Any, c0: int, c1: int, inv_r: np.ndarray, dst: Any) -> int:
    """Pass 2 on columns ``c0:c1``: ``dst[inv_r[s], c0:c1] = src[s, c0:c1]`` for every row
    ``s``, read chunk by chunk along ``src``'s row chunks. Memory: the band (``m x (c1 - c0)``)
    and one chunk. Returns the columns written."""
    m = int(src.shape[0])
    step = int(src.chunks[0])
    out = np.empty((m, c1 - c0), dtype=dst.dtype)
    for r0, r1 in _bands(m, step):
        out[inv_r[r0:r1]] = _read(src, slice(r0, r1), slice(c0, c1))
    dst[:, c0:c1] = out
    return c1 - c0


def _inverse(p: np.ndarray) -> np.ndarray:
    inv = np.empty_like(p)
    inv[p] = np.arange(p.size, dtype=p.dtype)
    return inv


def _run(calls: list[tuple[Any, tuple[Any, ...]]], shared: dict[str, np.ndarray],
         in_process: bool) -> None:
    """Run ``f(*args)`` for each call, as Dask tasks unless ``in_process``; a string argument
    naming a key of ``shared`` is that array (one graph key for all tasks)."""
    if in_process:
        for f, args in calls:
            f(*[shared[a] if isinstance(a, str) and a in shared else a for a in args])
        return
    import dask

    keys = {k: dask.delayed(v, pure=True, traverse=False) for k, v in shared.items()}
    task = [dask.delayed(f, pure=False)(*[keys[a] if isinstance(a, str) and a in keys else a
                                          for a in args]) for f, args in calls]
    dask.compute(*task)


# ------------------------------------------------------------------------------ the rewrite
def reorder_array(src: Any, pr: np.ndarray, pc: np.ndarray, group: Any, *,
                  band_items: int, name: str = "A", in_process: bool = False,
                  report: Any = None) -> dict[str, float]:
    """Write ``src[pr][:, pc]`` (``src``: a 2-D zarr array (m, n); ``pr`` (m,) / ``pc`` (n,):
    the stored row / column at each new position, permutations) as array ``name`` of the
    writable zarr ``group`` (dims ``row``, ``col``; zstd + crc32c; chunks ``w x w`` with
    ``w = band_items // m``), in the two passes of the module docstring (the intermediate
    array ``_T`` is deleted at the end). ``band_items``: the entries one task may hold (at
    least ``max(m, n)``); ``in_process``: run the tasks in this process instead of with Dask;
    ``report(stage, step, total, **info)``: called after each pass. Returns the stored chunks
    decoded (``reads``) and the entries written (``writes``), in units of the matrix. Cost:
    those reads and writes, O(m n) copying."""
    from mlr_dask.io import create_array

    m, n = (int(s) for s in src.shape)
    pr, pc = np.asarray(pr, dtype=np.int64), np.asarray(pc, dtype=np.int64)
    if pr.shape != (m,) or pc.shape != (n,) or not (
            np.array_equal(np.sort(pr), np.arange(m)) and np.array_equal(np.sort(pc),
                                                                         np.arange(n))):
        raise InputError(f"reorder: pr and pc must be permutations of {m} and {n} items")
    if band_items < max(m, n):
        raise InputError(f"reorder: band_items {band_items} must be at least max(m, n) = "
                         f"{max(m, n)} (one row or column)")
    dtype = src.dtype if np.issubdtype(src.dtype, np.floating) else np.dtype(np.float64)
    w = int(max(1, min(n, band_items // m)))
    step_r = int(src.chunks[0])
    h = int(max(1, min(step_r, band_items // n)))
    h = -(-step_r // -(-step_r // h))  # equal bands inside a stored row chunk
    stats = {"reads": 0.0, "writes": 0.0}
    cols_moved = not np.array_equal(pc, np.arange(n))
    rows_moved = not np.array_equal(pr, np.arange(m))

    def column_pass(target: str, total: int) -> Any:
        """Pass 1: bands of rows with their columns moved, into a new array ``target``."""
        arr = create_array(group, target, shape=(m, n), dtype=dtype, dims=("row", "col"),
                           chunks=(h, w))
        calls = [(columns_task, (src, a, b, "ic", arr)) for a, b in _bands(m, h)]
        _run(calls, {"ic": _inverse(pc)}, in_process)
        stats["reads"] += _decoded(_bands(m, h), step_r, m)
        stats["writes"] += 1.0
        if report:
            report("reorder", 1, total, axis="columns", bands=len(calls))
        return arr

    if not rows_moved:  # pass 1 only (a copy when no column moves either)
        column_pass(name, 1)
        return stats
    T, bw = src, w
    if cols_moved:
        T = column_pass("_T", 2)
        stats["reads"] += 1.0  # pass 2 decodes each chunk of T once
    else:  # pass 2 straight from the input: bands of whole stored column chunks if they fit
        step_c = int(src.chunks[1])
        bw = w if w < step_c else step_c * (w // step_c)
        stats["reads"] += _decoded(_bands(n, bw), step_c, n)
    out = create_array(group, name, shape=(m, n), dtype=dtype, dims=("row", "col"),
                       chunks=(min(m, bw), bw))
    calls = [(rows_task, (T, a, b, "ir", out)) for a, b in _bands(n, bw)]
    _run(calls, {"ir": _inverse(pr)}, in_process)
    stats["writes"] += 1.0
    if T is not src:
        del group["_T"]
    if report:
        report("reorder", 1 + cols_moved, 1 + cols_moved, axis="rows", bands=len(calls))
    return stats


# ------------------------------------------------------------------------------ scratch
def _tag() -> str:
    from mlr_dask.io import _tag as io_tag

    return io_tag()


def scratch_directory(scratch: str | os.PathLike) -> str:
    """``scratch`` resolved (absolute path or URL); an InputError when it is a local path that
    is not an existing directory. Cost: one stat call."""
    from mlr_dask.paths import is_url, resolve_store

    where = resolve_store(scratch).rstrip("/")
    if not is_url(where) and not Path(where).is_dir():
        raise InputError(f"scratch directory {where!r} does not exist")
    return where


def scratch_location(input_path: str, scratch: str | os.PathLike | None = None) -> str:
    """Where a temporary store for the input store at ``input_path`` goes: a hidden sibling
    ``.<name>.reorder-<host>-<pid>-<random>`` of the input (so that the workers that read the
    input see it), or inside the directory ``scratch`` when given; when the input's directory
    is not writable, the system's temporary directory (which the workers of a cluster on
    other machines may not see: give ``scratch`` there). Leftovers of killed writers of this
    host next to the input are removed first."""
    from mlr_dask.io import _dead_writer
    from mlr_dask.paths import fs_of, is_url, resolve_store

    loc = resolve_store(input_path).rstrip("/")
    name = loc.rsplit("/", 1)[-1] or "matrix"
    base = f".{name}.reorder-"
    if scratch is not None:
        return f"{scratch_directory(scratch)}/{base}{_tag()}"
    if is_url(loc):
        fs_of(loc)
        return f"{loc.rsplit('/', 1)[0]}/{base}{_tag()}"
    parent = Path(loc).parent
    with contextlib.suppress(OSError):
        for p in parent.glob(f"{base}*"):
            if _dead_writer(p.name[len(base):]):
                shutil.rmtree(p, ignore_errors=True)
    if os.access(parent, os.W_OK | os.X_OK):
        return str(parent / f"{base}{_tag()}")
    return str(Path(tempfile.gettempdir()) / f"{base}{_tag()}")


class ScratchSpaceError(InputError):
    """The filesystem of a scratch location has less free space than a rewrite needs."""


def scratch_bytes(array: Any, rows_moved: bool = True, cols_moved: bool = True) -> int:
    """Disk space a rewrite of the zarr ``array`` holds at its peak, in bytes: the array's
    stored size (its chunk files, compressed; the uncompressed size when the store cannot say)
    once, twice when both rows and columns move (the intermediate ``T`` and the result exist
    together until ``T`` is deleted), plus a tenth for metadata and differences in
    compression. Cost: one listing of the array's chunks."""
    try:
        stored = int(array.nbytes_stored())
    except Exception:  # a store that cannot list its keys
        stored = 0
    size = stored if stored > 0 else int(np.prod(array.shape)) * max(array.dtype.itemsize, 8)
    copies = 2 if (rows_moved and cols_moved) else 1
    return int(1.1 * copies * size)


def check_scratch_space(location: str, nbytes: int) -> None:
    """Raise :class:`ScratchSpaceError` naming ``location`` when its filesystem has fewer than
    ``nbytes`` free bytes (local paths only: object stores are not checked). ``location``: a
    scratch store path from :func:`scratch_location` (its parent directory is checked)."""
    from mlr_dask.io import _size
    from mlr_dask.paths import is_url

    if is_url(location):
        return
    parent = Path(location).parent
    free = shutil.disk_usage(parent).free
    if nbytes > free:
        raise ScratchSpaceError(
            f"rewriting the matrix in hierarchy order needs about {_size(nbytes)} of scratch "
            f"space in {str(parent)!r}, which has {_size(free)} free; free space there, give "
            "another scratch directory, or do not reorder")


class ScratchStore:
    """A temporary ``matrix`` v1 store at ``path`` (see :func:`scratch_location`), removed by
    :meth:`remove` or at the end of a ``with`` block, also after an error. ``group``: the
    writable zarr group while it is written."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.group: Any = None

    def __enter__(self) -> ScratchStore:
        import zarr

        from mlr_dask.io import FORMAT_KEY, VERSION_KEY

        self.group = zarr.open_group(self.path, mode="w-", zarr_format=3)
        self.group.attrs.update({FORMAT_KEY: "matrix", VERSION_KEY: 1, "kind": "reordered"})
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def write_hierarchies(self, rows: Hierarchy, cols: Hierarchy) -> None:
        """Store ``rows`` / ``cols`` (their ``perm``: original item at each stored position)."""
        rows.write_zarr(self.group.create_group("rows"))
        cols.write_zarr(self.group.create_group("cols"))

    def remove(self) -> None:
        """Delete the store (no error when it is gone)."""
        from mlr_dask.paths import fs_of, is_url

        if is_url(self.path):
            with contextlib.suppress(Exception):
                fs, fpath = fs_of(self.path)
                fs.rm(fpath, recursive=True)
        else:
            shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def reordered_store(store: Any, pr: np.ndarray, pc: np.ndarray, rows: Hierarchy,
                    cols: Hierarchy, *, band_items: int, scratch: str | os.PathLike | None = None,
                    in_process: bool = False, report: Any = None
                    ) -> Iterator[tuple[Any, dict[str, float]]]:
    """The matrix store ``store`` (a :class:`~mlr_dask.fit.store.MatrixStore`) rewritten in
    the order ``pr`` / ``pc`` (stored positions) into a temporary store whose hierarchies are
    ``rows`` / ``cols`` (original items: ``rows.perm == store's stored item at pr``), opened
    as a MatrixStore; yields it and :func:`reorder_array`'s counts plus ``path``; the
    temporary store is removed when the block ends, also after an error. Raises
    :class:`ScratchSpaceError` before writing anything when the scratch location's filesystem
    lacks :func:`scratch_bytes`."""
    from mlr_dask.fit.store import load_matrix_store

    path = scratch_location(store.path, scratch)
    m, n = (int(s) for s in store.array.shape)
    check_scratch_space(path, scratch_bytes(
        store.array, rows_moved=not np.array_equal(pr, np.arange(m)),
        cols_moved=not np.array_equal(pc, np.arange(n))))
    with ScratchStore(path) as tmp:
        stats: dict[str, Any] = reorder_array(store.array, pr, pc, tmp.group,
                                              band_items=band_items, in_process=in_process,
                                              report=report)
        tmp.write_hierarchies(rows, cols)
        stats["path"] = path
        yield load_matrix_store(path), stats
