"""The monitor's display: ipywidgets progress bars and one bokeh layout (convergence curves,
ranks per level, block picture of the hierarchy) shown through ``jupyter_bokeh.BokehModel``, so
every change is sent to the page as a patch of the bokeh document (curves grow by streaming
their new points); nothing is polled and nothing is redrawn from scratch.

All the logic lives in :class:`mlr_dask.monitor.state.MonitorState`; this layer only maps its
:class:`~mlr_dask.monitor.state.Change` objects onto widgets.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

from mlr_dask.errors import InputError
from mlr_dask.monitor.state import Change, JobState, MonitorState, block_rects

__all__ = ["Monitor", "require_widgets", "load_bokehjs"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")

#: figure that draws each curve metric, and its title
FIGURES = {"loglike": "loglike", "rel_error": "error", "error": "error", "ce": "error"}
TITLES = {"loglike": "log-likelihood per sample", "error": "error (relative error, CE)"}


def require_widgets() -> None:
    """Raise InputError naming the missing packages unless ipywidgets, bokeh and jupyter_bokeh
    import."""
    missing = []
    for mod in ("ipywidgets", "bokeh", "jupyter_bokeh"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise InputError(
            f"the monitor needs {', '.join(missing)}: pip install 'mlr-dask[jupyter]'"
        )


def load_bokehjs() -> None:
    """In an IPython kernel, put BokehJS (inline, no network) in the page: the plots widget
    draws with it. Outside a kernel, nothing."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipywidgets depends on IPython
        return
    if get_ipython() is None:
        return
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    output_notebook(INLINE, hide_banner=True)


def _short(job: str, name: str | None) -> str:
    return name or job[-6:]


