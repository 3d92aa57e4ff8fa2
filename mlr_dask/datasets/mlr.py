"""A random MLR matrix plus Gaussian noise, with a known hierarchy and ranks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix


def default_ranks(rank: int, n_levels: int) -> list[int]:
    """Split a total rank over ``n_levels`` levels: 1 for the last (diagonal) level, the rest
    as evenly as possible over the others (coarser levels first get the remainder)."""
    if n_levels < 1 or rank < n_levels:
        raise InputError(f"rank {rank} cannot give every one of {n_levels} levels a rank >= 1")
    if n_levels == 1:
        return [rank]
    base, extra = divmod(rank - 1, n_levels - 1)
    return [base + (1 if i < extra else 0) for i in range(n_levels - 1)] + [1]


def mlr_plus_noise(
    m: int,
    n: int | None = None,
    *,
    rank: int = 24,
    n_levels: int | None = None,
    ranks: Sequence[int] | None = None,
    noise: float = 0.1,
    permute: bool = True,
    rng: np.random.Generator | int | None = 0,
) -> tuple[MLRMatrix, np.ndarray]:
    """A random MLR matrix ``A_true`` (dyadic hierarchy, last level atoms of rank 1) and
    ``A = A_true + E`` with ``||E||_F = noise * ||A_true||_F``.

    Returns ``(A_true, A)`` with ``A`` the dense (m, n) matrix in original order; rows and
    columns are randomly permuted when ``permute``. Materializes m x n numbers.
    """
    n = m if n is None else n
    rng = np.random.default_rng(rng)
    short = min(m, n)
    if n_levels is None:
        n_levels = max(2, min(int(np.log2(short)) - 2, 8))
    if ranks is None:
        ranks = default_ranks(rank, n_levels)
    if len(ranks) != n_levels:
        raise InputError(f"ranks has {len(ranks)} entries for {n_levels} levels")
    if 2 ** (n_levels - 2) > short:
        raise InputError(f"{n_levels} levels need at least {2 ** (n_levels - 2)} rows and columns")
    if noise < 0 or not np.isfinite(noise):
        raise InputError(f"noise must be a finite non-negative number, got {noise}")
    rows = Hierarchy.dyadic(m, n_levels - 1)
    cols = Hierarchy.dyadic(n, n_levels - 1)
    # last level: split row block k into a_k blocks and col block k likewise (a_k = the
    # smaller side), giving min(m, n) "atoms" when the shorter side becomes singletons
    counts = np.minimum(rows.block_sizes(-1), cols.block_sizes(-1))
    rows, cols = rows.refine(counts), cols.refine(counts)
    for lvl, r in enumerate(ranks):
        cap = int(min(rows.block_sizes(lvl).min(), cols.block_sizes(lvl).min()))
        if r > cap:
            raise InputError(f"rank {r} of level {lvl} is larger than its smallest block ({cap})")
    if permute:
        rows = rows.with_perm(rng.permutation(m))
        cols = cols.with_perm(rng.permutation(n))
    truth = MLRMatrix.random(rows, cols, ranks, rng=rng)
    A = truth.to_dense()
    E = rng.standard_normal((m, n))
    scale = noise * np.linalg.norm(A) / max(np.linalg.norm(E), 1e-300)
    A += scale * E
    return truth, A


def write_matrix_store(
    path: Any,
    A_hier: np.ndarray,
    *,
    kind: str,
    rows: Hierarchy | None = None,
    cols: Hierarchy | None = None,
    truth: MLRMatrix | None = None,
    attrs: dict[str, Any] | None = None,
    chunk: int = 2048,
    overwrite: bool = False,
) -> None:
    """Write a dense matrix store (format ``matrix`` v1): array ``A`` (dims ``row``, ``col``;
    zstd + crc32c) in hierarchy order when ``rows``/``cols`` are given (their ``perm`` maps
    stored positions to original indices), optional true factors under ``truth``. Written
    under a temporary name, then renamed; an existing ``path`` is refused unless it is a
    ``matrix`` store and ``overwrite`` (:func:`mlr_dask.io.check_output`)."""
    from mlr_dask.io import atomic_group, create_array

    with atomic_group(path, "matrix", 1, overwrite=overwrite) as g:
        g.attrs["kind"] = kind
        for key, value in (attrs or {}).items():
            g.attrs[key] = value
        m, n = A_hier.shape
        arr = create_array(g, "A", shape=(m, n), dtype=A_hier.dtype, dims=("row", "col"),
                           chunks=(min(chunk, m), min(chunk, n)))
        arr[:] = A_hier
        if rows is not None:
            rows.write_zarr(g.create_group("rows"))
        if cols is not None:
            cols.write_zarr(g.create_group("cols"))
        if truth is not None:
            truth.write_zarr(g.create_group("truth"))
