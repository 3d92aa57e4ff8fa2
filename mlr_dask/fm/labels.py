"""Feature and level labels of a factor model fitted on an xarray DataArray, and the labelled
outputs (DataArrays with dims ``sample``, ``feature``, ``factor``).

The labels are the coordinates of the input along ``feature`` (its index and every other 1-D
coordinate on that dim, e.g. sector and industry), in the original feature order; they are
saved with the model as JSON attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FeatureLabels", "is_dataarray"]


def is_dataarray(x: Any) -> bool:
    """Whether ``x`` is an xarray DataArray."""
    return type(x).__name__ == "DataArray" and type(x).__module__.startswith("xarray")


def _jsonable(values: np.ndarray) -> list:
    v = np.asarray(values)
    if v.dtype.kind in "iub":
        return [int(x) for x in v.tolist()]
    if v.dtype.kind == "f":
        return [float(x) for x in v.tolist()]
    return [str(x) for x in v.tolist()]


@dataclass(frozen=True)
class FeatureLabels:
    """``feature`` (n,) the values of the ``feature`` index (None if the input had none);
    ``coords`` name -> (n,) the other coordinates along ``feature``; original order."""

    feature: np.ndarray | None
    coords: dict[str, np.ndarray]

    @classmethod
    def from_dataarray(cls, Y: Any) -> FeatureLabels:
        feat = np.asarray(Y.coords["feature"].values) if "feature" in Y.coords else None
        coords = {str(k): np.asarray(c.values) for k, c in Y.coords.items()
                  if k != "feature" and c.dims == ("feature",)}
        return cls(feat, coords)

    def to_json(self) -> dict:
        return {"feature": None if self.feature is None else _jsonable(self.feature),
                "coords": {k: _jsonable(v) for k, v in self.coords.items()}}

    @classmethod
    def from_json(cls, d: dict) -> FeatureLabels:
        feat = d.get("feature")
        return cls(None if feat is None else np.asarray(feat),
                   {k: np.asarray(v) for k, v in d.get("coords", {}).items()})

    def feature_coords(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: ("feature", v) for k, v in self.coords.items()}
        if self.feature is not None:
            out["feature"] = ("feature", self.feature)
        return out

    # ------------------------------------------------------------------ outputs
    def features(self, values: np.ndarray, name: str) -> Any:
        """(n,) -> DataArray (feature)."""
        import xarray as xr

        return xr.DataArray(values, dims=("feature",), coords=self.feature_coords(), name=name)

    def loadings(self, F: np.ndarray, level_names: list[str], ranks: tuple[int, ...]) -> Any:
        """(n, R) compressed loadings -> DataArray (feature, factor); coordinates ``level`` and
        ``rank`` along ``factor``."""
        import xarray as xr

        lev = [level_names[lvl] for lvl, r in enumerate(ranks) for _ in range(r)]
        rk = [k for r in ranks for k in range(r)]
        coords = {**self.feature_coords(),
                  "factor": ("factor", [f"{a}:{k}" for a, k in zip(lev, rk, strict=True)]),
                  "level": ("factor", lev), "rank": ("factor", rk)}
        return xr.DataArray(F, dims=("feature", "factor"), coords=coords, name="loadings")

    def samples(self, Y: np.ndarray, sample: Any = None) -> Any:
        """(N, n) -> DataArray (sample, feature)."""
        import xarray as xr

        coords = self.feature_coords()
        if sample is not None:
            coords["sample"] = ("sample", np.asarray(sample))
        return xr.DataArray(Y, dims=("sample", "feature"), coords=coords)


def factor_coords(tree: Any, hierarchy: Any, labels: FeatureLabels | None) -> dict[str, Any]:
    """Coordinates along ``factor`` of the expanded factors (level by level, group by group,
    ``r_l`` each): ``level`` (name), ``group`` (index within the level), ``group_label`` (the
    level's label of the group when the level came from a coordinate) and ``rank``."""
    names = _level_names(hierarchy, tree.n_levels)
    lev, grp, rk, glab = [], [], [], []
    perm = hierarchy.perm
    for lvl in range(tree.n_levels):
        b = tree.bounds[lvl]
        coord = None
        if labels is not None and names[lvl] in labels.coords:
            coord = labels.coords[names[lvl]]
        for g in range(tree.n_groups[lvl]):
            lab = str(coord[perm[b[g]]]) if coord is not None else str(g)
            for k in range(tree.ranks[lvl]):
                lev.append(names[lvl])
                grp.append(g)
                rk.append(k)
                glab.append(lab)
    return {"factor": ("factor", [f"{a}:{b}:{c}" for a, b, c in zip(lev, glab, rk, strict=True)]),
            "level": ("factor", lev), "group": ("factor", grp),
            "group_label": ("factor", glab), "rank": ("factor", rk)}


def _level_names(hierarchy: Any, n_levels: int) -> list[str]:
    names = list(hierarchy.level_names or [])[:n_levels]
    return names + [f"level{i}" for i in range(len(names), n_levels)]


def level_names(hierarchy: Any, n_levels: int) -> list[str]:
    """Names of the factor levels (from the hierarchy, else ``level0`` ...)."""
    return _level_names(hierarchy, n_levels)
