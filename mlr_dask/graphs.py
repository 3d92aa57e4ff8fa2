"""Dask graphs for the foundation: a stored dense matrix against an MLR matrix.

Everything here builds graphs from blockwise operations and a tree reduction; the functions
run inside the tasks are plain numpy (``MLRMatrix.submatrix``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mlr_dask.errors import FormatError, InputError
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.io import open_group
from mlr_dask.mlr import MLRMatrix


def open_matrix(path: str | os.PathLike) -> tuple[Any, Hierarchy | None, Hierarchy | None, Any]:
    """Open a dense matrix store lazily: ``(A, rows, cols, group)`` with ``A`` a dask array in
    stored (hierarchy) order, one dask chunk per zarr chunk, and the stored hierarchies (or
    ``None`` when the matrix is stored in original order)."""
    import dask.array as da

    g = open_group(path, "matrix", 1)
    if "A" not in g.array_keys():
        raise FormatError(f"matrix store {str(path)!r} has no array 'A'")
    z = g["A"]
    if len(z.shape) != 2:
        raise FormatError(f"array 'A' in {str(path)!r} has shape {z.shape}, expected 2-D")
    A = da.from_zarr(z)
    rows = Hierarchy.read_zarr(g["rows"]) if "rows" in g.group_keys() else None
    cols = Hierarchy.read_zarr(g["cols"]) if "cols" in g.group_keys() else None
    return A, rows, cols, g


def _sq_residual_block(block: np.ndarray, mlr: MLRMatrix, block_info: Any = None) -> np.ndarray:
    (r0, r1), (c0, c1) = block_info[0]["array-location"]
    diff = block - mlr.submatrix(slice(r0, r1), slice(c0, c1))
    return np.array([[np.einsum("ij,ij->", diff, diff), np.einsum("ij,ij->", block, block)]])


def residual_norms(A_hier: Any, mlr: MLRMatrix) -> Any:
    """Lazy ``(||A - A_mlr||_F^2, ||A||_F^2)`` for a dask array ``A_hier`` in the hierarchy
    order of ``mlr`` (one pass over A; memory per task: one chunk)."""
    if tuple(A_hier.shape) != mlr.shape:
        raise InputError(f"matrix has shape {A_hier.shape}, the MLR matrix {mlr.shape}")
    nb = A_hier.numblocks
    parts = A_hier.map_blocks(
        _sq_residual_block, mlr, dtype=np.float64,
        chunks=((1,) * nb[0], (2,) * nb[1]),
    )
    return parts.sum(axis=0).reshape(nb[1], 2).sum(axis=0)
