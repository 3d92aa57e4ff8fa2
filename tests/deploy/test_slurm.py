"""deploy/slurm/submit.py with stand-in ``sbatch`` / ``scancel`` executables on PATH: the worker
job script it submits, the job checked before anything is submitted, the worker jobs cancelled
and the scheduler stopped whether the job succeeds, fails, times out or is interrupted; and
(slow) a whole job run through workers that the stand-in ``sbatch`` really starts."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("dask_jobqueue")

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "deploy" / "slurm" / "submit.py"
MAKE_CERTS = REPO / "deploy" / "make_certs.sh"
JOB = REPO / "pipelines" / "mlr_demo.toml"

FAKE_SBATCH = """#!{python}
# stand-in sbatch: keep the script, start it (FAKE_SLURM_RUN=1) in its own process group,
# print a job id as sbatch does
import os, pathlib, subprocess, sys
rec = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
n = os.getpid()  # unique among sbatch calls running at the same time
copy = rec / f"job-{{n}}.sh"
copy.write_text(pathlib.Path(sys.argv[-1]).read_text())
if os.environ.get("FAKE_SLURM_RUN") == "1":
    log = open(rec / f"job-{{n}}.log", "wb")
    job = subprocess.Popen(["bash", str(copy)], stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True).pid
    with open(rec / "started", "a") as f:
        f.write(f"{{job}}\\n")
else:
    job = n
with open(rec / "submitted", "a") as f:
    f.write(f"{{job}}\\n")
print(f"Submitted batch job {{job}}")
"""

FAKE_SCANCEL = """#!{python}
# stand-in scancel: record the job ids; stop the process groups the stand-in sbatch started
import os, pathlib, signal, sys
rec = pathlib.Path(os.environ["FAKE_SLURM_DIR"])
with open(rec / "cancelled", "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_SLURM_RUN") == "1":
    for job in sys.argv[1:]:
        try:
            os.killpg(int(job), signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            pass
"""


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A directory of records; PATH starts with the stand-in sbatch and scancel."""
    rec = tmp_path / "slurm"
    bin_dir = tmp_path / "bin"
    rec.mkdir()
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        exe = bin_dir / name
        exe.write_text(text.format(python=sys.executable))
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(rec))
    monkeypatch.delenv("FAKE_SLURM_RUN", raising=False)
    yield rec
    for pgid in ids(rec / "started"):  # worker jobs a failing test left running
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "c"
    subprocess.run(["sh", str(MAKE_CERTS), str(out)], check=True, capture_output=True)
    return out


def ids(path: Path) -> list[int]:
    return [int(w) for w in path.read_text().split()] if path.exists() else []


def load_submit():
    spec = importlib.util.spec_from_file_location("mlr_dask_slurm_submit", SUBMIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_script(script: str, certs: Path, jobs_memory: str = "1G") -> None:
    """The worker job script: resources, one single-threaded TLS worker, the cert files."""
    assert script.startswith("#!")
    directives = re.findall(r"^#SBATCH (.+)$", script, re.M)
    assert "-n 1" in directives and "--cpus-per-task=1" in directives
    assert f"--mem={jobs_memory}" in directives and "-t 00:10:00" in directives
    assert "-p testq" in directives and "-A testacc" in directives
    (command,) = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
    words = command.split()
    assert words[1:3] == ["-m", "distributed.cli.dask_worker"]
    assert words[3].startswith("tls://127.0.0.1:")
    assert words[words.index("--nthreads") + 1] == "1"
    assert words[words.index("--preload") + 1] == "mlr_dask.workers"
    assert words[words.index("--protocol") + 1] == "tls://"
    assert words[words.index("--tls-ca-file") + 1] == str(certs.resolve() / "ca.pem")
    assert words[words.index("--tls-cert") + 1] == str(certs.resolve() / "cluster.pem")
    assert words[words.index("--tls-key") + 1] == str(certs.resolve() / "cluster-key.pem")
    assert "ca-key" not in script and "client" not in command
    assert "OMP_NUM_THREADS=1" in script


def base_args(certs: Path, *more: str) -> list[str]:
    return [str(JOB), "--tls", str(certs), "--interface", "lo", "--memory", "1GiB",
            "--walltime", "00:10:00", "--queue", "testq", "--account", "testacc",
            "--dashboard-address", "127.0.0.1:0", *more]


def test_print_job_script_submits_nothing(slurm, certs, capsys):
    assert load_submit().main(base_args(certs, "--print-job-script")) == 0
    out = capsys.readouterr().out
    check_script(out, certs)
    assert not (slurm / "submitted").exists() and not (slurm / "cancelled").exists()


def test_bad_job_or_options_submit_nothing(slurm, certs, tmp_path, capsys):
    submit = load_submit()
    # the job is planned first: a bad --set is refused before any sbatch
    assert submit.main(base_args(certs, "--", "--set", "nosuchstage.n=1")) == 2
    assert "nosuchstage" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # no TLS and no --insecure
        submit.main([str(JOB)])
    assert exc.value.code == 2
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "ca.pem").write_text("x")
    with pytest.raises(SystemExit):  # a certificate directory without the other files
        submit.main([str(JOB), "--tls", str(tmp_path / "partial")])
    assert "lacks cluster.pem" in capsys.readouterr().err
    assert not (slurm / "submitted").exists()


