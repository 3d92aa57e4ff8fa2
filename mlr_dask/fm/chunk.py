"""Per-chunk work of the factor model: plain functions on numpy arrays, called in a loop by the
in-memory fit and inside Dask tasks by the Dask fit (the same code for both).

A chunk is a run of whole leaves (finest factor groups): feature positions ``[start, stop)`` of
the hierarchy order, all samples. ``Y_block`` is the raw (N, n_c) block; it is never copied:
the centring by the chunk's slice of the mean is applied to the products with it.

Products with Y are done per *block* (a group of the block level, see :class:`ChunkPlan`) with
the stacked factors of all the levels of its path, then, while that block of Y is still in
cache, per group of the finer levels (small products, one per group). The per-leaf solves of
the M-step are batched (leaves padded to equal size) when the leaves are small.

Per-chunk statistics (:class:`ChunkStats`) are small: for each level, the path-block rows of
``K - I`` and the rows of ``P = F_hat^T D^-1 Y^T`` of the groups that meet the chunk, and two
sums for the log-likelihood. They are summed over chunks on the driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlr_dask.errors import InputError

__all__ = [
    "FLOOR_ABS",
    "FLOOR_REL",
    "INIT_FLOOR_REL",
    "ChunkPlan",
    "ChunkStats",
    "make_plan",
    "task_moments",
    "task_range_gram",
    "task_init",
    "task_em",
    "task_stats",
]

#: The noise variance of feature j is floored at ``max(FLOOR_REL * var_j, FLOOR_ABS)`` after
#: every M-step (``var_j`` its sample variance), so D stays positive.
FLOOR_REL = 1e-8
FLOOR_ABS = 1e-12
#: At the SVD start D is the variance left over by the leading directions, floored at
#: ``INIT_FLOOR_REL * var_j`` (a start close to singular would slow EM down).
INIT_FLOOR_REL = 1e-2


@dataclass(frozen=True)
class ChunkPlan:
    """Where a chunk sits in the tree (small; sent with every task).

    Attributes
    ----------
    start, stop : feature positions (hierarchy order) of the chunk.
    offsets : (L + 1,) column offsets of the levels in the compressed loadings.
    group_lo : (L,) first group of each level meeting the chunk.
    group_bounds : per level, local boundaries (k_l + 1,) of the chunk's pieces of its groups.
    leaf_bounds : (k + 1,) local boundaries of the chunk's leaves.
    leaf_anc : (k, L) group at every level of each of the chunk's leaves.
    block_level : the level m whose groups are the chunk's *blocks*: the products with Y for
        levels 0..m are done per block with the stacked factors of its whole path (Y read
        once), those of the finer levels per group.
    block_anc : (k_m, m + 1) group at levels 0..m of each block (block j is the piece
        ``group_bounds[m][j]:group_bounds[m][j + 1]``).
    """

    start: int
    stop: int
    offsets: np.ndarray
    group_lo: np.ndarray
    group_bounds: tuple[np.ndarray, ...]
    leaf_bounds: np.ndarray
    leaf_anc: np.ndarray
    block_level: int
    block_anc: np.ndarray

    @property
    def n_levels(self) -> int:
        return self.offsets.size - 1

    @property
    def size(self) -> int:
        return self.stop - self.start


#: Blocks are the groups of the finest level whose mean size is at least this many features.
BLOCK_MIN_FEATURES = 256


def block_level(tree) -> int:
    """The level whose groups are the blocks (see :class:`ChunkPlan`)."""
    m = 0
    for lvl in range(tree.n_levels):
        if tree.n / tree.n_groups[lvl] >= BLOCK_MIN_FEATURES:
            m = lvl
    return m


def make_plan(tree, start: int, stop: int) -> ChunkPlan:
    """Plan of the chunk ``[start, stop)`` of a :class:`~mlr_dask.fm.tree.FactorTree`; the
    chunk must be made of whole leaves."""
    leaf_b = tree.bounds[-1]
    lo = int(np.searchsorted(leaf_b, start))
    hi = int(np.searchsorted(leaf_b, stop))
    if leaf_b[lo] != start or leaf_b[hi] != stop or hi <= lo:
        raise InputError(f"chunk [{start}, {stop}) is not made of whole leaves")
    group_lo, group_bounds = [], []
    for lvl in range(tree.n_levels):
        b = tree.bounds[lvl]
        g0 = int(np.searchsorted(b, start, side="right")) - 1
        g1 = int(np.searchsorted(b, stop, side="left"))  # exclusive
        inner = np.clip(b[g0:g1 + 1], start, stop) - start
        group_lo.append(g0)
        group_bounds.append(inner.astype(np.int64))
    return ChunkPlan(
        start=int(start),
        stop=int(stop),
        offsets=np.asarray(tree.offsets),
        group_lo=np.asarray(group_lo, dtype=np.int64),
        group_bounds=tuple(group_bounds),
        leaf_bounds=(leaf_b[lo:hi + 1] - start).astype(np.int64),
        leaf_anc=np.asarray(tree.leaf_anc[lo:hi]),
        block_level=(m := block_level(tree)),
        block_anc=np.asarray(
            tree.group_anc[m][group_lo[m]:group_lo[m] + group_bounds[m].size - 1]),
    )


@dataclass(frozen=True)
class ChunkStats:
    """Small statistics of one chunk.

    Attributes
    ----------
    group_lo : (L,) first group of each level in the parts below.
    K : per level (k_l, r_l, o_{l+1}): path-block rows of ``F_hat^T D^-1 F_hat``.
    P : per level (k_l, r_l, N): rows of ``F_hat^T D^-1 Y^T``.
    sum_logd : sum of log D_j over the chunk.
    ysq_d : (N,) per sample, sum over the chunk of ``y_ij^2 / D_j``.
    """

    group_lo: np.ndarray
    K: tuple[np.ndarray, ...]
    P: tuple[np.ndarray, ...]
    sum_logd: float
    ysq_d: np.ndarray


def task_moments(Y_block: np.ndarray, plan: ChunkPlan, opts: tuple) -> dict:
    """First pass: the chunk's column means, its column sums of squares (centred), the count
    of non-finite entries and, when asked, its part of a random sketch of the centred data.
    ``opts = (centre, sketch)`` with ``sketch`` None or ``(k, seed)``: then ``Z = Yc Omega``
    (N, k) with ``Omega`` (n_c, k) standard normal drawn from ``(seed, start)`` (the sketch of
    the whole data is the sum over chunks). O(N n_c k); no centred copy of the block is made
    (``Yc Omega = Y Omega - 1 (m^T Omega)``)."""
    centre, sketch = opts
    Y = np.asarray(Y_block)
    bad = int(Y.size - np.count_nonzero(np.isfinite(Y)))
    if bad:
        return {"bad": bad}
    Y = _as_f64(Y)
    mean = Y.mean(axis=0) if centre else np.zeros(Y.shape[1])
    sumsq = np.zeros(Y.shape[1])
    for i in range(0, Y.shape[0], 64):
        yc = Y[i:i + 64] - mean
        sumsq += np.einsum("ij,ij->j", yc, yc)
    Z = None
    if sketch is not None:
        k, seed = sketch
        omega = np.random.default_rng([int(seed), int(plan.start)]).standard_normal(
            (Y.shape[1], int(k)))
        Z = Y @ omega
        Z -= mean @ omega
    return {"bad": 0, "mean": mean, "sumsq": sumsq, "Z": Z}


def task_range_gram(Y_block: np.ndarray, plan: ChunkPlan, mean_c: np.ndarray,
                    Qb: np.ndarray) -> np.ndarray:
    """Second pass of the randomized start: ``B_c B_c^T`` (k, k) with ``B_c = Qb^T Yc`` the
    chunk's columns of the data projected on the orthonormal range basis ``Qb`` (N, k).
    O(N n_c k)."""
    Y = _as_f64(Y_block)
    B = Qb.T @ Y
    B -= np.outer(Qb.sum(axis=0), mean_c)
    return B @ B.T


def chunk_stats(Y: np.ndarray, mean: np.ndarray, FT: np.ndarray, D: np.ndarray,
                plan: ChunkPlan, sumsq: np.ndarray | None = None) -> ChunkStats:
    """Statistics of a chunk for loadings ``FT`` (R, n_c) and noise ``D`` (n_c,); ``Y`` (N, n_c)
    raw block, ``mean`` (n_c,). With ``sumsq`` (n_c,) (column sums of squares of the centred
    block) ``ysq_d`` is only the total, in entry 0 (EM); without it, per sample (scoring).

    Leaf contributions are summed into the groups: per block (see :class:`ChunkPlan`) one
    product with Y for all the levels of its path, scattered to the ancestors; per group for
    the finer levels. The centring is applied to the products
    (``A^T (Y - 1 m^T)^T = A^T Y^T - (A^T m) 1^T``), so Y is never copied."""
    rs = 1.0 / np.sqrt(D)
    N = Y.shape[0]
    L = plan.n_levels
    off = plan.offsets
    Ks = [np.zeros((plan.group_bounds[lvl].size - 1, int(off[lvl + 1] - off[lvl]),
                    int(off[lvl + 1]))) for lvl in range(L)]
    Ps = [np.zeros((plan.group_bounds[lvl].size - 1, int(off[lvl + 1] - off[lvl]), N))
          for lvl in range(L)]
    m = plan.block_level
    o = int(off[m + 1])
    gb = plan.group_bounds[m].tolist()
    fine = _fine_groups(plan)
    # K - I = B^T B blockwise with B = D^-1/2 F (symmetric products) ...
    BT = FT * rs
    for j in range(len(gb) - 1):
        a, b = gb[j], gb[j + 1]
        Bj = BT[:o, a:b]
        G = Bj @ Bj.T
        for lvl in range(m + 1):
            o0, o1 = int(off[lvl]), int(off[lvl + 1])
            Ks[lvl][int(plan.block_anc[j, lvl] - plan.group_lo[lvl])] += G[o0:o1, :o1]
    A = None
    if fine:  # finer levels: per group, on a row-major copy (the small products are faster)
        A = np.ascontiguousarray(BT.T)
        for lvl, gl, _ in fine:
            o0, o1 = int(off[lvl]), int(off[lvl + 1])
            Kl = Ks[lvl]
            for j in range(len(gl) - 1):
                a, b = gl[j], gl[j + 1]
                np.matmul(A[a:b, o0:o1].T, A[a:b, :o1], out=Kl[j])
        A *= rs[:, None]  # now D^-1 F, row-major
    # ... then P = A^T Y^T with A = D^-1 F (in place: A^T = B^T D^-1/2), per block and, while
    # the block of Y is in cache, per group of the finer levels
    AT = BT
    AT *= rs
    del BT
    for j in range(len(gb) - 1):
        a, b = gb[j], gb[j + 1]
        T = AT[:o, a:b] @ Y[:, a:b].T
        for lvl in range(m + 1):
            o0, o1 = int(off[lvl]), int(off[lvl + 1])
            Ps[lvl][int(plan.block_anc[j, lvl] - plan.group_lo[lvl])] += T[o0:o1]
        for lvl, gl, g_of_block in fine:
            o0, o1 = int(off[lvl]), int(off[lvl + 1])
            Pl = Ps[lvl]
            for g in range(g_of_block[j], g_of_block[j + 1]):
                np.matmul(A[gl[g]:gl[g + 1], o0:o1].T, Y[:, gl[g]:gl[g + 1]].T, out=Pl[g])
    del A
    if np.any(mean):  # centring: P_g -= (sum_{j in g} a_j m_j) 1^T, per level at once
        am = AT * mean
        for lvl in range(L):
            o0, o1 = int(off[lvl]), int(off[lvl + 1])
            seg = np.add.reduceat(am[o0:o1], plan.group_bounds[lvl][:-1], axis=1)  # (r, k)
            Ps[lvl] -= seg.T[:, :, None]
    if sumsq is not None:
        ysq_d = np.zeros(N)
        ysq_d[0] = float(np.sum(sumsq / D))
    else:
        yc = Y - mean
        ysq_d = np.einsum("ij,ij->i", yc, yc / D)
    return ChunkStats(
        group_lo=plan.group_lo, K=tuple(Ks), P=tuple(Ps),
        sum_logd=float(np.log(D).sum()), ysq_d=ysq_d,
    )


def _floor(D: np.ndarray, var: np.ndarray, rel: float) -> np.ndarray:
    return np.maximum(D, np.maximum(rel * var, FLOOR_ABS))


def _as_f64(Y_block: np.ndarray) -> np.ndarray:
    Y = np.asarray(Y_block)
    return Y if Y.dtype == np.float64 else Y.astype(np.float64)


def task_init(
    Y_block: np.ndarray, plan: ChunkPlan, mean_c: np.ndarray, sumsq_c: np.ndarray,
    mask_c: np.ndarray | None, U: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, ChunkStats]:
    """SVD start for the chunk, returns ``(FT (R, n_c), D, stats)``: ``F = Yc^T U / sqrt(N)``
    with ``U`` (N, R) the leading left singular vectors of the centred data (level l takes the
    next r_l of them), ``D`` the leftover variance floored at ``INIT_FLOOR_REL`` times the
    variance. ``mask_c`` (R, n_c) bool: the free loadings (the others are set to zero), or
    None."""
    Y = _as_f64(Y_block)
    N = Y.shape[0]
    FT = (U.T @ Y - np.outer(U.sum(axis=0), mean_c)) / np.sqrt(N)
    if mask_c is not None:
        FT *= mask_c
    var = sumsq_c / N
    D = _floor(var - np.einsum("ij,ij->j", FT, FT), var, INIT_FLOOR_REL)
    return FT, D, chunk_stats(Y, mean_c, FT, D, plan, sumsq_c)


def _group_of_feature(bounds: np.ndarray) -> np.ndarray:
    """(bounds[-1],) the piece of each feature for local boundaries ``bounds``."""
    return np.repeat(np.arange(bounds.size - 1), np.diff(bounds))


def _fine_groups(plan: ChunkPlan) -> list[tuple[int, list[int], np.ndarray]]:
    """For each level finer than the block level: ``(level, local group boundaries as a list,
    first group of each block (k_m + 1,))`` (the groups nest in the blocks)."""
    gb = plan.group_bounds[plan.block_level]
    return [(lvl, plan.group_bounds[lvl].tolist(),
             np.searchsorted(plan.group_bounds[lvl], gb).tolist())
            for lvl in range(plan.block_level + 1, plan.n_levels)]


def task_em(
    Y_block: np.ndarray, plan: ChunkPlan, mean_c: np.ndarray, sumsq_c: np.ndarray,
    A_leaf: np.ndarray, bcast: tuple,
) -> tuple[np.ndarray, np.ndarray, ChunkStats]:
    """One EM step on the chunk (M-step of ``mfm.md`` section 2) followed by the statistics of
    the new loadings, so an iteration reads the chunk once. Returns ``(FT (R, n_c), D,
    stats)``.

    ``sumsq_c`` (n_c,) column sums of squares of the centred data (from the first pass);
    ``A_leaf`` (r, n_c) the leaf-level rows of ``D^-1 F`` of the current parameters (those
    whose statistics gave ``bcast``); ``bcast = (Q, W, QQ, leaf)`` (:attr:`em.EStep.bcast`):
    for the levels above the leaves ``Q`` (p_l, r_l, N) posterior factor means and the path
    blocks ``W`` of ``N K^-1 + Q Q^T`` and ``QQ`` of ``Q Q^T``; ``leaf`` the leaf terms of
    :func:`em.mstep_leaf_terms`.

    The leaf level is finished here. With ``q_c = Linv_c^T w_c - E_c q_path`` (the leaf step
    of the backward solve, ``w_c = Linv_c P_c``): ``V_c = q_c Y_c = Linv_c^T (w_c Y_c) -
    E_c V_path`` (``V_path = q_path Y_c``, already formed for the levels above); and, since
    ``P_c = A_c^T Y_c^T``, ``M_c := P_c q_path^T = A_c^T V_path^T`` (r x o, from the chunk's
    own features), so ``q_c q_path^T = Kinv_c M_c - E_c G`` and ``q_c q_c^T = S_c -
    Kinv_c M_c E_c^T - E_c M_c^T Kinv_c + E_c G E_c^T`` with ``G`` the ``Q Q^T`` block on the
    parent's path (all with centred data). No product of size r N o per leaf is needed; the
    rows of ``W_i`` on the leaf are ``N Z_c`` plus these."""
    Qc, Wc, QQc, leaf = bcast
    w_leaf, Li_all, Kinv_all, E_all, S_all, Z_all = leaf
    Q = (*Qc, w_leaf)  # the leaf rows of V are first formed with w_c, then corrected
    Y = _as_f64(Y_block)
    N = Y.shape[0]
    R = int(plan.offsets[-1])
    L = plan.n_levels
    op = int(plan.offsets[L - 1])
    n_c = Y.shape[1]
    VT = np.empty((R, n_c))
    m = plan.block_level
    o = int(plan.offsets[m + 1])
    gb = plan.group_bounds[m]
    Qpre = np.empty((o, N))
    centre = bool(np.any(mean_c))
    fine = _fine_groups(plan)
    for j in range(gb.size - 1):
        a, b = int(gb[j]), int(gb[j + 1])
        for lvl in range(m + 1):
            o0, o1 = int(plan.offsets[lvl]), int(plan.offsets[lvl + 1])
            Qpre[o0:o1] = Q[lvl][plan.block_anc[j, lvl]]
        np.matmul(Qpre, Y[:, a:b], out=VT[:o, a:b])
        if centre:  # V_j -= m_j (Q 1) on the block's path
            VT[:o, a:b] -= np.outer(Qpre.sum(axis=1), mean_c[a:b])
        # the finer levels per group, while the block of Y is still in cache
        for lvl, gl, g_of_block in fine:
            o0, o1 = int(plan.offsets[lvl]), int(plan.offsets[lvl + 1])
            Ql = Q[lvl][int(plan.group_lo[lvl]):]
            for g in range(g_of_block[j], g_of_block[j + 1]):
                np.matmul(Ql[g], Y[:, gl[g]:gl[g + 1]], out=VT[o0:o1, gl[g]:gl[g + 1]])
    if centre:  # finer levels: V_j -= m_j (Q 1) per level at once
        for lvl, _, _ in fine:
            o0, o1 = int(plan.offsets[lvl]), int(plan.offsets[lvl + 1])
            g0 = int(plan.group_lo[lvl])
            u = Q[lvl][g0:g0 + plan.group_bounds[lvl].size - 1].sum(axis=2).T  # (r, k)
            tmp = np.ascontiguousarray(u).take(_group_of_feature(plan.group_bounds[lvl]), axis=1)
            tmp *= mean_c
            VT[o0:o1] -= tmp
    # leaf level, on the leaves padded to equal size (k, ., s_max)
    anc = plan.leaf_anc
    leaves = anc[:, L - 1]
    Li, Kinv, E, S, Z = (x[leaves] for x in (Li_all, Kinv_all, E_all, S_all, Z_all))
    r = R - op
    k = leaves.size
    M = _leaf_rows(plan.leaf_bounds, VT, A_leaf, Li, E, op)  # (k, r, op) = P_c q_path^T
    KM = Kinv @ M
    EG = np.empty_like(E)  # E_c G_parent
    Apath = None
    if L > 1:
        par = anc[:, L - 2]
        starts = np.flatnonzero(np.r_[True, par[1:] != par[:-1]])
        ends = np.append(starts[1:], par.size)
        G = _path_matrices(plan, QQc, anc[starts], L - 1)  # (n_par, op, op)
        for j, (s0, s1) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            np.matmul(E[s0:s1], G[j], out=EG[s0:s1])
        Apath = _path_matrices(plan, Wc, anc[starts], L - 1)
    ET = np.swapaxes(E, 1, 2)
    KME = KM @ ET
    blk = np.empty((k, r, R))
    np.subtract(KM, EG, out=blk[:, :, :op])
    blk[:, :, op:] = S - KME - np.swapaxes(KME, 1, 2) + EG @ ET
    blk += N * Z
    FT = leaf_solve(plan, None, VT, blk=blk, Apath=Apath)
    D = _floor((sumsq_c - np.einsum("ij,ij->j", FT, VT)) / N, sumsq_c / N, FLOOR_REL)
    del VT
    return FT, D, chunk_stats(Y, mean_c, FT, D, plan, sumsq_c)


def _leaf_rows(lb: np.ndarray, VT: np.ndarray, A_leaf: np.ndarray, Li: np.ndarray,
               E: np.ndarray, op: int) -> np.ndarray:
    """Leaf step of :func:`task_em` for leaves of boundaries ``lb`` (k + 1,): turns the leaf
    rows ``VT[op:]`` from ``w_c Y_c`` into ``q_c Y_c = Li_c^T (w_c Y_c) - E_c V_path`` in place
    and returns ``M`` (k, r, op), ``M_c = A_c^T V_path^T`` over the leaf's features. Batched on
    leaves padded to equal size when they are small (``BATCH_MAX_LEAF_SIZE``), else a loop."""
    k = lb.size - 1
    r = VT.shape[0] - op
    if VT.shape[1] >= BATCH_MAX_LEAF_SIZE * k:
        M = np.empty((k, r, op))
        lbl = lb.tolist()
        for i in range(k):
            a, b = lbl[i], lbl[i + 1]
            Vp = VT[:op, a:b]
            VT[op:, a:b] = Li[i].T @ VT[op:, a:b] - E[i] @ Vp
            np.matmul(A_leaf[:, a:b], Vp.T, out=M[i])
        return M
    idx, pos = leaf_pad_index(lb)
    s_max = idx.shape[1]
    valid = np.zeros(k * s_max)
    valid[pos] = 1.0
    Vp = np.swapaxes(VT[:op].take(idx, axis=1), 0, 1)  # (k, op, s_max) V_path
    Vl = np.swapaxes(VT[op:].take(idx, axis=1), 0, 1)  # (k, r, s_max) w_c Y_c
    Vl = np.swapaxes(Li, 1, 2) @ Vl - E @ Vp  # q_c Y_c
    VT[op:] = np.swapaxes(Vl, 0, 1).reshape(r, -1).take(pos, axis=1)
    Ap = A_leaf.take(idx, axis=1) * valid.reshape(1, k, s_max)  # (r, k, s_max), pads zero
    return np.swapaxes(Ap, 0, 1) @ np.swapaxes(Vp, 1, 2)


def _path_matrices(plan: ChunkPlan, W: tuple, anc: np.ndarray, levels: int) -> np.ndarray:
    """(k, o, o) the symmetric matrices on the paths (levels ``0 .. levels - 1``) given by the
    rows ``anc`` (k, >= levels) of group indices, from path blocks ``W``."""
    o = int(plan.offsets[levels])
    out = np.empty((anc.shape[0], o, o))
    for lvl in range(levels):
        o0, o1 = int(plan.offsets[lvl]), int(plan.offsets[lvl + 1])
        blk = W[lvl][anc[:, lvl]]
        out[:, o0:o1, :o1] = blk
        out[:, :o0, o0:o1] = np.swapaxes(blk[:, :, :o0], 1, 2)
    return out


def leaf_solve(plan: ChunkPlan, W: tuple | None, VT: np.ndarray, *,
               blk: np.ndarray | None = None, Apath: np.ndarray | None = None) -> np.ndarray:
    """``F_j = W_i^-1 V_j`` for every feature j of every leaf i of the chunk, with ``W_i`` the
    (R, R) matrix on leaf i's root-to-leaf path (path blocks ``W``); ``VT`` (R, n_c) -> FT.
    Instead of ``W``: ``blk`` (k, r, R) the leaf rows of ``W_i`` for the chunk's leaves and
    ``Apath`` (n_par, o, o) ``W`` on the paths of their parents (None with one level).

    Siblings share the top-left block ``A`` (their parent's path), so with
    ``W_i = [[A, B_i], [B_i^T, C_i]]``: ``A`` is inverted once per parent and each leaf only
    needs its small Schur complement ``S_i = C_i - B_i^T A^-1 B_i`` (r x r):
    ``x2 = S_i^-1 (v2 - B_i^T A^-1 v1)``, ``x1 = A^-1 v1 - A^-1 B_i x2``."""
    anc = plan.leaf_anc
    L = plan.n_levels
    lb = plan.leaf_bounds
    FT = np.empty_like(VT)
    if L == 1:
        Winv = np.linalg.inv(blk if blk is not None else _path_matrices(plan, W, anc, 1))
        for i in range(lb.size - 1):
            a, b = int(lb[i]), int(lb[i + 1])
            np.matmul(Winv[i], VT[:, a:b], out=FT[:, a:b])
        return FT
    op = int(plan.offsets[L - 1])
    par = anc[:, L - 2]
    starts = np.flatnonzero(np.r_[True, par[1:] != par[:-1]])
    ends = np.append(starts[1:], par.size)
    if Apath is None:
        Apath = _path_matrices(plan, W, anc[starts], L - 1)
    Ainv = np.linalg.inv(Apath)  # (n_par, op, op)
    if blk is None:
        blk = W[L - 1][anc[:, L - 1]]  # (k, r, R)
    BT = blk[:, :, :op]  # (k, r, op)
    AinvB = np.empty((anc.shape[0], op, BT.shape[1]))
    for j, (s0, s1) in enumerate(zip(starts, ends, strict=True)):
        AinvB[s0:s1] = Ainv[j] @ np.swapaxes(BT[s0:s1], 1, 2)
    Sinv = np.linalg.inv(blk[:, :, op:] - BT @ AinvB)  # (k, r, r)
    lbl = lb.tolist()
    for j, (s0, s1) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        fa, fb = lbl[s0], lbl[s1]
        np.matmul(Ainv[j], VT[:op, fa:fb], out=FT[:op, fa:fb])  # A^-1 v1
    if VT.shape[1] < BATCH_MAX_LEAF_SIZE * (lb.size - 1):
        _leaf_schur_batched(lb, BT, AinvB, Sinv, VT, FT, op)
    else:
        _leaf_schur_loop(lb, BT, AinvB, Sinv, VT, FT, op)
    return FT


#: ``leaf_solve`` batches its per-leaf products (leaves padded to equal size) when the leaves
#: of a chunk have fewer features than this on average, and loops over the leaves otherwise.
BATCH_MAX_LEAF_SIZE = 64


def _leaf_schur_loop(lb: np.ndarray, BT: np.ndarray, AinvB: np.ndarray, Sinv: np.ndarray,
                     VT: np.ndarray, FT: np.ndarray, op: int) -> None:
    """Per leaf i (features ``lb[i]:lb[i+1]``), with ``FT[:op]`` holding ``A^-1 v1``:
    ``x2 = S_i^-1 (v2 - B_i^T A^-1 v1)`` into ``FT[op:]``, ``FT[:op] -= A^-1 B_i x2``."""
    lbl = lb.tolist()
    for i in range(len(lbl) - 1):
        a, b = lbl[i], lbl[i + 1]
        x2 = Sinv[i] @ (VT[op:, a:b] - BT[i] @ FT[:op, a:b])
        FT[op:, a:b] = x2
        FT[:op, a:b] -= AinvB[i] @ x2


def leaf_pad_index(lb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Padded layout of the leaves of boundaries ``lb`` (k + 1,), ``s_max`` slots per leaf:
    ``idx`` (k, s_max) the feature of slot ``(i, t)`` (slots past the end of a leaf repeat its
    last feature) and ``pos`` (lb[-1],) the flat slot ``i * s_max + t`` of each feature."""
    sizes = np.diff(lb)
    t = np.arange(int(sizes.max()))
    valid = t[None, :] < sizes[:, None]
    idx = lb[:-1, None] + np.minimum(t[None, :], sizes[:, None] - 1)
    return idx, np.flatnonzero(valid)


def _leaf_schur_batched(lb: np.ndarray, BT: np.ndarray, AinvB: np.ndarray, Sinv: np.ndarray,
                        VT: np.ndarray, FT: np.ndarray, op: int) -> None:
    """Same as :func:`_leaf_schur_loop` with the leaves padded to equal size: three stacked
    products ``(k, ., .) @ (k, ., s_max)`` instead of three small products per leaf. The
    padded arrays are held as (rows, k, s_max) so that gathering and scattering the features
    are contiguous ``take`` calls."""
    idx, pos = leaf_pad_index(lb)
    k, s_max = idx.shape
    r = VT.shape[0] - op
    Y1 = FT[:op].take(idx, axis=1)  # (op, k, s_max)
    V2 = VT[op:].take(idx, axis=1)  # (r, k, s_max)
    X2 = np.empty((r, k, s_max))
    X1 = np.empty((op, k, s_max))
    T = np.matmul(BT, np.swapaxes(Y1, 0, 1))  # (k, r, s_max)
    np.subtract(np.swapaxes(V2, 0, 1), T, out=T)
    np.matmul(Sinv, T, out=np.swapaxes(X2, 0, 1))
    np.matmul(AinvB, np.swapaxes(X2, 0, 1), out=np.swapaxes(X1, 0, 1))
    FT[op:] = X2.reshape(r, -1).take(pos, axis=1)
    FT[:op] -= X1.reshape(op, -1).take(pos, axis=1)


def task_stats(
    Y_block: np.ndarray, plan: ChunkPlan, mean_c: np.ndarray, FT: np.ndarray, D: np.ndarray,
    sumsq_c: np.ndarray | None = None,
) -> ChunkStats:
    """Statistics of a chunk for given loadings ``FT`` (R, n_c): with ``sumsq_c`` as in EM
    (resume), without it with per-sample sums (scoring new data)."""
    return chunk_stats(_as_f64(Y_block), np.asarray(mean_c), np.asarray(FT), np.asarray(D),
                       plan, sumsq_c)
