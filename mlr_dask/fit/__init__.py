"""Fitting MLR matrices: factor fitting (BCD, ALS), rank allocation, hierarchical partitioning,
baselines at equal storage, and the Dask path for matrices stored in zarr."""

from mlr_dask.fit.api import fit_factors, fit_mlr, load_matrix_store
from mlr_dask.fit.baselines import block_diagonal, lowrank, lowrank_plus_diagonal
from mlr_dask.fit.partition import hierarchy_from_distances, spectral_partition, split_block
from mlr_dask.fit.settings import Allocation, DaskSettings, Partitioning

__all__ = [
    "Allocation",
    "DaskSettings",
    "Partitioning",
    "block_diagonal",
    "fit_factors",
    "fit_mlr",
    "hierarchy_from_distances",
    "load_matrix_store",
    "lowrank",
    "lowrank_plus_diagonal",
    "spectral_partition",
    "split_block",
]
