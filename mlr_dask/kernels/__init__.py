"""Small pure functions on numpy arrays: each numba kernel sits beside its plain-numpy twin.

The numba versions are compiled lazily on first call (``nopython``, ``nogil``, no parallel,
no cache); tests compare every kernel with its twin.
"""

from mlr_dask.kernels.blocks import (
    block_matmat,
    block_matmat_numpy,
    segment_sum,
    segment_sum_numpy,
)

__all__ = ["block_matmat", "block_matmat_numpy", "segment_sum", "segment_sum_numpy"]
