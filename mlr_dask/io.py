"""Zarr stores written by mlr-dask: atomic writes and format checks.

Every group written by the library carries two attributes: ``mlr_dask_format`` (what it holds,
e.g. ``"mlr-matrix"``) and ``format_version`` (an integer). Writers build the group under a
temporary name next to the target and rename it into place only when complete, so a crash never
leaves a half-written result under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlr_dask.errors import FormatError, InputError

FORMAT_KEY = "mlr_dask_format"
VERSION_KEY = "format_version"


@contextlib.contextmanager
def atomic_group(
    path: str | os.PathLike, kind: str, version: int, *, overwrite: bool = True
) -> Iterator[Any]:
    """Yield a new zarr group at a temporary path; rename it to ``path`` when the block ends
    without error, delete it otherwise."""
    import zarr

    target = Path(path)
    if target.exists() and not overwrite:
        raise InputError(f"output {str(target)!r} exists (use overwrite)")
    if not target.parent.exists():
        raise InputError(f"output directory {str(target.parent)!r} does not exist")
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    group = zarr.open_group(str(tmp), mode="w")
    group.attrs[FORMAT_KEY] = kind
    group.attrs[VERSION_KEY] = version
    try:
        yield group
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def open_group(path: str | os.PathLike, kind: str | None = None, max_version: int = 1) -> Any:
    """Open an mlr-dask zarr group read-only, checking its format name and version."""
    import zarr

    p = Path(path)
    if not p.exists():
        raise FormatError(f"no such store: {str(p)!r}")
    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store directory
        raise FormatError(f"{str(p)!r} is not a zarr group: {exc}") from None
    found = group.attrs.get(FORMAT_KEY)
    if found is None:
        raise FormatError(f"{str(p)!r} is not an mlr-dask store (no {FORMAT_KEY!r} attribute)")
    if kind is not None and found != kind:
        raise FormatError(f"{str(p)!r} holds {found!r}, expected {kind!r}")
    version = group.attrs.get(VERSION_KEY)
    if not isinstance(version, int) or version > max_version:
        raise FormatError(
            f"{str(p)!r} has format version {version!r}; this mlr-dask reads up to {max_version}"
        )
    return group
