"""The in-memory fitting pipeline as stages on a shared :class:`Plan`.

``partition`` (learn the hierarchy, or take the given one) -> ``allocate`` (grow the ranks
from the atoms for ``init="bottom"``, then exchange ranks between levels) -> ``fit`` (BCD or
ALS until it stops paying) -> ``compare`` (the result against low rank and low rank plus
diagonal at the same storage; the best is returned). ``init="best"`` picks its start by
running both starts on a random principal submatrix first (:func:`pick_start`); a matrix too
small for that runs both starts through allocation and only the better one to the end.

Every stage reads and writes the plan; :func:`run` chains them under the thread limits.
Memory: about three m x n float64 arrays (input, residual, one trial copy per thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fit.als import run_als
from mlr_dask.fit.bcd import (
    BCDState,
    add_lowrank,
    epoch_levels,
    fit_level,
    init_state,
    run_bcd,
    sweep,
)
from mlr_dask.fit.options import Options, Reporter, thread_limits
from mlr_dask.fit.partition import atom_counts, spectral_partition
from mlr_dask.fit.ranks import exchange_ranks, grow_by_gains, rank_caps
from mlr_dask.fit.svd import randomized_svd
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix

__all__ = ["Plan", "partition", "allocate", "fit", "compare", "pick_start", "run",
           "lowrank_baselines", "start_ranks", "initial_ranks", "partition_ranks",
           "als_affordable", "BEST_INITS"]

#: The starts that ``init="best"`` chooses between.
BEST_INITS = ("bottom", "uniform")
#: The final fit by ALS stops at this fraction of ``tol`` (see :func:`fit`).
ALS_TOL_FACTOR = 0.5
#: Below this size (shorter side) BLAS runs single-threaded: its threads only add
#: synchronization to the many small products and SVDs, and stall badly on a busy machine.
BLAS_PARALLEL_MIN = 2048


@dataclass
class Plan:
    """What the stages share. ``A`` (m, n) original order (dropped once the residual exists);
    ``rows`` / ``cols`` the hierarchy (None until learned); ``ranks`` the starting ranks per
    level (None: from ``init``); ``state`` the BCD state (residual, factors) in hierarchy
    order; ``history`` and ``seconds`` what the result reports."""

    A: np.ndarray | None
    rank: int
    opts: Options
    report: Reporter
    rows: Hierarchy | None = None
    cols: Hierarchy | None = None
    ranks: list[int] | None = None
    levels: int = 1
    init: str | None = None
    state: BCDState | None = None
    norm2: float = 0.0
    history: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    epoch_seconds: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        if self.A is not None:
            return self.A.shape  # type: ignore[return-value]
        return self.state.R.shape  # type: ignore[union-attr]


# ---------------------------------------------------------------- starting allocations

def initial_ranks(rank: int, caps: list[int] | tuple[int, ...], atoms: bool) -> list[int]:
    """Spread ``rank`` over the levels: 1 for a last level of atoms, the rest as evenly as
    possible (coarse levels first), respecting the caps; what does not fit goes to level 0."""
    L = len(caps)
    out = [0] * L
    left = rank
    if atoms and L > 1:
        out[-1] = min(1, caps[-1], left)
        left -= out[-1]
        todo = list(range(L - 1))
    else:
        todo = list(range(L))
    while left > 0 and todo:
        share, extra = divmod(left, len(todo))
        nxt = []
        for i, lvl in enumerate(todo):
            want = share + (1 if i < extra else 0)
            got = min(want, caps[lvl] - out[lvl])
            out[lvl] += got
            left -= got
            if out[lvl] < caps[lvl]:
                nxt.append(lvl)
        if len(nxt) == len(todo) and share == 0 and extra == 0:
            break
        todo = nxt
    if left > 0:
        raise InputError(f"rank {rank} exceeds the total capacity {sum(caps)} of the levels")
    return out


def partition_ranks(rank: int, n_levels: int, caps: list[int], atoms: bool) -> list[int]:
    """Half of the rank on the root, the rest spread evenly over the next (up to five) levels,
    1 on a last level of atoms; capped by ``caps`` (the excess goes to the root)."""
    L = n_levels
    out = [0] * L
    if L == 1:
        return [rank]
    left = rank
    if atoms:
        out[-1] = min(1, caps[-1])
        left -= out[-1]
    out[0] = left - left // 2
    mids = list(range(1, min(6, L - (1 if atoms else 0))))
    rest = left // 2
    for i, lvl in enumerate(mids):
        out[lvl] = rest // len(mids) + (1 if i < rest % len(mids) else 0)
    if not mids:
        out[0] += rest
    for lvl in range(1, L):
        extra = max(0, out[lvl] - caps[lvl])
        out[lvl] -= extra
        out[0] += extra
    return out


def start_ranks(init: str, rank: int, n_levels: int, caps: list[int]) -> list[int]:
    """Ranks per level while a hierarchy of ``n_levels`` levels (last: atoms) is learned.

    ``"spread"``: :func:`partition_ranks`; ``"uniform"``: :func:`initial_ranks`; ``"top"``:
    all on the root; ``"bottom"``: 1 on the atoms and 0 elsewhere (the partition is then
    recursive co-clustering of ``A o A``; the rest of the rank is grown afterwards)."""
    L = n_levels
    if L == 1:
        return [rank]
    if init == "spread":
        return partition_ranks(rank, L, caps, True)
    if init == "uniform":
        return initial_ranks(rank, caps, True)
    if init == "top":
        return [rank] + [0] * (L - 1)
    if init == "bottom":
        return [0] * (L - 1) + [min(1, rank, caps[-1])]
    raise InputError(f"unknown init {init!r}")


def als_affordable(rb: list[np.ndarray], cb: list[np.ndarray], ranks: list[int]) -> bool:
    """Whether an ALS iteration should cost no more than about a BCD epoch. Its right-hand
    sides cost ``sum_l r_l`` times the area of level ``l``'s diagonal blocks (less than an
    epoch's SVDs); each half step then solves an (r, r) system per block of the finest level
    with a nonzero rank (O(r^3) each, and their Gram parts O(L r^2 n) in all). Affordable
    when ``8 blocks r^2 <= m n`` (``rb`` / ``cb`` boundaries per level, ``ranks`` (L,)); the
    fit still times the iterations against BCD epochs (:func:`fit`)."""
    used = [lvl for lvl, r in enumerate(ranks) if r > 0]
    if not used:
        return False
    last = used[-1]
    m, n = int(rb[0][-1]), int(cb[0][-1])
    blocks = rb[last].size - 1
    r = sum(int(x) for x in ranks)
    return 8 * blocks * r * r <= m * n


# ---------------------------------------------------------------- stages

def _short_caps(m: int, n: int, L: int) -> list[int]:
    r = Hierarchy.dyadic(m, max(1, L - 1))
    c = Hierarchy.dyadic(n, max(1, L - 1))
    cnt = atom_counts(r, c)
    r, c = r.refine(cnt), c.refine(cnt)
    return rank_caps(r.boundaries, c.boundaries)


def partition(plan: Plan) -> None:
    """Learn the hierarchy (top-down spectral splits, :func:`spectral_partition`) or set up the
    given one; leaves the BCD state (residual and factors at the starting ranks, side
    outputs from one epoch) on the plan. Cost: learned, one SVD-based split per block and
    level plus, when the start has rank above the atoms, one BCD epoch of the coarser levels
    before each level's splits."""
    t0 = time.perf_counter()
    o = plan.opts
    A = plan.A
    assert A is not None
    m, n = A.shape
    L = plan.levels
    if plan.rows is None:
        po = o.partition
        caps = _short_caps(m, n, L) if L > 1 else [min(m, n)]
        rk0 = list(plan.ranks) if plan.ranks is not None else start_ranks(
            plan.init or "uniform", plan.rank, L, caps)

        def on_level(lvl: int) -> None:
            plan.report("partition", lvl, L - 1, level=lvl, of=L - 1)

        rows, cols, st = spectral_partition(
            A, L, rk0, symmetric=o.symmetric, psd=o.psd, balanced=po.balanced,
            refine=po.refine, seed=o.seed, method=po.split, epochs=po.epochs,
            n_vectors=po.split_vectors, callback=on_level)
        plan.rows, plan.cols = rows, cols
    else:
        rows, cols = plan.rows, plan.cols
        Ap = np.ascontiguousarray(A[rows.perm][:, cols.perm]) if not _is_identity(
            rows, cols) else A
        caps = rank_caps(rows.boundaries, cols.boundaries)
        rk = list(plan.ranks) if plan.ranks is not None else initial_ranks(
            plan.rank, caps, rows.has_atoms)
        st = init_state(Ap, rows.boundaries, cols.boundaries, rk, psd=o.psd, seed=o.seed,
                        copy=Ap is A)
    plan.A = None  # the residual holds what is needed from here on
    if L > 1 and not any(st.ranks[:-1]):
        # rank only on the last level ("bottom"): fit it, then one pass over the others
        # leaves every level's side outputs fresh (a full epoch would repeat the same fits)
        fit_level(st, L - 1)
        sweep(st, range(L - 1))
        st.exact_loss()
    else:
        run_bcd(st, max_iter=1, tol=0.0)
    plan.state = st
    plan.history["partition"] = [st.rel_error]
    plan.seconds["partition"] = time.perf_counter() - t0
    plan.report("partition_done", L - 1, L - 1, rel_error=st.rel_error, ranks=list(st.ranks))


