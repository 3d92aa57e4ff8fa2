"""Synthetic data for multilevel factor models (the generator of issue 3, reproducible across
implementations).

With ``n`` features, already in hierarchy order:

- level boundaries ``np.linspace(0, n, G, dtype=int)`` for ``G = 2, 5, 9, 17, 33``, then entry
  ``-2`` of level 1 and entry ``-4`` of level 2 are deleted (groups per level 1, 3, 7, 16, 32);
- ranks 30, 20, 10, 5, 4 (R = 69) and the diagonal;
- ``rng = np.random.default_rng(seed)``: ``F = rng.standard_normal((n, R))``;
  ``D = rng.uniform(0, 2 * mean_i(sum_j F_ij^2) / 4, n)`` (signal-to-noise 4);
- samples from ``np.random.default_rng(seed + 1000)`` (train) and ``(seed + 2000)`` (test):
  for each level, for each group in order, ``z = rng.standard_normal((N, r_l))``,
  ``Y[:, group] += z @ F[group, level columns].T``; then
  ``Y += rng.standard_normal((N, n)) * sqrt(D)``; each column is centred.

``leaves`` replaces the last level's ``G`` by ``leaves + 1`` (a multiple of 16 keeps the levels
nested).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy

__all__ = ["FMProblem", "fm_hierarchy", "fm_truth", "fm_samples", "generate_fm", "write_fm"]

DEFAULT_POINTS = (2, 5, 9, 17, 33)
DEFAULT_DELETIONS = ((1, -2), (2, -4))
DEFAULT_RANKS = (30, 20, 10, 5, 4)


@dataclass(frozen=True)
class FMProblem:
    """A synthetic problem: ``hierarchy`` (factor levels, identity perm), ``ranks``, true
    ``F`` (n, R) and ``D`` (n,), ``Y`` and ``Y_test`` (N, n)."""

    hierarchy: Hierarchy
    ranks: tuple[int, ...]
    F: np.ndarray
    D: np.ndarray
    Y: np.ndarray
    Y_test: np.ndarray


def fm_hierarchy(
    n: int,
    points: Sequence[int] = DEFAULT_POINTS,
    deletions: Sequence[tuple[int, int]] = DEFAULT_DELETIONS,
    leaves: int | None = None,
) -> Hierarchy:
    """The nested linspace hierarchy of the generator (see module docstring)."""
    pts = list(points)
    if leaves is not None:
        pts[-1] = int(leaves) + 1
    bounds = [np.linspace(0, n, G, dtype=int) for G in pts]
    for lvl, idx in deletions:
        if lvl < len(bounds):
            bounds[lvl] = np.delete(bounds[lvl], idx)
    return Hierarchy.from_boundaries(bounds)


def fm_truth(n: int, ranks: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True compressed loadings F (n, R) and noise D (n,)."""
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n, int(sum(ranks))))
    D = rng.uniform(0, 2 * np.mean(np.sum(F**2, axis=1)) / 4, n)
    return F, D


def fm_samples(h: Hierarchy, ranks: Sequence[int], F: np.ndarray, D: np.ndarray,
               n_samples: int, seed: int) -> np.ndarray:
    """(N, n) centred samples drawn level by level, group by group (module docstring)."""
    rng = np.random.default_rng(seed)
    n = h.n
    Y = np.zeros((n_samples, n))
    offsets = np.concatenate(([0], np.cumsum(ranks)))
    for lvl, r in enumerate(ranks):
        b = h.boundaries[lvl]
        cols = slice(int(offsets[lvl]), int(offsets[lvl + 1]))
        for g in range(b.size - 1):
            z = rng.standard_normal((n_samples, r))
            Y[:, b[g]:b[g + 1]] += z @ F[b[g]:b[g + 1], cols].T
    Y += rng.standard_normal((n_samples, n)) * np.sqrt(D)
    Y -= Y.mean(axis=0)
    return Y


def generate_fm(
    n: int = 10_000,
    n_samples: int = 280,
    seed: int = 1001,
    *,
    ranks: Sequence[int] = DEFAULT_RANKS,
    points: Sequence[int] = DEFAULT_POINTS,
    deletions: Sequence[tuple[int, int]] = DEFAULT_DELETIONS,
    leaves: int | None = None,
    n_test: int | None = None,
) -> FMProblem:
    """Generate a problem in memory (float64)."""
    ranks = tuple(int(r) for r in ranks)
    if n < 1 or n_samples < 2:
        raise InputError("need n >= 1 and at least 2 samples")
    if len(ranks) != len(points):
        raise InputError(f"{len(ranks)} ranks for {len(points)} levels")
    h = fm_hierarchy(n, points, deletions, leaves)
    for lvl, r in enumerate(ranks):
        if r < 1 or r > int(h.block_sizes(lvl).min()):
            raise InputError(f"rank {r} of level {lvl} does not fit its groups "
                             f"(smallest has {int(h.block_sizes(lvl).min())} features)")
    F, D = fm_truth(n, ranks, seed)
    Y = fm_samples(h, ranks, F, D, n_samples, seed + 1000)
    Yt = fm_samples(h, ranks, F, D, n_test or n_samples, seed + 2000)
    return FMProblem(h, ranks, F, D, Y, Yt)


def write_fm(path: str | os.PathLike, problem: FMProblem, *, dtype: Any = np.float64,
             attrs: dict | None = None, chunk_bytes: int = 8 * 2**20,
             overwrite: bool = False) -> None:
    """Write a problem as an ``fm-data`` store (atomically): ``Y`` (dims ``sample``,
    ``feature``), ``Y_test`` (``test_sample``, ``feature``), ``features`` and the true model in
    ``truth`` (an ``fm-model`` group). The zarr chunks hold all samples and as many features as
    the smallest leaf (so equal leaves align with chunks), at most ``chunk_bytes`` each; they
    are not compressed (Gaussian data do not compress, and a reader then needs no
    decompression buffers) but carry a crc32c checksum. An existing ``path`` is refused unless
    it is an ``fm-data`` store and ``overwrite`` (:func:`mlr_dask.io.check_output`)."""
    from mlr_dask.fm.inputs import DATA_FORMAT, DATA_VERSION
    from mlr_dask.fm.model import write_model_group
    from mlr_dask.io import atomic_group, create_array

    N, n = problem.Y.shape
    cap = max(1, chunk_bytes // (np.dtype(dtype).itemsize * N))
    width = int(max(1, min(n, cap, int(problem.hierarchy.block_sizes(-1).min()))))
    with atomic_group(path, DATA_FORMAT, DATA_VERSION, overwrite=overwrite) as g:
        for name, arr, dim in (("Y", problem.Y, "sample"),
                               ("Y_test", problem.Y_test, "test_sample")):
            a = create_array(g, name, shape=arr.shape, dtype=dtype, dims=(dim, "feature"),
                             chunks=(arr.shape[0], width), compress=False)
            a[...] = arr.astype(dtype)
        problem.hierarchy.write_zarr(g.create_group("features"))
        write_model_group(g.create_group("truth"), problem.hierarchy, problem.ranks,
                          problem.F, problem.D, np.zeros(n))
        g.attrs.update({"kind": "fm", "n": n, "n_samples": N,
                        "n_test": int(problem.Y_test.shape[0]),
                        "ranks": list(problem.ranks), "dtype": np.dtype(dtype).name,
                        **(attrs or {})})
