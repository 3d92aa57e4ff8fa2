"""Bounds checked before work: memory, disk and chunk sizes, with the estimate in the message.

Every check is a few system calls; the estimates are upper bounds of what the command holds in
memory at once (``memory_factor`` copies of the largest array) or writes to disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mlr_dask.errors import InputError
from mlr_dask.paths import is_url

__all__ = ["available_memory", "check_memory", "check_disk", "check_chunk_items",
           "MIN_CHUNK_ITEMS", "fmt_bytes"]

#: rows/columns per chunk below which a task's work is dwarfed by its scheduling cost
MIN_CHUNK_ITEMS = 64


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(nbytes: float, what: str) -> None:
    """Refuse work that needs ``nbytes`` of memory at once when less is available."""
    free = available_memory()
    if nbytes > free:
        raise InputError(f"{what} needs about {fmt_bytes(nbytes)} of memory; "
                         f"{fmt_bytes(free)} is available")


def check_disk(location: str | os.PathLike, nbytes: float, what: str) -> None:
    """Refuse writing about ``nbytes`` at a local ``location`` (its parent directory's
    filesystem) when less space is free; object stores are not checked."""
    loc = os.fspath(location)
    if is_url(loc):
        return
    parent = Path(loc).parent
    free = shutil.disk_usage(parent if parent.exists() else Path.cwd()).free
    if nbytes > free:
        raise InputError(f"{what} writes about {fmt_bytes(nbytes)}; {fmt_bytes(free)} is free "
                         f"on the disk of {str(parent)!r}")


def check_chunk_items(items: int | None, what: str = "--chunk-items") -> None:
    """Refuse chunk sizes too small to be useful (``None`` means the default)."""
    if items is not None and items < MIN_CHUNK_ITEMS:
        raise InputError(f"{what} {items} is too small: at least {MIN_CHUNK_ITEMS} rows/columns "
                         "per chunk (each chunk is one task)")
