"""The EM of the multilevel factor model on a covariance matrix held densely (few features):
what the trials of the rank search run (:mod:`mlr_dask.fm.select`).

The EM sees the data only through their covariance ``S`` (n x n, about the mean;
:mod:`mlr_dask.fm.moments`), so with S in memory one iteration is a few dense products, in
hierarchy order, with the expanded loadings ``F_hat`` (n x s):

- E-step: ``Sigma = F_hat F_hat^T + D``, ``B = Sigma^-1 F_hat``, ``V = S B`` (n x s) and
  ``W = I - F_hat^T B + B^T V`` (s x s; the posterior second moment of the factors per
  sample);
- M-step: for every leaf (finest group) c with features ``J`` and free factors ``P`` (its
  ancestors' factors within their groups' ranks), ``F[J, P] = V[J, P] W[P, P]^-1`` (one solve
  per leaf), then ``D_j = S_jj - F_j . V_j``, floored like the data EM
  (:data:`mlr_dask.fm.chunk.FLOOR_REL`).

*Exact root step (ECM).* When the first level is a single group of rank k (the root), each
iteration first maximizes the likelihood over the root loadings ``F_0`` (n x k) exactly, the
rest held: with ``Psi = Sigma - F_0 F_0^T = L L^T`` (the lower levels and D), the maximizer is
``F_0 = L U diag(sqrt(max(lambda - 1, 0)))`` for the k leading eigenpairs ``(lambda, U)`` of
``L^-1 S L^-T`` (the factor-analysis solution in the metric of Psi), then takes the EM step.
Both steps raise the likelihood. On nearly collinear features (noise variances near zero)
plain EM stalls at poor stationary points, where it stays for thousands of iterations; the
exact step does not (it is what factor analysis with a diagonal Psi iterates).

*Start.* :meth:`DenseEM.start` takes ``D`` the variances and the root the exact step from
there (as factor analysis starts), the lower levels the leading eigenvectors of the residual
``S - F_0 F_0^T`` within each group, scaled to a tenth of their weight (a start at zero would
stay there: zero loadings are a fixed point of EM). Without a single-group first level, the
SVD start of the data EM.

Cost O(n^2 s + n^3) per iteration (a Cholesky of Sigma, and with the root step one of Psi and
k eigenpairs) and O(n^2) memory: for the few hundred features where it beats the chunked EM on
``n`` equivalent rows. SQUAREM acceleration (:meth:`DenseEM.fit`); it stops when the average
log-likelihood per sample rises by less than ``tol`` times its size.
"""

from __future__ import annotations

import numpy as np

from mlr_dask.fm import chunk as ck
from mlr_dask.fm.tree import FactorTree

__all__ = ["DenseEM", "DENSE_MAX_FEATURES"]

#: The rank search uses this dense EM up to this many features (the chunked EM beyond).
DENSE_MAX_FEATURES = 400

_LOG_2PI = float(np.log(2 * np.pi))