class Monitor:
    """A live dashboard of job events (build it with :func:`mlr_dask.monitor.watch`).

    ``handle(item)`` feeds one event (from any thread); ``state`` is the
    :class:`MonitorState`; ``widget`` the ipywidgets box; ``close()`` stops the event feeds.
    Displaying the object shows ``widget`` with the current picture.
    """

    def __init__(self, state: MonitorState, *, dashboard_link: str | None = None,
                 source: str = "", hierarchy: Any = None) -> None:
        require_widgets()
        import ipywidgets as w
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource
        from bokeh.plotting import figure

        self.state = state
        #: boundaries per level drawn until an event brings a hierarchy
        self.given_bounds = (None if hierarchy is None
                             else [b.tolist() for b in hierarchy.boundaries])
        self._lock = threading.RLock()
        self._stops: list[Callable[[], None]] = []
        self._sources: dict[tuple[str, str, str], Any] = {}
        self._bars: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._job_boxes: dict[str, Any] = {}
        self._colors: dict[tuple[str, str], str] = {}
        tools = "pan,wheel_zoom,box_zoom,reset,save"
        self.figures = {
            key: figure(width=440, height=240, title=TITLES[key], x_axis_label="step",
                        tools=tools, name=f"fig-{key}")
            for key in ("loglike", "error")
        }
        self.ranks_source = ColumnDataSource({"level": [], "rank": []}, name="ranks")
        self.ranks_fig = figure(width=440, height=240, title="ranks per level",
                                x_axis_label="level", tools=tools, name="fig-ranks")
        self.ranks_fig.vbar(x="level", top="rank", width=0.7, source=self.ranks_source)
        self.hier_source = ColumnDataSource(
            {"left": [], "right": [], "bottom": [], "top": [], "color": []}, name="hierarchy")
        self.hier_fig = figure(width=440, height=240, title="hierarchy", tools=tools,
                               x_axis_label="position (fraction of the axis)",
                               y_axis_label="level", name="fig-hierarchy")
        self.hier_fig.quad(left="left", right="right", bottom="bottom", top="top",
                           color="color", line_color="white", source=self.hier_source)
        # a figure shows once it has something to draw
        for fig in (*self.figures.values(), self.ranks_fig, self.hier_fig):
            fig.visible = False
        self.layout = column(row(self.figures["loglike"], self.figures["error"]),
                             row(self.ranks_fig, self.hier_fig))
        link = (f'<a href="{html.escape(dashboard_link)}" target="_blank">Dask dashboard: '
                f"{html.escape(dashboard_link)}</a>" if dashboard_link else
                "no distributed client: events of this process")
        self.header = w.HTML(f"<b>mlr-dask jobs</b> &middot; {link}"
                             + (f" &middot; {html.escape(source)}" if source else ""))
        self.status = w.Label("waiting for events")
        self.bars_box = w.VBox([])
        # what the state already holds (the backlog) is drawn before the plots are wrapped,
        # so it travels in the widget's first picture instead of one patch per event
        for js in state.jobs.values():
            self._draw_job(js)
        self._draw_hierarchy()
        from jupyter_bokeh import BokehModel

        self.plots = BokehModel(self.layout)
        self.widget = w.VBox([self.header, self.status, self.bars_box, self.plots])

    # ------------------------------------------------------------------ feeding
    def handle(self, item: Any) -> Change | None:
        """Feed one event (dict or ``(timestamp, dict)``) and update the widgets; thread-safe.
        Returns the change (None when the event was dropped)."""
        with self._lock:
            change = self.state.update(item)
            if change is not None:
                self._apply(change)
            return change

    def add_stop(self, stop: Callable[[], None]) -> None:
        self._stops.append(stop)

    def close(self) -> None:
        """Stop every event feed (the widgets stay as they are)."""
        while self._stops:
            self._stops.pop()()

    # ------------------------------------------------------------------ drawing
    def _draw_job(self, js: JobState) -> None:
        for st in js.stages.values():
            self._bar(js, st.stage)
        for (metric, stage), c in js.curves.items():
            src = self._curve_source(js.job, metric, stage)
            src.stream({"x": list(c.x), "y": list(c.y)})
        self._draw_ranks()
        self._draw_hierarchy()
        self._draw_status()

    def _apply(self, ch: Change) -> None:
        js = self.state.jobs[ch.job]
        self._bar(js, ch.stage)
        for metric, stage, x, y in ch.points:
            self._curve_source(ch.job, metric, stage).stream({"x": [x], "y": [y]})
        if ch.ranks:
            self._draw_ranks()
        if ch.hierarchy:
            self._draw_hierarchy()
        self._draw_status()

    def _draw_status(self) -> None:
        st = self.state
        n_points = sum(len(c.x) for js in st.jobs.values() for c in js.curves.values())
        self.status.value = (f"{len(st.jobs)} job(s), {st.n_events} event(s), "
                             f"{n_points} curve point(s)")

    def _bar(self, js: JobState, stage: str) -> None:
        import ipywidgets as w

        sp = js.stages[stage]
        key = (js.job, stage)
        if key not in self._bars:
            box = self._job_boxes.get(js.job)
            if box is None:
                title = w.HTML(f"<b>job {html.escape(_short(js.job, js.name))}</b> "
                               f"<code>{html.escape(js.job)}</code>")
                box = self._job_boxes[js.job] = w.VBox([title])
                self.bars_box.children = (*self.bars_box.children, box)
            bar = w.IntProgress(value=0, min=0, max=1, description=stage,
                                style={"description_width": "160px"},
                                layout=w.Layout(width="480px"))
            label = w.Label("")
            self._bars[key] = (bar, label)
            box.children = (*box.children, w.HBox([bar, label]))
        bar, label = self._bars[key]
        total = sp.total if sp.total else max(sp.step, 1)
        bar.max = max(total, sp.step, 1)
        bar.value = max(min(sp.step, bar.max), 0)
        bar.bar_style = "success" if sp.done else ("" if sp.total else "info")
        text = f"{sp.step}/{sp.total}" if sp.total else f"step {sp.step}"
        shown = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in sp.metrics.items() if not isinstance(v, list)][:4]
        label.value = "  ".join([text, *shown])

    def _curve_source(self, job: str, metric: str, stage: str) -> Any:
        key = (job, metric, stage)
        src = self._sources.get(key)
        if src is not None:
            return src
        from bokeh.models import ColumnDataSource

        src = ColumnDataSource({"x": [], "y": []}, name=f"curve|{metric}|{stage}|{job}")
        ckey = (job, stage)
        color = self._colors.setdefault(ckey, PALETTE[len(self._colors) % len(PALETTE)])
        js = self.state.jobs.get(job)
        label = stage if metric in ("loglike",) else f"{metric} ({stage})"
        if len(self.state.jobs) > 1 and js is not None:
            label = f"{_short(job, js.name)}: {label}"
        fig = self.figures[FIGURES[metric]]
        fig.visible = True
        fig.line("x", "y", source=src, color=color, legend_label=label, line_width=2)
        fig.scatter("x", "y", source=src, color=color, size=4)
        fig.legend.location = "bottom_right" if metric == "loglike" else "top_right"
        self._sources[key] = src
        return src

    def _draw_ranks(self) -> None:
        js = self.state.latest("ranks")
        if js is None or js.ranks is None:
            return
        self.ranks_source.data = {"level": list(range(len(js.ranks))), "rank": list(js.ranks)}
        self.ranks_fig.visible = True
        self.ranks_fig.title.text = (f"ranks per level {js.ranks} (job {_short(js.job, js.name)},"
                                     f" {js.ranks_stage})")

    def _draw_hierarchy(self) -> None:
        js = self.state.latest("hierarchy")
        if js is None and self.given_bounds is None:
            return
        bounds = self.given_bounds if js is None else js.bounds
        counts = [len(b) - 1 for b in bounds] if js is None else js.block_counts()
        rects = block_rects(bounds, None if js is None else js.n_blocks)
        self.hier_source.data = {
            "left": [r[1] for r in rects], "right": [r[2] for r in rects],
            "bottom": [-r[0] - 0.42 for r in rects], "top": [-r[0] + 0.42 for r in rects],
            "color": ["#bbbbbb" if r[3] < 0 else PALETTE[r[3] % len(PALETTE)] for r in rects],
        }
        self.hier_fig.yaxis.ticker = [-lvl for lvl in range(len(counts))]
        self.hier_fig.yaxis.major_label_overrides = {-lvl: str(lvl) for lvl in range(len(counts))}
        self.hier_fig.title.text = f"hierarchy: blocks per level {counts}"
        self.hier_fig.visible = True

    # ------------------------------------------------------------------ display
    def refresh(self) -> None:
        """Rebuild the plots' full picture in the widget (a view opened after events arrived
        starts from it; later changes still go out as patches)."""
        with self._lock:
            self.plots.update_from_model(self.layout)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        self.refresh()
        return self.widget._repr_mimebundle_(**kwargs)
