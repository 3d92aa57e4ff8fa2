"""Where the monitor's events come from: the scheduler's event log (live and backlog) and the
local callbacks of :mod:`mlr_dask.events`.

A client holds one handler per topic (``Client.subscribe_topic`` replaces the previous one), so
every listener of a client goes through one :class:`_Fanout` registered once per client.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from mlr_dask import events

__all__ = ["listen_client", "listen_local", "backlog"]

Listener = Callable[[Any], None]

_fanouts: dict[str, _Fanout] = {}
_lock = threading.Lock()


class _Fanout:
    """The one ``subscribe_topic`` handler of a client: calls every listener with each event."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.listeners: list[Listener] = []
        self.lock = threading.Lock()

    def __call__(self, item: Any) -> None:
        with self.lock:
            listeners = list(self.listeners)
        for fn in listeners:
            with contextlib.suppress(Exception):
                fn(item)


def listen_client(client: Any, listener: Listener) -> Callable[[], None]:
    """Call ``listener((timestamp, event))`` for every event the scheduler of ``client`` logs on
    topic :data:`mlr_dask.events.TOPIC` from now on; returns a function that stops it."""
    key = str(client.id)
    with _lock:
        fan = _fanouts.get(key)
        if fan is None or fan.client is not client:
            fan = _fanouts[key] = _Fanout(client)
            client.subscribe_topic(events.TOPIC, fan)
    with fan.lock:
        fan.listeners.append(listener)

    def stop() -> None:
        with fan.lock:
            if listener in fan.listeners:
                fan.listeners.remove(listener)
            empty = not fan.listeners
        if empty:
            with _lock:
                if _fanouts.get(key) is fan:
                    del _fanouts[key]
                    with contextlib.suppress(Exception):
                        client.unsubscribe_topic(events.TOPIC)

    return stop


def listen_local(listener: Listener) -> Callable[[], None]:
    """Call ``listener(event)`` for every event published in this process; returns the function
    that stops it."""
    return events.subscribe(listener)


def backlog(client: Any) -> list[Any]:
    """The events already in the scheduler's log on topic :data:`mlr_dask.events.TOPIC`, oldest
    first, as ``(timestamp, event)`` pairs (one round trip to the scheduler)."""
    return list(client.get_events(events.TOPIC))
