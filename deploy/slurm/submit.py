"""Run an mlr-dask command on a SLURM cluster through dask-jobqueue.

    python -m pip install dask-jobqueue
    python deploy/slurm/submit.py --jobs 8 -- fit-fm /scratch/data.zarr \
        --ranks 30,20,10,5,4 --max-iter 50 --out /scratch/model.zarr

Each SLURM job is one single-threaded worker with the given memory; the driver (this script)
runs where you start it, e.g. on a login node or inside an allocation.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--jobs", type=int, default=4, help="number of worker jobs")
    p.add_argument("--memory", default="8GiB", help="memory per worker job")
    p.add_argument("--walltime", default="02:00:00")
    p.add_argument("--queue", default=None, help="SLURM partition")
    p.add_argument("--account", default=None)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then an mlr-dask command")
    args = p.parse_args()
    command = [c for c in args.command if c != "--"]
    if not command:
        p.error("give an mlr-dask command after --")

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from mlr_dask.cli.main import main as mlr_dask_main

    cluster = SLURMCluster(
        cores=1, processes=1, memory=args.memory, walltime=args.walltime,
        queue=args.queue, account=args.account,
        worker_extra_args=["--preload", "mlr_dask.workers"],
        job_script_prologue=["export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1"],
    )
    cluster.scale(jobs=args.jobs)
    with Client(cluster) as client:
        client.wait_for_workers(1, timeout=600)
        code = mlr_dask_main([*command, "--scheduler", cluster.scheduler_address])
    cluster.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
