#!/bin/sh
# Entry point of the image: runs its arguments as given (`dask scheduler ...`, `dask worker ...`,
# `mlr-dask ...`). Templates of the Dask Helm chart start the containers with the old commands
# `dask-scheduler` and `dask-worker`, which distributed no longer ships: those two run as
# `dask scheduler` and `dask worker` with the same arguments.
set -e
case "${1:-}" in
    dask-scheduler) shift; exec dask scheduler "$@" ;;
    dask-worker) shift; exec dask worker "$@" ;;
esac
exec "$@"