def _is_identity(rows: Hierarchy, cols: Hierarchy) -> bool:
    return bool(np.array_equal(rows.perm, np.arange(rows.n))
                and np.array_equal(cols.perm, np.arange(cols.n)))


def allocate(plan: Plan) -> None:
    """Bring the state to the total rank and improve the allocation: growth by predicted gains
    (one rank per step, continuation from the atoms) when below the total, then the rank
    exchange with local trials (:func:`mlr_dask.fit.ranks.exchange_ranks`). From the fraction
    ``late_from`` of the growth steps on, a step whose best levels are close tries up to
    ``late_trials`` of them (each a copy with its epoch, in parallel threads). At most
    ``max_rank_moves`` steps in all. Cost: one BCD epoch per growth step (per trial in the
    late steps), ``n_trials`` residual copies and two level fits per exchange step."""
    t0 = time.perf_counter()
    st = plan.state
    assert st is not None
    ao = plan.opts.allocation
    bound = max(1, ao.max_rank_moves)
    deficit = plan.rank - sum(st.ranks)
    per = max(1, ao.grow_per_step)
    grow_steps = min(-(-deficit // per), max(1, (3 * bound) // 4)) if deficit > 0 else 0
    total = grow_steps + (bound - grow_steps if ao.enabled else 0)
    counter = [0]

    def cb(info: dict[str, Any]) -> None:
        counter[0] += 1
        plan.report("rank_move", counter[0], total,
                    **{k: v for k, v in info.items() if k != "step"})

    moves: list[dict[str, Any]] = []
    if deficit > 0:
        st, grown = grow_by_gains(st, plan.rank, per_step=ao.grow_per_step,
                                  max_steps=grow_steps, n_trials=ao.grow_trials,
                                  late_trials=ao.late_trials,
                                  late_from=int(ao.late_from * grow_steps),
                                  threads=plan.opts.threads, callback=cb)
        moves += grown
    if sum(st.ranks) < plan.rank:  # the caps of the learned blocks: level 0 takes the rest
        _add_root_rank(st, plan.rank - sum(st.ranks))
        run_bcd(st, max_iter=1, tol=0.0, greedy_init=False)
    if ao.enabled and len(st.ranks) > 1 and total - len(moves) > 0:
        st, more = exchange_ranks(st, n_trials=ao.n_trials, eps=ao.eps,
                                  max_steps=total - len(moves), threads=plan.opts.threads,
                                  callback=cb)
        moves += more
    plan.state = st
    plan.history["rank_moves"] = moves
    plan.seconds["rank_allocation"] = time.perf_counter() - t0


def _add_root_rank(st: BCDState, extra: int) -> None:
    m, n = st.R.shape
    st.B[0] = np.hstack([st.B[0], np.zeros((m, extra))])
    if st.psd:
        st.C = st.B
    else:
        st.C[0] = np.hstack([st.C[0], np.zeros((n, extra))])
    st.ranks[0] += extra


def _rebuild(st: BCDState) -> np.ndarray:
    """The target in hierarchy order from the residual and the factors (R + sum A_l)."""
    Ap = st.R.copy()
    for lvl in range(len(st.ranks)):
        r0, c0 = st.rb[lvl], st.cb[lvl]
        for k in range(r0.size - 1):
            add_lowrank(Ap[r0[k]:r0[k + 1], c0[k]:c0[k + 1]], st.B[lvl][r0[k]:r0[k + 1]],
                        st.C[lvl][c0[k]:c0[k + 1]], 1.0)
    return Ap


def fit(plan: Plan) -> None:
    """The final fit: BCD epochs, or ALS when chosen (``method="als"``, or ``"auto"`` when
    :func:`als_affordable`), until the relative decrease of the loss is below ``tol`` (for ALS
    ``ALS_TOL_FACTOR * tol``: an affordable ALS iteration costs less than a BCD epoch, so a
    smaller decrease still pays). With
    ``"auto"`` an ALS epoch that costs more than ``als_cost_limit`` BCD epochs (timed in the
    same run, in CPU seconds of the process: a busy machine does not trip it) is not repeated:
    the fit continues with BCD. ALS runs with momentum (:func:`mlr_dask.fit.als.run_als`).
    Cost: one BCD epoch per iteration (ALS: two structured least-squares solves per finest
    block, three after a rejected extrapolation; one residual rebuild at the end)."""
    t0 = time.perf_counter()
    st = plan.state
    assert st is not None
    fo = plan.opts.fit
    L = len(st.ranks)
    method = fo.method
    if method == "auto":
        method = "als" if not st.psd and als_affordable(st.rb, st.cb, st.ranks) else "bcd"
    hist = [st.rel_error]
    notes: list[str] = []
    plan.report("epoch", 0, fo.max_iter, epoch=0, rel_error=st.rel_error, ranks=list(st.ranks))
    it = 0
    done = fo.max_iter <= 0
    if method == "als" and not done:
        # one timed BCD epoch first: the cost reference of the ALS guard
        before = st.loss
        t1 = time.process_time()
        sweep(st, epoch_levels(L, 2))
        bcd_s = time.process_time() - t1
        it = 1
        hist.append(st.rel_error)
        plan.report("epoch", it, fo.max_iter, epoch=it, rel_error=st.rel_error)
        done = before <= 0 or (before - st.loss) <= fo.tol * before
        if not done:
            Ap = _rebuild(st)
            AT = np.ascontiguousarray(Ap.T)
            limit = fo.als_cost_limit * bcd_s if fo.method == "auto" else None
            start, clock, slow = it, [time.process_time()], [False]
            spent: list[float] = []

            def on_iter(e: int, err: float) -> bool:
                now = time.process_time()
                spent.append(now - clock[0])
                clock[0] = now
                plan.report("epoch", start + e, fo.max_iter, epoch=start + e, rel_error=err)
                slow[0] = limit is not None and spent[-1] > limit
                return slow[0]

            als = run_als(Ap, st, max_iter=fo.max_iter - it, tol=fo.tol * ALS_TOL_FACTOR,
                          AT=AT, callback=on_iter)
            it += len(als) - 1
            hist += als[1:]
            done = not slow[0]
            if slow[0]:
                notes.append("an ALS epoch cost more than "
                             f"{fo.als_cost_limit:g} BCD epochs: continued with BCD")
                method = "bcd"
            del Ap, AT
    if not done and it < fo.max_iter:
        start = it

        def on_epoch(e: int, err: float) -> None:
            if e:
                plan.report("epoch", start + e, fo.max_iter, epoch=start + e, rel_error=err)

        rest = run_bcd(st, max_iter=fo.max_iter - it, tol=fo.tol, greedy_init=False,
                       callback=on_epoch)
        hist += rest[1:]
    st.exact_loss()
    hist[-1] = st.rel_error
    plan.history["rel_error"] = hist
    plan.history["method"] = method
    if notes:
        plan.history.setdefault("notes", []).extend(notes)
    plan.seconds["fit"] = time.perf_counter() - t0


# ---------------------------------------------------------------- baselines and comparison

def lowrank_baselines(A: np.ndarray, rank: int, *, seed: int = 0, psd: bool = False,
                      ) -> tuple[MLRMatrix, float, MLRMatrix | None, float]:
    """Low rank (randomized SVD, 4 power iterations) and low rank plus diagonal (``(r - 1,
    1)``, atoms last, BCD from the low rank start) at the storage of rank ``rank``, with
    their relative errors. ``A`` (m, n) original order. Cost: about 10 products of A with
    (n, r + 10) blocks plus up to 20 two-level BCD epochs."""
    m, n = A.shape
    norm2 = float(np.einsum("ij,ij->", A, A))
    rng = np.random.default_rng(seed)
    U, s, V = randomized_svd(A, rank, q=4, oversample=10, rng=rng)
    sq = np.sqrt(s)
    r0, c0 = Hierarchy([[0, m]]), Hierarchy([[0, n]])
    if psd:  # B B^T from the leading singular vectors; no diagonal variant
        B = U * sq
        LR = MLRMatrix(r0, r0, [rank], B)
        err = float(np.sqrt(max(norm2 - 2 * np.sum((A @ B) * B) + np.sum((B.T @ B) ** 2), 0.0)
                            / norm2)) if norm2 > 0 else 0.0
        return LR, err, None, np.inf
    LR = MLRMatrix(r0, c0, [rank], U * sq, V * sq)
    lr_err = float(np.sqrt(max(norm2 - float(np.sum(s**2)), 0.0) / norm2)) if norm2 > 0 else 0.0
    if rank < 2 or min(m, n) < 2:
        return LR, lr_err, None, np.inf
    cnt = atom_counts(r0, c0)
    rows, cols = r0.refine(cnt), c0.refine(cnt)
    Bs = [U[:, :rank - 1] * sq[:rank - 1], np.zeros((m, 1))]
    Cs = [V[:, :rank - 1] * sq[:rank - 1], np.zeros((n, 1))]
    st = init_state(A, rows.boundaries, cols.boundaries, [rank - 1, 1], B=Bs, C=Cs, seed=seed)
    run_bcd(st, max_iter=20, tol=1e-4, greedy_init=False)
    D = MLRMatrix(rows, cols, st.ranks, np.hstack(st.B), np.hstack(st.C))
    return LR, lr_err, D, st.rel_error


def compare(plan: Plan, M: MLRMatrix, A: np.ndarray | None,
            base: tuple[MLRMatrix, float, MLRMatrix | None, float] | None) -> MLRMatrix:
    """Keep the best of the MLR fit, low rank and low rank plus diagonal (same storage); the
    history reports all three errors and which one was returned."""
    err = float(plan.history["rel_error"][-1])
    if base is None:
        M.history_ = plan.history
        return M
    LR, lr_err, D, d_err = base
    plan.history["mlr_rel_error"] = err
    plan.history["lowrank_rel_error"] = lr_err
    plan.history["lowrank_diag_rel_error"] = d_err if D is not None else None
    best, kind = M, "mlr"
    if lr_err < err:
        best, kind, err = LR, "lowrank", lr_err
    if D is not None and d_err < err:
        best, kind, err = D, "lowrank_diag", d_err
    plan.history["returned"] = kind
    if kind != "mlr":
        plan.history["rel_error"] = list(plan.history["rel_error"]) + [err]
        plan.history["ranks"] = list(best.ranks)
        plan.history.setdefault("notes", []).append(
            f"{kind.replace('_', ' + ')} at the same storage was better than the MLR fit "
            f"({err:.6g} < {plan.history['mlr_rel_error']:.6g}): returned it")
    best.history_ = plan.history
    return best


# ---------------------------------------------------------------- the start of init="best"

#: :func:`pick_start` runs on a random principal submatrix of 1 / PICK_DIVISOR of each side.
PICK_DIVISOR = 5
#: ... with growth by this many ranks per step (and no exchange or final fit after it).
PICK_GROW = 3


def _subsample(m: int, n: int, symmetric: bool, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Random row / column subsets of 1 / :data:`PICK_DIVISOR` of each side, or None when a
    side would have fewer than 128 items. A square matrix gets the same set for rows and
    columns."""
    sm, sn = m // PICK_DIVISOR, n // PICK_DIVISOR
    if min(sm, sn) < 128:
        return None
    if m == n:
        idx = np.sort(rng.choice(m, size=sm, replace=False))
        return idx, idx
    return (np.sort(rng.choice(m, size=sm, replace=False)),
            np.sort(rng.choice(n, size=sn, replace=False)))


def pick_start(A: np.ndarray, rank: int, opts: Options, levels: int | None
               ) -> tuple[str, dict[str, float], float]:
    """``init="best"``: run partition and rank growth from each start of :data:`BEST_INITS`
    on a random principal submatrix of 1 / :data:`PICK_DIVISOR` of each side
    (:func:`_subsample`; the same rank, at most a quarter of the submatrix; growth by
    :data:`PICK_GROW` ranks per step; no exchange, no final fit) and return the start of lower
    error, the error of each, and the seconds spent. On small matrices (a side of the
    submatrix below 128) returns ``("", ...)``: the caller races the starts (partition and
    allocation of both, the final fit of the better one). Cost: the partition of both starts
    on the submatrix and about ``rank / PICK_GROW`` BCD epochs of it.
    """
    t0 = time.perf_counter()
    m, n = A.shape
    sub = _subsample(m, n, opts.symmetric, np.random.default_rng(opts.seed))
    if sub is None:
        return "", {}, 0.0
    ri, ci = sub
    As = np.ascontiguousarray(A[np.ix_(ri, ci)])
    frac = min(ri.size / m, ci.size / n)
    r_sub = int(max(1, min(rank, min(As.shape) // 4)))
    L_sub = None if levels is None else max(1, levels - int(round(np.log2(1 / frac))))
    errs: dict[str, float] = {}
    for init in BEST_INITS:
        o = replace(opts, partition=replace(opts.partition, init=init, levels=L_sub),
                    fit=replace(opts.fit, max_iter=0),
                    allocation=replace(opts.allocation, grow_per_step=PICK_GROW,
                                       enabled=False, max_rank_moves=min(
                                           opts.allocation.max_rank_moves,
                                           r_sub // PICK_GROW + 8)),
                    baselines=False)
        M = run(As, r_sub, o, Reporter(None))
        errs[init] = float(M.history_["rel_error"][-1])
    best = min(BEST_INITS, key=lambda k: errs[k])
    return best, errs, time.perf_counter() - t0


# ---------------------------------------------------------------- the whole pipeline

def _result(st: BCDState, rows: Hierarchy, cols: Hierarchy) -> MLRMatrix:
    B = np.hstack(st.B)
    if st.psd:
        return MLRMatrix(rows, cols, st.ranks, B)
    return MLRMatrix(rows, cols, st.ranks, B, np.hstack(st.C))


def run(A: np.ndarray, rank: int, opts: Options, report: Reporter, *,
        rows: Hierarchy | None = None, cols: Hierarchy | None = None,
        ranks: list[int] | None = None, levels: int | None = None) -> MLRMatrix:
    """Fit an MLR matrix of total rank ``rank`` to the dense ``A`` (m, n) (original order)
    through the stages, under :func:`thread_limits` of ``opts.threads``. ``rows`` / ``cols``:
    a fixed hierarchy; ``ranks``: fixed (no allocation) or starting ranks; ``levels`` of a
    learned hierarchy. Returns the best of the MLR fit and (``opts.baselines``) the low rank
    and low rank plus diagonal fits, with ``history_``. BLAS gets ``opts.threads`` threads
    from :data:`BLAS_PARALLEL_MIN` on, one below; rank-allocation trials run on
    ``opts.threads`` threads with one BLAS thread each."""
    t_start = time.perf_counter()
    m, n = A.shape
    with thread_limits(opts.threads if min(m, n) >= BLAS_PARALLEL_MIN else 1):
        base = None
        seconds: dict[str, float] = {}
        if opts.baselines:
            t0 = time.perf_counter()
            base = lowrank_baselines(A, rank, seed=opts.seed, psd=opts.psd)
            seconds["baselines"] = time.perf_counter() - t0
            if rank >= min(m, n):  # low rank is exact: nothing to learn
                LR = base[0]
                err = float(np.linalg.norm(A - LR.to_dense()) / max(np.linalg.norm(A), 1e-300))
                LR.history_ = {"rel_error": [err], "partition": [], "rank_moves": [],
                               "method": None, "init": None, "seconds": seconds,
                               "ranks": list(LR.ranks), "mlr_rel_error": None,
                               "lowrank_rel_error": err, "lowrank_diag_rel_error":
                               base[3] if base[2] is not None else None,
                               "returned": "lowrank"}
                seconds["total"] = time.perf_counter() - t_start
                return LR
        L = rows.n_levels if rows is not None else (
            levels if levels is not None else (len(ranks) if ranks is not None
                                               else _default_levels(m, n)))
        init = opts.partition.init
        learned = rows is None and ranks is None and L > 1
        starts: dict[str, float] | None = None
        if not learned:
            init = None
        elif init == "best":
            picked, starts, t_pick = pick_start(A, rank, opts, levels)
            seconds["pick_start"] = t_pick
            if not picked:  # small matrix: race both starts up to the final fit
                return _race(A, rank, opts, report, L, base, seconds, t_start)
            init = picked
        plan = Plan(A, rank, opts, report, rows=rows, cols=cols, ranks=ranks, levels=L,
                    init=init, seconds=seconds)
        partition(plan)
        if opts.allocation.enabled or sum(plan.state.ranks) < rank:  # type: ignore[union-attr]
            allocate(plan)
        else:
            plan.history["rank_moves"] = []
            plan.seconds["rank_allocation"] = 0.0
        fit(plan)
        return _finish(plan, init, starts, base, t_start)


def _race(A: np.ndarray, rank: int, opts: Options, report: Reporter, L: int,
          base: tuple[MLRMatrix, float, MLRMatrix | None, float] | None,
          seconds: dict[str, float], t_start: float) -> MLRMatrix:
    """``init="best"`` on a matrix too small for :func:`pick_start`: both starts of
    :data:`BEST_INITS` run partition and allocation, and only the one of lower error goes on
    to the final fit (at small sizes the final fit is the long stage). ``history_["starts"]``:
    the error each start reached (the loser's after its allocation, the winner's at the end).
    Cost: one start plus the loser's partition and allocation."""
    plans: dict[str, Plan] = {}
    for cand in BEST_INITS:
        o = replace(opts, partition=replace(opts.partition, init=cand), baselines=False)
        plan = Plan(A, rank, o, report, levels=L, init=cand, seconds={})
        partition(plan)
        allocate(plan)
        plans[cand] = plan
        for k, v in plan.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    starts = {k: p.state.rel_error for k, p in plans.items()}  # type: ignore[union-attr]
    init = min(BEST_INITS, key=lambda k: starts[k])
    plan = plans[init]
    for k in plans:
        if k != init:
            plans[k].state = None  # free the loser's residual
    plan.seconds = seconds
    fit(plan)
    starts[init] = plan.state.rel_error  # type: ignore[union-attr]
    return _finish(plan, init, starts, base, t_start)


def _finish(plan: Plan, init: str | None, starts: dict[str, float] | None,
            base: tuple[MLRMatrix, float, MLRMatrix | None, float] | None,
            t_start: float) -> MLRMatrix:
    """The result of a fitted plan, compared with the baselines (:func:`compare`)."""
    st = plan.state
    assert st is not None and plan.rows is not None and plan.cols is not None
    M = _result(st, plan.rows, plan.cols)
    plan.history["ranks"] = list(st.ranks)
    plan.history["rel_error_final"] = st.rel_error
    plan.history["init"] = init
    if starts is not None:
        plan.history["starts"] = starts
    plan.history["seconds"] = plan.seconds
    out = compare(plan, M, None, base)
    plan.seconds["total"] = time.perf_counter() - t_start
    return out


def _default_levels(m: int, n: int) -> int:
    short = min(m, n)
    return 1 if short < 2 else int(np.ceil(np.log2(short))) + 1
