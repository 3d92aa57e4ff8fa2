"""The capacitance matrix ``K = I + F_hat^T D^-1 F_hat`` of a multilevel factor model, stored by
tree blocks, with its tree-structured Cholesky factor, tree solves and selected inverse.

Notation (``mfm.md`` section 2). The factor levels ``l = 0 .. L-1`` (root first) have ``p_l``
groups of rank ``r_l``; ``o_l = r_0 + ... + r_{l-1}`` (``offsets``), ``R = o_L``. The factors of
all groups are ``s = sum_l p_l r_l`` in number. A group ``g`` of level ``l`` has one ancestor per
level ``0 .. l`` (itself last): its *path*, ``o_{l+1}`` factor coordinates.

*Path blocks.* A symmetric s x s matrix ``M`` whose only nonzero blocks are between nested groups
(the sparsity of ``K``, of its Cholesky factor and of the selected inverse) is held as one array
per level, ``M_l`` of shape ``(p_l, r_l, o_{l+1})``: ``M_l[g] = M[g, path(g)]`` (the rows of
group ``g`` against its ancestors, its own diagonal block last).

*Per-level vectors* (``P``, ``Q``): one array per level, shape ``(p_l, r_l, t)``.

*Cholesky.* Eliminating the finest groups first and the root last, ``K = L L^T`` has no fill-in.
It is held as ``Linv_l`` (p_l, r_l, r_l), the inverse of the diagonal Cholesky block of each
group, and ``X_l`` (p_l, r_l, o_l) with ``L[a, g] = X_l[g][:, cols(a)]^T`` for the ancestors
``a`` of ``g``. Every operation below is batched by level (numpy on stacked small matrices): the
cost is ``O(sum_l p_l (o_{l+1})^2 r_l)`` and never forms a dense s x s matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy

__all__ = ["FactorTree", "TreeCholesky", "tree_cholesky", "tree_solve", "selected_inverse"]


class FactorTree:
    """The group tree of the factor levels of a hierarchy, with their ranks.

    Parameters
    ----------
    hierarchy : the factor levels only (root first; no singleton diagonal level).
    ranks : (L,) the rank ``r_l >= 1`` of level l: the number of loading columns of its groups.
    group_ranks : optional, per level an int array (p_l,) of the rank of each group, each in
        ``0 .. r_l``; default ``min(r_l, size of the group)`` for every group. A group of rank
        ``r_g < r_l`` has its last ``r_l - r_g`` loading columns held at zero (:attr:`col_mask`);
        EM keeps them exactly zero (their factors decouple: ``K`` is the identity on them, their
        posterior means vanish and the M-step gives zero), so a group of rank 0 has no factor.
    """

    def __init__(self, hierarchy: Hierarchy, ranks: Sequence[int],
                 group_ranks: Sequence[np.ndarray] | None = None) -> None:
        ranks_arr = np.asarray(ranks)
        if ranks_arr.ndim != 1 or ranks_arr.size != hierarchy.n_levels:
            raise InputError(
                f"ranks must have one entry per factor level ({hierarchy.n_levels}), got "
                f"{np.ravel(ranks_arr).tolist()}"
            )
        if not np.issubdtype(ranks_arr.dtype, np.integer) or np.any(ranks_arr < 1):
            raise InputError(f"ranks must be positive integers, got {ranks_arr.tolist()}")
        if group_ranks is None:
            group_ranks = [np.minimum(int(r), hierarchy.block_sizes(lvl))
                           for lvl, r in enumerate(ranks_arr)]
        if len(group_ranks) != hierarchy.n_levels:
            raise InputError(f"group ranks must have one entry per factor level "
                             f"({hierarchy.n_levels})")
        gr = []
        for lvl, r in enumerate(ranks_arr):
            g = np.asarray(group_ranks[lvl])
            if g.shape != (hierarchy.n_blocks[lvl],) or not np.issubdtype(g.dtype, np.integer):
                raise InputError(f"group ranks of level {lvl} must be {hierarchy.n_blocks[lvl]} "
                                 f"integers, got shape {g.shape}")
            if np.any(g < 0) or np.any(g > r):
                raise InputError(f"group ranks of level {lvl} must lie in 0..{int(r)}")
            gr.append(g.astype(np.int64))
        self.group_ranks: tuple[np.ndarray, ...] = tuple(gr)
        self.hierarchy = hierarchy
        self.ranks = tuple(int(r) for r in ranks_arr)
        self.offsets = np.concatenate(([0], np.cumsum(ranks_arr))).astype(np.int64)
        self.n_levels = hierarchy.n_levels
        self.n_groups = hierarchy.n_blocks
        self.bounds = hierarchy.boundaries
        self.n = hierarchy.n
        # parent of each group (level >= 1) and where each parent's children start
        self.parent: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.child_starts: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        for lvl in range(1, self.n_levels):
            par = hierarchy.parents(lvl).astype(np.int64)
            self.parent.append(par)
            self.child_starts.append(
                np.searchsorted(par, np.arange(self.n_groups[lvl - 1])).astype(np.int64)
            )
        # group_anc[l] (p_l, l + 1): the ancestor of each group of level l at levels 0..l
        self.group_anc: list[np.ndarray] = []
        for lvl in range(self.n_levels):
            starts = self.bounds[lvl][:-1]
            self.group_anc.append(
                np.stack(
                    [np.searchsorted(self.bounds[m], starts, side="right") - 1
                     for m in range(lvl + 1)],
                    axis=1,
                ).astype(np.int64)
            )
        self.s_offsets = np.concatenate(
            ([0], np.cumsum([p * r for p, r in zip(self.n_groups, self.ranks, strict=True)]))
        ).astype(np.int64)

    @property
    def rank(self) -> int:
        """R = sum of the ranks (columns of the compressed loadings)."""
        return int(self.offsets[-1])

    @property
    def masked(self) -> bool:
        """Whether some group has fewer factors than its level's rank."""
        return any(bool(np.any(g < r)) for g, r in zip(self.group_ranks, self.ranks, strict=True))

    @cached_property
    def col_mask(self) -> np.ndarray:
        """(n, R) bool in hierarchy order: which entries of the compressed loadings are free
        (the first ``r_g`` columns of level l for the features of group g)."""
        M = np.zeros((self.n, self.rank), dtype=bool)
        for lvl in range(self.n_levels):
            o0 = int(self.offsets[lvl])
            b = self.bounds[lvl]
            for g, rg in enumerate(self.group_ranks[lvl].tolist()):
                M[b[g]:b[g + 1], o0:o0 + rg] = True
        return M

    def apply_mask(self, F: np.ndarray) -> np.ndarray:
        """``F`` (n, R) with the fixed-zero entries set to zero (a copy when masked)."""
        return F * self.col_mask if self.masked else F

    def n_free(self) -> int:
        """Free loadings (the entries of :attr:`col_mask`)."""
        return int(sum(int(np.dot(np.diff(b), g))
                       for b, g in zip(self.bounds, self.group_ranks, strict=True)))

    @property
    def s(self) -> int:
        """Number of factors of all groups, ``sum_l p_l r_l``."""
        return int(self.s_offsets[-1])

    @property
    def n_leaves(self) -> int:
        return int(self.n_groups[-1])

    @cached_property
    def leaf_anc(self) -> np.ndarray:
        """(p_{L-1}, L) the group at every level of each leaf (finest factor group)."""
        return self.group_anc[-1]

    def span(self, lvl: int) -> tuple[int, int]:
        return int(self.offsets[lvl]), int(self.offsets[lvl + 1])

    # ------------------------------------------------------------------ dense helpers
    def expand_index(self, lvl: int, group: int) -> slice:
        """The positions of group ``group`` of level ``lvl`` in the expanded (s) ordering:
        level by level, group by group, ``r_l`` factors each."""
        a = int(self.s_offsets[lvl]) + group * self.ranks[lvl]
        return slice(a, a + self.ranks[lvl])

    def blocks_to_dense(self, blocks: Sequence[np.ndarray], max_s: int = 5000) -> np.ndarray:
        """Dense symmetric (s, s) matrix from path blocks (for tests on small trees).

        Materializes s x s numbers: refuses ``s > max_s``."""
        if self.s > max_s:
            raise InputError(f"blocks_to_dense would build a dense {self.s} x {self.s} matrix")
        out = np.zeros((self.s, self.s))
        for lvl in range(self.n_levels):
            for g in range(self.n_groups[lvl]):
                rows = self.expand_index(lvl, g)
                for m in range(lvl + 1):
                    a = int(self.group_anc[lvl][g, m])
                    o0, o1 = self.span(m)
                    blk = blocks[lvl][g][:, o0:o1]
                    out[rows, self.expand_index(m, a)] = blk
                    out[self.expand_index(m, a), rows] = blk.T
        return out

    def levels_to_expanded(self, vecs: Sequence[np.ndarray]) -> np.ndarray:
        """(s, t) from per-level vectors ``(p_l, r_l, t)``."""
        return np.concatenate([v.reshape(-1, v.shape[-1]) for v in vecs], axis=0)

    def expanded_to_levels(self, z: np.ndarray) -> list[np.ndarray]:
        """Per-level vectors ``(p_l, r_l, t)`` from an (s, t) array."""
        out = []
        for lvl in range(self.n_levels):
            a, b = int(self.s_offsets[lvl]), int(self.s_offsets[lvl + 1])
            out.append(z[a:b].reshape(self.n_groups[lvl], self.ranks[lvl], z.shape[-1]))
        return out