class DenseEM:
    """Dense EM for the factor tree ``tree`` (hierarchy order) on the covariance ``S`` (n, n);
    ``exact_root``: the exact root step before each EM step (module docstring).

    Parameters and results use the compressed loadings ``F`` (n, R) (entries past a group's
    rank zero) and ``D`` (n,), as :class:`mlr_dask.fm.em.FMState`."""

    def __init__(self, tree: FactorTree, S: np.ndarray, *, exact_root: bool = True) -> None:
        self.tree = tree
        self.exact_root = bool(exact_root)
        self.S = np.asarray(S, dtype=np.float64)
        n, R = tree.n, tree.rank
        self.var = np.diag(self.S).copy()
        # expanded column of every (feature, compressed column), -1 where masked
        ecol = np.full((n, R), -1, dtype=np.int64)
        for lvl in range(tree.n_levels):
            o0, o1 = tree.span(lvl)
            b = tree.bounds[lvl]
            for g in range(tree.n_groups[lvl]):
                e0 = int(tree.s_offsets[lvl]) + g * (o1 - o0)
                ecol[b[g]:b[g + 1], o0:o1] = e0 + np.arange(o1 - o0)
        ecol[~tree.col_mask] = -1
        self.ecol = ecol
        self._er, self._ec = np.nonzero(ecol >= 0)
        self._ee = ecol[self._er, self._ec]
        # the expanded columns of the lower levels (all but the root's): none for factor
        # analysis, whose Psi is then the diagonal D
        o0, o1 = tree.span(0)
        self._lower = bool(np.any(tree.col_mask[:, o1:])) if tree.n_groups[0] == 1 else True
        # the leaves batched by their number of free factors: per batch the free expanded
        # columns (k, p) and the features of each leaf padded to the largest leaf (k, m),
        # padding pointing at feature n (a zero row appended to V)
        lb = tree.bounds[-1]
        free = [np.flatnonzero(ecol[int(lb[i])] >= 0) for i in range(lb.size - 1)]
        self.batches = []
        for p in sorted({f.size for f in free}):
            ids = [i for i, f in enumerate(free) if f.size == p]
            m = max(int(lb[i + 1] - lb[i]) for i in ids)
            rows = np.full((len(ids), m), n, dtype=np.int64)
            for k, i in enumerate(ids):
                rows[k, :lb[i + 1] - lb[i]] = np.arange(lb[i], lb[i + 1])
            cols = np.stack([free[i] for i in ids]) if p else np.zeros((len(ids), 0), np.int64)
            ecols = np.stack([ecol[int(lb[i]), free[i]] for i in ids]) if p else cols
            self.batches.append((rows, cols, ecols))

    def expand(self, F: np.ndarray) -> np.ndarray:
        """(n, s) expanded loadings from compressed ``F`` (n, R)."""
        Fh = np.zeros((self.tree.n, self.tree.s))
        Fh[self._er, self._ee] = F[self._er, self._ec]
        return Fh

    def _inverse(self, Fh: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, float]:
        """``(Sigma^-1, log det Sigma)`` by Cholesky (LinAlgError when not positive
        definite)."""
        from scipy.linalg import lapack

        n = Fh.shape[0]
        Sigma = Fh @ Fh.T
        Sigma.flat[::n + 1] += D
        C = np.linalg.cholesky(Sigma)  # zero above the diagonal, which dpotri keeps
        inv, info = lapack.dpotri(C, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError("Sigma is singular")
        Sinv = inv + inv.T
        Sinv.flat[::n + 1] *= 0.5
        return Sinv, 2.0 * float(np.log(C.diagonal()).sum())

    def loglike(self, F: np.ndarray, D: np.ndarray, S: np.ndarray | None = None) -> float:
        """Average log-likelihood per sample of data of covariance ``S`` (default the fitted
        one) about the model's mean: ``-(n log 2 pi + log det Sigma + tr(Sigma^-1 S)) / 2``."""
        Sinv, logdet = self._inverse(self.expand(F), D)
        X = self.S if S is None else S
        return -0.5 * (self.tree.n * _LOG_2PI + logdet + float(np.einsum("ij,ij->", Sinv, X)))

    @property
    def has_root(self) -> bool:
        """Whether the exact root step runs: ``exact_root`` and a first level of one group of
        positive rank."""
        return bool(self.exact_root and self.tree.n_groups[0] == 1 and self.tree.ranks[0] > 0)

    def root_step(self, F: np.ndarray, D: np.ndarray) -> np.ndarray:
        """``F`` with its root columns replaced by their exact maximizer given the rest (module
        docstring). O(n^3)."""
        from scipy.linalg import lapack

        o0, o1 = self.tree.span(0)
        k = o1 - o0
        Fr = F.copy()
        Fr[:, o0:o1] = 0.0
        n = Fr.shape[0]
        if self._lower:
            Fh = self.expand(Fr)
            Psi = Fh @ Fh.T
            Psi.flat[::n + 1] += D
            L = np.linalg.cholesky(Psi)
            Li, info = lapack.dtrtri(L, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError("Psi is singular")
            M = Li @ self.S @ Li.T
        else:  # factor analysis: Psi = D
            d = np.sqrt(D)
            M = self.S / np.outer(d, d)
        vals, vecs = np.linalg.eigh(0.5 * (M + M.T))  # ascending; the full one is faster
        vals, vecs = vals[n - k:], vecs[:, n - k:]
        U = vecs * np.sqrt(np.maximum(vals - 1.0, 0.0))
        U = L @ U if self._lower else d[:, None] * U
        # the sign of each column as the input's (eigenvectors come with arbitrary signs, which
        # would break the extrapolation of SQUAREM)
        flip = np.einsum("ij,ij->j", U, F[:, o0:o1]) < 0
        U[:, flip] *= -1.0
        Fr[:, o0:o1] = U
        return Fr

    def step(self, F: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """One iteration from (F, D): the exact root step (when :attr:`has_root`), then the EM
        step; returns the new (F, D) and the log-likelihood after the root step (computed on
        the way; that of (F, D) without it)."""
        if self.has_root:
            F = self.root_step(F, D)
        Fh = self.expand(F)
        Sinv, logdet = self._inverse(Fh, D)
        B = Sinv @ Fh
        V = self.S @ B
        W = B.T @ V - Fh.T @ B
        W.flat[::W.shape[0] + 1] += 1.0
        ll = -0.5 * (self.tree.n * _LOG_2PI + logdet
                     + float(np.einsum("ij,ij->", Sinv, self.S)))
        n = self.tree.n
        Fn = np.zeros((n + 1, F.shape[1]))
        Dn = self.var.copy()
        Vp = np.concatenate([V, np.zeros((1, V.shape[1]))], axis=0)
        for rows, cols, e in self.batches:
            if e.shape[1] == 0:
                continue
            Vl = Vp[rows[:, :, None], e[:, None, :]]  # (k, m, p)
            X = np.swapaxes(np.linalg.solve(W[e[:, :, None], e[:, None, :]],
                                            np.swapaxes(Vl, 1, 2)), 1, 2)
            Fn[rows[:, :, None], cols[:, None, :]] = X
            red = np.einsum("kmp,kmp->km", X, Vl)
            ok = rows < n
            Dn[rows[ok]] -= red[ok]
        Fn = Fn[:n]
        Dn = np.maximum(Dn, np.maximum(ck.FLOOR_REL * self.var, ck.FLOOR_ABS))
        return Fn, Dn, ll

    def start(self) -> tuple[np.ndarray, np.ndarray]:
        """Start (module docstring): with a root, D the variances, the root's exact step and
        the lower levels from the residual's eigenvectors per group; else :meth:`svd_start`."""
        if not self.has_root:
            return self.svd_start()
        tree = self.tree
        D = np.maximum(self.var, ck.FLOOR_ABS)
        F = self.root_step(np.zeros((tree.n, tree.rank)), D)
        o0, o1 = tree.span(0)
        Rres = self.S - F[:, o0:o1] @ F[:, o0:o1].T
        for lvl in range(1, tree.n_levels):
            a0, a1 = tree.span(lvl)
            if a1 == a0:
                continue
            b = tree.bounds[lvl]
            for g in range(tree.n_groups[lvl]):
                i0, i1 = int(b[g]), int(b[g + 1])
                vals, vecs = np.linalg.eigh(Rres[i0:i1, i0:i1])
                r = min(a1 - a0, i1 - i0)
                vals, vecs = vals[::-1][:r], vecs[:, ::-1][:, :r]
                F[i0:i1, a0:a0 + r] = 0.1 * vecs * np.sqrt(np.clip(vals, 0.0, None))
        return tree.apply_mask(F), D

    def svd_start(self) -> tuple[np.ndarray, np.ndarray]:
        """SVD start on S: compressed column c takes the c-th leading eigenvector ``u_c`` of S
        scaled by ``sqrt(lambda_c)`` (masked), D the variance left over, floored at
        :data:`mlr_dask.fm.chunk.INIT_FLOOR_REL` of the variance (as the data EM's start)."""
        vals, vecs = np.linalg.eigh(self.S)
        order = np.argsort(vals)[::-1][:self.tree.rank]
        F = vecs[:, order] * np.sqrt(np.clip(vals[order], 0.0, None))
        if F.shape[1] < self.tree.rank:
            F = np.concatenate([F, np.zeros((F.shape[0], self.tree.rank - F.shape[1]))], 1)
        F = self.tree.apply_mask(F)
        D = np.maximum(self.var - (F * F).sum(axis=1), ck.INIT_FLOOR_REL * self.var)
        return F, np.maximum(D, ck.FLOOR_ABS)

    def fit(self, F: np.ndarray, D: np.ndarray, *, max_iter: int, tol: float,
            accelerate: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
        """EM from (F, D) until the relative rise of the log-likelihood over an iteration (a
        cycle when accelerated) is below ``tol``, or ``max_iter`` EM steps; returns (F, D, EM
        steps done). ``accelerate``: SQUAREM cycles of three EM steps (two steps, an
        extrapolation along them, one step from there, kept only when the extrapolated point
        is no worse than the second step's start; else the plain third step): every cycle
        raises the log-likelihood."""
        F = self.tree.apply_mask(np.asarray(F, dtype=np.float64))
        D = np.asarray(D, dtype=np.float64).copy()
        floor = np.maximum(ck.FLOOR_REL * self.var, ck.FLOOR_ABS)
        prev = None
        n_iter = 0
        while n_iter < max_iter:
            F1, D1, ll = self.step(F, D)  # ll: of (F, D)
            if prev is not None and ll - prev <= tol * abs(ll):
                break
            prev = ll
            n_iter += 1
            if not accelerate or n_iter + 2 > max_iter:
                F, D = F1, D1
                continue
            F2, D2, ll1 = self.step(F1, D1)
            rF, rD, vF, vD = F1 - F, D1 - D, F2 - 2 * F1 + F, D2 - 2 * D1 + D
            nv = np.sqrt(float((vF * vF).sum() + (vD * vD).sum()))
            a = -np.sqrt(float((rF * rF).sum() + (rD * rD).sum())) / nv if nv > 0 else -1.0
            a = min(a, -1.0)
            Fx, Dx = F - 2 * a * rF + a * a * vF, D - 2 * a * rD + a * a * vD
            if np.all(Dx >= floor) and np.all(np.isfinite(Fx)):
                try:
                    F3, D3, llx = self.step(Fx, Dx)
                except np.linalg.LinAlgError:
                    llx = -np.inf
                if llx >= ll1:
                    F, D = F3, D3
                    n_iter += 2
                    continue
            F, D, _ = self.step(F2, D2)
            n_iter += 2
        return F, D, n_iter
