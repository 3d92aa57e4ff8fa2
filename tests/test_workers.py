from mlr_dask.workers import KERNEL_MODULES, warm_kernels


def test_warm_kernels_compiles_every_kernel_module():
    from mlr_dask.kernels import blocks, gather

    assert warm_kernels() == list(KERNEL_MODULES)
    for kernel in (blocks._segment_sum, gather._gather_blocks, gather._scatter_blocks,
                   gather._gather_rows, gather._scatter_rows):
        assert kernel.signatures, kernel


def test_bound_zarr_reads_unless_the_environment_says(monkeypatch):
    import zarr

    from mlr_dask.workers import READ_CONCURRENCY, bound_zarr_reads

    before = zarr.config.get("async.concurrency")
    try:
        monkeypatch.delenv("ZARR_ASYNC__CONCURRENCY", raising=False)
        assert bound_zarr_reads() == READ_CONCURRENCY
        zarr.config.set({"async.concurrency": 7})
        monkeypatch.setenv("ZARR_ASYNC__CONCURRENCY", "7")
        assert bound_zarr_reads() == 7  # the environment's choice is kept
    finally:
        zarr.config.set({"async.concurrency": before})


def test_workers_of_connect_bound_zarr_reads():
    """A worker process started by :func:`mlr_dask.cluster.connect` reads one chunk at a time."""
    from mlr_dask.cluster import connect
    from mlr_dask.workers import READ_CONCURRENCY

    def concurrency():
        import zarr

        return zarr.config.get("async.concurrency")

    with connect(n_workers=1, threads_per_worker=1, quiet=True) as client:
        assert list(client.run(concurrency).values()) == [READ_CONCURRENCY]