def _families(tree: FactorTree, lvl: int) -> list[tuple[int, int, int]]:
    """(parent, first child, end) for the groups of level ``lvl - 1`` and their children."""
    cs = tree.child_starts[lvl]
    ends = np.append(cs[1:], tree.n_groups[lvl])
    return [(p, int(a), int(b)) for p, (a, b) in enumerate(zip(cs, ends, strict=True))]


def _children_T_times(tree: FactorTree, lvl: int, X: np.ndarray, M: np.ndarray) -> np.ndarray:
    """For each group of level ``lvl - 1``: ``sum_c X_c^T M_c`` over its children ``c`` with
    ``X`` (p_lvl, r, o) and ``M`` (p_lvl, r, t): one product per parent (no per-child
    (o, t) temporaries) -> (p_{lvl-1}, o, t)."""
    r, o = X.shape[1], X.shape[2]
    t = M.shape[2]
    out = np.empty((tree.n_groups[lvl - 1], o, t))
    for p, a, b in _families(tree, lvl):
        np.matmul(X[a:b].reshape((b - a) * r, o).T, M[a:b].reshape((b - a) * r, t), out=out[p])
    return out


def _children_times(tree: FactorTree, lvl: int, X: np.ndarray, M: np.ndarray) -> np.ndarray:
    """For each group ``c`` of level ``lvl``: ``X_c @ M_parent(c)`` with ``X`` (p_lvl, r, o) and
    ``M`` (p_{lvl-1}, o, t), one product per parent -> (p_lvl, r, t)."""
    r, o = X.shape[1], X.shape[2]
    t = M.shape[2]
    out = np.empty((X.shape[0], r, t))
    for p, a, b in _families(tree, lvl):
        np.matmul(X[a:b].reshape((b - a) * r, o), M[p], out=out[a:b].reshape((b - a) * r, t))
    return out


