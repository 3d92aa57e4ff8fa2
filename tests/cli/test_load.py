"""Load: four jobs submitted at once, from four processes, to one cluster (scheduler + 2 worker
processes) all finish; each result equals its solo run, and their events, checkpoints and
outputs never mix."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from procs import DASK, MLR_DASK, ProcessCluster, clean_env, json_out, mlr_dask

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DASK is None or MLR_DASK is None, reason="no dask CLI")]

JOB = """
[job]
name = "load{i}"

[[stage]]
name = "data"
command = "generate fm"
options = {{ n = 1500, samples = 120, ranks = [3, 2, 2, 1, 1], seed = {seed}, out = "d.zarr" }}

[[stage]]
name = "fit"
command = "fit-fm"
args = ["d.zarr"]

[stage.options]
ranks = [3, 2, 2, 1, 1]
max_iter = 10
tol = 0
checkpoint_every = 2
out = "m.zarr"
"""


def test_four_jobs_at_once(tmp_path):
    with ProcessCluster(tmp_path / "cluster") as cluster:
        dirs = []
        for i in range(4):
            for kind in ("solo", "busy"):
                d = tmp_path / f"{kind}{i}"
                d.mkdir()
                (d / "job.toml").write_text(JOB.format(i=i, seed=100 + i))
            dirs.append(i)
        solo = [json_out(mlr_dask(["run", "job.toml", "--scheduler", cluster.address,
                                   "--json", "--quiet"], tmp_path / f"solo{i}"))
                for i in dirs]
        procs = [subprocess.Popen([MLR_DASK, "run", "job.toml", "--scheduler", cluster.address,
                                   "--json", "--quiet"], cwd=tmp_path / f"busy{i}",
                                  env=clean_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in dirs]
        busy = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
            busy.append(json.loads(out))
        with cluster.client() as c:
            events = [e for _, e in c.get_events("mlr-dask")]
    for s, b in zip(solo, busy):
        ls, lb = s["stages"][1]["result"]["loglike"], b["stages"][1]["result"]["loglike"]
        assert len(ls) == len(lb) == 10
        assert all(math.isclose(x, y, rel_tol=1e-10) for x, y in zip(ls, lb))
        # each job's EM events carry its own job id and its own log-likelihoods, in order
        mine = [e for e in events if e.get("job") == b["job_id"] and e["stage"] == "em"]
        assert [e["step"] for e in mine] == list(range(1, 11))
        assert all(math.isclose(e["loglike"], y, rel_tol=1e-12) for e, y in zip(mine, lb))
    # the four data sets differ, so mixed outputs would show
    finals = {round(b["stages"][1]["result"]["loglike"][-1], 6) for b in busy}
    assert len(finals) == 4
    for i in dirs:
        log = (tmp_path / f"busy{i}" / "m.zarr.iterations.jsonl").read_text().splitlines()
        assert [json.loads(x)["iteration"] for x in log] == list(range(1, 11))