def test_no_workers_in_time_cancels_the_jobs(slurm, certs, capsys):
    code = load_submit().main(base_args(certs, "--jobs", "2", "--wait-timeout", "2"))
    assert code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: no 1 worker(s) joined within 2 s")
    submitted = sorted(ids(slurm / "submitted"))
    assert len(set(submitted)) == 2
    assert sorted(ids(slurm / "cancelled")) == submitted  # cluster.close() ran scancel
    for script in sorted(slurm.glob("job-*.sh")):
        check_script(script.read_text(), certs)


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_cluster_is_closed_when_the_job_fails(slurm, certs, monkeypatch, failure):
    import dask_jobqueue

    import mlr_dask.cli.main as cli

    def fake_cli(argv):
        if "--dry-run" in argv:
            return 0
        assert argv[argv.index("--scheduler") + 1].startswith("tls://127.0.0.1:")
        raise failure("the job failed")

    closed = []
    real_close = dask_jobqueue.SLURMCluster.close

    def close(self, *a, **k):
        closed.append(self.scheduler_address)
        return real_close(self, *a, **k)

    monkeypatch.setattr(cli, "main", fake_cli)
    monkeypatch.setattr(dask_jobqueue.SLURMCluster, "close", close)
    with pytest.raises(failure):
        load_submit().main(base_args(certs, "--jobs", "3", "--wait-workers", "0"))
    assert len(closed) == 1
    deadline = time.monotonic() + 10  # scancel runs as the cluster stops its jobs
    while len(ids(slurm / "cancelled")) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    submitted = sorted(ids(slurm / "submitted"))
    assert len(set(submitted)) == 3 and sorted(ids(slurm / "cancelled")) == submitted


@pytest.mark.slow
def test_job_runs_on_workers_started_by_sbatch(slurm, certs, tmp_path):
    """The stand-in sbatch runs the job script: a real TLS worker joins and the job runs."""
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "FAKE_SLURM_RUN": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(SUBMIT), *base_args(certs, "--jobs", "1", "--wait-timeout", "120"),
         "--", "--set", "data.n=256", "--quiet"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr + "".join(
        p.read_text() for p in slurm.glob("job-*.log"))
    (job,) = ids(slurm / "submitted")
    assert ids(slurm / "cancelled") == [job]
    assert json.loads((work / "mlr_demo.manifest.json").read_text())  # the run manifest
    assert (work / "mlr_demo.zarr").is_dir()  # written where the driver started
    (log,) = [p.read_text() for p in slurm.glob("job-*.log")]
    assert "Registered to:" in log and "tls://127.0.0.1:" in log
    deadline = time.monotonic() + 20  # the worker's process group is gone after scancel
    while time.monotonic() < deadline:
        try:
            os.killpg(job, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the worker job is still running after the driver ended")
