"""Preload of the embedded LocalCluster's worker processes (``connect()`` with no address).

The terminal's Ctrl-C goes to the whole foreground process group, the workers included; they
ignore SIGINT so that only the client sees it and shuts the cluster down, instead of every
worker printing its own traceback. Workers started with ``dask worker`` do not use this.
"""

from __future__ import annotations

import signal
from typing import Any


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (it still stops on SIGTERM and when its nanny or the
    client closes it). Runs in the worker's main thread, where Python handles signals."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
