from mlr_dask.workers import KERNEL_MODULES, warm_kernels


def test_warm_kernels_compiles_every_kernel_module():
    from mlr_dask.kernels import blocks, gather

    assert warm_kernels() == list(KERNEL_MODULES)
    for kernel in (blocks._segment_sum, gather._gather_blocks, gather._scatter_blocks,
                   gather._gather_rows, gather._scatter_rows):
        assert kernel.signatures, kernel
