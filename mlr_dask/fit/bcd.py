"""Factor fitting with a fixed hierarchy and fixed ranks: block coordinate descent (BCD).

The state keeps the residual ``R = A - sum_l A_l`` (m, n) in hierarchy order. Fitting level
``l`` adds the old ``A_l`` back block by block, takes the top ``r_l`` singular triples of each
block (batched dense SVD for small blocks, warm-started randomized SVD for large ones, top
eigenpairs with clipped eigenvalues for the PSD variant) and subtracts the new ``A_l``. Only the
level's blocks are touched; the loss is updated from the block norms (``mlr.md`` section 2).

Side outputs per level from its last fit: ``gains`` (L, GAIN_DEPTH) (sum over blocks of
``sigma_{r_l+j}^2``, j = 1..GAIN_DEPTH: the predicted decreases of the next ranks; from a
randomized SVD only estimates), ``delta_plus`` (sum over blocks of
``sigma_{r_l+1}^2``, the predicted loss decrease with one more rank), ``delta_minus``
(``sigma_{r_l}^2``, the increase with one less), and the ``(r_l+1)``-th singular pairs
``next_B`` (m,), ``next_C`` (n,) scaled by ``sqrt(sigma)`` (warm starts for rank moves).

Large blocks: the first fit uses ``q`` power iterations; later fits are warm started (the old
factors and the stored next ``GAIN_DEPTH`` singular vectors join the test matrix and the range,
no power iteration: two reads of the block), which keeps every level fit monotone and makes
each fit one more step of subspace iteration, so that the side outputs converge too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mlr_dask.fit.svd import (
    batched_psd_eig,
    batched_randomized_svd,
    batched_svd_gram,
    block_psd_eig,
    block_svd,
)
from mlr_dask.kernels.gather import gather_blocks, gather_rows, scatter_blocks, scatter_rows

__all__ = ["BCDState", "init_state", "fit_level", "sweep", "run_bcd", "epoch_order",
           "epoch_levels", "STRIP"]

#: Rows per strip when a large block is updated in place (bounds temporary memory).
STRIP = 512
#: Blocks with more entries than this are handled one at a time, not in padded batches.
BIG = 250_000
#: Blocks whose shorter side is at most this get a dense SVD; larger ones a warm-started
#: randomized SVD (faster per epoch at the same error on the kernel and MLR test matrices).
EXACT_MAX = 48
#: ... except on levels of fewer than 4 blocks, dense up to this side (a flat spectrum makes
#: warm-started subspace iteration of a single block converge slowly).
EXACT_MAX_FEW = 192
#: Side output ``gains[l]``: predicted loss decreases of the next GAIN_DEPTH ranks of a level.
GAIN_DEPTH = 4


@dataclass
class BCDState:
    """Everything BCD needs between level fits (arrays in hierarchy order).

    ``R`` (m, n) residual; ``rb`` / ``cb`` boundaries per level; ``ranks`` per level;
    ``B[l]`` (m, r_l), ``C[l]`` (n, r_l) (``C`` is ``B`` for PSD fits); ``loss`` = ||R||_F^2;
    ``norm2`` = ||A||_F^2. ``tail_B[l]`` (m, GAIN_DEPTH), ``tail_C[l]`` (n, GAIN_DEPTH): the
    unit singular vectors ``r_l+1 .. r_l+GAIN_DEPTH`` of every block from the level's last fit
    (zeros before it); they join the warm start of the next randomized fit of the level, so
    that the side outputs (``gains``) converge over the epochs like the factors do.
    """

    R: np.ndarray
    rb: list[np.ndarray]
    cb: list[np.ndarray]
    ranks: list[int]
    B: list[np.ndarray]
    C: list[np.ndarray]
    loss: float
    norm2: float
    psd: bool = False
    exact_max: int = EXACT_MAX
    q: int = 2
    seed: int = 0
    delta_plus: np.ndarray = field(default=None)  # type: ignore[assignment]
    delta_minus: np.ndarray = field(default=None)  # type: ignore[assignment]
    next_B: list[np.ndarray] = field(default=None)  # type: ignore[assignment]
    next_C: list[np.ndarray] = field(default=None)  # type: ignore[assignment]
    gains: np.ndarray = field(default=None)  # type: ignore[assignment]
    tail_B: list[np.ndarray] = field(default=None)  # type: ignore[assignment]
    tail_C: list[np.ndarray] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        L = len(self.ranks)
        m, n = self.R.shape
        if self.delta_plus is None:
            self.delta_plus = np.zeros(L)
            self.delta_minus = np.full(L, np.inf)
            self.next_B = [np.zeros(m) for _ in range(L)]
            self.next_C = [np.zeros(n) for _ in range(L)]
        if self.gains is None:
            self.gains = np.zeros((L, GAIN_DEPTH))
        if self.tail_B is None:
            self.tail_B = [np.zeros((m, GAIN_DEPTH)) for _ in range(L)]
        if self.tail_C is None:
            self.tail_C = (self.tail_B if self.psd
                           else [np.zeros((n, GAIN_DEPTH)) for _ in range(L)])

    @property
    def rel_error(self) -> float:
        return float(np.sqrt(max(self.loss, 0.0) / self.norm2)) if self.norm2 > 0 else 0.0

    def copy(self, out: np.ndarray | None = None) -> BCDState:
        """Deep copy (the residual is copied: m n numbers). ``out``: an (m, n) float64 array
        to copy the residual into (reusing it avoids the page faults of a fresh allocation,
        which cost more than the copy itself at m n ~ 10^7)."""
        if out is not None and out.shape == self.R.shape and out.dtype == self.R.dtype:
            np.copyto(out, self.R)
            R = out
        else:
            R = self.R.copy()
        return BCDState(
            R, self.rb, self.cb, list(self.ranks),
            [b.copy() for b in self.B],
            [b.copy() for b in self.B] if self.psd else [c.copy() for c in self.C],
            self.loss, self.norm2, self.psd, self.exact_max, self.q, self.seed,
            self.delta_plus.copy(), self.delta_minus.copy(),
            [x.copy() for x in self.next_B], [x.copy() for x in self.next_C],
            self.gains.copy(),
            [x.copy() for x in self.tail_B],
            None if self.psd else [x.copy() for x in self.tail_C],
        )

    def exact_loss(self) -> float:
        """Recompute ||R||_F^2 from the residual (one pass) and store it."""
        self.loss = float(np.einsum("ij,ij->", self.R, self.R))
        return self.loss


def _sq(x: np.ndarray) -> float:
    if x.flags.c_contiguous:
        v = x.reshape(-1)
        return float(v @ v)
    return float(np.einsum("ij,ij->", x, x))


def add_lowrank(view: np.ndarray, Bk: np.ndarray, Ck: np.ndarray, alpha: float) -> None:
    """``view += alpha * Bk @ Ck.T`` in place, by row strips (temporary memory STRIP x b)."""
    if Bk.shape[1] == 0:
        return
    for i0 in range(0, view.shape[0], STRIP):
        i1 = min(i0 + STRIP, view.shape[0])
        prod = Bk[i0:i1] @ Ck.T
        if alpha == 1.0:
            view[i0:i1] += prod
        else:
            view[i0:i1] -= prod


def init_state(
    Ap: np.ndarray,
    rb: Sequence[np.ndarray],
    cb: Sequence[np.ndarray],
    ranks: Sequence[int],
    *,
    psd: bool = False,
    B: Sequence[np.ndarray] | None = None,
    C: Sequence[np.ndarray] | None = None,
    exact_max: int = EXACT_MAX,
    q: int = 2,
    seed: int = 0,
    copy: bool = True,
) -> BCDState:
    """State for ``Ap`` (m, n) in hierarchy order; zero factors unless ``B``/``C`` are given.

    Holds a copy of ``Ap`` as the residual (m n numbers) unless ``copy=False``.
    """
    R = (np.array(Ap, dtype=np.float64, order="C") if copy
         else np.ascontiguousarray(Ap, dtype=np.float64))
    norm2 = _sq(R)
    m, n = R.shape
    ranks = [int(r) for r in ranks]
    if B is None:
        Bs = [np.zeros((m, r)) for r in ranks]
        Cs = Bs if psd else [np.zeros((n, r)) for r in ranks]
    else:
        Bs = [np.array(b, dtype=np.float64) for b in B]
        Cs = Bs if psd else [np.array(c, dtype=np.float64) for c in C]  # type: ignore[union-attr]
        for lvl in range(len(ranks)):
            r0, c0 = rb[lvl], cb[lvl]
            for k in range(r0.size - 1):
                add_lowrank(R[r0[k]:r0[k + 1], c0[k]:c0[k + 1]], Bs[lvl][r0[k]:r0[k + 1]],
                            Cs[lvl][c0[k]:c0[k + 1]], -1.0)
    st = BCDState(R, list(rb), list(cb), ranks, Bs, Cs, 0.0, norm2, psd, exact_max, q, seed)
    st.exact_loss()
    return st


def _buckets(small: np.ndarray, bm: np.ndarray, bn: np.ndarray) -> list[np.ndarray]:
    """Group blocks whose padded shapes waste at most ~25% per dimension."""
    def key(x: np.ndarray) -> np.ndarray:
        x = np.maximum(x, 1)
        step = np.maximum(1, 2 ** np.maximum(np.floor(np.log2(x)).astype(np.int64) - 2, 0))
        return -(-x // step) * step

    if small.size == 0:
        return []
    km, kn = key(bm[small]), key(bn[small])
    pairs = np.stack([km, kn], axis=1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    return [small[inv.reshape(-1) == u] for u in range(len(uniq))]


#: Cost model of a batch of dense block SVDs (microseconds, one thread): per batch, and per
#: padded (BM, BN) block. Only the ratio matters: it decides when padding is cheaper than one
#: more batch.
_BATCH_US = 60.0


def _block_us(BM: int, BN: int) -> float:
    return 2.0 + 0.05 * BM * BN + 0.003 * BM * BN * min(BM, BN)


#: Batches are merged only while their padded sides stay at most this (dense SVDs).
MERGE_MAX = 64


def merge_buckets(groups: list[np.ndarray], bm: np.ndarray, bn: np.ndarray,
                  dense: int = MERGE_MAX) -> list[np.ndarray]:
    """Merge the batches ``groups`` (block indices) of small blocks greedily while the cost
    model says one padded batch is cheaper than two (:data:`_BATCH_US` per batch against
    the padding); batches with a side above :data:`MERGE_MAX` stay as they are, and a merged
    batch keeps its shorter padded side at most ``dense`` (it stays on the dense SVD path).
    O(g^3) for g batches; the result is cached (:func:`_plan`)."""
    items = [[g, int(bm[g].max()), int(bn[g].max())] for g in groups]
    keep = [it for it in items if max(it[1], it[2]) > MERGE_MAX]
    items = [it for it in items if max(it[1], it[2]) <= MERGE_MAX]
    while len(items) > 1:
        best = (0.0, -1, -1)
        for i in range(len(items)):
            gi, mi, ni = items[i]
            ci = gi.size * _block_us(mi, ni)
            for j in range(i + 1, len(items)):
                gj, mj, nj = items[j]
                M, N = max(mi, mj), max(ni, nj)
                if min(M, N) > dense:
                    continue
                delta = ((gi.size + gj.size) * _block_us(M, N) - ci
                         - gj.size * _block_us(mj, nj) - _BATCH_US)
                if delta < best[0]:
                    best = (delta, i, j)
        if best[1] < 0:
            break
        _, i, j = best
        gi, mi, ni = items[i]
        gj, mj, nj = items.pop(j)
        items[i] = [np.sort(np.concatenate([gi, gj])), max(mi, mj), max(ni, nj)]
    return [it[0] for it in items + keep]


#: Batch plans by (level boundaries, rank, dense limit); they depend only on the block sizes,
#: which repeat across the states of one fit (copies, trials, partition steps). Bounded.
_PLANS: dict[tuple[bytes, bytes, int, int], tuple[list[np.ndarray], np.ndarray]] = {}
_PLANS_MAX = 256


def _plan(st: BCDState, lvl: int, r: int, exact_max: int
          ) -> tuple[list[np.ndarray], np.ndarray]:
    """The padded batches of small blocks and the big blocks of level ``lvl`` at rank ``r``
    (cached by the level's boundaries)."""
    key = (st.rb[lvl].tobytes(), st.cb[lvl].tobytes(), r, exact_max)
    got = _PLANS.get(key)
    if got is not None:
        return got
    bm, bn = np.diff(st.rb[lvl]), np.diff(st.cb[lvl])
    k = r + 1
    big_mask = (bm * bn > BIG) & (np.minimum(bm, bn) > max(exact_max, 4 * (k + 10)))
    big = np.flatnonzero(big_mask)
    small = np.flatnonzero(~big_mask)
    groups = _buckets(small, bm, bn)
    dense = max(exact_max, 3 * (k + 10))
    fine = [g for g in groups if min(bm[g].max(), bn[g].max()) <= dense]
    rest = [g for g in groups if min(bm[g].max(), bn[g].max()) > dense]
    batches = merge_buckets(fine, bm, bn, dense) + rest
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = (batches, big)
    return batches, big


def fit_level(st: BCDState, lvl: int, cold: bool = False) -> None:
    """Refit level ``lvl`` exactly (per block truncated SVD of the residual with the level added
    back); updates the residual, the factors, the loss and the side outputs in place.
    ``cold``: large blocks get the power iterations of a first fit even when warm started
    (after ranks were added to the level). Cost: one SVD per block (dense below
    ``st.exact_max``, randomized above: O(block size x rank) per pass)."""
    rb, cb, r = st.rb[lvl], st.cb[lvl], st.ranks[lvl]
    bm, bn = np.diff(rb), np.diff(cb)
    k = r + 1
    kk = r + GAIN_DEPTH
    gains = np.zeros(GAIN_DEPTH)
    Bl, Cl = st.B[lvl], st.C[lvl]
    nextB, nextC = st.next_B[lvl], st.next_C[lvl]
    tB, tC = st.tail_B[lvl], st.tail_C[lvl]
    dplus = dminus = 0.0
    dmin_valid = r >= 1
    delta_loss = 0.0
    rng = np.random.default_rng([st.seed, lvl])
    exact_max = st.exact_max if bm.size >= 4 else max(st.exact_max, EXACT_MAX_FEW)
    # blocks of more than BIG entries are fitted one by one (in place, by strips); smaller
    # ones in padded batches (exact SVD up to exact_max, randomized above)
    batches, big = _plan(st, lvl, r, exact_max)
    for idx in batches:
        BM, BN = int(bm[idx].max()), int(bn[idx].max())
        G = gather_blocks(st.R, rb, cb, idx, BM, BN)
        old2 = _sq(G)
        Bp = gather_rows(Bl, rb, idx, BM)
        Cp = Bp if st.psd else gather_rows(Cl, cb, idx, BN)
        if r:
            G += Bp @ np.swapaxes(Cp, 1, 2)
        if st.psd:
            V, lam = batched_psd_eig(G, kk)
            s2 = lam**2
            nB = V[:, :, :r] * np.sqrt(lam[:, None, :r])
            nC = nB
            xB = V[:, :, r] * np.sqrt(lam[:, None, r])
            xC = xB
            tUB = tVC = V[:, :, r:]
        elif min(BM, BN) > max(exact_max, 3 * (k + 10)):
            TB = gather_rows(tB, rb, idx, BM)
            TC = gather_rows(tC, cb, idx, BN)
            has_tail = bool(np.any(TB))
            warm = (r > 0 and bool(np.any(Bp))) or has_tail
            init = (np.concatenate([Bp, TB], axis=2), np.concatenate([Cp, TC], axis=2)) if (
                has_tail) else (Bp, Cp)
            U, s, V = batched_randomized_svd(G, kk, q=0 if warm and not cold else st.q,
                                             init=init if warm else None, rng=rng)
            s2 = s**2
            sq = np.sqrt(s)
            nB = U[:, :, :r] * sq[:, None, :r]
            nC = V[:, :, :r] * sq[:, None, :r]
            xB, xC = U[:, :, r] * sq[:, None, r], V[:, :, r] * sq[:, None, r]
            tUB, tVC = U[:, :, r:], V[:, :, r:]
        else:
            U, s, V = batched_svd_gram(G, kk)
            s2 = s**2
            sq = np.sqrt(s)
            nB = U[:, :, :r] * sq[:, None, :r]
            nC = V[:, :, :r] * sq[:, None, :r]
            xB, xC = U[:, :, r] * sq[:, None, r], V[:, :, r] * sq[:, None, r]
            tUB, tVC = U[:, :, r:], V[:, :, r:]
        gains += s2[:, r:].sum(axis=0)
        dplus += float(s2[:, r].sum())
        if dmin_valid:
            dminus += float(s2[:, r - 1].sum())
        if r:
            G -= nB @ np.swapaxes(nC, 1, 2)
            scatter_rows(Bl, rb, idx, nB)
            if not st.psd:
                scatter_rows(Cl, cb, idx, nC)
        delta_loss += _sq(G) - old2
        scatter_blocks(st.R, rb, cb, idx, G)
        scatter_rows(nextB.reshape(-1, 1), rb, idx, xB[:, :, None])
        scatter_rows(tB, rb, idx, np.ascontiguousarray(tUB))
        if not st.psd:
            scatter_rows(nextC.reshape(-1, 1), cb, idx, xC[:, :, None])
            scatter_rows(tC, cb, idx, np.ascontiguousarray(tVC))
    for bi in big:
        rs, cs = slice(rb[bi], rb[bi + 1]), slice(cb[bi], cb[bi + 1])
        view = st.R[rs, cs]
        old2 = _sq(view)
        Bk, Ck = Bl[rs], Cl[cs]
        TBk, TCk = tB[rs], tC[cs]
        has_tail = bool(np.any(TBk))
        warm = (r > 0 and bool(np.any(Bk))) or has_tail
        add_lowrank(view, Bk, Ck, 1.0)
        if st.psd:
            V, lam = block_psd_eig(view, kk, exact_max=exact_max,
                                   q=0 if warm and not cold else st.q,
                                   init=np.hstack([Bk, TBk]) if warm else None, rng=rng)
            s2 = lam**2
            nB = V[:, :r] * np.sqrt(lam[:r])
            nC = nB
            xB = xC = V[:, r] * np.sqrt(lam[r])
            tB[rs] = V[:, r:]
        else:
            U, s, V = block_svd(view, kk, exact_max=exact_max,
                                q=0 if warm and not cold else st.q,
                                init=(np.hstack([Bk, TBk]), np.hstack([Ck, TCk])) if warm
                                else None, rng=rng)
            s2 = s**2
            sq = np.sqrt(s)
            nB, nC = U[:, :r] * sq[:r], V[:, :r] * sq[:r]
            xB, xC = U[:, r] * sq[r], V[:, r] * sq[r]
            tB[rs], tC[cs] = U[:, r:], V[:, r:]
        gains += s2[r:]
        dplus += float(s2[r])
        if dmin_valid:
            dminus += float(s2[r - 1])
        add_lowrank(view, nB, nC, -1.0)
        delta_loss += _sq(view) - old2
        Bl[rs] = nB
        if not st.psd:
            Cl[cs] = nC
        nextB[rs] = xB
        if not st.psd:
            nextC[cs] = xC
    st.loss += delta_loss
    st.gains[lvl] = gains
    st.delta_plus[lvl] = dplus
    st.delta_minus[lvl] = dminus if dmin_valid else np.inf


def epoch_order(n_levels: int) -> list[int]:
    """Levels 0..L-1 then L-2..0 (one BCD epoch)."""
    return list(range(n_levels)) + list(range(n_levels - 2, -1, -1))


def epoch_levels(n_levels: int, it: int) -> list[int]:
    """The levels fitted by epoch ``it`` (1-based) of :func:`run_bcd`: :func:`epoch_order`,
    less the first level 0 from the second epoch on. The previous epoch ended with level 0 and
    nothing changed since, so fitting it again at once solves the same subproblem (exactly for
    dense SVDs; a randomized fit gains one more subspace iteration), the most expensive one:
    level 0 spans the whole matrix. In memory (n = 2000, L = 12, r = 30, radial kernel and MLR
    plus noise) the errors after 1-12 epochs agree to 1e-6 relative and an epoch takes 7-14 %
    less time. The Dask path keeps the full order: there the coarse levels are fitted by
    products over A and the refit paid for itself (n = 8000, 2 epochs: 0.22258 against 0.22315
    without it, for 2 more passes over A in 27.9)."""
    order = epoch_order(n_levels)
    return order[1:] if it > 1 and n_levels > 1 else order


def sweep(st: BCDState, levels: Sequence[int]) -> None:
    """Fit the given levels in order."""
    for lvl in levels:
        fit_level(st, lvl)


def run_bcd(
    st: BCDState,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    greedy_init: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Run BCD epochs until the relative decrease of the loss is below ``tol`` or ``max_iter``
    epochs. ``greedy_init``: start with one top-down sweep (levels 0..L-1), the greedy
    multilevel SVD of zero factors. Returns the relative error after every epoch (index 0:
    before the first epoch, i.e. after the greedy sweep). The loss is recomputed exactly at the
    end."""
    L = len(st.ranks)
    if greedy_init:
        sweep(st, range(L))
    hist = [st.rel_error]
    if callback:
        callback(0, hist[-1])
    for it in range(1, max_iter + 1):
        before = st.loss
        sweep(st, epoch_levels(L, it))
        hist.append(st.rel_error)
        if callback:
            callback(it, hist[-1])
        if before <= 0 or (before - st.loss) <= tol * before:
            break
    st.exact_loss()
    hist[-1] = st.rel_error
    return hist


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
