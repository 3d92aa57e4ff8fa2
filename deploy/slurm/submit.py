"""Run an mlr-dask job file on a SLURM cluster: Dask workers as SLURM jobs (dask-jobqueue).

    python -m pip install dask-jobqueue
    sh deploy/make_certs.sh ~/.mlr-dask-certs               # once; a path the nodes can read
    python deploy/slurm/submit.py pipelines/asset_covariance.toml --jobs 8 \\
        --tls ~/.mlr-dask-certs --queue normal -- --set fit.max_iter=50

This script is the driver: it starts a Dask scheduler in this process (on a login node, or
inside an allocation), submits one SLURM job per worker (one single-threaded worker each),
waits for the first workers, runs ``mlr-dask run JOB ...`` against them (the arguments after
``--`` go to ``mlr-dask run``) and cancels the worker jobs and stops the scheduler when the job
ends, fails or is interrupted. The job is planned (``mlr-dask run --dry-run``) before anything
is submitted. Start it from a directory on the shared file system: the job's relative paths
are resolved there and the workers open them under the same names.

The scheduler listens on a network interface the compute nodes reach, so anyone on that
network could connect to it and run code as you: ``--tls DIR`` (the files of
deploy/make_certs.sh, readable from every node) makes every connection TLS with mutual
certificates; without it ``--insecure`` must be given. The dashboard listens on 127.0.0.1 of
this host (reach it through an SSH tunnel). ``--print-job-script`` prints the batch script the
workers would be submitted with and submits nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Any

#: the files of deploy/make_certs.sh a SLURM run needs (never the CA's key)
CERT_FILES = ("ca.pem", "cluster.pem", "cluster-key.pem", "client.pem", "client-key.pem")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="submit.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("job", help="a TOML job file (pipelines/*.toml or your own)")
    p.add_argument("--jobs", type=int, default=4, help="worker jobs to submit (default 4)")
    p.add_argument("--memory", default="8GiB", help="memory of each worker job (default 8GiB)")
    p.add_argument("--walltime", default="02:00:00", help="of each worker job")
    p.add_argument("--queue", default=None, help="SLURM partition")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--interface", default=None,
                   help="network interface of the scheduler and workers (e.g. ib0)")
    p.add_argument("--local-directory", default=None,
                   help="node-local scratch directory of the workers")
    p.add_argument("--tls", default=None, metavar="DIR",
                   help="directory with ca.pem, cluster.pem, cluster-key.pem, client.pem, "
                        "client-key.pem (deploy/make_certs.sh)")
    p.add_argument("--insecure", action="store_true",
                   help="run without TLS: anyone who reaches the scheduler can run code")
    p.add_argument("--dashboard-address", default="127.0.0.1:8787",
                   help="scheduler dashboard (default 127.0.0.1:8787)")
    p.add_argument("--wait-workers", type=int, default=1,
                   help="workers to wait for before the job starts (default 1; 0: no wait)")
    p.add_argument("--wait-timeout", type=float, default=3600.0,
                   help="seconds to wait for them (default 3600: jobs may queue)")
    p.add_argument("--print-job-script", action="store_true",
                   help="print the worker job script and exit without submitting")
    p.epilog = "Arguments after -- go to `mlr-dask run` (--set, --force, ...)."
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options before ``--``, checked; ``run_args``: the words after ``--``."""
    p = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.run_args = argv[cut + 1:]
    if not Path(args.job).is_file():
        p.error(f"job file {args.job!r} does not exist")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if not 0 <= args.wait_workers <= args.jobs:
        p.error("--wait-workers must be between 0 and --jobs")
    if args.tls is None and not args.insecure:
        p.error("give --tls DIR (certificates of deploy/make_certs.sh) or --insecure")
    if args.tls is not None:
        missing = [f for f in CERT_FILES if not (Path(args.tls) / f).is_file()]
        if missing:
            p.error(f"--tls {args.tls!r} lacks {', '.join(missing)}")
    return args


def tls_settings(cert_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The ``distributed.Security`` of the scheduler, the workers and this client, and the Dask
    configuration that gives the same client certificate to ``mlr-dask``'s own client."""
    from distributed import Security

    d = Path(cert_dir).resolve()  # the workers' job script names these files
    security = Security(
        require_encryption=True,
        tls_ca_file=str(d / "ca.pem"),
        tls_scheduler_cert=str(d / "cluster.pem"), tls_scheduler_key=str(d / "cluster-key.pem"),
        tls_worker_cert=str(d / "cluster.pem"), tls_worker_key=str(d / "cluster-key.pem"),
        tls_client_cert=str(d / "client.pem"), tls_client_key=str(d / "client-key.pem"),
    )
    config = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": str(d / "ca.pem"),
        "distributed.comm.tls.client.cert": str(d / "client.pem"),
        "distributed.comm.tls.client.key": str(d / "client-key.pem"),
    }
    return security, config


def make_cluster(args: argparse.Namespace, security: Any) -> Any:
    """A SLURMCluster whose jobs each run one single-threaded worker (no job submitted yet)."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=1, processes=1, memory=args.memory, walltime=args.walltime,
        queue=args.queue, account=args.account, interface=args.interface,
        local_directory=args.local_directory, security=security,
        protocol="tls://" if security is not None else "tcp://",
        scheduler_options={"dashboard_address": args.dashboard_address},
        worker_extra_args=["--preload", "mlr_dask.workers"],
        job_script_prologue=["export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                             "MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1"],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import dask

    from mlr_dask.cli.main import main as mlr_dask

    run = ["run", args.job, *args.run_args]
    with contextlib.redirect_stdout(io.StringIO()):  # errors still go to stderr
        code = mlr_dask([*run, "--dry-run", "--quiet"])  # the whole job, before any submission
    if code != 0:
        return code

    security, config = tls_settings(args.tls) if args.tls else (None, {})
    with dask.config.set(config):
        cluster = make_cluster(args, security)
        try:
            if args.print_job_script:
                print(cluster.job_script())
                return 0
            cluster.scale(jobs=args.jobs)
            print(f"submitted {args.jobs} worker jobs; scheduler {cluster.scheduler_address}, "
                  f"dashboard {cluster.dashboard_link}", file=sys.stderr)
            if args.wait_workers:
                from distributed import Client

                with Client(cluster) as client:
                    try:
                        client.wait_for_workers(args.wait_workers, timeout=args.wait_timeout)
                    except TimeoutError:
                        print(f"error: no {args.wait_workers} worker(s) joined within "
                              f"{args.wait_timeout:g} s; see squeue and the job logs",
                              file=sys.stderr)
                        return 1
            return mlr_dask([*run, "--scheduler", cluster.scheduler_address])
        finally:
            try:
                cluster.close()  # cancels the worker jobs (scancel) and stops the scheduler
            except Exception as exc:  # never hide the job's own error behind this one
                print(f"warning: closing the cluster failed ({type(exc).__name__}: {exc}); "
                      "check squeue for worker jobs left running", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
