"""A TLS cluster made with deploy/make_certs.sh: jobs run through it with the client
certificate, and clients without a certificate of the cluster's authority are refused.

The scheduler and two workers are separate ``dask`` processes on 127.0.0.1, started in a
directory other than the client's, configured only through ``DASK_DISTRIBUTED__COMM__...``
environment variables (as deploy/ does); the CLI gets its certificate the same way.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import DASK, MLR_DASK, clean_env, free_port

REPO = Path(__file__).resolve().parents[1]
MAKE_CERTS = REPO / "deploy" / "make_certs.sh"

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
    pytest.mark.skipif(DASK is None or MLR_DASK is None, reason="dask / mlr-dask not on PATH"),
]


def make_certs(out: Path) -> Path:
    subprocess.run(["sh", str(MAKE_CERTS), str(out)], check=True, capture_output=True)
    return out


def tls_env(certs: Path, role: str, inline: bool = False) -> dict[str, str]:
    """Environment of a process of ``role`` (scheduler, worker, client) of the TLS cluster:
    file names, or with ``inline`` the PEM text itself (as the Helm values pass it)."""
    pair = "client" if role == "client" else "cluster"
    key = f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}"
    files = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": certs / "ca.pem",
             f"{key}__CERT": certs / f"{pair}.pem", f"{key}__KEY": certs / f"{pair}-key.pem"}
    env = {k: f.read_text() if inline else str(f) for k, f in files.items()}
    return {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True", **env}


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop the workers (procs[1:]), then the scheduler (procs[0]): a worker whose scheduler
    is gone waits for it."""
    for group in (procs[1:], procs[:1]):
        for p in group:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in group:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """Scheduler + 2 workers speaking TLS only; yields (address, certs, other_ca_certs)."""
    from distributed import Client, Security

    root = tmp_path_factory.mktemp("tls")
    certs = make_certs(root / "certs")
    other = make_certs(root / "other")
    cluster_dir = root / "cluster"
    cluster_dir.mkdir()
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    logs = [open(cluster_dir / f"{name}.log", "wb") for name in ("scheduler", "w1", "w2")]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [DASK, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port),
             "--no-dashboard"],
            cwd=cluster_dir, env=clean_env(**tls_env(certs, "scheduler")),
            stdout=logs[0], stderr=subprocess.STDOUT,
        ))
        # worker 1 as compose and the operator start it (certificate files); worker 2 as the
        # Helm values do (PEM text in the environment, an address without a scheme)
        for i, target, env in (
            (1, address, tls_env(certs, "worker")),
            (2, address.removeprefix("tls://"),
             {**tls_env(certs, "worker", inline=True),
              "DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME": "tls"}),
        ):
            procs.append(subprocess.Popen(
                [DASK, "worker", target, "--host", "127.0.0.1", "--nthreads", "1",
                 "--memory-limit", "1GiB", "--no-dashboard", "--name", f"w{i}",
                 "--local-directory", str(cluster_dir)],
                cwd=cluster_dir, env=clean_env(**env),
                stdout=logs[i], stderr=subprocess.STDOUT,
            ))
        security = Security(
            tls_ca_file=str(certs / "ca.pem"), tls_client_cert=str(certs / "client.pem"),
            tls_client_key=str(certs / "client-key.pem"), require_encryption=True,
        )
        with Client(address, security=security, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield address, certs, other, security, cluster_dir / "scheduler.log"
    finally:
        stop(procs)
        for f in logs:
            f.close()


def refused_handshakes(log: Path, reason: str = "") -> int:
    """How many TLS handshakes the scheduler has refused (with ``reason`` in the message)."""
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "TLS handshake failed" in line and reason in line)


def wait_for_refusals(log: Path, n: int, reason: str = "") -> int:
    deadline = time.monotonic() + 10
    while refused_handshakes(log, reason) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return refused_handshakes(log, reason)


def executed_counts(address: str, security) -> dict[str, int]:
    from distributed import Client

    with Client(address, security=security, timeout=30) as client:
        counts = client.run(lambda dask_worker: dask_worker.state.executed_count)
    return dict(counts)


