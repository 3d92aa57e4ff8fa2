import subprocess
import sys
import time

import numpy as np
import pytest

from mlr_dask import events
from mlr_dask.monitor.state import MonitorState, block_rects


def ev(job, stage, step, total=None, t=None, **m):
    return {"job": job, "stage": stage, "step": step, "total": total,
            "time": time.time() if t is None else t, **m}


def test_state_progress_curves_ranks():
    st = MonitorState()
    ll = [-10.0, -8.0, -7.5, -7.4]
    for i, v in enumerate(ll, 1):
        ch = st.update(ev("j1", "em", i, 4, t=100.0 + i, loglike=v, ranks=[2, 1]))
        assert ch.points == [("loglike", "em", float(i), v)]
        assert ch.ranks == (i == 1)
        assert ch.new_stage == (i == 1) and ch.new_job == (i == 1)
    js = st.jobs["j1"]
    sp = js.stages["em"]
    assert (sp.step, sp.total, sp.n_events, sp.done, sp.fraction) == (4, 4, 4, True, 1.0)
    assert sp.metrics["loglike"] == -7.4
    assert st.curve("j1", "loglike", "em") == ([1.0, 2.0, 3.0, 4.0], ll)
    assert js.ranks == [2, 1] and js.ranks_stage == "em"
    assert st.curve("j1", "rel_error", "em") == ([], [])


def test_state_duplicates_backlog_pairs_and_filter():
    st = MonitorState(job="a")
    e1 = ev("a", "fit", 1, None, t=5.0, rel_error=0.5)
    assert st.update((123.0, e1)) is not None  # scheduler's (timestamp, msg) pair
    assert st.update(dict(e1)) is None  # the same event again (live feed and backlog)
    assert st.update(ev("b", "fit", 1, t=6.0, rel_error=0.4)) is None  # other job
    assert st.update({"stage": "x"}) is None and st.update("junk") is None
    assert st.update(ev("a", "fit", "bad", t=7.0)) is None
    assert st.n_events == 1 and list(st.jobs) == ["a"]
    assert st.jobs["a"].stages["fit"].total is None
    assert st.jobs["a"].stages["fit"].fraction is None


def test_state_restarted_stage_continues_right():
    st = MonitorState()
    for t, step in enumerate([1, 2, 3, 1, 2]):
        st.update(ev("j", "epochs", step, t=float(t), rel_error=1.0 / (t + 1)))
    x, y = st.curve("j", "rel_error", "epochs")
    assert x == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert np.all(np.diff(x) > 0) and len(y) == 5


def test_state_hierarchy_and_latest():
    st = MonitorState()
    ch = st.update(ev("j1", "partition", 1, t=1.0, n_blocks=[1, 2, 4]))
    assert ch.hierarchy and st.jobs["j1"].block_counts() == [1, 2, 4]
    ch = st.update(ev("j2", "partition", 1, t=2.0, bounds=[[0, 10], [0, 3, 10]]))
    assert ch.hierarchy and st.jobs["j2"].block_counts() == [1, 2]
    assert st.latest("hierarchy").job == "j2"
    assert st.latest("ranks") is None
    # same bounds again: no change
    assert not st.update(ev("j2", "partition", 2, t=3.0, bounds=[[0, 10], [0, 3, 10]])).hierarchy
    rows = st.summary()
    assert {(r["job"], r["stage"]) for r in rows} == {("j1", "partition"), ("j2", "partition")}


def test_block_rects():
    r = block_rects([[0, 10], [0, 3, 10]], None)
    assert r == [(0, 0.0, 1.0, 0), (1, 0.0, 0.3, 0), (1, 0.3, 1.0, 1)]
    r = block_rects(None, [1, 4, 1000], max_blocks=256)
    assert len(r) == 1 + 4 + 1 and r[-1] == (2, 0.0, 1.0, -1000)
    assert block_rects(None, None) == []


def test_state_real_publish_events():
    st = MonitorState()
    stop = events.subscribe(st.update)
    try:
        with events.job(name="demo") as jid:
            for i in range(3):
                events.publish("em", i + 1, 3, loglike=np.float64(-5 + i), ranks=np.array([1, 2]))
    finally:
        stop()
    js = st.jobs[jid]
    assert js.name == "demo" and js.ranks == [1, 2]
    assert st.curve(jid, "loglike", "em")[1] == [-5.0, -4.0, -3.0]


# ---------------------------------------------------------------------- widgets
pytest.importorskip("ipywidgets")
pytest.importorskip("jupyter_bokeh")


