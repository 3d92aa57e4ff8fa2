"""``mlr-dask info`` and ``mlr-dask generate mlr``.

``info`` describes an mlr-dask store (format, attributes, arrays with their dimensions, nested
groups) or any xarray zarr store (variables, dimensions, coordinates, attributes).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from mlr_dask.errors import FormatError, InputError
from mlr_dask.io import FORMAT_KEY, VERSION_KEY


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[common], help="describe what is in a zarr store")
    p.add_argument("path", help="a zarr store written by mlr-dask, or an xarray zarr store")
    p.add_argument("--verify", action="store_true",
                   help="also check the crc32c checksum of every chunk (reads the whole store)")
    p.set_defaults(func=run_info)



def register_generate(gen: Any, common: argparse.ArgumentParser) -> None:
    p = gen.add_parser(
        "mlr",
        parents=[common],
        help="a random MLR matrix plus noise (known hierarchy and ranks) as a dense matrix",
    )
    p.add_argument("--n", type=int, required=True, help="rows (and columns unless --m-cols)")
    p.add_argument("--n-cols", type=int, default=None, help="columns (default: --n)")
    p.add_argument("--rank", type=int, default=24, help="total rank (default 24)")
    p.add_argument("--levels", type=int, default=None, help="levels, the last one atoms")
    p.add_argument("--noise", type=float, default=0.1, help="||E||_F / ||A_true||_F (0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float32", action="store_true", help="store A as float32")
    p.add_argument("--out", required=True, help="output zarr path")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is a matrix store written by mlr-dask")
    p.set_defaults(func=run_generate_mlr)


def _describe(group: Any) -> dict[str, Any]:
    keys = set(group.array_keys())
    if "perm" in keys and "bounds_0" in keys:  # a stored Hierarchy: summarize it
        from mlr_dask.hierarchy import Hierarchy

        h = Hierarchy.read_zarr(group)
        return {"hierarchy": {"n": h.n, "n_blocks": list(h.n_blocks),
                              "level_names": h.level_names}}
    arrays = {
        name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks),
               "dims": list(a.metadata.dimension_names or ()) or None}
        for name, a in group.arrays()
    }
    groups = {name: _describe(g) for name, g in group.groups()}
    attrs = {k: v for k, v in group.attrs.items() if k not in (FORMAT_KEY, VERSION_KEY)}
    out: dict[str, Any] = {}
    if FORMAT_KEY in group.attrs:
        out["format"] = group.attrs[FORMAT_KEY]
        out["format_version"] = group.attrs.get(VERSION_KEY)
    out.update({"attrs": attrs, "arrays": arrays, "groups": groups})
    return out


def _describe_xarray(loc: str) -> dict[str, Any] | None:
    """Variables, dimensions, coordinates and attributes of an xarray zarr store (no data
    read); None when xarray cannot open it or it holds no variable."""
    import xarray as xr

    try:
        ds = xr.open_zarr(loc, consolidated=False)
    except Exception:
        return None
    if not ds.variables:
        return None

    def var(v: Any) -> dict[str, Any]:
        return {"dims": list(v.dims), "shape": list(v.shape), "dtype": str(v.dtype)}

    return {
        "format": "xarray",
        "dims": {str(k): int(n) for k, n in ds.sizes.items()},
        "coords": {str(k): var(v) for k, v in ds.coords.items()},
        "data_vars": {str(k): var(v) for k, v in ds.data_vars.items()},
        "attrs": {str(k): v for k, v in ds.attrs.items()},
    }


def run_info(args: argparse.Namespace) -> dict[str, Any]:
    import zarr

    from mlr_dask.io import open_group, store_kind
    from mlr_dask.paths import resolve_store, store_exists

    loc = resolve_store(args.path)
    if not store_exists(loc):
        raise FormatError(f"no such store: {loc!r}")
    if store_kind(loc) is not None:
        out = {"path": loc, **_describe(open_group(loc, max_version=10**6))}
        if args.verify:
            from mlr_dask.io import verify_store

            out["integrity"] = {"ok": True, **verify_store(loc, checksums=True)}
        return out
    if args.verify:
        raise InputError("--verify needs an mlr-dask store")
    try:
        zarr.open_group(loc, mode="r")
    except Exception as exc:
        raise FormatError(f"{loc!r} is not a zarr group ({type(exc).__name__})") from None
    desc = _describe_xarray(loc)
    if desc is None:
        raise FormatError(f"{loc!r} is a zarr group but not an mlr-dask store, nor an xarray "
                          "store with variables")
    return {"path": loc, **desc}


def run_generate_mlr(args: argparse.Namespace) -> dict[str, Any]:
    from mlr_dask.datasets.mlr import mlr_plus_noise, write_matrix_store
    from mlr_dask.io import check_output

    if args.n < 2 or (args.n_cols is not None and args.n_cols < 2):
        raise InputError("--n and --n-cols must be at least 2")
    m, n = args.n, args.n_cols or args.n
    out = check_output(args.out, "matrix", overwrite=args.overwrite, what="--out",
                       nbytes=m * n * (4 if args.float32 else 8))
    from mlr_dask.bounds import check_disk, check_memory

    cells = args.n * (args.n_cols or args.n)
    check_memory(4 * 8 * cells, f"generate mlr --n {args.n}")
    check_disk(out, 8 * cells, "generate mlr")
    truth, A = mlr_plus_noise(
        args.n, args.n_cols, rank=args.rank, n_levels=args.levels, noise=args.noise,
        rng=args.seed,
    )
    A_hier = A[np.ix_(truth.rows.perm, truth.cols.perm)]
    if args.float32:
        A_hier = A_hier.astype(np.float32)
    rel = float(np.linalg.norm(A - truth.to_dense()) / np.linalg.norm(A))
    write_matrix_store(
        out, A_hier, kind="mlr+noise", rows=truth.rows, cols=truth.cols, truth=truth,
        attrs={"ranks": list(truth.ranks), "noise": args.noise, "seed": args.seed,
               "noise_rel_norm": rel}, overwrite=args.overwrite,
    )
    return {"out": str(out), "shape": list(A.shape), "ranks": list(truth.ranks),
            "n_blocks": list(truth.rows.n_blocks), "noise_rel_norm": rel}

