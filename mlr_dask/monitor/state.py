"""What the monitor knows, built from job events only (no widgets, no I/O).

:class:`MonitorState` takes events (dicts from :func:`mlr_dask.events.publish`, or the
``(timestamp, event)`` pairs of the scheduler's event log) and keeps, per job:

- the progress of every stage (last ``step``, ``total``, last scalar metrics);
- convergence curves: the points ``(x, value)`` of every metric in :data:`CURVE_METRICS` per
  stage; ``x`` is the event's ``step``, moved right when a stage starts over, so every curve is
  ordered;
- the latest ``ranks`` per level, and the latest hierarchy picture (``bounds``: boundaries per
  level, or ``n_blocks``: block counts per level).

:meth:`MonitorState.update` returns a :class:`Change` saying what moved, so a display redraws only
that. An event seen twice (the live feed and the backlog overlap) counts once. Cost per event:
O(size of its lists).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CURVE_METRICS", "StageProgress", "JobState", "Change", "MonitorState",
           "as_event"]

#: metrics drawn as convergence curves, in this order
CURVE_METRICS = ("loglike", "rel_error", "error", "ce")

#: keys of an event that are not metrics
_BASE_KEYS = {"job", "job_name", "stage", "step", "total", "time"}


def as_event(item: Any) -> dict[str, Any] | None:
    """The event dict of ``item``: a dict as is, the message of a ``(timestamp, msg)`` pair from
    the scheduler's event log; None for anything else or an event without job and stage."""
    if isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], dict):
        item = item[1]
    if not isinstance(item, dict):
        return None
    if not isinstance(item.get("stage"), str) or item.get("job") is None:
        return None
    return item


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _int_list(v: Any) -> list[int] | None:
    if not isinstance(v, list | tuple) or not v:
        return None
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int | float) or x != int(x):
            return None
        out.append(int(x))
    return out


@dataclass
class StageProgress:
    """Progress of one stage of one job: ``step`` of ``total`` (None: unknown), the scalar
    metrics of its last event, the number of events and the times of the first and last."""

    stage: str
    step: int = 0
    total: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    n_events: int = 0
    started: float | None = None
    updated: float | None = None

    @property
    def fraction(self) -> float | None:
        """``step / total`` clipped to [0, 1]; None when the total is unknown."""
        if not self.total:
            return None
        return min(max(self.step / self.total, 0.0), 1.0)

    @property
    def done(self) -> bool:
        return self.total is not None and self.step >= self.total