def _tt(a: np.ndarray) -> np.ndarray:
    return np.swapaxes(a, -1, -2)


@dataclass(frozen=True)
class TreeCholesky:
    """Tree-structured Cholesky factor of K (see module docstring).

    Attributes: ``Ldiag`` and ``Linv`` lists of (p_l, r_l, r_l) (diagonal Cholesky blocks and
    their inverses); ``X`` list of (p_l, r_l, o_l); ``logdet`` (log-determinant of K)."""

    Ldiag: tuple[np.ndarray, ...]
    Linv: tuple[np.ndarray, ...]
    X: tuple[np.ndarray, ...]
    logdet: float


def tree_cholesky(tree: FactorTree, K: Sequence[np.ndarray]) -> TreeCholesky:
    """Cholesky factor of a symmetric positive definite K given by path blocks
    ``K_l`` (p_l, r_l, o_{l+1}), finest groups eliminated first. Raises
    ``numpy.linalg.LinAlgError`` when K is not positive definite."""
    L = tree.n_levels
    Linv: list[np.ndarray] = [None] * L  # type: ignore[list-item]
    Ld: list[np.ndarray] = [None] * L  # type: ignore[list-item]
    X: list[np.ndarray] = [None] * L  # type: ignore[list-item]
    logdet = 0.0
    acc = None  # (p_l, o_{l+1}, o_{l+1}): Schur updates from the eliminated descendants
    for lvl in range(L - 1, -1, -1):
        o0, o1 = tree.span(lvl)
        S = K[lvl] if acc is None else K[lvl] - acc[:, o0:o1, :]
        Lg = np.linalg.cholesky(S[:, :, o0:o1])
        eye = np.broadcast_to(np.eye(o1 - o0), Lg.shape)
        Li = np.tril(np.linalg.solve(Lg, eye))  # exact zeros above the diagonal
        logdet += 2.0 * float(np.log(np.diagonal(Lg, axis1=1, axis2=2)).sum())
        Xg = Li @ S[:, :, :o0]
        Linv[lvl], X[lvl], Ld[lvl] = Li, Xg, Lg
        if lvl > 0:
            T = _children_T_times(tree, lvl, Xg, Xg)
            if acc is not None:
                T += _children_sum(tree, lvl, acc[:, :o0, :o0])
            acc = T
    return TreeCholesky(tuple(Ld), tuple(Linv), tuple(X), logdet)


