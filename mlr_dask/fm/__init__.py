"""Multilevel factor models: ``Sigma = F_hat F_hat^T + D`` over a hierarchy of feature groups,
fitted by a one-pass EM in memory (numpy) or on Dask (``mfm.md``)."""

from mlr_dask.fm.model import MultilevelFactorModel

__all__ = ["MultilevelFactorModel"]
