"""Job events: local callbacks, job ids, JSON-able payloads, tqdm bars driven by events, and
the scheduler's event log."""

import io
import json

import numpy as np

from mlr_dask import events


def test_publish_reaches_local_callbacks_with_job_ids():
    got = []
    unsubscribe = events.subscribe(got.append)
    try:
        with events.job("job-a", name="demo") as jid:
            events.publish("em", 1, 3, loglike=np.float64(-1.5), ranks=np.array([2, 1]))
        events.publish("em", 2, None, rel_error=float("nan"))
    finally:
        unsubscribe()
    events.publish("em", 3, 3)  # no longer delivered
    assert jid == "job-a" and len(got) == 2
    assert got[0]["job"] == "job-a" and got[0]["job_name"] == "demo"
    assert got[0]["loglike"] == -1.5 and got[0]["ranks"] == [2, 1]
    assert got[1]["job"] == events.current_job() != "job-a"
    assert got[1]["total"] is None and got[1]["rel_error"] is None
    json.dumps(got)  # JSON-able as published


def test_a_failing_callback_does_not_break_the_computation():
    def bad(event):
        raise RuntimeError("consumer bug")

    unsubscribe = events.subscribe(bad)
    try:
        assert events.publish("x", 1)["step"] == 1
    finally:
        unsubscribe()


def test_progress_bars_follow_the_events():
    buf = io.StringIO()
    with events.ProgressBars(file=buf) as bars:
        with events.job("j"):
            events.publish("em", 3, 10, loglike=-2.0)  # a resumed fit starts at step 3
            events.publish("em", 4, 10, loglike=-1.0)
            events.publish("fit", 1, None, rel_error=0.5)
        (em,) = [b for (job, stage), b in bars.bars.items() if stage == "em"]
        assert em.n == 4 and em.total == 10
        assert len(bars.bars) == 2
    assert "loglike=-1" in buf.getvalue()


def test_events_reach_the_scheduler_log():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster):
        with events.job("remote-job"):
            events.publish("em", 1, 2, loglike=-3.0)
        with Client(cluster.scheduler_address) as other:
            got = [e for _, e in other.get_events(events.TOPIC) if e["job"] == "remote-job"]
    assert got and got[0]["loglike"] == -3.0 and got[0]["stage"] == "em"