def _wait(cond, timeout=10.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_watch_local_events_update_widgets():
    from mlr_dask import monitor
    from mlr_dask.hierarchy import Hierarchy

    mon = monitor.watch(None, hierarchy=Hierarchy.dyadic(16, 3))
    try:
        assert len(mon.hier_source.data["left"]) == 1 + 2 + 4
        assert mon.hier_fig.visible and not mon.ranks_fig.visible
        assert not any(f.visible for f in mon.figures.values())
        with events.job() as jid:
            for i in range(4):
                events.publish("fit epochs", i + 1, 4, rel_error=0.5 / (i + 1), ranks=[3, 2, 1])
    finally:
        mon.close()
    src = mon._sources[(jid, "rel_error", "fit epochs")]
    assert src.data["y"] == [0.5, 0.25, 0.5 / 3, 0.125]
    bar, label = mon._bars[(jid, "fit epochs")]
    assert (bar.value, bar.max, bar.bar_style) == (4, 4, "success")
    assert "4/4" in label.value
    assert mon.ranks_source.data["rank"] == [3, 2, 1]
    assert mon.ranks_fig.visible and mon.figures["error"].visible
    assert not mon.figures["loglike"].visible
    # closed: no more updates
    with events.job():
        events.publish("after", 1, 1)
    assert all(js.job != "after" for js in mon.state.jobs.values())
    assert "after" not in {s for (_, s) in mon._bars}
    bundle = mon._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_watch_distributed_second_client():
    distributed = pytest.importorskip("distributed")
    from mlr_dask import monitor

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", host="127.0.0.1") as cluster:
        with distributed.Client(cluster, set_as_default=False) as other:
            # an event already in the scheduler's log before watching (the backlog)
            other.log_event(events.TOPIC, {"job": "cli-job", "stage": "em", "step": 1,
                                           "total": 3, "time": 1.0, "loglike": -3.0})
            _wait(lambda: len(other.get_events(events.TOPIC)) == 1)
            with distributed.Client(cluster, set_as_default=False) as client:
                mon = monitor.watch(client)
                try:
                    assert mon.state.curve("cli-job", "loglike", "em")[1] == [-3.0]
                    assert "dashboard" in mon.header.value.lower()
                    # a second client (as another process would) logs two more
                    for i, v in ((2, -2.0), (3, -1.5)):
                        other.log_event(events.TOPIC, {"job": "cli-job", "stage": "em",
                                                       "step": i, "total": 3, "time": float(i),
                                                       "loglike": v, "n_blocks": [1, 2, 4]})
                    assert _wait(lambda: mon.state.jobs["cli-job"].stages["em"].step == 3)
                    # a task on a worker publishes too
                    def task():
                        with events.job("worker-job"):
                            events.publish("gam", 1, 2, ce=0.7)
                            events.publish("gam", 2, 2, ce=0.6)
                        return 1

                    client.submit(task, pure=False).result()
                    assert _wait(lambda: "worker-job" in mon.state.jobs
                                 and mon.state.jobs["worker-job"].stages["gam"].step == 2)
                    # another process (as a CLI job would) publishes through its own client
                    code = ("import sys; from distributed import Client; "
                            "from mlr_dask import events\n"
                            "with Client(sys.argv[1]) as c, events.job('proc-job'):\n"
                            "    for i in range(1, 4):\n"
                            "        events.publish('epoch', i, 3, rel_error=1.0 / i)\n")
                    out = subprocess.run([sys.executable, "-c", code, cluster.scheduler_address],
                                         capture_output=True, text=True, timeout=120)
                    assert out.returncode == 0, out.stderr[-2000:]
                    assert _wait(lambda: "proc-job" in mon.state.jobs
                                 and mon.state.jobs["proc-job"].stages["epoch"].step == 3)
                finally:
                    mon.close()
                st = mon.state
                assert st.curve("proc-job", "rel_error", "epoch")[1] == [1.0, 0.5, 1.0 / 3]
                assert st.curve("cli-job", "loglike", "em") == ([1.0, 2.0, 3.0],
                                                                [-3.0, -2.0, -1.5])
                assert st.jobs["cli-job"].block_counts() == [1, 2, 4]
                assert st.curve("worker-job", "ce", "gam")[1] == [0.7, 0.6]
                assert mon._sources[("cli-job", "loglike", "em")].data["y"] == [-3.0, -2.0,
                                                                                  -1.5]
                assert len(mon.hier_source.data["left"]) == 7
