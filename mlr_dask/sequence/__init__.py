"""Global autoregressive models (GAMs) on binary sequences, with Dask for the parallel work.

Submodules: ``motif`` (exact data, pure numpy), ``features`` (vectorized scorers, numpy),
``models`` (autoregressive models; needs torch), ``gam`` (lambda, Z, CE of P_lambda),
``sampling`` (rejection / quasi-rejection sampling over Dask), ``policy`` (distillation, DPG,
plain PG), ``pipeline`` (one end-to-end run), ``sweep`` (many runs as Dask tasks).

Importing this package does not import torch: ``models`` and ``policy`` import it at module
level, ``pipeline`` and ``sweep`` only when a run starts; ``motif``, ``features``, ``base``,
``gam`` and ``sampling`` never do.
"""

from mlr_dask.sequence.features import FeatureSet, feature_set_from_code
from mlr_dask.sequence.motif import EOS, MotifProcess, contains, kmp_automaton

__all__ = [
    "EOS",
    "FeatureSet",
    "MotifProcess",
    "contains",
    "feature_set_from_code",
    "kmp_automaton",
]
