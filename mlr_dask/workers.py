"""Worker set-up: compile the numba kernels once per worker, before any timed work, and bound
the chunks zarr decodes at once in the worker (:func:`bound_zarr_reads`).

Use it as a Dask preload (``dask worker ADDRESS --preload mlr_dask.workers``) or let
:func:`mlr_dask.cluster.connect` register :class:`WarmKernels` as a worker plugin.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from distributed import WorkerPlugin

#: Modules whose ``warm()`` compiles their kernels on tiny inputs (missing ones are skipped).
KERNEL_MODULES = ("mlr_dask.kernels.blocks", "mlr_dask.kernels.gather")


def warm_kernels() -> list[str]:
    """Call every available ``warm()``; returns the modules warmed."""
    done = []
    for name in KERNEL_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        warm = getattr(module, "warm", None)
        if warm is not None:
            warm()
            done.append(name)
    return done


#: Chunks one zarr read decodes at once in a worker (zarr's ``async.concurrency``, 10 by
#: default). Every task that reads a selection across many stored chunks holds about that many
#: decoded chunks, whatever the size of its result, and a worker runs a task per thread, so at
#: the default the reads, not the tasks' arrays, set a worker's peak memory. On a local disk
#: one at a time reads as fast; for object stores with high latency set
#: ``ZARR_ASYNC__CONCURRENCY`` in the workers' environment, which is left alone.
READ_CONCURRENCY = 1


def bound_zarr_reads() -> int:
    """Set zarr's read concurrency in this process to :data:`READ_CONCURRENCY`, unless the
    environment sets ``ZARR_ASYNC__CONCURRENCY``; returns the value in force."""
    import zarr

    if "ZARR_ASYNC__CONCURRENCY" not in os.environ:
        zarr.config.set({"async.concurrency": READ_CONCURRENCY})
    return int(zarr.config.get("async.concurrency"))


class WarmKernels(WorkerPlugin):
    """Worker plugin: compile the kernels and bound zarr's reads when a worker starts."""

    name = "mlr-dask-warm-kernels"

    def setup(self, worker: Any) -> None:
        warm_kernels()
        bound_zarr_reads()


def dask_setup(worker: Any) -> None:
    """Preload hook for ``dask worker --preload mlr_dask.workers``."""
    warm_kernels()
    bound_zarr_reads()
