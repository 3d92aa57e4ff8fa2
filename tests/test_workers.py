from mlr_dask.workers import KERNEL_MODULES, warm_kernels


def test_warm_kernels_compiles_every_kernel_module():
    from mlr_dask.fit import blockops
    from mlr_dask.kernels import blocks

    assert warm_kernels() == list(KERNEL_MODULES)
    for kernel in (blocks._segment_sum, blockops._gather_blocks, blockops._scatter_blocks,
                   blockops._gather_rows, blockops._scatter_rows):
        assert kernel.signatures, kernel
