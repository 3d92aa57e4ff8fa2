"""Sampling from r and from P_lambda, sharded over Dask workers (or run in-process).

* :func:`draw_pool`: a pool of r-samples with their log r and features (for SNIS and Z).
* :func:`rejection_sample`: exact rejection sampling from ``p_lambda`` with proposal r and bound
  ``beta = exp(sum_k max(lambda_k, 0))`` (0/1 features), or quasi-rejection sampling with a
  smaller, user-chosen ``log_beta`` (higher acceptance, approximate: samples where
  ``exp(<lambda, phi>) > beta`` are under-represented).

Each shard is an independent task with its own seed; every task runs torch single-threaded.
Pass ``client=None`` to run the shards sequentially in this process.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.sequence.base import AutoregressiveModel
from mlr_dask.sequence.features import FeatureSet
from mlr_dask.sequence.gam import log_beta_bound


def single_thread() -> None:
    """Run torch (if loaded) on one thread inside a task."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _shard_sizes(total: int, n_shards: int) -> list[int]:
    n_shards = max(1, min(n_shards, total))
    base, extra = divmod(total, n_shards)
    return [base + (i < extra) for i in range(n_shards)]


def portable(obj: Any) -> Any:
    """What to send to a worker: torch modules travel as plain specs (``obj.portable()``)."""
    return obj.portable() if hasattr(obj, "portable") else obj


def materialize(obj: Any) -> Any:
    """Inverse of :func:`portable`, on the worker."""
    return obj.materialize() if hasattr(obj, "materialize") else obj


def _call_packed(fn: Callable[..., dict[str, Any]], shared: tuple, args: tuple) -> dict[str, Any]:
    return fn(*(materialize(s) for s in shared), *args)


def _run_shards(
    fn: Callable[..., dict[str, Any]],
    args_list: list[tuple],
    client: Any = None,
    shared: tuple = (),
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``fn(*shared, *args)`` for each args; on Dask when ``client`` is given."""
    results: list[dict[str, Any]] = []
    if client is None:
        for args in args_list:
            res = fn(*shared, *args)
            results.append(res)
            if progress:
                progress(res)
        return results
    from distributed import as_completed

    # one future holding all the shared inputs (scattering a tuple would split it)
    [packed] = client.scatter([tuple(portable(s) for s in shared)], broadcast=True, hash=False)
    futures = [client.submit(_call_packed, fn, packed, args, pure=False) for args in args_list]
    order = {f.key: i for i, f in enumerate(futures)}
    out: list[dict[str, Any] | None] = [None] * len(futures)
    for fut in as_completed(futures):
        res = fut.result()
        out[order[fut.key]] = res
        if progress:
            progress(res)
    return [r for r in out if r is not None]


def _pool_shard(
    model: AutoregressiveModel, features: FeatureSet, size: int, seed: int
) -> dict[str, Any]:
    single_thread()
    t0 = time.perf_counter()
    tokens, lengths, logp = model.sample(size, np.random.default_rng(seed))
    return {
        "tokens": tokens,
        "lengths": lengths,
        "log_r": logp,
        "phi": features(tokens, lengths),
        "n": size,
        "seconds": time.perf_counter() - t0,
    }


def draw_pool(
    model: AutoregressiveModel,
    features: FeatureSet,
    size: int,
    seed: int,
    n_shards: int = 8,
    client: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Draw ``size`` samples of r in shards; returns tokens, lengths, log_r (N,), phi (N, k)."""
    if size < 2:
        raise InputError("the pool needs at least two samples")
    seeds = np.random.SeedSequence([seed, 0x9001]).generate_state(max(1, n_shards))
    sizes = _shard_sizes(size, n_shards)
    parts = _run_shards(
        _pool_shard, [(s, int(sd)) for s, sd in zip(sizes, seeds, strict=False)], client,
        shared=(model, features), progress=progress,
    )
    return {k: np.concatenate([p[k] for p in parts]) for k in ("tokens", "lengths", "log_r", "phi")}


def _rejection_shard(
    model: AutoregressiveModel,
    features: FeatureSet,
    lam: np.ndarray,
    log_beta: float,
    target: int,
    max_proposals: int,
    batch: int,
    seed: int,
) -> dict[str, Any]:
    single_thread()
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    toks, lens = [], []
    proposed = accepted = over = 0
    while accepted < target and proposed < max_proposals:
        b = min(batch, max_proposals - proposed)
        tokens, lengths, _ = model.sample(b, rng)
        lw = features(tokens, lengths) @ lam - log_beta
        over += int(np.sum(lw > 0))
        acc = np.log(rng.random(b)) < np.minimum(lw, 0.0)
        toks.append(tokens[acc])
        lens.append(lengths[acc])
        proposed += b
        accepted += int(acc.sum())
    T = getattr(model, "max_len", 0)
    return {
        "tokens": np.concatenate(toks) if toks else np.zeros((0, T), np.int8),
        "lengths": np.concatenate(lens) if lens else np.zeros(0, np.int64),
        "proposed": proposed,
        "accepted": accepted,
        "over_bound": over,
        "seconds": time.perf_counter() - t0,
    }


def rejection_sample(
    model: AutoregressiveModel,
    features: FeatureSet,
    lam: np.ndarray,
    n_samples: int,
    seed: int,
    log_beta: float | None = None,
    max_proposals: int = 10_000_000,
    n_shards: int = 8,
    batch: int = 5_000,
    client: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Samples from ``p_lambda`` by (quasi-)rejection sampling with proposal r = ``model``.

    lam : (k,). ``log_beta=None`` uses the exact bound for 0/1 features. Returns tokens
    (M, max_len), lengths (M,) with ``M <= n_samples`` (fewer only when ``max_proposals`` ran out),
    the counts of proposals and acceptances, ``acceptance_rate``, ``log_beta``, ``exact`` and
    ``over_bound`` (proposals whose weight exceeded beta: nonzero means quasi-rejection).
    """
    lam = np.asarray(lam, dtype=np.float64)
    if lam.shape != (features.k,):
        raise InputError(f"lambda has shape {lam.shape}, expected ({features.k},)")
    bound = log_beta_bound(lam) if features.binary else None
    if log_beta is None:
        if bound is None:
            raise InputError("pass log_beta for features that are not 0/1")
        log_beta = bound
    if n_samples < 1:
        raise InputError("n_samples must be positive")
    n_shards = max(1, min(n_shards, n_samples))
    seeds = np.random.SeedSequence([seed, 0x4E7]).generate_state(n_shards)
    targets = _shard_sizes(n_samples, n_shards)
    caps = _shard_sizes(max(max_proposals, n_shards), n_shards)
    args = [
        (lam, float(log_beta), t, c, batch, int(s))
        for t, c, s in zip(targets, caps, seeds, strict=True)
    ]
    parts = _run_shards(_rejection_shard, args, client, shared=(model, features),
                        progress=progress)
    proposed = sum(p["proposed"] for p in parts)
    accepted = sum(p["accepted"] for p in parts)
    tokens = np.concatenate([p["tokens"] for p in parts])[:n_samples]
    lengths = np.concatenate([p["lengths"] for p in parts])[:n_samples]
    return {
        "tokens": tokens,
        "lengths": lengths,
        "proposed": proposed,
        "accepted": accepted,
        "acceptance_rate": accepted / max(proposed, 1),
        "log_beta": float(log_beta),
        "exact": bound is not None and log_beta >= bound - 1e-12,
        "over_bound": sum(p["over_bound"] for p in parts),
        "task_seconds": sum(p["seconds"] for p in parts),
    }