@dataclass
class Curve:
    """Points of one metric of one stage: ``x`` (ordered) and ``y``."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    last_step: int | None = None

    def add(self, step: int, value: float) -> float:
        """Append a point for ``step``; returns its ``x``."""
        if not self.x:
            x = float(step)
        elif self.last_step is not None and step > self.last_step:
            x = self.x[-1] + (step - self.last_step)
        else:  # the stage started over (or repeated a step): continue to the right
            x = self.x[-1] + 1.0
        self.x.append(x)
        self.y.append(value)
        self.last_step = step
        return x


@dataclass
class JobState:
    """Everything known about one job."""

    job: str
    name: str | None = None
    stages: dict[str, StageProgress] = field(default_factory=dict)
    curves: dict[tuple[str, str], Curve] = field(default_factory=dict)  # (metric, stage)
    ranks: list[int] | None = None
    ranks_stage: str | None = None
    bounds: list[list[int]] | None = None
    n_blocks: list[int] | None = None
    first_time: float | None = None
    last_time: float | None = None

    @property
    def has_hierarchy(self) -> bool:
        return self.bounds is not None or self.n_blocks is not None

    def block_counts(self) -> list[int] | None:
        """Blocks per level, from ``bounds`` or ``n_blocks``."""
        if self.bounds is not None:
            return [len(b) - 1 for b in self.bounds]
        return self.n_blocks


@dataclass
class Change:
    """What one event changed: its job and stage, whether the job or the stage is new, the new
    curve points ``(metric, stage, x, y)``, and whether ranks or hierarchy changed."""

    job: str
    stage: str
    new_job: bool = False
    new_stage: bool = False
    points: list[tuple[str, str, float, float]] = field(default_factory=list)
    ranks: bool = False
    hierarchy: bool = False


class MonitorState:
    """Jobs, stages, curves, ranks and hierarchies from events (see module docstring).

    Parameters
    ----------
    job : keep only the events of this job id (None: every job).
    """

    def __init__(self, job: str | None = None) -> None:
        self.job_filter = job
        self.jobs: dict[str, JobState] = {}
        self._seen: set[tuple[Any, ...]] = set()
        self.n_events = 0

    def feed(self, items: Iterable[Any]) -> list[Change]:
        """:meth:`update` with every item in order; returns the changes (None dropped)."""
        out = []
        for item in items:
            ch = self.update(item)
            if ch is not None:
                out.append(ch)
        return out

    def update(self, item: Any) -> Change | None:
        """Take one event (dict or ``(timestamp, dict)``); returns what changed, or None when
        the event is malformed, filtered out or already seen."""
        ev = as_event(item)
        if ev is None:
            return None
        jid = str(ev["job"])
        if self.job_filter is not None and jid != self.job_filter:
            return None
        stage = ev["stage"]
        try:
            step = int(ev.get("step", 0))
        except (TypeError, ValueError):
            return None
        key = (jid, stage, step, ev.get("time"))
        if key in self._seen:
            return None
        self._seen.add(key)
        self.n_events += 1
        change = Change(jid, stage)
        js = self.jobs.get(jid)
        if js is None:
            js = self.jobs[jid] = JobState(jid)
            change.new_job = True
        if isinstance(ev.get("job_name"), str):
            js.name = ev["job_name"]
        t = _number(ev.get("time"))
        if t is not None:
            js.first_time = t if js.first_time is None else min(js.first_time, t)
            js.last_time = t if js.last_time is None else max(js.last_time, t)
        sp = js.stages.get(stage)
        if sp is None:
            sp = js.stages[stage] = StageProgress(stage, started=t)
            change.new_stage = True
        sp.step = step
        total = ev.get("total")
        if total is not None:
            try:
                sp.total = int(total)
            except (TypeError, ValueError):
                pass
        sp.n_events += 1
        sp.updated = t
        metrics = {k: v for k, v in ev.items() if k not in _BASE_KEYS}
        sp.metrics = {k: v for k, v in metrics.items()
                      if isinstance(v, str) or _number(v) is not None}
        for name in CURVE_METRICS:
            v = _number(metrics.get(name))
            if v is None:
                continue
            curve = js.curves.setdefault((name, stage), Curve())
            x = curve.add(step, v)
            change.points.append((name, stage, x, v))
        ranks = _int_list(metrics.get("ranks"))
        if ranks is not None and ranks != js.ranks:
            js.ranks = ranks
            js.ranks_stage = stage
            change.ranks = True
        bounds = metrics.get("bounds")
        if isinstance(bounds, list | tuple) and bounds:
            levels = [_int_list(b) for b in bounds]
            if all(lv is not None and len(lv) >= 2 for lv in levels) and levels != js.bounds:
                js.bounds = levels  # type: ignore[assignment]
                js.n_blocks = [len(b) - 1 for b in levels]  # type: ignore[arg-type]
                change.hierarchy = True
        else:
            nb = _int_list(metrics.get("n_blocks"))
            if nb is not None and nb != js.n_blocks:
                js.n_blocks = nb
                js.bounds = None
                change.hierarchy = True
        return change

    # ------------------------------------------------------------------ queries
    def latest(self, attr: str) -> JobState | None:
        """The most recently updated job whose ``attr`` (``"ranks"``, ``"hierarchy"``) is
        known, or None."""
        best = None
        for js in self.jobs.values():
            ok = js.ranks is not None if attr == "ranks" else js.has_hierarchy
            if ok and (best is None or (js.last_time or 0) >= (best.last_time or 0)):
                best = js
        return best

    def curve(self, job: str, metric: str, stage: str) -> tuple[list[float], list[float]]:
        """``(x, y)`` of one curve (empty lists when unknown)."""
        js = self.jobs.get(job)
        c = None if js is None else js.curves.get((metric, stage))
        return ([], []) if c is None else (list(c.x), list(c.y))

    def summary(self) -> list[dict[str, Any]]:
        """One JSON-able row per (job, stage): job, stage, step, total, events, and the number
        of points of each curve of the stage."""
        rows = []
        for js in self.jobs.values():
            for st in js.stages.values():
                row = {"job": js.job, "stage": st.stage, "step": st.step, "total": st.total,
                       "events": st.n_events}
                for (m, s), c in js.curves.items():
                    if s == st.stage:
                        row[f"{m}_points"] = len(c.x)
                rows.append(row)
        return rows


def block_rects(bounds: Sequence[Sequence[int]] | None, n_blocks: Sequence[int] | None,
                max_blocks: int = 256) -> list[tuple[int, float, float, int]]:
    """Rectangles of a block picture: ``(level, left, right, block)`` with ``left``/``right`` as
    fractions of the axis. From ``bounds`` when known, else equal blocks from ``n_blocks``. A
    level with more than ``max_blocks`` blocks is one rectangle with ``block = -count``."""
    out: list[tuple[int, float, float, int]] = []
    if bounds is not None:
        for lvl, b in enumerate(bounds):
            n = b[-1] - b[0]
            if len(b) - 1 > max_blocks or n <= 0:
                out.append((lvl, 0.0, 1.0, -(len(b) - 1)))
                continue
            for k in range(len(b) - 1):
                out.append((lvl, (b[k] - b[0]) / n, (b[k + 1] - b[0]) / n, k))
    elif n_blocks is not None:
        for lvl, p in enumerate(n_blocks):
            if p > max_blocks or p <= 0:
                out.append((lvl, 0.0, 1.0, -p))
                continue
            for k in range(p):
                out.append((lvl, k / p, (k + 1) / p, k))
    return out
