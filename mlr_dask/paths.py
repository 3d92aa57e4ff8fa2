"""Store locations: resolved once, on the client, before any path reaches a worker.

A store is named by a local path (relative or absolute, ``~`` allowed) or by a URL that zarr 3
opens through fsspec (``memory://``, ``s3://``, ``gs://``, ... when that filesystem's package is
installed). :func:`resolve_store` turns a local path into an absolute one in the client's
working directory and a ``file://`` URL into its local path, so a task never depends on a
worker's working directory. Other URLs pass unchanged.

Local stores are written under a temporary name and renamed into place (atomic on one
filesystem); object stores have no rename, so writers there write in place and say so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlr_dask.errors import InputError

__all__ = ["is_url", "resolve_store", "store_exists", "is_local", "fs_of"]


def is_url(location: str | os.PathLike) -> bool:
    """Whether ``location`` is a URL with a scheme (``memory://x``), not a local path."""
    text = os.fspath(location)
    return "://" in text and bool(urlparse(text).scheme)


def resolve_store(location: str | os.PathLike) -> str:
    """The canonical form of a store location: an absolute local path (symlinks kept, ``..``
    folded) or a URL other than ``file://``. Pure string work plus one ``getcwd``; the store need
    not exist."""
    if isinstance(location, str) and not location.strip():
        raise InputError("empty store path")
    text = os.fspath(location)
    if is_url(text):
        parsed = urlparse(text)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise InputError(f"file URL with a host is not supported: {text!r}")
            return os.path.abspath(parsed.path)
        return text
    return os.path.abspath(os.path.expanduser(text))


def is_local(location: str | os.PathLike) -> bool:
    """Whether a resolved location is on the local filesystem."""
    return not is_url(location)


def fs_of(location: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL; raises InputError when the URL's
    filesystem package is not installed."""
    import fsspec

    try:
        return fsspec.url_to_fs(location)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open {location!r}: {exc}") from None


def store_exists(location: str | os.PathLike) -> bool:
    """Whether something exists at a store location (local path or URL)."""
    loc = resolve_store(location)
    if is_local(loc):
        return Path(loc).exists()
    fs, path = fs_of(loc)
    return bool(fs.exists(path))
