"""mlr-dask: multilevel low rank matrices, multilevel factor models and global autoregressive
sequence models, in memory and on Dask."""

from mlr_dask.errors import FormatError, InputError
from mlr_dask.fit import fit_mlr
from mlr_dask.fm import MultilevelFactorModel
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix

__version__ = "0.1.0"

__all__ = [
    "FormatError",
    "Hierarchy",
    "InputError",
    "MLRMatrix",
    "MultilevelFactorModel",
    "__version__",
    "fit_mlr",
]
