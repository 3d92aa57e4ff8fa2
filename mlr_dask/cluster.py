"""Connecting to Dask: an embedded LocalCluster on loopback by default, or a real scheduler.

Workers run one BLAS thread each (set through the environment before the worker processes
start), so Dask's parallelism is not multiplied by BLAS's.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from mlr_dask.errors import InputError

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


#: Dask configuration of the embedded workers with ``connect(out_of_core=True)``: for jobs that
#: stream a zarr store larger than the workers' memory, whose task results are small (block
#: products, EM statistics). Spilling is off (there is nothing worth writing to disk, and
#: spilling at a fraction of a limit that is mostly unmanaged memory only costs time; the pause
#: and terminate thresholds stay), the statistical profiler is off (it caches the source lines
#: of every sampled frame: 6-8 MiB per worker) and glibc serves large allocations by mmap, so a
#: freed chunk goes back to the OS at once instead of staying in the heap.
OUT_OF_CORE_CONFIG: dict[str, Any] = {
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 131072,
}

#: ``--scheduler`` values that mean Dask's in-process schedulers, no cluster.
LOCAL_SCHEDULERS = ("threads", "synchronous")

#: Options of the current command-line session (set by the CLI's global flags), and the client
#: a driver holds for a whole job (``client``, ``address``): :func:`connect` hands that client
#: to every command of the job instead of starting a cluster per command.
SESSION: dict[str, Any] = {"report": None, "client": None, "address": None, "active": False}


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name a stage of work on the dashboard (``distributed.span``); a no-op without a
    distributed client."""
    from distributed import span

    with span(name):
        yield


@contextlib.contextmanager
def _maybe_report(client: Any) -> Iterator[None]:
    path = SESSION.get("report")
    if not path:
        yield
        return
    from distributed import performance_report

    with performance_report(filename=str(path)):
        yield


def _prepare(client: Any) -> None:
    """Compile the numba kernels once on every worker (now and on workers that join later)."""
    from mlr_dask.workers import WarmKernels

    client.register_plugin(WarmKernels())


@contextlib.contextmanager
def connect(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = "auto",
    processes: bool = True,
    quiet: bool = False,
    timeout: float | None = None,
    out_of_core: bool = False,
) -> Iterator[distributed.Client]:  # noqa: F821
    """Yield a ``distributed.Client``; close what this call started on exit.

    Parameters
    ----------
    address : scheduler address (``tcp://host:8786``); ``None`` starts a LocalCluster bound to
        127.0.0.1 with ``n_workers`` (default: the number of cores) single-threaded workers;
        ``"threads"`` or ``"synchronous"`` run Dask's local scheduler in this process with no
        cluster (then ``None`` is yielded instead of a client).
    memory_limit : per-worker memory limit for the embedded cluster (bytes or ``"2GB"``).
    timeout : seconds to wait for a scheduler at ``address`` (default: the Dask configuration's
        ``distributed.comm.timeouts.connect``).
    quiet : do not print the dashboard link.
    out_of_core : start the embedded workers with :data:`OUT_OF_CORE_CONFIG` (tight memory
        limits, data streamed from zarr). A running cluster keeps its own configuration: put
        the same keys in the workers' Dask configuration (``deploy/distributed.yaml``).

    Every worker compiles the numba kernels when it starts (:class:`mlr_dask.workers.
    WarmKernels`), so no task pays for compilation and the memory it takes is there from the
    start.
    """
    from distributed import Client

    if SESSION.get("active") and (address is None or address == SESSION.get("address")):
        yield SESSION.get("client")  # the job's client: the driver closes it, not this call
        return
    if address in LOCAL_SCHEDULERS:
        import dask

        with dask.config.set(scheduler=address):
            yield None
        return
    cluster = None
    if address:
        try:
            if timeout is None:  # the Dask configuration's (deploy/ sets it), 30 s by default
                import dask
                from dask.utils import parse_timedelta

                timeout = parse_timedelta(
                    dask.config.get("distributed.comm.timeouts.connect", 30), "s")
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None
    else:
        import dask

        preload = list(dask.config.get("distributed.worker.preload", []) or [])
        with dask.config.set({**(OUT_OF_CORE_CONFIG if out_of_core else {}),
                              "distributed.worker.preload": [*preload, "mlr_dask.embedded"]}):
            cluster = _local_cluster(n_workers, threads_per_worker, processes, memory_limit)
        client = Client(cluster)
    try:
        if not quiet:
            print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
        _prepare(client)
        with _maybe_report(client):
            yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def session(address: str | None = None, **kw: Any) -> Iterator[Any]:
    """Hold one client (or Dask's local scheduler) for a whole job: inside the block every
    :func:`connect` with no address, or the same one, yields this client and closes nothing.
    Keyword arguments go to :func:`connect`. Yields the client (None for ``threads``)."""
    if SESSION.get("active"):
        raise RuntimeError("a job session is already active")
    with connect(address, **kw) as client:
        SESSION.update(client=client, address=address, active=True)
        try:
            yield client
        finally:
            SESSION.update(client=None, address=None, active=False)


def worker_count(client: Any) -> int:
    """Number of workers connected to the client's scheduler now (asks the scheduler; 0 for
    Dask's local schedulers)."""
    if client is None:
        return 0
    return len(client.nthreads())


def _local_cluster(
    n_workers: int | None, threads_per_worker: int, processes: bool, memory_limit: Any
) -> Any:
    """A LocalCluster on loopback whose worker processes run single-threaded BLAS/numba."""
    from distributed import LocalCluster

    saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)  # inherited by the worker processes
    try:
        return LocalCluster(
            n_workers=n_workers or max(1, os.cpu_count() or 1),
            threads_per_worker=threads_per_worker,
            processes=processes,
            host="127.0.0.1" if processes else None,
            dashboard_address="127.0.0.1:0",
            memory_limit=memory_limit,
            silence_logs=50,  # workers report failures through their tasks, not stderr
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
