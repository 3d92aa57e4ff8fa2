"""Rank allocation with a fixed hierarchy: growth up to a total rank and exchange at a fixed
total (``mlr.md`` 3).

The last BCD sweep leaves per level the predicted loss decrease of one more rank
(``delta_plus``, ``gains``) and the increase of one less (``delta_minus``), and the next
singular pair of every block (the warm start of an added rank, :func:`move_rank`).

- :func:`grow_by_gains`: one rank per step to the level of largest predicted gain, then one
  BCD epoch; optionally (all steps, or only the late ones) a few candidate levels tried on
  copies when their predicted gains are close.
- :func:`exchange_ranks`: moves ``j -> i`` at a fixed total, each tried on a copy with only the
  two levels refitted; the best is accepted when it pays.

Trials of one step are independent and run in parallel threads (numpy, LAPACK and the numba
kernels release the GIL); their residual copies reuse a small pool of buffers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mlr_dask.fit.bcd import BCDState, add_lowrank, epoch_order, fit_level, sweep

__all__ = ["rank_caps", "move_rank", "grow_by_gains", "exchange_ranks", "pick_by_gains",
           "TRIAL_RATIO"]

#: Growth trials: a candidate level is tried only when its predicted gain is at least this
#: fraction of the best one (a clear winner needs no trial).
TRIAL_RATIO = 0.5


def rank_caps(rb: Sequence[np.ndarray], cb: Sequence[np.ndarray]) -> list[int]:
    """Largest useful rank per level: its smallest block dimension."""
    return [int(min(np.diff(a).min(), np.diff(b).min())) for a, b in zip(rb, cb, strict=True)]


def _level_rank1(st: BCDState, lvl: int, b: np.ndarray, c: np.ndarray, alpha: float) -> None:
    rb, cb = st.rb[lvl], st.cb[lvl]
    for k in range(rb.size - 1):
        add_lowrank(st.R[rb[k]:rb[k + 1], cb[k]:cb[k + 1]], b[rb[k]:rb[k + 1], None],
                    c[cb[k]:cb[k + 1], None], alpha)


def move_rank(st: BCDState, src: int | None, dst: int) -> None:
    """Move one rank from level ``src`` to level ``dst`` in place: drop the last (weakest)
    column of ``src`` and add the stored next singular pair of ``dst``; the residual and the
    loss are updated (exactly, one pass over the residual). ``src=None`` adds a rank to
    ``dst`` (the total rank grows by one)."""
    if src is not None:
        b, c = st.B[src][:, -1].copy(), st.C[src][:, -1].copy()
        _level_rank1(st, src, b, c, 1.0)
        st.B[src] = np.ascontiguousarray(st.B[src][:, :-1])
        if not st.psd:
            st.C[src] = np.ascontiguousarray(st.C[src][:, :-1])
        st.ranks[src] -= 1
    nb, nc = st.next_B[dst], (st.next_B[dst] if st.psd else st.next_C[dst])
    _level_rank1(st, dst, nb, nc, -1.0)
    st.B[dst] = np.hstack([st.B[dst], nb[:, None]])
    if st.psd:
        st.C = st.B
    else:
        st.C[dst] = np.hstack([st.C[dst], nc[:, None]])
    st.ranks[dst] += 1
    st.exact_loss()


def _blas_single_thread(enabled: bool) -> Any:
    if not enabled:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def _exchange_candidates(
    st: BCDState, caps: Sequence[int], gain_plus: np.ndarray,
    skip: tuple[int, int] | None = None,
) -> list[tuple[int, int]]:
    """Every move ``j -> i`` (a rank from level j to level i below its cap; ``skip`` left out),
    best first by predicted loss change ``delta_minus[j] - gain_plus[i]``. O(L^2)."""
    L = len(st.ranks)
    cand = []
    for j in range(L):
        if st.ranks[j] < 1 or not np.isfinite(st.delta_minus[j]):
            continue
        for i in range(L):
            if i != j and st.ranks[i] < caps[i] and (j, i) != skip:
                cand.append((st.delta_minus[j] - gain_plus[i], j, i))
    cand.sort()
    return [(j, i) for _, j, i in cand]


def _pad_level(st: BCDState, lvl: int, extra: int) -> None:
    """Add ``extra`` zero columns to the factors of level ``lvl`` (the fit fills them)."""
    st.B[lvl] = np.ascontiguousarray(np.pad(st.B[lvl], ((0, 0), (0, extra))))
    if st.psd:
        st.C = st.B
    else:
        st.C[lvl] = np.ascontiguousarray(np.pad(st.C[lvl], ((0, 0), (0, extra))))
    st.ranks[lvl] += extra


def pick_by_gains(gains: np.ndarray, ranks: Sequence[int], caps: Sequence[int],
                  count: int) -> np.ndarray:
    """Split ``count`` new ranks over the levels by the predicted gains: the ``count`` largest
    entries of the per-level gain curves ``gains`` (L, G) (non-increasing per level), a level's
    curve extended by its last entry past G, each level below its cap. Returns (L,) counts."""
    L, depth = gains.shape
    room = np.maximum(np.asarray(caps) - np.asarray(ranks), 0)
    vals, lvls = [], []
    for lvl in range(L):
        n_l = int(min(room[lvl], count))
        if n_l <= 0:
            continue
        g = np.asarray(gains[lvl], dtype=np.float64)
        curve = np.concatenate([g, np.full(max(0, n_l - depth), g[-1])])[:n_l]
        vals.append(curve)
        lvls.append(np.full(n_l, lvl))
    add = np.zeros(L, dtype=np.int64)
    if not vals:
        return add
    v, lv = np.concatenate(vals), np.concatenate(lvls)
    top = np.argsort(-v, kind="stable")[:count]
    np.add.at(add, lv[top], 1)
    return add


class _Buffers:
    """Spare (m, n) residual arrays for trial copies (:meth:`BCDState.copy` ``out``). Only
    arrays of states made here are recycled, never the caller's."""

    def __init__(self, keep: BCDState) -> None:
        self.keep = keep
        self.spare: list[np.ndarray] = []

    def take(self, count: int) -> list[np.ndarray | None]:
        return [self.spare.pop() if self.spare else None for _ in range(count)]

    def give(self, *states: BCDState) -> None:
        for t in states:
            if t is not self.keep and not any(t.R is x for x in self.spare):
                self.spare.append(t.R)


