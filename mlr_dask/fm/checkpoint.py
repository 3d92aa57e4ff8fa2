"""Checkpoints of a factor-model fit inside its output zarr store.

While a fit runs with checkpoints, its output path is a zarr group of format ``fm-checkpoints``
(version 1). Each checkpoint is a new subgroup ``iter_NNNNNN`` (written under a temporary name
and renamed into place), then the marker file ``latest.json`` is replaced atomically to name it;
older checkpoint groups are then removed. Resume reads the marker. When the fit ends, the final
model replaces the whole store (:meth:`MultilevelFactorModel.save`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from mlr_dask.errors import FormatError, InputError
from mlr_dask.fm.em import FMState
from mlr_dask.io import FORMAT_KEY, VERSION_KEY

__all__ = ["CKPT_FORMAT", "prepare", "write_checkpoint", "read_checkpoint"]

CKPT_FORMAT = "fm-checkpoints"
CKPT_VERSION = 1
MARKER = "latest.json"


def _kind(path: Path) -> str | None:
    import zarr

    try:
        return zarr.open_group(str(path), mode="r").attrs.get(FORMAT_KEY)
    except Exception:
        return None


def prepare(
    path: str | os.PathLike, *, resume: bool, meta: dict[str, Any], create: bool
) -> FMState | None:
    """Checkpoints at ``path``. With ``create=False`` nothing is written: check that ``path``
    is absent or holds checkpoints, and with ``resume`` return the latest checkpoint (None when
    there is none; ``meta`` must match). With ``create=True`` (a fresh fit, after its inputs
    were checked) replace whatever checkpoints are there by an empty store."""
    import zarr

    p = Path(path)
    if p.exists():
        kind = _kind(p)
        if kind != CKPT_FORMAT:
            if kind is None:
                raise InputError(f"{str(p)!r} exists and is not an mlr-dask store")
            raise InputError(
                f"{str(p)!r} holds a finished {kind!r}, not checkpoints; remove it first"
            )
        if not create:
            return read_checkpoint(p, meta) if resume else None
        shutil.rmtree(p)
    elif not create:
        if not p.parent.exists():
            raise InputError(f"output directory {str(p.parent)!r} does not exist")
        return None
    g = zarr.open_group(str(p), mode="w")
    g.attrs[FORMAT_KEY] = CKPT_FORMAT
    g.attrs[VERSION_KEY] = CKPT_VERSION
    g.attrs["meta"] = meta
    return None


def write_checkpoint(path: str | os.PathLike, state: FMState) -> str:
    """Write ``state`` as a new checkpoint group and point the marker at it; returns its name."""
    import zarr

    p = Path(path)
    name = f"iter_{state.n_iter:06d}"
    tmp = p / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    g = zarr.open_group(str(tmp), mode="w")
    g.create_array("F", data=state.F)
    g.create_array("D", data=state.D)
    g.create_array("mean", data=state.mean)
    g.attrs["n_iter"] = state.n_iter
    g.attrs["loglike"] = list(state.loglike)
    g.attrs["loglike_init"] = state.loglike_init
    final = p / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    marker_tmp = p / f".{MARKER}.{uuid.uuid4().hex[:8]}"
    marker_tmp.write_text(json.dumps({"group": name, "n_iter": state.n_iter}))
    os.replace(marker_tmp, p / MARKER)
    for old in p.iterdir():
        if old.is_dir() and old.name.startswith("iter_") and old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return name


def read_checkpoint(path: str | os.PathLike, meta: dict[str, Any] | None = None) -> FMState | None:
    """The state named by the marker, or None when no checkpoint was completed."""
    import zarr

    p = Path(path)
    marker = p / MARKER
    if not marker.exists():
        return None
    root = zarr.open_group(str(p), mode="r")
    if meta is not None and root.attrs.get("meta") != meta:
        raise InputError(
            f"the checkpoints in {str(p)!r} are of another fit ({root.attrs.get('meta')}); "
            f"this one is {meta}"
        )
    try:
        name = json.loads(marker.read_text())["group"]
        g = zarr.open_group(str(p / name), mode="r")
        return FMState.from_F(
            np.asarray(g["F"][:]), D=np.asarray(g["D"][:]), mean=np.asarray(g["mean"][:]),
            n_iter=int(g.attrs["n_iter"]), loglike=tuple(g.attrs["loglike"]),
            loglike_init=float(g.attrs["loglike_init"]),
        )
    except (KeyError, ValueError, OSError) as exc:
        raise FormatError(f"checkpoint in {str(p)!r} is unreadable: {exc}") from None
