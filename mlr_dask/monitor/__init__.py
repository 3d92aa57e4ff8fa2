"""Watch mlr-dask jobs from Jupyter: :func:`watch` shows a live dashboard of the job events
(:mod:`mlr_dask.events`) of a Dask scheduler, or of this process without one.

The events come from the scheduler's event log (``client.subscribe_topic`` for new ones,
``client.get_events`` for those already logged, so a job started from the command line in
another process shows too) and from this process's callbacks. Nothing is polled: the widgets
change when an event arrives. :class:`~mlr_dask.monitor.state.MonitorState` is the state alone
(usable without widgets).
"""

from __future__ import annotations

from typing import Any

from mlr_dask.monitor import sources
from mlr_dask.monitor.state import CURVE_METRICS, Change, JobState, MonitorState, StageProgress

__all__ = ["watch", "Monitor", "MonitorState", "JobState", "StageProgress", "Change",
           "CURVE_METRICS"]


def __getattr__(name: str) -> Any:
    if name == "Monitor":
        from mlr_dask.monitor.widget import Monitor

        return Monitor
    raise AttributeError(name)


def watch(client: Any = None, job: str | None = None, *, hierarchy: Any = None,
          backlog: bool = True) -> Any:
    """A live dashboard of the jobs on ``client``'s scheduler (a :class:`Monitor`; display it).

    Parameters
    ----------
    client : a ``distributed.Client``; ``None`` takes the default client if there is one,
        else watches the events published in this process only.
    job : show only this job id (default: every job).
    hierarchy : a :class:`~mlr_dask.hierarchy.Hierarchy` to draw until an event brings one.
    backlog : also show the events the scheduler logged before this call.

    Shows one progress bar per (job, stage), the convergence curves (log-likelihood, relative
    error), the ranks per level, the hierarchy as blocks and the Dask dashboard link. The
    events of this process are always watched (they arrive once even when the scheduler echoes
    them). In a kernel, the call also loads BokehJS into the page (inline). Stop the feeds
    with ``Monitor.close()``. Cost: one round trip to the scheduler for
    the backlog, then O(1) widget patches per event.
    """
    from mlr_dask.monitor.widget import Monitor, load_bokehjs, require_widgets

    require_widgets()
    load_bokehjs()
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    state = MonitorState(job=job)
    # listen first (events are held until the display exists), then read the backlog into the
    # state, then build the display from the state; duplicates count once
    relay = _Relay()
    stops = [sources.listen_local(relay)]
    if client is not None:
        stops.append(sources.listen_client(client, relay))
        if backlog:
            state.feed(sources.backlog(client))
    link = getattr(client, "dashboard_link", None) if client is not None else None
    try:
        mon = Monitor(state, dashboard_link=link,
                      source=f"scheduler {client.scheduler.address}" if client is not None
                      else "", hierarchy=hierarchy)
    except BaseException:
        for stop in stops:
            stop()
        raise
    for stop in stops:
        mon.add_stop(stop)
    relay.attach(mon.handle)
    return mon


class _Relay:
    """An event listener that holds events until :meth:`attach` gives it a target, then hands
    them over in order and forwards every later one."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._held: list[Any] = []
        self._target: Any = None

    def __call__(self, item: Any) -> None:
        with self._lock:  # one event at a time, in order (the display is serial anyway)
            if self._target is None:
                self._held.append(item)
            else:
                self._target(item)

    def attach(self, target: Any) -> None:
        with self._lock:
            for item in self._held:
                target(item)
            self._held = []
            self._target = target
