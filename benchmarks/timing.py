"""Timing helpers shared by the benchmarks: best-of-k wall time of a callable."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], *, repeat: int = 5, min_time: float = 0.05) -> float:
    """Best over ``repeat`` rounds of the mean time per call, each round running ``fn`` enough
    times to last at least ``min_time`` seconds (the first call, a warm-up, is not timed)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        best = min(best, elapsed / n)
    return best
