"""Worker set-up: compile the numba kernels once per worker, before any timed work.

Use it as a Dask preload (``dask worker ADDRESS --preload mlr_dask.workers``) or let
:func:`mlr_dask.cluster.connect` register :class:`WarmKernels` as a worker plugin.
"""

from __future__ import annotations

import importlib
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


class WarmKernels(WorkerPlugin):
    """Worker plugin: compile the kernels when a worker starts."""

    name = "mlr-dask-warm-kernels"

    def setup(self, worker: Any) -> None:
        warm_kernels()


def dask_setup(worker: Any) -> None:
    """Preload hook for ``dask worker --preload mlr_dask.workers``."""
    warm_kernels()
