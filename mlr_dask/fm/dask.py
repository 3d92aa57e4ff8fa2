"""The Dask path of the factor model: the same chunk tasks as the in-memory fit, run as Dask
tasks over feature chunks made of whole leaves.

Y (N, n) in hierarchy order is rechunked to all samples x one chunk of whole leaves per block
(``Hierarchy.leaf_chunks``; when Y is an array of a zarr store in that order, each task reads its
block straight from the store instead, which needs the least memory); every call of
:meth:`DaskRunner.map` builds one small graph (read
the blocks, run the task on each, return its small result) and computes it, so the graph never
grows with the iterations. The broadcast objects (``Q``, ``W``: O(s N) numbers) enter the graph
once per call. Whichever scheduler is active is used: a ``distributed.Client`` when one is the
default, the threaded scheduler otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlr_dask.fm import chunk as ck
from mlr_dask.fm.tree import FactorTree

__all__ = ["DaskRunner"]


class DaskRunner:
    """Runner (see :class:`mlr_dask.fm.em.NumpyRunner`) over a dask array ``Y`` (N, n) in
    hierarchy order; ``bounds`` (k + 1,) chunk boundaries made of whole leaves."""

    def __init__(self, Y: Any, tree: FactorTree, bounds: np.ndarray,
                 zarr_source: tuple[str, str] | None = None) -> None:
        self.zarr_source = zarr_source
        self.bounds = np.asarray(bounds, dtype=np.int64)
        sizes = tuple(int(x) for x in np.diff(self.bounds))
        self.Y = Y.rechunk({0: -1, 1: sizes})
        self.n_samples = int(Y.shape[0])
        self.plans = [ck.make_plan(tree, int(a), int(b))
                      for a, b in zip(self.bounds[:-1], self.bounds[1:], strict=True)]
        self.passes = 0

    def map(self, task: Callable, per_chunk: Sequence[Sequence[Any]], bcast: Any = ...,
            what: str = "") -> list:
        import dask

        extra = () if bcast is ... else (dask.delayed(bcast, traverse=False),)
        if self.zarr_source is not None:  # one task reads its block and runs the chunk task
            fn = dask.delayed(_read_and_run, pure=True)
            tasks = [
                fn(self.zarr_source, int(plan.start), int(plan.stop), task, plan,
                   *[a[k] for a in per_chunk], *extra)
                for k, plan in enumerate(self.plans)
            ]
        else:
            blocks = self.Y.to_delayed().ravel()
            fn = dask.delayed(task, pure=True)
            tasks = [
                fn(blk, plan, *[a[k] for a in per_chunk], *extra)
                for k, (blk, plan) in enumerate(zip(blocks, self.plans, strict=True))
            ]
        self.passes += 1
        client = _client()
        if client is None:
            return list(dask.compute(*tasks))
        # distributed: fetch each result as soon as it is done and release it on the worker,
        # so the workers never hold more than a few chunks' results
        from distributed import as_completed

        futures = client.compute(tasks)
        where = {f.key: i for i, f in enumerate(futures)}
        out: list = [None] * len(futures)
        futures_left = as_completed(futures, with_results=True)
        del futures
        for fut, res in futures_left:
            if isinstance(res, BaseException):  # e.g. cancelled: the scheduler was lost
                raise res
            out[where[fut.key]] = res
            fut.release()
        return out


def read_block(path: str, name: str, start: int, stop: int) -> np.ndarray:
    """Columns ``[start, stop)`` (all rows) of array ``name`` of the zarr group at ``path``:
    read by the task itself, with no intermediate Dask chunks. A missing or damaged chunk raises
    DataError naming the store, the array and the chunk."""
    from mlr_dask.io import open_array, read_region

    return read_region(open_array(path, name), (slice(None), slice(start, stop)), name=name)


def _read_and_run(source: tuple[str, str], start: int, stop: int, task: Callable,
                  *args: Any) -> Any:
    return task(read_block(*source, start, stop), *args)


def _client():
    """The default distributed Client, or None."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None
