"""Held-out log-likelihood of the multilevel factor model on real data shipped inside pip
packages, against scikit-learn's covariance estimators.

Data: sklearn's digits (8 x 8 pixels; given hierarchy: the quadtree of the image), sklearn's
breast cancer (30 features; given hierarchy: the 10 measurements, each as mean, error and
worst), and skfolio's S&P 500 prices (20 stocks; daily log returns; given hierarchy: the GICS
sectors written below). For each of ``--splits`` random 70/30 splits of the samples: features
constant on the train part are dropped (for every method), the features are standardized by
the train mean and standard deviation, every method is fitted on the train part and scored by
the average Gaussian log-likelihood per held-out sample (standardized units, the same for all).

Methods: the multilevel factor model with the given hierarchy and with a learned one
(``hierarchy="learn"``), both with ``ranks="auto"``; FactorAnalysis with its number of factors
chosen by 3-fold cross-validation on the train part; Ledoit-Wolf; OAS; GraphicalLassoCV (where
it converges). Fit seconds are wall times of ``fit`` (including the searches); ``/ FA s`` is a
method's mean fit time over FactorAnalysis's (its cross-validation included) in the same run.

``--costs`` measures instead, on synthetic data: the SVD start (randomized range finder) against
one EM iteration at N samples x n features, and one EM iteration with missing entries (a
fraction of them NaN at random, so nearly every sample has its own pattern) against one
complete-data iteration; ratios from the same run.

``python -m benchmarks fm_real [--splits 5] [--data digits,cancer,sp500] [--methods given,Factor]
[--json]``
``python -m benchmarks fm_real --costs [--samples 20000] [--features 2000] [--missing 0.05]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

#: GICS sectors of skfolio's 20 S&P 500 stocks.
SP500_SECTORS = {
    "AAPL": "Information Technology", "AMD": "Information Technology",
    "MSFT": "Information Technology", "BAC": "Financials", "JPM": "Financials",
    "BBY": "Consumer Discretionary", "HD": "Consumer Discretionary", "CVX": "Energy",
    "XOM": "Energy", "RRC": "Energy", "GE": "Industrials", "JNJ": "Health Care",
    "LLY": "Health Care", "MRK": "Health Care", "PFE": "Health Care", "UNH": "Health Care",
    "KO": "Consumer Staples", "PEP": "Consumer Staples", "PG": "Consumer Staples",
    "WMT": "Consumer Staples",
}


def load(name: str) -> tuple[np.ndarray, list[np.ndarray], int]:
    """(Y (N, n), label arrays per level coarse to fine (original order), levels to learn)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        Y = load_digits().data.astype(np.float64)
        r, c = np.divmod(np.arange(64), 8)
        return Y, [(r // 4) * 2 + c // 4, (r // 2) * 4 + c // 2], 3
    if name == "cancer":
        from sklearn.datasets import load_breast_cancer

        Y = load_breast_cancer().data.astype(np.float64)
        return Y, [np.arange(30) % 10], 3
    if name == "sp500":
        from skfolio.datasets import load_sp500_dataset

        prices = load_sp500_dataset()
        R = np.log(prices).diff().dropna()
        sectors = np.array([SP500_SECTORS[t] for t in R.columns])
        return R.to_numpy(dtype=np.float64), [sectors], 2
    raise ValueError(f"unknown data set {name!r}")


def gaussian_score(cov: np.ndarray, loc: np.ndarray, X: np.ndarray) -> float:
    """Average log-likelihood per row of X under N(loc, cov)."""
    L = np.linalg.cholesky(cov)
    z = np.linalg.solve(L, (X - loc).T)
    logdet = 2.0 * np.log(np.diag(L)).sum()
    return float(np.mean(-0.5 * (X.shape[1] * np.log(2 * np.pi) + logdet + np.sum(z * z, 0))))


def methods(labels: list[np.ndarray], levels: int, seed: int) -> dict[str, Callable]:
    """name -> fit_and_score(Xtr, Xte, keep) returning the held-out score."""
    from sklearn.covariance import OAS, GraphicalLassoCV, LedoitWolf
    from sklearn.decomposition import FactorAnalysis
    from sklearn.model_selection import GridSearchCV

    from mlr_dask.fm import MultilevelFactorModel
    from mlr_dask.hierarchy import Hierarchy

    def mlr_given(Xtr, Xte, keep):
        h = Hierarchy.from_labels([lab[keep] for lab in labels])
        m = MultilevelFactorModel(h, "auto", max_iter=2000, random_state=seed).fit(Xtr)
        return m.score(Xte), {"ranks": [g.tolist() for g in m.group_ranks_],
                              "shrinkage": m.shrinkage_}

    def mlr_learn(Xtr, Xte, keep):
        m = MultilevelFactorModel("learn", "auto", levels=levels, max_iter=2000,
                                  random_state=seed).fit(Xtr)
        return m.score(Xte), {"ranks": [g.tolist() for g in m.group_ranks_],
                              "groups": list(m.hierarchy_.n_blocks), "shrinkage": m.shrinkage_}

    def fa_cv(Xtr, Xte, keep):
        n = Xtr.shape[1]
        ks = sorted({k for k in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40) if k < n})
        gs = GridSearchCV(FactorAnalysis(max_iter=2000, random_state=seed),
                          {"n_components": ks}, cv=3).fit(Xtr)
        return gs.best_estimator_.score(Xte), {"k": gs.best_params_["n_components"]}

    def cov(est):
        def run(Xtr, Xte, keep):
            e = est().fit(Xtr)
            return gaussian_score(e.covariance_, e.location_, Xte), {}
        return run

    return {"mlr (given, auto)": mlr_given, "mlr (learn, auto)": mlr_learn,
            "FactorAnalysis (CV k)": fa_cv, "LedoitWolf": cov(LedoitWolf), "OAS": cov(OAS),
            "GraphicalLassoCV": cov(lambda: GraphicalLassoCV(max_iter=200))}


def run(data: list[str], splits: int = 5, seed: int = 0,
        only: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in data:
        Y, labels, levels = load(name)
        res: dict[str, dict[str, list]] = {}
        for s in range(splits):
            rng = np.random.default_rng(seed + s)
            idx = rng.permutation(Y.shape[0])
            n_tr = int(round(0.7 * Y.shape[0]))
            tr, te = idx[:n_tr], idx[n_tr:]
            sd = Y[tr].std(0)
            keep = sd > 1e-12 * max(1.0, float(np.abs(Y).max()))
            mu = Y[tr][:, keep].mean(0)
            Xtr = (Y[tr][:, keep] - mu) / sd[keep]
            Xte = (Y[te][:, keep] - mu) / sd[keep]
            for meth, fn in methods(labels, levels, seed + s).items():
                if only and not any(o in meth for o in only):
                    continue
                r = res.setdefault(meth, {"score": [], "seconds": [], "info": []})
                t0 = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        sc, info = fn(Xtr, Xte, keep)
                except Exception as exc:  # a method that does not run on this data
                    sc, info = float("nan"), {"error": f"{type(exc).__name__}: {exc}"[:120]}
                r["score"].append(float(sc))
                r["seconds"].append(time.perf_counter() - t0)
                r["info"].append(info)
                print(f"{name} split {s} {meth}: {sc:.3f} ({r['seconds'][-1]:.1f} s) {info}",
                      file=sys.stderr, flush=True)
        out[name] = {"shape": list(Y.shape), "results": res}
    return out


def table(out: dict[str, Any]) -> str:
    lines = []
    for name, d in out.items():
        lines.append(f"\n{name}: {d['shape'][0]} samples x {d['shape'][1]} features "
                     f"(held-out log-likelihood per sample, standardized units; 70/30 splits)")
        lines.append(f"  {'method':24s} {'mean':>10s} {'std':>8s} {'fit s':>8s} {'/ FA s':>7s}  "
                     "vs best sklearn")
        res = d["results"]
        fa = res.get("FactorAnalysis (CV k)")
        fa_s = float(np.mean(fa["seconds"])) if fa else float("nan")
        sk = [m for m in res if not m.startswith("mlr")]
        per_split = np.array([res[m]["score"] for m in sk])
        best_sk = np.nanmax(per_split, axis=0) if len(sk) else None
        for meth, r in res.items():
            sc = np.array(r["score"])
            diff = ""
            if best_sk is not None and np.all(np.isfinite(sc)):
                diff = f"{np.mean(sc - best_sk):+.3f}"
            sec = float(np.mean(r["seconds"]))
            lines.append(f"  {meth:24s} {np.nanmean(sc):10.3f} {np.nanstd(sc):8.3f} "
                         f"{sec:8.2f} {sec / fa_s:7.2f}  {diff}")
    return "\n".join(lines)


def costs(N: int = 20_000, n: int = 2_000, missing: float = 0.05,
          N_missing: int = 2_000) -> dict[str, Any]:
    """Start vs one EM iteration; EM iteration with NaN vs without (module docstring)."""
    from mlr_dask.fm import MultilevelFactorModel
    from mlr_dask.fm import em as fem
    from mlr_dask.fm import missing as fmm
    from mlr_dask.fm.data import generate_fm
    from mlr_dask.fm.tree import FactorTree

    prob = generate_fm(n, N, 7, ranks=[10, 5, 3], points=[2, 5, 9])
    h, ranks, Y = prob.hierarchy, list(prob.ranks), prob.Y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MultilevelFactorModel(h, ranks, max_iter=3, tol=0).fit(Y)
    out = {"N": N, "n": n, "ranks": ranks, "start_s": m.start_seconds_,
           "em_iter_s": float(np.median(m.iter_seconds_)),
           "gram_N_by_N_GiB": N * N * 8 / 2**30}
    out["start_over_iter"] = out["start_s"] / out["em_iter_s"]
    # missing values: a smaller N (one tree Cholesky per pattern)
    Yh = Y[:N_missing][:, h.perm]
    tree = FactorTree(h.truncate(len(ranks)) if h.n_levels > len(ranks) else h, ranks)
    runner = fem.NumpyRunner(Yh, tree, h.leaf_chunks(max(1, n // 4)))
    st, est = fem.svd_start(runner, tree, True)
    t0 = time.perf_counter()
    fem.em_iteration(runner, tree, st, est)
    t_full = time.perf_counter() - t0
    Yn = Yh.copy()
    Yn[np.random.default_rng(0).random(Yn.shape) < missing] = np.nan
    t0 = time.perf_counter()
    e = fmm.estep_missing(tree, st.F, st.D, st.mean, Yn, stats=True)
    fmm.mstep_missing(tree, st.F, e, np.nanvar(Yn, axis=0), True)
    t_nan = time.perf_counter() - t0
    out.update({"N_missing": N_missing, "missing_fraction": missing,
                "patterns": int(fmm.patterns(Yn)[0].shape[0]), "em_iter_complete_s": t_full,
                "em_iter_missing_s": t_nan, "missing_over_complete": t_nan / t_full})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks fm_real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--data", default="digits,cancer,sp500")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="",
                    help="comma-separated parts of method names to run (default all)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--costs", action="store_true")
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--features", type=int, default=2_000)
    ap.add_argument("--missing", type=float, default=0.05)
    a = ap.parse_args(argv)
    if a.costs:
        c = costs(a.samples, a.features, a.missing)
        print(json.dumps(c) if a.json else "\n".join(f"{k}: {v}" for k, v in c.items()))
        return 0
    out = run([x for x in a.data.split(",") if x], a.splits, a.seed,
              [x for x in a.methods.split(",") if x])
    print(json.dumps(out) if a.json else table(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