def mlr_dask(*args: str, cwd: Path, env: dict[str, str]) -> dict:
    run = subprocess.run([MLR_DASK, *args, "--json", "--quiet"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_client_with_the_cluster_certificate_runs_tasks_on_both_workers(tls_cluster):
    from distributed import Client

    address, _, _, security, _ = tls_cluster
    with Client(address, security=security, timeout=30) as client:
        assert client.security.require_encryption
        workers = list(client.scheduler_info(n_workers=-1)["workers"])
        assert len(workers) == 2 and all(w.startswith("tls://") for w in workers)
        for w in workers:  # a task pinned to each worker: the TLS links all carry work
            assert client.submit(lambda x: x + 1, 41, workers=[w], pure=False).result() == 42


# the first fit compiles the EM kernels on the fresh workers: 15-40 s on 2 busy cores
@pytest.mark.slow
def test_cli_job_runs_over_tls_with_the_client_certificate(tls_cluster, tmp_path, monkeypatch,
                                                          capsys):
    """An EM fit through the TLS cluster (``mlr-dask`` in its own process, the client
    certificate in its environment, relative paths from a directory the workers do not run
    in) gives the in-process result, and both workers ran its tasks."""
    from mlr_dask.cli.main import main

    address, certs, _, security, _ = tls_cluster
    fit = ["fit-fm", "fm.zarr", "--ranks", "4,3,2,1,1", "--max-iter", "3", "--tol", "0",
           "--chunk-size", "50"]
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "fm", "--n", "300", "--samples", "200", "--out", "fm.zarr",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main([*fit, "--out", "local.zarr", "--scheduler", "threads", "--json",
                 "--quiet"]) == 0
    local = json.loads(capsys.readouterr().out)
    env = clean_env(**tls_env(certs, "client"))
    before = executed_counts(address, security)
    remote = mlr_dask(*fit, "--out", "tls.zarr", "--scheduler", address, cwd=tmp_path, env=env)
    after = executed_counts(address, security)
    assert remote["n_iter"] == local["n_iter"] == 3
    assert remote["loglike"] == pytest.approx(local["loglike"], rel=1e-10)
    assert (tmp_path / "tls.zarr").is_dir()
    assert set(after) == set(before) and len(after) == 2
    assert all(after[w] > before[w] for w in after), (before, after)  # both TLS workers


def test_plain_tcp_client_is_refused(tls_cluster):
    from distributed import Client

    address, *_, log = tls_cluster
    before = refused_handshakes(log)
    with pytest.raises((OSError, TimeoutError)):
        Client(address.replace("tls://", "tcp://"), timeout=5)
    # the scheduler itself refused it: a plain TCP hello is not a TLS handshake
    assert wait_for_refusals(log, before + 1) > before


def test_client_without_certificate_is_refused(tls_cluster):
    """A TLS client that trusts the cluster's authority but has no certificate of its own."""
    import ssl

    address, certs, *_, log = tls_cluster
    before = refused_handshakes(log)
    host, port = address.removeprefix("tls://").split(":")
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with ctx.wrap_socket(raw) as s:
                # TLS 1.3 reports the missing client certificate on the first read
                s.sendall(b"\0" * 8)
                s.recv(1)
    assert wait_for_refusals(log, before + 1) > before


@pytest.mark.parametrize("trust", ["own_ca", "other_ca"])
def test_client_with_certificate_of_another_authority_is_refused(tls_cluster, trust):
    """A client certificate signed by another authority: refused by the scheduler, whether the
    client trusts the cluster's authority (so only the scheduler's check can fail) or not."""
    from distributed import Client, Security

    address, certs, other, _, log = tls_cluster
    reason = "certificate verify failed" if trust == "own_ca" else "unknown ca"
    before = refused_handshakes(log, reason)
    ca = certs / "ca.pem" if trust == "own_ca" else other / "ca.pem"
    security = Security(
        tls_ca_file=str(ca), tls_client_cert=str(other / "client.pem"),
        tls_client_key=str(other / "client-key.pem"), require_encryption=True,
    )
    with pytest.raises((OSError, TimeoutError)):
        Client(address, security=security, timeout=5)
    # own_ca: the scheduler could not verify the client's certificate; other_ca: the client
    # did not trust the scheduler's and told it so
    assert wait_for_refusals(log, before + 1, reason) > before


def test_cli_plain_tcp_gets_one_error_line(tls_cluster, tmp_path):
    address, *_ = tls_cluster
    run = subprocess.run(
        [MLR_DASK, "demo", "--n", "128", "--fm-features", "0", "--quiet",
         "--scheduler", address.replace("tls://", "tcp://")],
        cwd=tmp_path, env=clean_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="5s"),
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot reach the Dask scheduler"), run.stderr
    assert "Traceback" not in run.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
