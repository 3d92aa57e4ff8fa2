"""Checkpoints of a factor-model fit inside its output zarr store.

While a fit runs with checkpoints, its output path is a zarr group of format ``fm-checkpoints``
(version 1). Each checkpoint is a new subgroup ``iter_NNNNNN`` (written under a temporary name
and renamed into place), then the marker file ``latest.json`` is replaced atomically to name it;
older checkpoint groups are then removed. Resume reads the marker. When the fit ends, the final
model replaces the whole store (:meth:`MultilevelFactorModel.save`; an ``fm-model`` may replace
``fm-checkpoints``, see :data:`mlr_dask.io.SUPERSEDES`).

Arrays ``F`` (dims ``feature``, ``factor``), ``D`` and ``mean`` (``feature``) are written by
:func:`mlr_dask.io.create_array` (checksummed, named dimensions), so a checkpoint opens with
``xarray.open_zarr(path, group="iter_NNNNNN", consolidated=False)``. Checkpoints need a local
directory (they rely on rename).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from mlr_dask.errors import DataError, FormatError, InputError
from mlr_dask.fm.em import FMState
from mlr_dask.io import FORMAT_KEY, VERSION_KEY, check_array, check_output, create_array, store_kind
from mlr_dask.paths import is_url, resolve_store

__all__ = ["CKPT_FORMAT", "prepare", "write_checkpoint", "read_checkpoint"]

CKPT_FORMAT = "fm-checkpoints"
CKPT_VERSION = 1
MARKER = "latest.json"


def _local(path: str | os.PathLike) -> Path:
    loc = resolve_store(path)
    if is_url(loc):
        raise InputError(f"checkpoints need a local directory, got {loc!r}")
    return Path(loc)


def prepare(
    path: str | os.PathLike, *, resume: bool, meta: dict[str, Any], create: bool
) -> FMState | None:
    """Checkpoints at ``path``. With ``create=False`` nothing is written: check that ``path``
    is absent or holds checkpoints, and with ``resume`` return the latest checkpoint (None when
    there is none; ``meta`` must match). With ``create=True`` (a fresh fit, after its inputs
    were checked) replace whatever checkpoints are there by an empty store."""
    import zarr

    p = _local(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            raise InputError(f"{str(p)!r} is a file, not a checkpoint store")
        kind = store_kind(p)
        if kind != CKPT_FORMAT:
            if kind is None:
                raise InputError(f"{str(p)!r} exists and is not an mlr-dask store; refusing to "
                                 "write checkpoints into it")
            raise InputError(
                f"{str(p)!r} holds a finished {kind!r}, not checkpoints; checkpoints would "
                "replace it before the fit ends: write to a new path or remove it first"
            )
        if not create:
            return read_checkpoint(p, meta) if resume else None
        check_output(p, CKPT_FORMAT, overwrite=True, what="checkpoint store")
        shutil.rmtree(p)
    elif not create:
        check_output(p, CKPT_FORMAT, what="checkpoint store")  # parent exists and is writable
        return None
    g = zarr.open_group(str(p), mode="w", zarr_format=3)
    g.attrs[FORMAT_KEY] = CKPT_FORMAT
    g.attrs[VERSION_KEY] = CKPT_VERSION
    g.attrs["meta"] = meta
    return None


def write_checkpoint(path: str | os.PathLike, state: FMState) -> str:
    """Write ``state`` as a new checkpoint group and point the marker at it; returns its name."""
    import zarr

    p = _local(path)
    name = f"iter_{state.n_iter:06d}"
    tmp = p / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    create_array(g, "F", data=state.F, dims=("feature", "factor"))
    create_array(g, "D", data=state.D, dims=("feature",))
    create_array(g, "mean", data=state.mean, dims=("feature",))
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
    """The state named by the marker, or None when no checkpoint was completed. Read through
    the checked store of :mod:`mlr_dask.io`: a missing or damaged chunk raises DataError."""
    from mlr_dask.io import open_group

    p = _local(path)
    marker = p / MARKER
    if not marker.exists():
        return None
    root = open_group(p, CKPT_FORMAT, CKPT_VERSION, verify=False)
    if meta is not None and root.attrs.get("meta") != meta:
        raise InputError(
            f"the checkpoints in {str(p)!r} are of another fit ({root.attrs.get('meta')}); "
            f"this one is {meta}"
        )
    try:
        name = json.loads(marker.read_text())["group"]
        g = root[name]
        arrays = {k: g[k] for k in ("F", "D", "mean")}
        for k, a in arrays.items():
            check_array(a, f"{name}/{k}")
        return FMState.from_F(
            np.asarray(arrays["F"][:]), D=np.asarray(arrays["D"][:]),
            mean=np.asarray(arrays["mean"][:]),
            n_iter=int(g.attrs["n_iter"]), loglike=tuple(g.attrs["loglike"]),
            loglike_init=float(g.attrs["loglike_init"]),
        )
    except DataError:
        raise
    except (KeyError, ValueError, OSError) as exc:
        raise FormatError(f"checkpoint in {str(p)!r} is unreadable: {exc}") from None
