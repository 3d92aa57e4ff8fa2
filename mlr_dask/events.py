"""Job events: the one source of progress for long computations.

An event is a small JSON-able dict ``{"job", "stage", "step", "total", "time", **metrics}``.
:func:`publish` sends it

- to the scheduler's event log under topic :data:`TOPIC` (``Client.log_event`` in the client
  process, ``Worker.log_event`` inside a task) when distributed is in use, so any client of the
  same scheduler sees it (``client.get_events("mlr-dask")`` or ``client.subscribe_topic``);
- to the callbacks registered in this process with :func:`subscribe`, always (the CLI's tqdm
  bars, JSON-lines logs and notebooks without a cluster use these).

``job`` is one id for a whole run: set it with ``with events.job(...)``; without one, a process
gets a single id on first use. Cost per event: one small message to the scheduler.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["TOPIC", "publish", "subscribe", "job", "current_job", "new_job_id",
           "ProgressBars", "jsonable"]

TOPIC = "mlr-dask"

Callback = Callable[[dict[str, Any]], None]

_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlr_dask_job", default=None)
_job_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlr_dask_job_name",
                                                                       default=None)
_process_job: list[str] = []
_callbacks: list[Callback] = []
_lock = threading.Lock()


def new_job_id() -> str:
    """A fresh job id: time-ordered and unique (``YYYYmmdd-HHMMSS-xxxxxx``)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def current_job() -> str:
    """The id of the current job (the innermost ``with job(...)``, else one id per process)."""
    jid = _job.get()
    if jid is not None:
        return jid
    with _lock:
        if not _process_job:
            _process_job.append(new_job_id())
        return _process_job[0]


@contextlib.contextmanager
def job(job_id: str | None = None, name: str | None = None) -> Iterator[str]:
    """Run the block as one job: every event published inside carries ``job_id`` (a new id when
    None) and ``name``. Yields the id."""
    jid = job_id or new_job_id()
    t1 = _job.set(jid)
    t2 = _job_name.set(name)
    try:
        yield jid
    finally:
        _job.reset(t1)
        _job_name.reset(t2)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars / arrays turned into Python numbers and lists, tuples into
    lists and non-finite floats into None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def subscribe(callback: Callback) -> Callable[[], None]:
    """Call ``callback(event)`` for every event published in this process; returns a function
    that unsubscribes it."""
    with _lock:
        _callbacks.append(callback)

    def unsubscribe() -> None:
        with _lock:
            if callback in _callbacks:
                _callbacks.remove(callback)

    return unsubscribe


def _distributed_sink() -> Any:
    """Where ``log_event`` goes: the worker inside a task, else the default client, else None."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        pass
    try:
        from distributed.client import default_client

        client = default_client()
    except (ImportError, ValueError):
        return None
    return client if client.status == "running" else None


def publish(stage: str, step: int, total: int | None = None, **metrics: Any) -> dict[str, Any]:
    """Publish one progress event of ``stage`` (``step`` of ``total``, or None when unknown) with
    ``metrics`` (numbers, short lists, strings). Returns the event. Never raises for a failing
    sink: progress must not break the computation."""
    event = jsonable({"job": current_job(), "stage": stage, "step": int(step),
                      "total": None if total is None else int(total), "time": time.time(),
                      **metrics})
    name = _job_name.get()
    if name is not None and "job_name" not in event:
        event["job_name"] = name
    sink = _distributed_sink()
    if sink is not None:
        with contextlib.suppress(Exception):
            sink.log_event(TOPIC, event)
    with _lock:
        callbacks = list(_callbacks)
    for cb in callbacks:
        with contextlib.suppress(Exception):
            cb(event)
    return event


class ProgressBars:
    """An event consumer: one tqdm bar per (job, stage), advanced to each event's ``step``, with
    the event's scalar metrics as its postfix. Use as a context manager (subscribes on enter,
    closes the bars on exit)."""

    #: metrics shown in the postfix when present, in this order
    SHOWN = ("loglike", "rel_error", "error", "ce", "ranks")

    def __init__(self, *, file: Any = None, disable: bool = False) -> None:
        import sys

        self.file = file if file is not None else sys.stderr
        self.disable = disable
        self.bars: dict[tuple[str, str], Any] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self.disable:
            return
        from tqdm.auto import tqdm

        key = (event.get("job", ""), event.get("stage", ""))
        bar = self.bars.get(key)
        if bar is None:
            bar = tqdm(total=event.get("total"), desc=event.get("stage"), file=self.file,
                       dynamic_ncols=True, leave=True)
            self.bars[key] = bar
        total = event.get("total")
        if total is not None and bar.total != total:
            bar.total = total
        step = int(event.get("step", bar.n))
        if step > bar.n:
            bar.update(step - bar.n)
        post = {}
        for k in self.SHOWN:
            v = event.get(k)
            if isinstance(v, float):
                post[k] = f"{v:.6g}"
            elif v is not None:
                post[k] = str(v)
        if post:
            bar.set_postfix(post, refresh=False)
        bar.refresh()

    def __enter__(self) -> ProgressBars:
        self._unsubscribe = subscribe(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
