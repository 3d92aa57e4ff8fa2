"""Options of the fitting pipeline, grouped by stage, plus the thread limits and the progress
reporting that every stage shares."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PartitionOptions", "AllocationOptions", "FitOptions", "Options",
           "default_threads", "thread_limits", "Reporter", "DEFAULT_MAX_RANK_MOVES"]

#: Default bound on the steps of rank allocation (growth and exchange together).
DEFAULT_MAX_RANK_MOVES = 64


def default_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class PartitionOptions:
    """How a hierarchy is learned (see :func:`mlr_dask.fit.partition.spectral_partition`)."""

    method: str = "spectral"  # spectral | dyadic | given
    levels: int | None = None
    init: str = "best"
    balanced: bool = False
    refine: bool = True
    split: str = "normalized"
    split_vectors: int = 4
    epochs: int = 1


@dataclass
class AllocationOptions:
    """Rank allocation: growth from the atoms (``init="bottom"``) and the rank exchange."""

    enabled: bool = True
    eps: float = 1e-3
    max_rank_moves: int = DEFAULT_MAX_RANK_MOVES
    n_trials: int = 3
    #: ranks added per growth step (to distinct levels); 1 gave the lowest errors
    grow_per_step: int = 1
    #: levels tried per growth step (each a copy with one BCD epoch; in parallel threads)
    grow_trials: int = 1
    #: levels tried per growth step in the late steps (from ``late_from`` of the growth steps on)
    late_trials: int = 1
    late_from: float = 0.5


@dataclass
class FitOptions:
    """The final fit of the factors."""

    method: str = "auto"  # auto | bcd | als
    max_iter: int = 100
    tol: float = 1e-3
    #: an ALS epoch may cost at most this many BCD epochs (``method="auto"``)
    als_cost_limit: float = 3.0


@dataclass
class Options:
    """All options of one in-memory fit."""

    partition: PartitionOptions = field(default_factory=PartitionOptions)
    allocation: AllocationOptions = field(default_factory=AllocationOptions)
    fit: FitOptions = field(default_factory=FitOptions)
    symmetric: bool = False
    psd: bool = False
    seed: int = 0
    threads: int = field(default_factory=default_threads)
    baselines: bool = True


@contextlib.contextmanager
def thread_limits(threads: int) -> Iterator[None]:
    """BLAS / OpenMP pools limited to ``threads`` (threadpoolctl) and numba's thread count set
    to at most ``threads`` for the duration; restored afterwards."""
    import numba
    from threadpoolctl import threadpool_limits

    prev = numba.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        with threadpool_limits(limits=max(1, threads)):
            yield
    finally:
        numba.set_num_threads(prev)


class Reporter:
    """Progress of a fit: the legacy ``progress(stage, info)`` callback and
    :func:`mlr_dask.events.publish` (which never raises for a failing sink), one call per
    step."""

    def __init__(self, progress: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        from mlr_dask import events

        self.progress = progress
        self.t0 = time.perf_counter()
        self.publish = events.publish

    def __call__(self, stage: str, step: int, total: int | None = None, **info: Any) -> None:
        if self.progress is not None:
            self.progress(stage, {"step": step, "total": total, **info})
        metrics = {k: v for k, v in info.items() if isinstance(v, int | float | str | list)}
        self.publish(stage, step, total, **metrics)
