"""Sample moments by folds, shrunk covariances and data with a given covariance: what the rank
search (``ranks="auto"``) and the shrinkage option of the factor model work on.

*Why moments suffice.* The EM of the model sees the centred data only through their scatter
``S = Yc^T Yc / N`` (n x n): the M-step, the E-step and the average log-likelihood per sample
are functions of ``S`` and the parameters. Any matrix ``X`` (m, n) with ``X^T X / m = S``
therefore gives the same EM and the same average log-likelihood as the data: with
:func:`equivalent_rows`, ``X = sqrt(n) L^T`` for ``L L^T = S`` (n rows). Fitting on ``X``
costs O(n^2 R) per iteration instead of O(N n R): cheaper whenever N > n. (The randomized SVD
start is drawn on different rows, so the start, not the EM, differs from a fit on the data.)

*Shrinkage.* :func:`shrink` returns ``S_a = (1 - a) S + a diag(S)``: the correlations shrunk
towards zero by the factor ``1 - a``, the variances kept. Fitting the model to ``S_a``
maximizes the log-likelihood of the data under ``Sigma`` plus the penalty
``-(N a / 2) tr(Sigma^-1 (diag(S) - S))``; equivalently, the mode of the likelihood to the
power ``1 - a`` times an inverse-Wishart prior on Sigma with scale ``N a diag(S)`` (the weight
of ``a N`` samples whose covariance is the diagonal of the sample one). It is scale
equivariant (standardizing the features changes nothing but units). ``a = 0`` is the maximum
likelihood fit.

*Folds.* :func:`fold_moments` makes one pass over the data (numpy, or dask on the cluster) and
returns, for each of ``K`` random folds of the samples, the count, the sum and the Gram matrix
of the samples shifted by the overall mean: the scatter of any union of folds, about any
centre, follows without touching the data again. Cost O(N n^2) flops, K + 1 matrices n x n in
memory; for up to a few thousand features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlr_dask.errors import InputError

__all__ = ["FoldMoments", "fold_moments", "shrink", "equivalent_rows", "moments"]


@dataclass(frozen=True)
class FoldMoments:
    """Per fold k: ``count[k]`` samples, ``sums[k]`` (n,) and ``grams[k]`` (n, n) of the
    samples minus ``shift`` (n,) (the overall mean, or zero for a model with zero mean);
    ``folds`` (N,) the fold of every sample."""

    count: np.ndarray
    sums: np.ndarray
    grams: np.ndarray
    shift: np.ndarray
    folds: np.ndarray

    def covariance(self, which: Any, centre: np.ndarray | None) -> tuple[np.ndarray,
                                                                          np.ndarray, int]:
        """``(C, mean, m)`` for the samples of the folds ``which`` (a list of fold indices):
        ``mean`` (n,) their mean (data units), ``m`` their number and ``C`` (n, n) their second
        moment about ``centre`` (data units; ``None``: about their own mean)."""
        idx = np.asarray(which, dtype=np.int64)
        m = int(self.count[idx].sum())
        s = self.sums[idx].sum(axis=0)
        G = self.grams[idx].sum(axis=0)
        mu = s / m  # mean of the shifted samples
        c = mu if centre is None else np.asarray(centre, dtype=np.float64) - self.shift
        C = G / m - np.outer(mu, c) - np.outer(c, mu) + np.outer(c, c)
        return 0.5 * (C + C.T), mu + self.shift, m


def _fold_of_samples(N: int, folds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty(N, dtype=np.int64)
    out[rng.permutation(N)] = np.arange(N) % folds
    return out


def fold_moments(Y: Any, folds: int, *, seed: int = 0, centre: bool = True) -> FoldMoments:
    """Moments of ``folds`` random folds of the samples of Y (N, n), numpy or dask (module
    docstring). NaN or infinite entries are an InputError. Cost: one pass over Y (two for dask:
    the mean first), O(N n^2) flops; K + 1 n x n matrices."""
    N, n = int(Y.shape[0]), int(Y.shape[1])
    if folds < 1 or N < folds:
        raise InputError(f"{folds} folds need at least {folds} samples, got {N}")
    fid = _fold_of_samples(N, folds, seed)
    if type(Y).__module__.startswith("dask"):
        import dask
        import dask.array as da

        Yd = Y.astype(np.float64)
        shift = np.asarray(Yd.mean(axis=0).compute()) if centre else np.zeros(n)
        X = Yd - shift
        w = da.from_array(fid, chunks=(X.chunks[0],))
        parts = []
        for k in range(folds):
            ind = (w == k).astype(np.float64)
            Xk = X * ind[:, None]
            parts.append((Xk.sum(axis=0), Xk.T @ X))
        res = dask.compute(*parts)
        sums = np.stack([np.asarray(r[0]) for r in res])
        grams = np.stack([np.asarray(r[1]) for r in res])
    else:
        Yn = np.asarray(Y, dtype=np.float64)
        shift = Yn.mean(axis=0) if centre else np.zeros(n)
        X = Yn - shift
        sums = np.stack([X[fid == k].sum(axis=0) for k in range(folds)])
        grams = np.stack([X[fid == k].T @ X[fid == k] for k in range(folds)])
    if not (np.all(np.isfinite(grams)) and np.all(np.isfinite(shift))):
        raise InputError("the data contain NaN or infinite values (the moments route needs "
                         "complete data)")
    count = np.bincount(fid, minlength=folds)
    return FoldMoments(count, sums, grams, shift, fid)


def moments(Y: Any, *, centre: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """``(S, mean, N)`` of all the samples of Y: the second moment about the mean (or about
    zero when ``centre`` is False) (n, n), the mean (n,), the count. One pass (see
    :func:`fold_moments`)."""
    fm = fold_moments(Y, 1, centre=centre)
    S, mean, N = fm.covariance([0], None if centre else np.zeros(fm.shift.size))
    return S, (mean if centre else np.zeros_like(mean)), N


def shrink(S: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) S + alpha diag(S)`` (n, n): correlations shrunk by ``1 - alpha``."""
    if not 0.0 <= alpha < 1.0:
        raise InputError(f"shrinkage must lie in [0, 1), got {alpha!r}")
    out = (1.0 - alpha) * S
    out[np.diag_indices_from(out)] = np.diag(S)
    return out


def equivalent_rows(S: np.ndarray) -> np.ndarray:
    """(n, n) ``X`` with ``X^T X / n = S`` for a symmetric positive semidefinite ``S``: ``X =
    sqrt(n) L^T`` by Cholesky, or from the eigendecomposition (negative eigenvalues of
    rounding set to zero) when S is singular. O(n^3)."""
    n = S.shape[0]
    try:
        return np.sqrt(n) * np.linalg.cholesky(S).T
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(S)
        return np.sqrt(n) * (vecs * np.sqrt(np.clip(vals, 0.0, None))).T
