"""Benchmarks of the GAM code against baselines measured in the same run.

1. features: the vectorized KMP feature scorers vs a Python loop over strings (``in``).
2. motif sampler: the vectorized backward-DP sampler vs drawing white noise and keeping the
   strings that contain the motif (plain rejection, same distribution).
3. (needs torch) sharded rejection sampling from P_lambda through Dask vs the same shards run
   in a single process.

Usage: ``python -m benchmarks gam [--quick] [--workers N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _best_of(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_features(n_strings: int, repeat: int) -> dict[str, Any]:
    from mlr_dask.sequence.features import feature_set_from_code

    motif = "10001010001"
    fs = feature_set_from_code(motif, "1111111")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(n_strings, 30)).astype(np.int8)
    lengths = np.full(n_strings, 30)
    patterns = [f.pattern for f in fs.features if hasattr(f, "pattern")]

    def loop() -> np.ndarray:
        out = np.zeros((n_strings, len(patterns) + 1))
        for i, row in enumerate(x):
            s = "".join("1" if b else "0" for b in row)
            for j, p in enumerate(patterns):
                out[i, j] = p in s
            out[i, -1] = s[0] == "1"
        return out

    t_ours = _best_of(lambda: fs(x, lengths), repeat)
    t_base = _best_of(loop, 1)
    return {"name": "features (7 features)", "n": n_strings, "ours_s": t_ours,
            "baseline_s": t_base, "speedup": t_base / t_ours}


def bench_motif_sampler(n_samples: int, repeat: int) -> dict[str, Any]:
    from mlr_dask.sequence.motif import MotifProcess, contains

    motif = "10001010001"
    proc = MotifProcess(motif)

    def naive() -> np.ndarray:
        rng = np.random.default_rng(1)
        kept: list[np.ndarray] = []
        have = 0
        while have < n_samples:
            x = rng.integers(0, 2, size=(200_000, 30)).astype(np.int8)
            ok = x[contains(x, None, motif)]
            kept.append(ok)
            have += len(ok)
        return np.concatenate(kept)[:n_samples]

    t_ours = _best_of(lambda: proc.sample(n_samples, 1), repeat)
    t_base = _best_of(naive, 1)
    return {"name": "exact motif sampler vs white-noise rejection", "n": n_samples,
            "ours_s": t_ours, "baseline_s": t_base, "speedup": t_base / t_ours}


def bench_rejection(n_accept: int, workers: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from mlr_dask.cluster import connect
    from mlr_dask.sequence.features import feature_set_from_code
    from mlr_dask.sequence.models import LSTMConfig, build_model
    from mlr_dask.sequence.sampling import rejection_sample

    # an untrained LSTM capped at 30 bits stands in for r; lambda makes the motif
    # "1000101" (Z about 0.18 under white noise) the rare event to accept.
    model = build_model(LSTMConfig(hidden=64, max_len=30), seed=0)
    fs = feature_set_from_code("1000101", "1000000")
    lam = np.array([4.0])
    kw = dict(n_samples=n_accept, seed=1, n_shards=2 * workers, batch=5000)
    t0 = time.perf_counter()
    local = rejection_sample(model, fs, lam, **kw)
    t_base = time.perf_counter() - t0
    with connect(None, n_workers=workers, quiet=True) as client:
        rejection_sample(model, fs, lam, n_samples=100, seed=2, n_shards=workers,
                         client=client)  # warm-up: imports and model transfer
        t0 = time.perf_counter()
        remote = rejection_sample(model, fs, lam, client=client, **kw)
        t_ours = time.perf_counter() - t0
    return {"name": f"rejection sampling, Dask ({workers} workers) vs one process",
            "n": n_accept, "proposals": remote["proposed"],
            "acceptance_rate": remote["acceptance_rate"],
            "baseline_acceptance_rate": local["acceptance_rate"],
            "ours_s": t_ours, "baseline_s": t_base, "speedup": t_base / t_ours}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks gam", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers for the sampling bench")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch benchmark")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    n_feat, n_samp, n_acc = (5_000, 20_000, 2_000) if args.quick else (50_000, 200_000, 20_000)
    results = [bench_features(n_feat, 3), bench_motif_sampler(n_samp, 3)]
    if not args.no_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch not installed: skipping the sampling benchmark", file=sys.stderr)
        else:
            results.append(bench_rejection(n_acc, args.workers))
    if args.json:
        print(json.dumps({"benchmarks": results}))
    else:
        for r in results:
            print(f"{r['name']}: n={r['n']}  ours {r['ours_s']:.3f}s  baseline "
                  f"{r['baseline_s']:.3f}s  ratio {r['speedup']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
