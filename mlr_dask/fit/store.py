"""Dense matrix stores (zarr, format ``matrix`` v1) opened lazily, shared by the in-memory and
the Dask engines."""

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

    def __init__(self, path: str | os.PathLike) -> None:
        from mlr_dask.io import open_group

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


def load_matrix_store(path: str | os.PathLike) -> MatrixStore:
    """Open a dense matrix store written by ``mlr-dask generate`` (format checks included)."""
    return MatrixStore(path)
