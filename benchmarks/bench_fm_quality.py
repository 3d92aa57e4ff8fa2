"""Held-out log-likelihood of the multilevel factor model (20 EM iterations from the SVD start)
vs scikit-learn's FactorAnalysis with as many factors (69) and vs the Ledoit-Wolf shrunk
covariance, on the issue-3 generator (default n = 10,000, N = 280 train and 280 test samples).

The competitors' test log-likelihoods are evaluated without dense n x n matrices:
FactorAnalysis as a one-level factor model (its loadings and noise), Ledoit-Wolf
``a I + b Y^T Y`` through the Woodbury identity on the N x N Gram matrix.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def ledoit_wolf_score(Y: np.ndarray, Yt: np.ndarray) -> tuple[float, float]:
    """(average test log-likelihood, shrinkage) of Ledoit-Wolf fitted on centred ``Y``."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    N, n = Y.shape
    delta = float(ledoit_wolf_shrinkage(Y, assume_centered=True))
    mu = float(np.sum(Y * Y) / N / n)
    a, b = delta * mu, (1.0 - delta) / N  # Sigma = a I + b Y^T Y
    G = Y @ Y.T  # (N, N)
    M = np.eye(N) + (b / a) * G
    logdet = n * np.log(a) + np.linalg.slogdet(M)[1]
    T = Yt @ Y.T  # (Nt, N)
    corr = np.einsum("ij,ij->i", T, np.linalg.solve(M, T.T).T)
    quad = (np.sum(Yt * Yt, axis=1) - (b / a) * corr) / a
    ll = -0.5 * (n * np.log(2 * np.pi) + logdet + quad)
    return float(ll.mean()), delta


def run(n: int = 10_000, iters: int = 20, fa_max_iter: int = 1000) -> dict:
    from sklearn.decomposition import FactorAnalysis

    from mlr_dask.fm import MultilevelFactorModel
    from mlr_dask.fm.data import generate_fm
    from mlr_dask.hierarchy import Hierarchy

    prob = generate_fm(n, 280, 1001)
    Y, Yt = prob.Y, prob.Y_test
    t0 = time.perf_counter()
    m = MultilevelFactorModel(prob.hierarchy, prob.ranks, max_iter=iters, tol=0.0).fit(Y)
    t_mfm = time.perf_counter() - t0
    truth = MultilevelFactorModel.from_parameters(prob.hierarchy, prob.ranks, prob.F, prob.D)
    t0 = time.perf_counter()
    fa = FactorAnalysis(n_components=int(sum(prob.ranks)), max_iter=fa_max_iter,
                        random_state=0).fit(Y)
    t_fa = time.perf_counter() - t0
    fa_model = MultilevelFactorModel.from_parameters(
        Hierarchy.from_boundaries([[0, n]]), [fa.components_.shape[0]], fa.components_.T,
        fa.noise_variance_, fa.mean_)
    lw, delta = ledoit_wolf_score(Y - Y.mean(0), Yt - Y.mean(0))
    return {
        "n": n, "N": int(Y.shape[0]), "iters": iters,
        "test_loglike_mfm": m.score(Yt),
        "test_loglike_factor_analysis": fa_model.score(Yt),
        "test_loglike_ledoit_wolf": lw,
        "test_loglike_truth": truth.score(Yt),
        "train_loglike_mfm": m.loglike_[-1],
        "train_loglike_factor_analysis": fa_model.score(Y),
        "fa_n_iter": int(fa.n_iter_), "ledoit_wolf_shrinkage": delta,
        "seconds_mfm": t_mfm, "seconds_factor_analysis": t_fa,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks fm_quality", description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--fa-max-iter", type=int, default=1000)
    args = p.parse_args(argv)
    r = run(args.n, args.iters, args.fa_max_iter)
    print(json.dumps(r), flush=True)
    ok = (r["test_loglike_mfm"] >= r["test_loglike_factor_analysis"]
          and r["test_loglike_mfm"] >= r["test_loglike_ledoit_wolf"])
    print(f"held-out loglike: MFM {r['test_loglike_mfm']:.1f}, FactorAnalysis "
          f"{r['test_loglike_factor_analysis']:.1f}, "
          f"Ledoit-Wolf {r['test_loglike_ledoit_wolf']:.1f}, "
          f"truth {r['test_loglike_truth']:.1f} -> {'OK' if ok else 'NOT MET'}")
    return 0