def _children_sum(tree: FactorTree, lvl: int, arr: np.ndarray) -> np.ndarray:
    """Sum ``arr`` (p_lvl, ...) over the children of each group of level ``lvl - 1``."""
    out = np.empty((tree.n_groups[lvl - 1], *arr.shape[1:]))
    for p, a, b in _families(tree, lvl):
        np.sum(arr[a:b], axis=0, out=out[p])
    return out


def _forward(tree: FactorTree, ch: TreeCholesky, P: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Solve ``L w = P`` (finest level first)."""
    L = tree.n_levels
    w: list[np.ndarray] = [None] * L  # type: ignore[list-item]
    acc = None  # (p_l, o_{l+1}, t): what the eliminated descendants subtract
    for lvl in range(L - 1, -1, -1):
        o0, o1 = tree.span(lvl)
        rhs = P[lvl] if acc is None else P[lvl] - acc[:, o0:o1, :]
        w[lvl] = ch.Linv[lvl] @ rhs
        if lvl > 0:
            T = _children_T_times(tree, lvl, ch.X[lvl], w[lvl])
            if acc is not None:
                T += _children_sum(tree, lvl, acc[:, :o0, :])
            acc = T
    return w


def _paths(tree: FactorTree, q: Sequence[np.ndarray], upto: int) -> list[np.ndarray]:
    """``qpath_l`` (p_l, o_{l+1}, t): ``q`` stacked along the path of every group of levels
    ``0 .. upto``."""
    out = [q[0]]
    for lvl in range(1, upto + 1):
        out.append(np.concatenate([out[-1][tree.parent[lvl]], q[lvl]], axis=1))
    return out


def _backward(tree: FactorTree, ch: TreeCholesky, w: Sequence[np.ndarray],
              levels: int | None = None) -> list[np.ndarray]:
    """Solve ``L^T q = w`` (root first); with ``levels``, only the levels ``0 .. levels - 1``
    of ``q`` (they do not depend on the finer ones)."""
    q: list[np.ndarray] = []
    qpath = None  # (p_{l-1}, o_l, t)
    for lvl in range(tree.n_levels if levels is None else levels):
        rhs = w[lvl]
        if lvl > 0:
            rhs = rhs - _children_times(tree, lvl, ch.X[lvl], qpath)
        q.append(_tt(ch.Linv[lvl]) @ rhs)
        if lvl < tree.n_levels - 1:
            qpath = q[0] if lvl == 0 else np.concatenate([qpath[tree.parent[lvl]], q[lvl]],
                                                         axis=1)
    return q


def tree_solve(tree: FactorTree, ch: TreeCholesky, P: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``Q = K^-1 P`` for per-level right-hand sides ``P_l`` (p_l, r_l, t)."""
    return _backward(tree, ch, _forward(tree, ch, P))


def tree_half_solve(
    tree: FactorTree, ch: TreeCholesky, P: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """``w = L^-1 P`` (so that ``P^T K^-1 P = w^T w``)."""
    return _forward(tree, ch, P)


def tree_back_solve(
    tree: FactorTree, ch: TreeCholesky, w: Sequence[np.ndarray], levels: int | None = None
) -> list[np.ndarray]:
    """``q = L^-T w`` (so that ``tree_solve = tree_back_solve o tree_half_solve``); with
    ``levels``, only the coarsest ``levels`` levels of ``q``."""
    return _backward(tree, ch, w, levels)


def selected_inverse(tree: FactorTree, ch: TreeCholesky) -> list[np.ndarray]:
    """The blocks of ``K^-1`` between nested groups, as path blocks ``Z_l`` (p_l, r_l, o_{l+1}),
    computed root first along root-to-leaf paths (no dense K^-1).

    With ``E_g = Linv_g^T X_g`` and ``Za`` the inverse on the parent's path:
    ``Z[g, anc] = -E_g Za`` and ``Z[g, g] = Linv_g^T Linv_g - Z[g, anc] E_g^T``."""
    Z: list[np.ndarray] = []
    Zpath_prev = None  # (p_{l-1}, o_l, o_l): K^-1 on the path of each group of level l-1
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        Li = ch.Linv[lvl]
        blk = np.empty((Li.shape[0], o1 - o0, o1))
        blk[:, :, o0:] = _tt(Li) @ Li
        if lvl > 0:
            E = _tt(Li) @ ch.X[lvl]  # (p, r, o0)
            ZgA = -_children_times(tree, lvl, E, Zpath_prev)  # (p, r, o0)
            blk[:, :, :o0] = ZgA
            blk[:, :, o0:] -= ZgA @ _tt(E)
        Z.append(blk)
        if lvl < tree.n_levels - 1:
            p = Li.shape[0]
            Zpath = np.empty((p, o1, o1))
            if lvl > 0:
                Zpath[:, :o0, :o0] = Zpath_prev[tree.parent[lvl]]
                Zpath[:, :o0, o0:] = _tt(blk[:, :, :o0])
            Zpath[:, o0:, :] = blk
            Zpath_prev = Zpath
    return Z


def path_gram(tree: FactorTree, q: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Path blocks of ``Q Q^T`` for per-level ``q_l`` (p_l, r_l, t): block ``(g, a)`` is
    ``q_g q_a^T`` for every ancestor ``a`` of ``g``; computed once per nested pair (one product
    per parent for the ancestors). ``q`` may hold only the coarsest levels: then so does the
    result."""
    if not q:
        return []
    paths = _paths(tree, q, len(q) - 2)
    out = []
    for lvl in range(len(q)):
        o0, o1 = tree.span(lvl)
        blk = np.empty((tree.n_groups[lvl], o1 - o0, o1))
        blk[:, :, o0:] = q[lvl] @ _tt(q[lvl])
        if lvl > 0:
            blk[:, :, :o0] = _children_times(tree, lvl, q[lvl], _tt(paths[lvl - 1]))
        out.append(blk)
    return out


def leaf_path_matrices(tree: FactorTree, blocks: Sequence[np.ndarray],
                       leaves: np.ndarray) -> np.ndarray:
    """(k, R, R) dense symmetric matrices ``M[c_i, c_i]`` on the root-to-leaf paths of the
    given leaves, from path blocks."""
    R = tree.rank
    anc = tree.leaf_anc[leaves]
    out = np.empty((len(leaves), R, R))
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        blk = blocks[lvl][anc[:, lvl]]  # (k, r_l, o1)
        out[:, o0:o1, :o1] = blk
        out[:, :o0, o0:o1] = _tt(blk[:, :, :o0])
    return out


def leaf_path_factor(tree: FactorTree, ch: TreeCholesky, leaves: np.ndarray) -> np.ndarray:
    """(k, R, R) the Cholesky factor restricted to each leaf's path, ``L[c_i, c_i]`` in
    root-first order (block upper triangular: diagonal blocks lower triangular, block
    ``(a, g)`` for an ancestor ``a`` of ``g`` above the diagonal)."""
    R = tree.rank
    anc = tree.leaf_anc[leaves]
    out = np.zeros((len(leaves), R, R))
    for lvl in range(tree.n_levels):
        o0, o1 = tree.span(lvl)
        out[:, o0:o1, o0:o1] = ch.Ldiag[lvl][anc[:, lvl]]
        if o0:
            out[:, :o0, o0:o1] = _tt(ch.X[lvl][anc[:, lvl]])
    return out