def grow_by_gains(
    st: BCDState,
    total: int,
    *,
    per_step: int = 1,
    max_steps: int | None = None,
    n_trials: int = 1,
    threads: int = 1,
    trial_ratio: float = TRIAL_RATIO,
    late_trials: int = 1,
    late_from: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[BCDState, list[dict[str, Any]]]:
    """Grow the allocation of ``st`` (side outputs from a recent sweep) up to ``total``: each
    step adds one rank to each of the ``per_step`` levels of largest predicted gain
    ``delta_plus`` (below their caps; each new column is the level's stored next singular
    pair, :func:`move_rank`), then runs one BCD epoch (fresh side outputs). Growing a few
    ranks at a time matters: BCD started from zero factors with the final ranks stalls far
    above the error that this continuation reaches. With ``max_steps``, the last step adds
    all that is left (by the gain curves ``st.gains``, several ranks per level). Cost per
    step: about one BCD epoch. ``n_trials`` > 1 (with ``per_step=1``): a step whose best
    levels are close (predicted gain at least ``trial_ratio`` of the best, up to ``n_trials``
    levels) tries each on a copy with its epoch (``threads`` at a time, one BLAS thread each)
    and keeps the lowest loss; a clear winner is taken without trials. ``late_trials`` (from
    step ``late_from`` on): the same with at least that many levels (the late steps, whose
    predicted gains are small and close, are where the prediction misleads most). ``st`` is
    updated in place or replaced. Returns the state and the steps ``{"step", "src": None, "dst":
    [levels], "rel_error", "ranks", "trials"}``."""
    L = len(st.ranks)
    caps = rank_caps(st.rb, st.cb)
    order = epoch_order(L)
    steps: list[dict[str, Any]] = []
    n_workers = max(1, min(threads, max(n_trials, late_trials)))
    bufs = _Buffers(st)

    def trial(base: BCDState, lvl: int, out: np.ndarray | None) -> BCDState:
        t = base.copy(out=out)
        move_rank(t, None, lvl)
        sweep(t, order)
        t.exact_loss()
        return t

    step = 0
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        while sum(st.ranks) < total:
            deficit = total - sum(st.ranks)
            cand = sorted((-float(st.delta_plus[i]), i) for i in range(L)
                          if st.ranks[i] < caps[i])
            if not cand:
                break
            tried = 1
            n_try = n_trials if late_from is None or step < late_from else max(
                n_trials, late_trials)
            if max_steps is not None and step >= max_steps - 1:
                add = pick_by_gains(st.gains, st.ranks, caps, deficit)
                if not add.any():
                    break
                for lvl in np.flatnonzero(add):
                    _pad_level(st, int(lvl), int(add[lvl]))
                for lvl in np.flatnonzero(add):
                    fit_level(st, int(lvl), cold=True)
                dst = [int(x) for x in np.flatnonzero(add)]
                sweep(st, order)
                st.exact_loss()
            else:
                lvls = [i for g, i in cand[:n_try if per_step == 1 else 1]
                        if -g >= trial_ratio * -cand[0][0]]
                if len(lvls) > 1:
                    outs = bufs.take(len(lvls))
                    bases = [st] * len(lvls)
                    with _blas_single_thread(n_workers > 1):
                        results = (list(pool.map(trial, bases, lvls, outs)) if n_workers > 1
                                   else [trial(*a) for a in zip(bases, lvls, outs, strict=True)])
                    q = min(range(len(lvls)), key=lambda x: results[x].loss)
                    bufs.give(st, *(t for x, t in enumerate(results) if x != q))
                    st, dst, tried = results[q], [lvls[q]], len(lvls)
                else:
                    dst = [i for _, i in cand[:min(per_step, deficit)]]
                    for lvl in dst:
                        move_rank(st, None, lvl)
                    sweep(st, order)
                    st.exact_loss()
            info = {"step": step, "src": None, "dst": dst, "rel_error": st.rel_error,
                    "ranks": list(st.ranks), "trials": tried}
            steps.append(info)
            if callback:
                callback(info)
            step += 1
    return st, steps


def exchange_ranks(
    st: BCDState,
    *,
    n_trials: int = 3,
    eps: float = 1e-3,
    max_steps: int = 32,
    threads: int = 1,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[BCDState, list[dict[str, Any]]]:
    """Greedy rank exchange at a fixed total with local trials: each step tries the
    ``n_trials`` moves ``j -> i`` of largest predicted gain ``gains[i, 0] - delta_minus[j]``,
    each on a copy (:func:`move_rank`, then the two levels refitted), and accepts the best if
    it lowers the loss by more than ``eps`` (relative). When no trial pays, one BCD epoch
    refreshes the side outputs and the step is retried once; a second miss in a row stops.
    The move just made is not undone at the next step. At most ``max_steps`` steps (trial
    rounds and refresh epochs together). Cost per step: ``n_trials`` copies of the residual
    and 2 level fits each (``threads`` trials at a time). Returns the final state (never worse
    than ``st``) and the accepted moves ``{"step", "src", "dst", "rel_error", "ranks"}``."""
    L = len(st.ranks)
    caps = rank_caps(st.rb, st.cb)
    moves: list[dict[str, Any]] = []
    if L < 2:
        return st, moves
    order = epoch_order(L)
    cur = st
    last: tuple[int, int] | None = None
    fresh = True
    bufs = _Buffers(st)

    def trial(pair: tuple[int, int], out: np.ndarray | None) -> BCDState:
        t = cur.copy(out=out)
        move_rank(t, pair[0], pair[1])
        for lvl in sorted(set(pair)):
            fit_level(t, lvl)
        t.exact_loss()
        return t

    n_workers = max(1, min(threads, n_trials))
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for step in range(max_steps):
            undo = None if last is None else (last[1], last[0])
            pairs = _exchange_candidates(cur, caps, cur.gains[:, 0], skip=undo)[:n_trials]
            if not pairs:
                break
            outs = bufs.take(len(pairs))
            with _blas_single_thread(n_workers > 1):
                results = (list(pool.map(trial, pairs, outs)) if n_workers > 1
                           else [trial(p, o) for p, o in zip(pairs, outs, strict=True)])
            q = min(range(len(pairs)), key=lambda x: results[x].loss)
            t = results[q]
            if t.loss < cur.loss * (1.0 - eps):
                bufs.give(cur, *(r for x, r in enumerate(results) if x != q))
                cur, last, fresh = t, pairs[q], False
                info = {"step": step, "src": pairs[q][0], "dst": pairs[q][1],
                        "rel_error": t.rel_error, "ranks": list(t.ranks)}
                moves.append(info)
                if callback:
                    callback(info)
                continue
            bufs.give(*results)
            if fresh:
                break
            sweep(cur, order)  # refresh the side outputs, then one more try
            cur.exact_loss()
            fresh = True
    return cur, moves
