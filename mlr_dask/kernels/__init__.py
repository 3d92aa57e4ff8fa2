"""Small pure functions on numpy arrays: each numba kernel sits beside its plain-numpy twin.

- :mod:`mlr_dask.kernels.blocks`: products with block diagonal low-rank levels, segment sums;
- :mod:`mlr_dask.kernels.gather`: gather / scatter of a level's diagonal blocks and factor rows
  into zero-padded stacks (for the batched block SVDs of the fit).

The numba versions are compiled lazily on first call (``nopython``, ``nogil``, no parallel,
no cache); tests compare every kernel with its twin.
"""

from mlr_dask.kernels.blocks import (
    block_matmat,
    block_matmat_numpy,
    segment_sum,
    segment_sum_numpy,
)
from mlr_dask.kernels.gather import (
    gather_blocks,
    gather_blocks_numpy,
    gather_rows,
    gather_rows_numpy,
    scatter_blocks,
    scatter_blocks_numpy,
    scatter_rows,
    scatter_rows_numpy,
)

__all__ = [
    "block_matmat",
    "block_matmat_numpy",
    "segment_sum",
    "segment_sum_numpy",
    "gather_blocks",
    "gather_blocks_numpy",
    "gather_rows",
    "gather_rows_numpy",
    "scatter_blocks",
    "scatter_blocks_numpy",
    "scatter_rows",
    "scatter_rows_numpy",
]
