"""The multilevel low rank (MLR) matrix as a ``scipy.sparse.linalg.LinearOperator``.

An m x n MLR matrix with L levels is ``P_r (A_1 + ... + A_L) P_c^T`` where ``A_l`` is block
diagonal with ``p_l`` blocks ``B_{l,k} C_{l,k}^T`` of rank ``r_l`` (``mlr.md`` section 1). The
factors are stored compressed: ``B`` (m, r) and ``C`` (n, r), ``r = sum(ranks)``, in hierarchy
(permuted) order with the columns of level ``l`` at ``offsets[l]:offsets[l + 1]``.

Inputs and outputs of every product, ``to_dense``, ``solve`` and ``lstsq`` are in the original
row / column order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from mlr_dask.errors import InputError
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.io import atomic_group, open_group
from mlr_dask.kernels import block_matmat

__all__ = ["MLRMatrix", "DENSE_LIMIT_BYTES"]

FORMAT = "mlr-matrix"
FORMAT_VERSION = 1

#: Largest dense array (bytes) that ``to_dense`` will build unless told otherwise.
DENSE_LIMIT_BYTES = 4 * 2**30


def _check_dense_size(m: int, n: int, itemsize: int, limit: int | None, what: str) -> None:
    limit = DENSE_LIMIT_BYTES if limit is None else limit
    need = m * n * itemsize
    if need > limit:
        raise InputError(
            f"{what} would materialize a dense {m} x {n} array ({need / 2**30:.1f} GiB), over "
            f"the limit of {limit / 2**30:.1f} GiB; pass a larger max_bytes to force it"
        )


class MLRMatrix(spla.LinearOperator):
    """An m x n multilevel low rank matrix.

    Parameters
    ----------
    rows, cols : Hierarchy of the rows (m items) and columns (n items), with the same number of
        blocks at every level.
    ranks : (L,) rank of every block of each level; 0 is allowed.
    B : (m, sum(ranks)) row factors in hierarchy order, level columns in order.
    C : (n, sum(ranks)) column factors; ``None`` for the symmetric PSD matrix with ``C = B``
        (then ``rows`` must equal ``cols``).

    Attributes
    ----------
    B, C, ranks, rows, cols, offsets (column offsets of the levels in B and C), symmetric.
    """

    def __init__(
        self,
        rows: Hierarchy,
        cols: Hierarchy,
        ranks: Sequence[int],
        B: Any,
        C: Any = None,
    ) -> None:
        if not isinstance(rows, Hierarchy) or not isinstance(cols, Hierarchy):
            raise InputError("rows and cols must be Hierarchy objects")
        if rows.n_blocks != cols.n_blocks:
            raise InputError(
                f"rows and cols must have the same number of blocks per level, got "
                f"{rows.n_blocks} and {cols.n_blocks}"
            )
        ranks_arr = np.asarray(ranks)
        if ranks_arr.ndim != 1 or ranks_arr.size != rows.n_levels:
            raise InputError(
                f"ranks must have one entry per level ({rows.n_levels}), "
                f"got {list(np.ravel(ranks))}"
            )
        if not np.issubdtype(ranks_arr.dtype, np.integer) or np.any(ranks_arr < 0):
            raise InputError(f"ranks must be non-negative integers, got {ranks_arr.tolist()}")
        r = int(ranks_arr.sum())
        B = np.asarray(B)
        if B.dtype.kind not in "fc":
            B = B.astype(np.float64)
        if B.shape != (rows.n, r):
            raise InputError(f"B has shape {B.shape}, expected ({rows.n}, {r})")
        symmetric = C is None
        if symmetric:
            if rows != cols:
                raise InputError("a symmetric MLR matrix (C=None) needs rows == cols")
            C = B
        else:
            C = np.asarray(C, dtype=B.dtype)
            if C.shape != (cols.n, r):
                raise InputError(f"C has shape {C.shape}, expected ({cols.n}, {r})")
        if not np.all(np.isfinite(B)) or (not symmetric and not np.all(np.isfinite(C))):
            raise InputError("factors B and C must be finite (found NaN or inf)")
        self.rows = rows
        self.cols = cols
        self.ranks = tuple(int(x) for x in ranks_arr)
        self.offsets = np.concatenate(([0], np.cumsum(ranks_arr))).astype(np.int64)
        self.B = B
        self.C = C
        self.symmetric = symmetric
        self._B_lv = [np.ascontiguousarray(B[:, a:b]) for a, b in self._spans()]
        self._C_lv = self._B_lv if symmetric else [
            np.ascontiguousarray(C[:, a:b]) for a, b in self._spans()
        ]
        super().__init__(dtype=B.dtype, shape=(rows.n, cols.n))

    # ------------------------------------------------------------------ basics
    def _spans(self) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    @property
    def n_levels(self) -> int:
        return len(self.ranks)

    @property
    def rank(self) -> int:
        """Total rank ``sum(ranks)``."""
        return int(self.offsets[-1])

    @property
    def storage(self) -> int:
        """Numbers stored in the factors: ``(m + n) r``, or ``m r`` when symmetric."""
        m, n = self.shape
        return (m if self.symmetric else m + n) * self.rank

    def level(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """(B_l, C_l): the stacked factors of one level, (m, r_l) and (n, r_l), hierarchy order."""
        return self._B_lv[level], self._C_lv[level]

    def __repr__(self) -> str:
        m, n = self.shape
        kind = "symmetric " if self.symmetric else ""
        return (
            f"<{m}x{n} {kind}MLRMatrix, ranks={list(self.ranks)}, "
            f"blocks={list(self.rows.n_blocks)}, dtype={self.dtype}>"
        )

    def _repr_html_(self) -> str:
        from mlr_dask.display import mlr_html
        return mlr_html(self)

    # ------------------------------------------------------------------ products
    def _apply_permuted(self, Xp: np.ndarray, transpose: bool) -> np.ndarray:
        """Product in hierarchy order: Xp (n, t) -> (m, t) (or the transpose)."""
        outer, inner = (self.cols, self.rows) if transpose else (self.rows, self.cols)
        out = np.zeros((outer.n, Xp.shape[1]), dtype=np.result_type(self.dtype, Xp.dtype))
        Xp = np.ascontiguousarray(Xp, dtype=out.dtype)
        for lvl in range(self.n_levels):
            if self.ranks[lvl] == 0:
                continue
            Bl, Cl = self._B_lv[lvl], self._C_lv[lvl]
            if transpose:
                Bl, Cl = Cl, Bl
            if Bl.dtype != out.dtype:
                Bl, Cl = Bl.astype(out.dtype), Cl.astype(out.dtype)
            block_matmat(Bl, Cl, Xp, outer.boundaries[lvl], inner.boundaries[lvl], out)
        return out

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        Y = np.empty((self.shape[0], X.shape[1]), dtype=np.result_type(self.dtype, X.dtype))
        Y[self.rows.perm] = self._apply_permuted(X[self.cols.perm], transpose=False)
        return Y

    def _rmatmat(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        Y = np.empty((self.shape[1], X.shape[1]), dtype=np.result_type(self.dtype, X.dtype))
        Y[self.cols.perm] = self._apply_permuted(X[self.rows.perm], transpose=True)
        return Y

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._rmatmat(np.asarray(x).reshape(-1, 1)).reshape(-1)

    def _transpose(self) -> MLRMatrix:
        if self.symmetric:
            return self
        T = self.__dict__.get("_T")
        if T is None:  # built once, shares the factors
            T = MLRMatrix(self.cols, self.rows, self.ranks, self.C, self.B)
            T.__dict__["_T"] = self
            self.__dict__["_T"] = T
        return T

    _adjoint = _transpose  # real factors

    # ------------------------------------------------------------------ dense
    def to_dense(self, max_bytes: int | None = None) -> np.ndarray:
        """The dense (m, n) matrix in original order.

        Materializes m x n numbers: refuses when that exceeds ``max_bytes`` (default
        :data:`DENSE_LIMIT_BYTES`).
        """
        m, n = self.shape
        _check_dense_size(m, n, self.dtype.itemsize, max_bytes, "to_dense")
        Ap = np.zeros((m, n), dtype=self.dtype)
        for lvl in range(self.n_levels):
            Bl, Cl = self.level(lvl)
            rb, cb = self.rows.boundaries[lvl], self.cols.boundaries[lvl]
            if Bl.shape[1] == 0:
                continue
            for k in range(rb.size - 1):  # blocks: dense output is O(m n) anyway
                Ap[rb[k]:rb[k + 1], cb[k]:cb[k + 1]] += Bl[rb[k]:rb[k + 1]] @ Cl[cb[k]:cb[k + 1]].T
        out = np.empty_like(Ap)
        out[np.ix_(self.rows.perm, self.cols.perm)] = Ap
        return out

    def submatrix(self, rows: slice, cols: slice) -> np.ndarray:
        """Dense block ``A_perm[rows, cols]`` in HIERARCHY order (positions, not original
        indices), built from the factors: O(|rows| |cols| r). Used chunk by chunk on Dask."""
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        out = np.zeros((r1 - r0, c1 - c0), dtype=self.dtype)
        for lvl in range(self.n_levels):
            Bl, Cl = self.level(lvl)
            if Bl.shape[1] == 0:
                continue
            rb = self.rows.block_of(lvl)[r0:r1]
            cb = self.cols.block_of(lvl)[c0:c1]
            same = rb[:, None] == cb[None, :]
            if same.any():
                out += np.where(same, Bl[r0:r1] @ Cl[c0:c1].T, 0.0)
        return out

    def diagonal(self) -> np.ndarray:
        """Diagonal of a square MLR matrix in original order, O(n r)."""
        m, n = self.shape
        if m != n:
            raise InputError(f"diagonal needs a square matrix, got {m} x {n}")
        # entry (i, i) of the original matrix is row iperm_r[i], col iperm_c[i] of the blocks
        ri, ci = self.rows.iperm, self.cols.iperm
        out = np.zeros(n, dtype=self.dtype)
        for lvl in range(self.n_levels):
            Bl, Cl = self.level(lvl)
            if Bl.shape[1] == 0:
                continue
            same = self.rows.block_of(lvl)[ri] == self.cols.block_of(lvl)[ci]
            out += np.where(same, np.einsum("ij,ij->i", Bl[ri], Cl[ci]), 0.0)
        return out

    # ------------------------------------------------------------------ linear systems
    def expanded_factors(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Sparse expanded factors ``(Bt, Ct)`` in hierarchy order, (m, s) and (n, s),
        ``s = sum_l p_l r_l``, with ``A_perm = Bt @ Ct.T`` (``mlr.md`` section 1). Columns are
        grouped by level, coarse to fine, and by block within a level."""
        return self._expand(self.rows, self._B_lv), self._expand(self.cols, self._C_lv)

    def _expand(self, h: Hierarchy, factors: list[np.ndarray]) -> sp.csr_matrix:
        rows, cols, vals = [], [], []
        s_off = 0
        for lvl, F in enumerate(factors):
            r_l = F.shape[1]
            if r_l == 0:
                continue
            blk = h.block_of(lvl)
            rows.append(np.repeat(np.arange(h.n), r_l))
            cols.append((s_off + blk[:, None] * r_l + np.arange(r_l)[None, :]).ravel())
            vals.append(F.ravel())
            s_off += h.n_blocks[lvl] * r_l
        if not rows:
            return sp.csr_matrix((h.n, 0), dtype=self.dtype)
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(h.n, s_off),
        )

    def _system_parts(self) -> tuple[sp.spmatrix, sp.csr_matrix, sp.csr_matrix]:
        """``(A_fine, Bt, Ct)`` with ``A_perm = A_fine + Bt Ct^T``: the finest level as an
        explicit sparse block-diagonal matrix when its blocks are small (at most 8 (m + n) r_L
        nonzeros), else folded into the expanded factors; expanded columns ordered from the
        finest level to the coarsest, so that a sparse LU in this natural order eliminates
        leaves first and fills in only along root-to-leaf paths."""
        m, n = self.shape
        L = self.n_levels
        Bl, Cl = self.level(L - 1)
        rb, cb = self.rows.boundaries[-1], self.cols.boundaries[-1]
        nnz_fine = int(np.dot(np.diff(rb), np.diff(cb)))
        explicit = Bl.shape[1] > 0 and nnz_fine <= 8 * (m + n) * Bl.shape[1]
        if explicit:
            ri, ci, vals = [], [], []
            for k in range(rb.size - 1):  # finest blocks are small here: at most 8 (m+n) r_L
                blk = Bl[rb[k]:rb[k + 1]] @ Cl[cb[k]:cb[k + 1]].T
                ii, jj = np.meshgrid(np.arange(rb[k], rb[k + 1]), np.arange(cb[k], cb[k + 1]),
                                     indexing="ij")
                ri.append(ii.ravel())
                ci.append(jj.ravel())
                vals.append(blk.ravel())
            A_fine = sp.csr_matrix(
                (np.concatenate(vals), (np.concatenate(ri), np.concatenate(ci))), shape=(m, n)
            )
            levels = range(L - 2, -1, -1)
        else:
            A_fine = sp.csr_matrix((m, n), dtype=self.dtype)
            levels = range(L - 1, -1, -1)
        Bs = [self._expand_level(self.rows, self._B_lv[lvl], lvl) for lvl in levels]
        Cs = [self._expand_level(self.cols, self._C_lv[lvl], lvl) for lvl in levels]
        Bt = sp.hstack([sp.csr_matrix((m, 0)), *Bs], format="csr")
        Ct = sp.hstack([sp.csr_matrix((n, 0)), *Cs], format="csr")
        return A_fine, Bt, Ct

    def _expand_level(self, h: Hierarchy, F: np.ndarray, lvl: int) -> sp.csr_matrix:
        r_l = F.shape[1]
        cols = h.block_of(lvl)[:, None] * r_l + np.arange(r_l)[None, :]
        return sp.csr_matrix(
            (F.ravel(), (np.repeat(np.arange(h.n), r_l), cols.ravel())),
            shape=(h.n, h.n_blocks[lvl] * r_l),
        )

    @staticmethod
    def _sparse_solve(M: sp.spmatrix, rhs: np.ndarray, what: str) -> np.ndarray:
        try:
            lu = spla.splu(sp.csc_matrix(M), permc_spec="NATURAL", diag_pivot_thresh=0.1)
        except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
            raise np.linalg.LinAlgError(f"{what}: the matrix is singular ({exc})") from None
        sol = lu.solve(np.asarray(rhs, dtype=np.result_type(M.dtype, rhs.dtype)))
        if not np.all(np.isfinite(sol)):
            raise np.linalg.LinAlgError(f"{what}: the matrix is singular")
        return sol

    def _check_rhs(self, b: Any) -> np.ndarray:
        b = np.asarray(b)
        m = self.shape[0]
        if b.ndim not in (1, 2) or b.shape[0] != m:
            raise InputError(f"b has shape {b.shape}, expected ({m},) or ({m}, k)")
        if not np.all(np.isfinite(b)):
            raise InputError("b contains NaN or inf")
        return b

    def solve(self, b: Any) -> np.ndarray:
        """Solve ``A x = b`` for a square invertible MLR matrix; ``b`` (n,) or (n, k).

        Sparse LU of the expanded system ``[[A_fine, Bt], [Ct^T, -I]] [x; z] = [b; 0]``
        (``A_fine`` the finest level, ``z = Ct^T x`` the coarse-level block products), with
        leaves eliminated first; no dense n x n matrix is formed. Raises
        ``numpy.linalg.LinAlgError`` for a singular matrix.
        """
        m, n = self.shape
        if m != n:
            raise InputError(f"solve needs a square matrix, got {m} x {n}; use lstsq")
        b = self._check_rhs(b)
        self._check_rank(n, "solve")
        A_fine, Bt, Ct = self._system_parts()
        s = Bt.shape[1]
        M = sp.bmat([[A_fine, Bt], [Ct.T, -sp.identity(s)]], format="csc")
        rhs = np.zeros((n + s, *b.shape[1:]), dtype=np.result_type(self.dtype, b.dtype))
        rhs[:n] = b[self.rows.perm]
        sol = self._sparse_solve(M, rhs, "solve")
        x = np.empty((n, *b.shape[1:]), dtype=sol.dtype)
        x[self.cols.perm] = sol[:n]
        self._check_residual(self.matmat(x.reshape(n, -1)) - b.reshape(m, -1), x, b, "solve")
        return x

    def lstsq(self, b: Any) -> np.ndarray:
        """Least-squares solution of ``min ||A x - b||_2`` for A of full column rank.

        Sparse LU of the augmented system in ``(r, x, z, w)``: ``r + A_fine x + Bt z = b``,
        ``A_fine^T r + Ct w = 0`` (so ``A^T r = 0``), ``z = Ct^T x``, ``w = Bt^T r``; no dense
        matrix is formed. Raises ``numpy.linalg.LinAlgError`` when A is rank deficient (then
        use ``scipy.sparse.linalg.lsmr(A, b)`` on this operator).
        """
        m, n = self.shape
        b = self._check_rhs(b)
        self._check_rank(n, "lstsq")
        A_fine, Bt, Ct = self._system_parts()
        s = Bt.shape[1]
        eye = sp.identity(s)
        M = sp.bmat(
            [
                [sp.identity(m), A_fine, Bt, None],
                [A_fine.T, None, None, Ct],
                [None, Ct.T, -eye, None],
                [Bt.T, None, None, -eye],
            ],
            format="csc",
        )
        rhs = np.zeros((m + n + 2 * s, *b.shape[1:]), dtype=np.result_type(self.dtype, b.dtype))
        rhs[:m] = b[self.rows.perm]
        sol = self._sparse_solve(M, rhs, "lstsq")
        x = np.empty((n, *b.shape[1:]), dtype=sol.dtype)
        x[self.cols.perm] = sol[m:m + n]
        resid = self.matmat(x.reshape(n, -1)) - b.reshape(m, -1)
        self._check_residual(self.rmatmat(resid), x, b, "lstsq")
        return x

    def _check_rank(self, n: int, what: str) -> None:
        bound = sum(p * r for p, r in zip(self.rows.n_blocks, self.ranks, strict=True))
        if bound < n:
            raise np.linalg.LinAlgError(
                f"{what}: the matrix is singular (rank at most {bound} < {n} columns)"
            )

    def _check_residual(self, resid: np.ndarray, x: np.ndarray, b: np.ndarray, what: str) -> None:
        """Reject a numerically singular system: the residual (or normal-equation residual)
        must be small next to the sizes of the factors, x and b."""
        scale = (np.linalg.norm(self.B) * np.linalg.norm(self.C) + 1e-300) * (
            np.linalg.norm(x) + 1.0
        ) + np.linalg.norm(b)
        if what == "lstsq":
            scale *= np.linalg.norm(self.B) * np.linalg.norm(self.C) + 1e-300
        if not np.linalg.norm(resid) <= 1e-8 * scale:
            raise np.linalg.LinAlgError(f"{what}: the matrix is singular to working precision")

    # ------------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write to a zarr group (format ``mlr-matrix``, version 1); atomic (temp + rename) for
        a local path. An existing ``path`` is refused unless it is an ``mlr-matrix`` store and
        ``overwrite`` (see :func:`mlr_dask.io.check_output`)."""
        with atomic_group(path, FORMAT, FORMAT_VERSION, overwrite=overwrite) as g:
            self.write_zarr(g)

    def write_zarr(self, g: Any) -> None:
        """Store the factors and hierarchies into an existing, empty zarr group: ``B`` (dims
        ``row``, ``factor``), ``C`` (``col``, ``factor``) unless symmetric, in hierarchy order;
        subgroups ``rows`` / ``cols``; checksummed (:func:`mlr_dask.io.create_array`)."""
        from mlr_dask.io import create_array

        g.attrs["ranks"] = list(self.ranks)
        g.attrs["shape"] = list(self.shape)
        g.attrs["symmetric"] = self.symmetric
        create_array(g, "B", data=self.B, dims=("row", "factor"))
        if not self.symmetric:
            create_array(g, "C", data=self.C, dims=("col", "factor"))
        self.rows.write_zarr(g.create_group("rows"))
        if not self.symmetric:
            self.cols.write_zarr(g.create_group("cols"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MLRMatrix:
        """Read a matrix written by :meth:`save`."""
        return cls.read_zarr(open_group(path, FORMAT, FORMAT_VERSION))

    @classmethod
    def read_zarr(cls, g: Any) -> MLRMatrix:
        try:
            rows = Hierarchy.read_zarr(g["rows"])
            B = g["B"][:]
            if g.attrs["symmetric"]:
                return cls(rows, rows, g.attrs["ranks"], B)
            return cls(rows, Hierarchy.read_zarr(g["cols"]), g.attrs["ranks"], B, g["C"][:])
        except KeyError as exc:
            raise InputError(f"MLR matrix store is incomplete: missing {exc}") from None

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def random(
        cls,
        rows: Hierarchy,
        cols: Hierarchy | None,
        ranks: Sequence[int],
        *,
        rng: np.random.Generator | int | None = None,
        dtype: Any = np.float64,
    ) -> MLRMatrix:
        """Random factors with standard normal entries scaled by ``1/sqrt(r_l)`` per level
        (so every level contributes entries of similar size); ``cols=None`` gives the symmetric
        PSD matrix ``B B^T``."""
        rng = np.random.default_rng(rng)
        ranks_arr = np.asarray(ranks, dtype=np.int64)
        scale = np.repeat(1.0 / np.sqrt(np.maximum(ranks_arr, 1)), ranks_arr)
        B = (rng.standard_normal((rows.n, int(ranks_arr.sum()))) * scale).astype(dtype)
        if cols is None:
            return cls(rows, rows, ranks, B)
        C = (rng.standard_normal((cols.n, int(ranks_arr.sum()))) * scale).astype(dtype)
        return cls(rows, cols, ranks, B, C)
