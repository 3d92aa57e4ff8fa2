"""Seconds per EM iteration of the multilevel factor model vs the two dense products any EM
iteration needs (``Y @ M`` and ``Y.T @ Z``, M (n, R), Z (N, R)), measured in the same run.

Data: the issue-3 generator (``mlr_dask.fm.data``; N = 280, ranks 30, 20, 10, 5, 4, R = 69).
Part 1: n in ``--sizes``, 32 leaves: ratio iteration / dense products (target at n = 100,000:
at most 3). Part 2: n = ``--leaves-n`` with the last level split into ``--leaves`` leaves:
ratio of the iteration time to that with the first leaf count (target: 512 leaves at most 1.5x
32 leaves); ``--rounds K`` runs the leaf counts in K interleaved rounds and keeps the best
of each, ``--interleave`` interleaves single EM iterations of the leaf counts instead (for
shared, noisy machines). The fit runs in memory (numpy path; the Dask path runs
the same chunk functions). Each EM iteration reads Y once (``passes_per_iter``). Run with
``OMP_NUM_THREADS=1`` for single-thread figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.timing import best_time


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def dense_products(Y: np.ndarray, R: int) -> float:
    rng = np.random.default_rng(0)
    M = rng.standard_normal((Y.shape[1], R))
    Z = rng.standard_normal((Y.shape[0], R))
    return best_time(lambda: (Y @ M, Y.T @ Z), repeat=3, min_time=0.2)


def em_seconds(prob, iters: int) -> tuple[float, object]:
    from mlr_dask.fm import MultilevelFactorModel

    m = MultilevelFactorModel(prob.hierarchy, prob.ranks, max_iter=iters, tol=0.0)
    m.fit(prob.Y)
    # first iteration excluded (warm-up of allocations), then the best of the rest
    secs = m.iter_seconds_[1:] or m.iter_seconds_
    return float(np.min(secs)), m


def make_problem(n: int, leaves: int | None = None) -> tuple[object, float]:
    from mlr_dask.fm.data import generate_fm

    t0 = time.perf_counter()
    prob = generate_fm(n, 280, 1001, leaves=leaves)
    return prob, time.perf_counter() - t0


def run_size(n: int, iters: int, leaves: int | None = None, prob=None,
             gen: float = 0.0) -> dict:
    if prob is None:
        prob, gen = make_problem(n, leaves)
    R = int(sum(prob.ranks))
    d1 = dense_products(prob.Y, R)
    t_em, m = em_seconds(prob, iters)
    d2 = dense_products(prob.Y, R)
    dense = min(d1, d2)
    return {
        "n": n,
        "leaves": int(prob.hierarchy.n_blocks[-1]),
        "N": int(prob.Y.shape[0]),
        "seconds_per_iter": t_em,
        "dense_products_seconds": dense,
        "ratio_iter_vs_dense": t_em / dense,
        "passes_per_iter": 1,
        "start_seconds": m.start_seconds_,
        "loglike_last": m.loglike_[-1],
        "generate_seconds": gen,
    }


def run_leaves(n: int, leaf_counts: list[int], iters: int, rounds: int) -> list[dict]:
    """The leaf-count comparison: the fits are run in ``rounds`` interleaved rounds (every
    leaf count once per round) and each figure is the best over the rounds, so a burst of
    load on a shared machine does not land on one leaf count only."""
    probs = {lv: make_problem(n, lv) for lv in leaf_counts}
    best: dict[int, dict] = {}
    for _ in range(max(1, rounds)):
        for lv in leaf_counts:
            r = run_size(n, iters, prob=probs[lv][0], gen=probs[lv][1])
            old = best.get(lv)
            if old is not None:
                r["seconds_per_iter"] = min(r["seconds_per_iter"], old["seconds_per_iter"])
                r["dense_products_seconds"] = min(r["dense_products_seconds"],
                                                  old["dense_products_seconds"])
                r["ratio_iter_vs_dense"] = r["seconds_per_iter"] / r["dense_products_seconds"]
            best[lv] = r
    return [best[lv] for lv in leaf_counts]


def run_leaves_interleaved(n: int, leaf_counts: list[int], iters: int) -> list[dict]:
    """The leaf-count comparison with the EM iterations of all leaf counts interleaved (one
    iteration of each in turn, ``iters`` turns after the start) and the best iteration time
    of each, so that load on a shared machine hits all leaf counts alike."""
    from mlr_dask.fm import MultilevelFactorModel, em

    setups = []
    for lv in leaf_counts:
        prob, gen = make_problem(n, lv)
        m = MultilevelFactorModel(prob.hierarchy, prob.ranks)
        data, tree = m.prepare(prob.Y)
        runner = em.NumpyRunner(data.Y, tree, m._chunks(tree, data.shape[0]))
        state, est = em.svd_start(runner, tree, True)
        setups.append({"prob": prob, "gen": gen, "tree": tree, "runner": runner,
                       "state": state, "est": est, "times": []})
    for _ in range(max(2, iters)):
        for su in setups:
            t0 = time.perf_counter()
            su["state"], su["est"] = em.em_iteration(su["runner"], su["tree"], su["state"],
                                                     su["est"])
            su["times"].append(time.perf_counter() - t0)
    out = []
    for lv, su in zip(leaf_counts, setups, strict=True):
        t_em = float(np.min(su["times"][1:]))
        dense = dense_products(su["prob"].Y, int(sum(su["prob"].ranks)))
        out.append({"n": n, "leaves": lv, "N": int(su["prob"].Y.shape[0]),
                    "seconds_per_iter": t_em, "seconds_per_iter_median":
                    float(np.median(su["times"][1:])), "dense_products_seconds": dense,
                    "ratio_iter_vs_dense": t_em / dense, "passes_per_iter": 1,
                    "loglike_last": su["state"].loglike[-1], "generate_seconds": su["gen"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks fm", description=__doc__)
    p.add_argument("--sizes", type=_ints, default=[1000, 10000, 100000])
    p.add_argument("--leaves", type=_ints, default=[32, 128, 512])
    p.add_argument("--leaves-n", type=int, default=10000)
    p.add_argument("--iters", type=int, default=5, help="EM iterations per fit (default 5)")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds of the leaf-count fits, best of (default 1)")
    p.add_argument("--interleave", action="store_true",
                   help="leaf counts: interleave single EM iterations instead of whole fits")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    args = p.parse_args(argv)

    rows = []
    for n in args.sizes:
        r = run_size(n, args.iters)
        rows.append(r)
        if args.json:
            print(json.dumps({"part": "size", **r}), flush=True)
        else:
            print(f"n={n:>7} leaves={r['leaves']:>4}: {r['seconds_per_iter']:.4f} s/iter, "
                  f"dense products {r['dense_products_seconds']:.4f} s, "
                  f"ratio {r['ratio_iter_vs_dense']:.2f}", flush=True)
    base = None
    leaf_rows = (run_leaves_interleaved(args.leaves_n, args.leaves, args.iters)
                 if args.interleave and args.leaves else
                 run_leaves(args.leaves_n, args.leaves, args.iters, args.rounds))
    for lv, r in zip(args.leaves, leaf_rows, strict=True):
        base = base or r
        r["ratio_vs_first_leaves"] = r["seconds_per_iter"] / base["seconds_per_iter"]
        r["ratio_vs_first_leaves_normalized"] = (
            r["ratio_iter_vs_dense"] / base["ratio_iter_vs_dense"])
        if args.json:
            print(json.dumps({"part": "leaves", **r}), flush=True)
        else:
            print(f"n={args.leaves_n} leaves={lv:>4}: {r['seconds_per_iter']:.4f} s/iter, "
                  f"ratio vs {base['leaves']} leaves {r['ratio_vs_first_leaves']:.2f} "
                  f"(dense-normalized {r['ratio_vs_first_leaves_normalized']:.2f}), "
                  f"vs dense {r['ratio_iter_vs_dense']:.2f}", flush=True)
    return 0
