"""GAM training 1 and its estimators, on arrays of features of a pool of r-samples (numpy only).

The GAM is ``P_lambda(x) = r(x) exp(<lambda, phi(x)>)``. With r frozen, a pool of r-samples is
drawn once (in parallel shards, see :mod:`mlr_dask.sequence.sampling`) and reused:

* ``E_{p_lambda}[phi]`` by self-normalised importance sampling (SNIS) with weights
  ``w = exp(<lambda, phi>)``, or by rejection sampling on the pool;
* lambda by the moment-matching ascent ``lambda += lr_t (E_D phi - E_p phi)``,
  ``lr_t = lr0 / (1 + t)``, stopped on the L1 moment gap;
* ``Z_lambda = E_r[w]`` with its standard error and effective sample size;
* the per-symbol cross-entropy of ``p_lambda`` on test data with its uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from mlr_dask.errors import InputError


def _log_weights(phi: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return np.asarray(phi, dtype=np.float64) @ np.asarray(lam, dtype=np.float64)


def snis_moments(
    phi: np.ndarray, lam: np.ndarray, log_w_extra: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """SNIS estimate of ``E_{p_lambda}[phi]`` from proposal samples, and the ESS.

    phi : (N, k) features of samples from the proposal; lam : (k,).
    log_w_extra : (N,) optional extra log-weights (e.g. ``log r - log q`` when the proposal is
    not r). Returns (moments (k,), effective sample size).
    """
    lw = _log_weights(phi, lam)
    if log_w_extra is not None:
        lw = lw + log_w_extra
    w = np.exp(lw - lw.max())
    s = w.sum()
    ess = float(s**2 / np.sum(w**2))
    return (w @ phi) / s, ess


@dataclass
class LambdaFit:
    """Result of fitting lambda: values, moment gaps per iteration, final moments and ESS."""

    lam: np.ndarray
    target: np.ndarray
    moments: np.ndarray
    l1_gap: float
    iterations: int
    ess: float
    history: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def _check_pool(phi: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    phi = np.asarray(phi, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if phi.ndim != 2 or target.shape != (phi.shape[1],):
        raise InputError(f"pool features (N, k) and target (k,) mismatch: {phi.shape}, "
                         f"{target.shape}")
    if not (np.isfinite(phi).all() and np.isfinite(target).all()):
        raise InputError("features contain NaN or inf")
    return phi, target


def fit_lambda_snis(
    phi_pool: np.ndarray,
    target: np.ndarray,
    lr0: float = 10.0,
    max_iter: int = 1000,
    tol: float = 1e-3,
    lam0: np.ndarray | None = None,
) -> LambdaFit:
    """Fit lambda so that SNIS moments over the pool match ``target = E_D[phi]``.

    phi_pool : (N, k) features of r-samples; target : (k,). Update
    ``lambda += lr0 / (1 + t) * (target - E_p phi)`` until the L1 gap is below ``tol``.
    """
    phi, target = _check_pool(phi_pool, target)
    # Binary-ish features: collapse the pool to its distinct rows with counts (exact, faster).
    rows, counts = np.unique(phi, axis=0, return_counts=True)
    log_c = np.log(counts.astype(np.float64))
    lam = np.zeros(phi.shape[1]) if lam0 is None else np.asarray(lam0, dtype=np.float64).copy()
    history: list[float] = []
    t = 0
    for t in range(max_iter):
        mom, _ = snis_moments(rows, lam, log_c)
        gap = target - mom
        history.append(float(np.abs(gap).sum()))
        if history[-1] < tol:
            break
        lam = lam + lr0 / (1.0 + t) * gap
    mom, _ = snis_moments(rows, lam, log_c)
    _, ess = snis_moments(phi, lam)
    return LambdaFit(lam, target, mom, float(np.abs(target - mom).sum()), t + 1, ess, history)


def fit_lambda_rejection(
    phi_pool: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator | int | None = None,
    lr0: float = 10.0,
    max_iter: int = 1000,
    tol: float = 1e-3,
    min_accepted: int = 50,
) -> LambdaFit:
    """Like :func:`fit_lambda_snis`, with moments from rejection sampling on the pool.

    Each iteration accepts pool sample i with probability ``exp(<lambda, phi_i> - log beta)``
    (``log beta = max_i <lambda, phi_i>`` over the pool) and averages phi over the accepted
    ones (at least ``min_accepted``, else the SNIS value is used for that iteration).
    """
    phi, target = _check_pool(phi_pool, target)
    rng = np.random.default_rng(rng)
    lam = np.zeros(phi.shape[1])
    history: list[float] = []
    mom = phi.mean(axis=0)
    t = 0
    for t in range(max_iter):
        lw = _log_weights(phi, lam)
        acc = rng.random(len(lw)) < np.exp(lw - lw.max())
        if acc.sum() >= min_accepted:
            mom = phi[acc].mean(axis=0)
        else:
            mom, _ = snis_moments(phi, lam)
        gap = target - mom
        history.append(float(np.abs(gap).sum()))
        if history[-1] < tol:
            break
        lam = lam + lr0 / (1.0 + t) * gap
    _, ess = snis_moments(phi, lam)
    return LambdaFit(lam, target, mom, float(np.abs(target - mom).sum()), t + 1, ess, history)


@dataclass(frozen=True)
class ZEstimate:
    """``Z_lambda`` by importance sampling from r: value, standard error, ESS, and in log scale."""

    z: float
    stderr: float
    ess: float
    n: int
    log_z: float
    log_z_stderr: float

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_z(
    phi_pool: np.ndarray, lam: np.ndarray, log_w_extra: np.ndarray | None = None
) -> ZEstimate:
    """``Z = E_r[exp(<lambda, phi>)]`` from r-samples (or from q with ``log_w_extra = log r/q``).

    The standard error is the sample standard deviation of the weights over ``sqrt(N)``; the
    log-scale error is the delta-method ``stderr / Z``.
    """
    lw = _log_weights(phi_pool, lam)
    if log_w_extra is not None:
        lw = lw + log_w_extra
    n = len(lw)
    if n < 2:
        raise InputError("need at least two pool samples to estimate Z")
    m = lw.max()
    w = np.exp(lw - m)
    mean = w.mean()
    sd = w.std(ddof=1)
    z = float(mean * math.exp(m))
    stderr = float(sd / math.sqrt(n) * math.exp(m))
    ess = float(w.sum() ** 2 / np.sum(w**2))
    return ZEstimate(z, stderr, ess, n, float(math.log(mean) + m), float(sd / math.sqrt(n) / mean))


def ce_plambda(
    log_r: np.ndarray, phi: np.ndarray, lengths: np.ndarray, lam: np.ndarray, z: ZEstimate
) -> dict[str, float]:
    """Per-symbol cross-entropy of ``p_lambda`` on test data, with its uncertainty.

    log_r : (B,) log r(x) of the test sequences; phi : (B, k); lengths : (B,).
    Returns ``ce``, ``stderr_z`` (from the uncertainty of log Z), ``stderr_test`` (from the finite
    test set) and ``stderr`` (both combined).
    """
    lengths = np.asarray(lengths)
    nats = -(np.asarray(log_r) + _log_weights(phi, lam) - z.log_z)
    sym = lengths + 1.0
    ce = float(nats.sum() / sym.sum())
    # ratio estimator's standard error over test sequences
    resid = nats - ce * sym
    se_test = float(np.sqrt(np.sum(resid**2)) / sym.sum()) if len(sym) > 1 else float("nan")
    se_z = float(z.log_z_stderr * len(sym) / sym.sum())
    return {
        "ce": ce,
        "stderr_z": se_z,
        "stderr_test": se_test,
        "stderr": float(math.hypot(se_z, se_test)),
    }


def log_beta_bound(lam: np.ndarray) -> float:
    """Rejection bound for 0/1 features: ``log beta = sum_k max(lambda_k, 0)``."""
    return float(np.maximum(np.asarray(lam, dtype=np.float64), 0.0).sum())
