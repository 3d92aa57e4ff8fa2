"""Inputs of the factor model: numpy arrays, dask arrays, xarray DataArrays with dims
(sample, feature), or the path of a zarr data store; all checked before any work.

Data stores (format ``fm-data``, version 1, written by ``mlr-dask generate fm``): arrays ``Y``
(train) and ``Y_test`` (N, n) in hierarchy order, subgroup ``features`` (the Hierarchy: position
``i`` holds original feature ``perm[i]``), optional subgroup ``truth`` (the true model).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.io import open_group

__all__ = ["DATA_FORMAT", "FeatureData", "as_feature_data", "factor_levels"]

DATA_FORMAT = "fm-data"
DATA_VERSION = 1


@dataclass(frozen=True)
class FeatureData:
    """Data ready for the fit: ``Y`` (N, n) numpy or dask array in the hierarchy order of
    ``hierarchy``; ``is_dask``; ``source`` (a short description)."""

    Y: Any
    hierarchy: Hierarchy
    is_dask: bool
    source: str
    zarr_source: tuple[str, str] | None = None  # (store path, array): blocks read directly

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(x) for x in self.Y.shape)  # type: ignore[return-value]


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask.array")


def _check_matrix(shape: Sequence[int], dtype: Any, what: str, min_samples: int = 2) -> None:
    if len(shape) != 2:
        raise InputError(f"{what} must be 2-D (samples x features), got shape {tuple(shape)}")
    if shape[0] < min_samples or shape[1] < 1:
        raise InputError(f"{what} needs at least {min_samples} sample(s) and 1 feature, got "
                         f"{tuple(shape)}")
    if np.dtype(dtype).kind not in "fiu":
        raise InputError(f"{what} must be real numbers, got dtype {dtype}")


def _reorder(Y: Any, h: Hierarchy, given: Hierarchy | None) -> tuple[Any, Hierarchy]:
    """Y is in the order of ``h``; return it in the order of ``given`` (same items)."""
    if given is None:
        return Y, h
    if given.n != h.n:
        raise InputError(
            f"the hierarchy has {given.n} features but the data have {h.n}"
        )
    if np.array_equal(given.perm, h.perm):
        return Y, given
    return Y[:, h.iperm[given.perm]], given


def open_data(path: str | os.PathLike, array: str | None = None) -> tuple[Any, Hierarchy, Any]:
    """(dask array, hierarchy, group) of a data store; ``array`` defaults to ``Y``."""
    import dask.array as da

    g = open_group(path, DATA_FORMAT, DATA_VERSION)
    name = array or "Y"
    if name not in g.array_keys():
        raise InputError(f"data store {str(path)!r} has no array {name!r}")
    try:
        h = Hierarchy.read_zarr(g["features"])
    except KeyError:
        raise InputError(f"data store {str(path)!r} has no 'features' hierarchy") from None
    return da.from_zarr(g[name]), h, g


def as_feature_data(
    Y: Any,
    hierarchy: Hierarchy | Sequence[str] | None,
    *,
    array: str | None = None,
    allow_nan: bool = False,
    min_samples: int = 2,
) -> FeatureData:
    """Check ``Y`` and put it in hierarchy order (see module docstring for the accepted kinds).

    ``hierarchy``: a Hierarchy over the features in original order; for a DataArray also a list
    of coordinate names (along ``feature``) holding the level labels, coarse to fine; ``None``
    for a data store (read from it). NaN/inf in numpy inputs are found here (NaN allowed with
    ``allow_nan``: missing entries); in dask inputs during the first pass, before any output is
    written. ``min_samples``: 2 to fit, 1 to score or transform.
    """
    if isinstance(Y, str | os.PathLike):
        Yd, h, _ = open_data(Y, array)
        _check_matrix(Yd.shape, Yd.dtype, f"array {array or 'Y'!r} of {str(Y)!r}", min_samples)
        if hierarchy is not None and not isinstance(hierarchy, Hierarchy):
            raise InputError("with a data store, hierarchy must be a Hierarchy or None")
        Yd2, h2 = _reorder(Yd, h, hierarchy)
        direct = (str(Y), array or "Y") if Yd2 is Yd else None
        return FeatureData(Yd2, h2, True, str(Y), direct)
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    if xr is not None and isinstance(Y, xr.DataArray):
        if set(Y.dims) != {"sample", "feature"}:
            raise InputError(f"a DataArray needs dims ('sample', 'feature'), got {Y.dims}")
        Y = Y.transpose("sample", "feature")
        if hierarchy is not None and not isinstance(hierarchy, Hierarchy):
            names = [hierarchy] if isinstance(hierarchy, str) else list(hierarchy)
            for c in names:
                if c not in Y.coords or Y.coords[c].dims != ("feature",):
                    raise InputError(f"{c!r} is not a coordinate along 'feature'")
            hierarchy = Hierarchy.from_labels([Y.coords[c].values for c in names],
                                              level_names=names)
        Y = Y.data
    elif hierarchy is not None and not isinstance(hierarchy, Hierarchy):
        raise InputError("hierarchy given by coordinate names needs an xarray DataArray")
    if hierarchy is None:
        raise InputError("a hierarchy is needed for array inputs")
    if _is_dask(Y):
        _check_matrix(Y.shape, Y.dtype, "Y", min_samples)
        if Y.shape[1] != hierarchy.n:
            raise InputError(
                f"Y has {Y.shape[1]} features but the hierarchy covers {hierarchy.n}"
            )
        Yh = Y if np.array_equal(hierarchy.perm, np.arange(hierarchy.n)) else Y[:, hierarchy.perm]
        return FeatureData(Yh, hierarchy, True, "dask array")
    Y = np.asarray(Y)
    _check_matrix(Y.shape, Y.dtype, "Y", min_samples)
    if Y.shape[1] != hierarchy.n:
        raise InputError(f"Y has {Y.shape[1]} features but the hierarchy covers {hierarchy.n}")
    if allow_nan and Y.dtype.kind == "f":
        if np.isinf(Y).any():
            raise InputError(f"Y contains {int(np.isinf(Y).sum())} infinite values")
    elif not np.all(np.isfinite(Y)):
        raise InputError(f"Y contains {int(np.size(Y) - np.isfinite(Y).sum())} NaN or "
                         "infinite values")
    if Y.dtype.kind != "f":
        Y = Y.astype(np.float64)
    Yh = Y if np.array_equal(hierarchy.perm, np.arange(hierarchy.n)) else Y[:, hierarchy.perm]
    return FeatureData(Yh, hierarchy, False, "numpy array")


def factor_levels(h: Hierarchy, ranks: Sequence[int]) -> Hierarchy:
    """The factor levels of ``h`` for ``ranks``: all levels, or all but a last level of
    singletons (the diagonal, which takes no rank)."""
    ranks = list(ranks)
    n_factor = h.n_levels - 1 if (h.has_atoms and h.n_levels > 1) else h.n_levels
    if len(ranks) > n_factor:
        extra = " (the last level, singletons, is the diagonal and takes no rank)" \
            if n_factor < h.n_levels else ""
        raise InputError(
            f"{len(ranks)} ranks given for {n_factor} factor levels{extra}"
        )
    if len(ranks) < n_factor:
        raise InputError(f"{len(ranks)} ranks given for {n_factor} factor levels")
    return h if n_factor == h.n_levels else h.truncate(n_factor)
