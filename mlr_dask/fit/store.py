"""Dense matrix stores opened lazily, shared by the in-memory and the Dask engines.

Three layouts are read:

- mlr-dask's own (format ``matrix`` v1, written by ``mlr-dask generate``): the array ``A`` in
  stored order, with optional ``rows`` / ``cols`` hierarchies;
- any zarr 3 store whose root is a 2-D array;
- any zarr 3 group holding 2-D arrays, e.g. an xarray Dataset written with ``to_zarr`` (name
  the variable with ``array=``; the only 2-D array is taken by default).

The last two are in original order, with no stored hierarchy. To write one from Python::

    xr.Dataset({"K": (("row", "col"), K)}).to_zarr("K.zarr")     # or
    zarr.create_array("K.zarr", data=K)
"""

from __future__ import annotations

import os

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy

__all__ = ["MatrixStore", "load_matrix_store"]


class MatrixStore:
    """A dense matrix store (format ``matrix`` v1) opened lazily.

    ``array``: the zarr array ``A`` in stored order; ``rows`` / ``cols``: the stored hierarchies
    (``None`` when the store is in original order); ``attrs``: the group attributes.
    """

    def __init__(self, path: str | os.PathLike, array: str | None = None) -> None:
        from mlr_dask.io import open_group, store_kind

        kind = store_kind(path)
        if kind is None:  # another writer's zarr store: a 2-D array or a group holding some
            self._open_plain(path, array)
            return
        if array not in (None, "A"):
            raise InputError(f"matrix store {str(path)!r} holds its matrix in 'A', not "
                             f"{array!r}")
        g = open_group(path, "matrix", 1)
        if "A" not in g:
            raise InputError(f"matrix store {str(path)!r} has no array 'A'")
        self.path = str(path)
        self.array = g["A"]
        if len(self.array.shape) != 2:
            raise InputError(f"array 'A' must be 2-D, got shape {self.array.shape}")
        self.rows = Hierarchy.read_zarr(g["rows"]) if "rows" in g else None
        self.cols = Hierarchy.read_zarr(g["cols"]) if "cols" in g else None
        if (self.rows is None) != (self.cols is None):
            raise InputError("matrix store has only one of the 'rows' / 'cols' hierarchies")
        m, n = self.array.shape
        if self.rows is not None and (self.rows.n != m or self.cols.n != n):
            raise InputError("the stored hierarchies do not match the size of 'A'")
        self.attrs = dict(g.attrs)

    def _open_plain(self, path: str | os.PathLike, array: str | None) -> None:
        import zarr

        from mlr_dask.errors import FormatError
        from mlr_dask.paths import resolve_store, store_exists

        loc = resolve_store(path)
        if not store_exists(loc):
            raise FormatError(f"no such store: {loc!r}")
        try:
            node = zarr.open(loc, mode="r")
        except Exception as exc:  # zarr raises several types for what is not a store
            raise FormatError(f"{loc!r} is not a zarr store ({type(exc).__name__})") from None
        if isinstance(node, zarr.Array):
            if array is not None:
                raise InputError(f"{loc!r} is a single array; drop --array {array!r}")
            arr = node
        else:
            two_d = sorted(name for name, a in node.arrays() if a.ndim == 2)
            if array is None:
                if len(two_d) != 1:
                    raise InputError(f"{loc!r} holds {len(two_d)} 2-D arrays {two_d}: name "
                                     "one with --array")
                array = two_d[0]
            if array not in node.array_keys():
                raise InputError(f"{loc!r} has no array {array!r} (2-D arrays: {two_d})")
            arr = node[array]
        if arr.ndim != 2:
            raise InputError(f"array {array or 'at the root'!r} of {loc!r} must be 2-D, got "
                             f"shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise InputError(f"array {array!r} of {loc!r} holds {arr.dtype}, not real numbers")
        self.path = loc
        self.array = arr
        self.rows = self.cols = None
        self.attrs = dict(arr.attrs)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def dense_original(self) -> np.ndarray:
        """The whole matrix in original order (materializes m x n numbers)."""
        A = np.asarray(self.array[...], dtype=np.float64)
        if self.rows is None:
            return A
        out = np.empty_like(A)
        out[np.ix_(self.rows.perm, self.cols.perm)] = A
        return out


def load_matrix_store(path: str | os.PathLike, array: str | None = None) -> MatrixStore:
    """Open a dense matrix store (format checks included; see the module docstring for the
    layouts). Reads metadata only."""
    return MatrixStore(path, array)
