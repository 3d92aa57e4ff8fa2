"""A nested partition of one axis (rows or columns, or features) into contiguous blocks.

A :class:`Hierarchy` of ``n`` items with ``L`` levels holds

- ``perm`` (n,): position ``i`` of the hierarchy order holds original item ``perm[i]``;
- ``boundaries``: one strictly increasing integer array per level, coarse to fine, each from 0
  to ``n``; level ``l`` has ``len(boundaries[l]) - 1`` blocks and block ``k`` spans positions
  ``[boundaries[l][k], boundaries[l][k + 1])`` of the hierarchy order.

Level 0 is the root (one block). Every level refines the one before it: its boundaries contain
the boundaries of the coarser level. The object is immutable and validates itself on creation.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from mlr_dask.errors import InputError

__all__ = ["Hierarchy"]


def _as_bounds(b: Any, level: int) -> np.ndarray:
    arr = np.asarray(b)
    if arr.ndim != 1:
        raise InputError(
            f"boundaries of level {level} must be one-dimensional, got shape {arr.shape}"
        )
    if arr.size < 2:
        raise InputError(f"boundaries of level {level} need at least two entries (0 and n)")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(f"boundaries of level {level} must be integers")
    return arr.astype(np.int64)


class Hierarchy:
    """Immutable nested contiguous partition of ``n`` items (see module docstring).

    Build it with :meth:`from_boundaries`, :meth:`from_labels`, :meth:`dyadic` or
    :meth:`random`; :meth:`refine` adds a finer level.
    """

    __slots__ = ("_perm", "_bounds", "level_names", "__dict__")

    def __init__(
        self,
        boundaries: Sequence[Any],
        perm: Any = None,
        *,
        level_names: Sequence[str] | None = None,
    ) -> None:
        if len(boundaries) == 0:
            raise InputError("a hierarchy needs at least one level")
        bounds = tuple(_as_bounds(b, i) for i, b in enumerate(boundaries))
        n = int(bounds[0][-1])
        for lvl, b in enumerate(bounds):
            if b[0] != 0 or b[-1] != n:
                raise InputError(
                    f"level {lvl} does not cover the items: its boundaries run from {b[0]} to "
                    f"{b[-1]}, expected 0 to {n}"
                )
            steps = np.diff(b)
            if np.any(steps < 0):
                raise InputError(f"boundaries of level {lvl} are not sorted")
            if np.any(steps == 0):
                k = int(np.flatnonzero(steps == 0)[0])
                raise InputError(f"level {lvl} has an empty block (block {k})")
        if n == 0:
            raise InputError("a hierarchy needs at least one item")
        if bounds[0].size != 2:
            raise InputError(
                f"level 0 must be the root (one block [0, {n}]), got {bounds[0].size - 1} blocks"
            )
        for lvl in range(1, len(bounds)):
            missing = np.setdiff1d(bounds[lvl - 1], bounds[lvl], assume_unique=True)
            if missing.size:
                raise InputError(
                    f"level {lvl} is not nested in level {lvl - 1}: boundary {int(missing[0])} "
                    f"of level {lvl - 1} is missing"
                )
        if perm is None:
            p = np.arange(n, dtype=np.int64)
        else:
            p = np.asarray(perm)
            if p.shape != (n,):
                raise InputError(f"perm has shape {p.shape}, expected ({n},)")
            if not np.issubdtype(p.dtype, np.integer):
                raise InputError("perm must hold integers")
            p = p.astype(np.int64)
            seen = np.zeros(n, dtype=bool)
            if p.min() < 0 or p.max() >= n:
                raise InputError(f"perm is not a permutation of 0..{n - 1}")
            seen[p] = True
            if not seen.all():
                raise InputError(f"perm is not a permutation of 0..{n - 1}")
        if level_names is not None and len(level_names) != len(bounds):
            raise InputError(
                f"level_names has {len(level_names)} entries for {len(bounds)} levels"
            )
        for b in bounds:
            b.setflags(write=False)
        p.setflags(write=False)
        self._perm = p
        self._bounds = bounds
        self.level_names = tuple(level_names) if level_names is not None else None

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_boundaries(cls, boundaries: Sequence[Any], perm: Any = None) -> Hierarchy:
        """Hierarchy from boundaries per level (coarse to fine) and an optional permutation."""
        return cls(boundaries, perm)

    @classmethod
    def from_labels(
        cls, labels: Sequence[Any], *, level_names: Sequence[str] | None = None
    ) -> Hierarchy:
        """Hierarchy from per-item labels, one array per level (coarse to fine), original order.

        Items are ordered by a stable sort of their label path (level 0 label, level 1 label,
        ...); a group at level ``l`` is the set of items sharing the first ``l + 1`` labels, so
        equal labels under different parents are different groups. A root level (one block) is
        put in front unless the first labels are all equal.
        """
        if len(labels) == 0:
            raise InputError("from_labels needs at least one label array")
        arrays = [np.asarray(lab) for lab in labels]
        n = arrays[0].shape[0] if arrays[0].ndim == 1 else -1
        codes = []
        for lvl, lab in enumerate(arrays):
            if lab.ndim != 1 or lab.shape[0] != n:
                raise InputError(
                    f"labels of level {lvl} have shape {lab.shape}, expected ({n},) like level 0"
                )
            if lab.dtype.kind == "f" and np.isnan(lab).any():
                raise InputError(f"labels of level {lvl} contain NaN")
            codes.append(np.unique(lab, return_inverse=True)[1].reshape(-1))
        if n == 0:
            raise InputError("labels are empty")
        perm = np.lexsort(codes[::-1])  # primary key: level 0; stable
        bounds = []
        changed = np.zeros(n - 1, dtype=bool)
        for c in codes:
            cs = c[perm]
            changed |= cs[1:] != cs[:-1]
            bounds.append(np.concatenate(([0], np.flatnonzero(changed) + 1, [n])))
        names = list(level_names) if level_names is not None else None
        if bounds[0].size > 2:
            bounds.insert(0, np.array([0, n]))
            if names is not None:
                names.insert(0, "root")
        return cls(bounds, perm, level_names=names)

    @classmethod
    def from_coords(cls, obj: Any, dim: str, names: Sequence[str]) -> Hierarchy:
        """Hierarchy of dimension ``dim`` of an xarray object from the coordinates ``names``
        (coarse to fine) that hold each item's label on ``dim`` (e.g. sector, industry)."""
        if dim not in obj.dims:
            raise InputError(f"dimension {dim!r} not found; dimensions are {list(obj.dims)}")
        labels = []
        for name in names:
            if name not in obj.coords:
                raise InputError(f"coordinate {name!r} not found; coordinates are "
                                 f"{list(obj.coords)}")
            coord = obj.coords[name]
            if coord.dims != (dim,):
                raise InputError(f"coordinate {name!r} has dims {coord.dims}, expected ({dim!r},)")
            labels.append(coord.values)
        return cls.from_labels(labels, level_names=list(names))

    @classmethod
    def dyadic(cls, n: int, n_levels: int, *, perm: Any = None) -> Hierarchy:
        """Repeated bisection: level ``l`` has ``2**l`` near-equal blocks, l = 0..n_levels-1."""
        n, n_levels = int(n), int(n_levels)
        if n_levels < 1:
            raise InputError("n_levels must be at least 1")
        if 2 ** (n_levels - 1) > n:
            raise InputError(
                f"{n_levels} dyadic levels need at least {2 ** (n_levels - 1)} items, got {n}"
            )
        bounds = [np.unique(np.linspace(0, n, 2**lvl + 1).round().astype(np.int64))
                  for lvl in range(n_levels)]
        return cls(bounds, perm)

    @classmethod
    def random(
        cls,
        n: int,
        n_levels: int,
        *,
        max_children: int = 3,
        permute: bool = True,
        rng: np.random.Generator | int | None = None,
    ) -> Hierarchy:
        """Random nested partition: each block splits into 1..max_children non-empty blocks."""
        rng = np.random.default_rng(rng)
        n = int(n)
        if n < 1 or n_levels < 1:
            raise InputError("random hierarchy needs n >= 1 and n_levels >= 1")
        bounds = [np.array([0, n], dtype=np.int64)]
        for _ in range(1, n_levels):
            prev = bounds[-1]
            new = [prev]
            for a, b in zip(prev[:-1], prev[1:], strict=True):
                k = int(rng.integers(1, max_children + 1))
                k = min(k, int(b - a))
                if k > 1:
                    new.append(rng.choice(np.arange(a + 1, b), size=k - 1, replace=False))
            bounds.append(np.unique(np.concatenate(new)))
        perm = rng.permutation(n) if permute else None
        return cls(bounds, perm)

    def refine(self, counts: Any) -> Hierarchy:
        """A new hierarchy with one more level: finest block ``k`` split into ``counts[k]``
        near-equal parts (``counts = self.block_sizes(-1)`` gives singletons, "atoms")."""
        counts = np.asarray(counts, dtype=np.int64)
        sizes = self.block_sizes(-1)
        if counts.shape != sizes.shape:
            raise InputError(f"counts has shape {counts.shape}, expected {sizes.shape}")
        if np.any(counts < 1) or np.any(counts > sizes):
            raise InputError("each block must split into between 1 and its size parts")
        last = self._bounds[-1]
        parts = [
            (a + np.linspace(0, s, c + 1).round().astype(np.int64))[:-1]
            for a, s, c in zip(last[:-1], sizes, counts, strict=True)
        ]
        new = np.concatenate([*parts, [self.n]])
        names = None if self.level_names is None else (*self.level_names, "leaf")
        return Hierarchy((*self._bounds, new), self._perm, level_names=names)

    def with_perm(self, perm: Any) -> Hierarchy:
        """The same blocks over another permutation of the items."""
        return Hierarchy(self._bounds, perm, level_names=self.level_names)

    def truncate(self, n_levels: int) -> Hierarchy:
        """The first ``n_levels`` levels."""
        if not 1 <= n_levels <= self.n_levels:
            raise InputError(f"cannot keep {n_levels} of {self.n_levels} levels")
        names = None if self.level_names is None else self.level_names[:n_levels]
        return Hierarchy(self._bounds[:n_levels], self._perm, level_names=names)

    # ------------------------------------------------------------------ basic attributes
    @property
    def perm(self) -> np.ndarray:
        """(n,) position ``i`` of the hierarchy order holds original item ``perm[i]``."""
        return self._perm

    @cached_property
    def iperm(self) -> np.ndarray:
        """(n,) inverse permutation: original item ``j`` sits at position ``iperm[j]``."""
        inv = np.empty_like(self._perm)
        inv[self._perm] = np.arange(self.n)
        inv.setflags(write=False)
        return inv

    @property
    def boundaries(self) -> tuple[np.ndarray, ...]:
        return self._bounds

    @property
    def n(self) -> int:
        return int(self._bounds[0][-1])

    @property
    def n_levels(self) -> int:
        return len(self._bounds)

    @property
    def n_blocks(self) -> tuple[int, ...]:
        """Number of blocks per level."""
        return tuple(b.size - 1 for b in self._bounds)

    def block_sizes(self, level: int) -> np.ndarray:
        return np.diff(self._bounds[level])

    @property
    def has_atoms(self) -> bool:
        """True when the finest level is made of single items."""
        return self.n_blocks[-1] == self.n

    # ------------------------------------------------------------------ tree queries
    def block_of(self, level: int) -> np.ndarray:
        """(n,) the level-``level`` block of each position of the hierarchy order."""
        b = self._bounds[level]
        return np.repeat(np.arange(b.size - 1), np.diff(b))

    def parents(self, level: int) -> np.ndarray:
        """(p_level,) for each block of ``level`` (>= 1), its block at ``level - 1``."""
        if not 1 <= level < self.n_levels:
            raise InputError(f"level {level} has no parent level")
        starts = self._bounds[level][:-1]
        return np.searchsorted(self._bounds[level - 1], starts, side="right") - 1

    def children(self, level: int, block: int) -> range:
        """The blocks of ``level + 1`` inside block ``block`` of ``level``."""
        b, f = self._bounds[level], self._bounds[level + 1]
        lo = int(np.searchsorted(f, b[block]))
        hi = int(np.searchsorted(f, b[block + 1]))
        return range(lo, hi)

    @cached_property
    def ancestors(self) -> np.ndarray:
        """(p_finest, n_levels) block index at every level of each finest block (leaf)."""
        starts = self._bounds[-1][:-1]
        out = np.stack(
            [np.searchsorted(b, starts, side="right") - 1 for b in self._bounds], axis=1
        )
        out.setflags(write=False)
        return out

    def leaves_in(self, start: int, stop: int) -> range:
        """Leaves (finest blocks) lying entirely inside positions ``[start, stop)``."""
        f = self._bounds[-1]
        lo = int(np.searchsorted(f, start, side="left"))
        hi = int(np.searchsorted(f, stop, side="right")) - 1
        return range(lo, max(lo, hi))

    def leaf_chunks(self, max_items: int, level: int = -1) -> np.ndarray:
        """Boundaries (positions) of chunks made of whole blocks of ``level``, each holding at
        most ``max_items`` items, except a single block larger than that, which is its own chunk.
        Greedy from the left; the chunk boundaries are a subset of the level's boundaries."""
        if max_items < 1:
            raise InputError("max_items must be at least 1")
        b = self._bounds[level]
        out = [0]
        for k in range(1, b.size):
            if b[k] - out[-1] > max_items and b[k - 1] > out[-1]:
                out.append(int(b[k - 1]))
        if out[-1] != self.n:
            out.append(self.n)
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ comparison, I/O
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hierarchy):
            return NotImplemented
        return (
            self.n_levels == other.n_levels
            and np.array_equal(self._perm, other._perm)
            and all(np.array_equal(a, b) for a, b in zip(self._bounds, other._bounds, strict=True))
        )

    def __hash__(self) -> int:
        return hash((self._perm.tobytes(), tuple(b.tobytes() for b in self._bounds)))

    def __repr__(self) -> str:
        return f"Hierarchy(n={self.n}, n_blocks={self.n_blocks})"

    def _repr_html_(self) -> str:
        from mlr_dask.display import hierarchy_html
        return hierarchy_html(self)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays that describe the hierarchy (``perm``, ``bounds_0`` ... ``bounds_{L-1}``)."""
        out = {"perm": np.asarray(self._perm)}
        for i, b in enumerate(self._bounds):
            out[f"bounds_{i}"] = np.asarray(b)
        return out

    @classmethod
    def from_dict(
        cls, arrays: dict[str, Any], level_names: Sequence[str] | None = None
    ) -> Hierarchy:
        n_levels = sum(1 for k in arrays if k.startswith("bounds_"))
        try:
            bounds = [np.asarray(arrays[f"bounds_{i}"]) for i in range(n_levels)]
            perm = np.asarray(arrays["perm"])
        except KeyError as exc:
            raise InputError(f"hierarchy arrays incomplete: missing {exc}") from None
        return cls(bounds, perm, level_names=level_names)

    def write_zarr(self, group: Any) -> None:
        """Store into a (new, empty) zarr group: ``perm`` (dim ``item``) and ``bounds_i`` (dim
        ``bounds_i_edge``, one dim per level so that xarray reads the group), checksummed."""
        from mlr_dask.io import create_array

        for key, arr in self.to_dict().items():
            create_array(group, key, data=arr, dims=("item",) if key == "perm" else
                         (f"{key}_edge",))
        group.attrs["n_levels"] = self.n_levels
        if self.level_names is not None:
            group.attrs["level_names"] = list(self.level_names)

    @classmethod
    def read_zarr(cls, group: Any) -> Hierarchy:
        arrays = {k: group[k][:] for k in group.array_keys()}
        return cls.from_dict(arrays, level_names=group.attrs.get("level_names"))
