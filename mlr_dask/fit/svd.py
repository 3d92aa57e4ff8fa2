"""Truncated SVDs and PSD eigen-decompositions of single blocks and batches of blocks.

- :func:`batched_svd` / :func:`batched_psd_eig`: dense decompositions of a stack of equal-shape
  (zero padded) blocks, one LAPACK call per block inside numpy's batched loop.
- :func:`randomized_svd` / :func:`randomized_psd_eig`: range finder with ``q`` power iterations
  for large blocks; a warm-start basis (``init``) is always kept in the range, so the returned
  rank-k approximation is at least as good as the warm start (the loss of BCD never increases).
- A block that is exactly zero gives zero factors (no random basis of a zero range).

All return factors sorted by decreasing singular value / eigenvalue; the ``k``-th returned
column is zero when the block has fewer than ``k`` non-zero singular values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "batched_svd",
    "batched_svd_gram",
    "batched_psd_eig",
    "randomized_svd",
    "batched_randomized_svd",
    "randomized_psd_eig",
    "block_svd",
    "block_psd_eig",
]


def _pad_cols(x: np.ndarray, k: int, axis: int) -> np.ndarray:
    """The first ``k`` entries of ``x`` along ``axis``, zero padded when it has fewer."""
    axis %= x.ndim
    have = x.shape[axis]
    lead = (slice(None),) * axis
    if have >= k:
        return x[lead + (slice(0, k),)]
    shape = list(x.shape)
    shape[axis] = k
    out = np.zeros(shape, dtype=x.dtype)
    out[lead + (slice(0, have),)] = x
    return out


def batched_svd(G: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` SVD of every block of ``G`` (t, M, N).

    Returns ``U`` (t, M, k), ``s`` (t, k), ``V`` (t, N, k) with ``G[i] ~ U[i] diag(s[i]) V[i]^T``;
    columns past ``min(M, N)`` are zero.
    """
    t, M, N = G.shape
    if t == 0 or min(M, N) == 0:
        return np.zeros((t, M, k)), np.zeros((t, k)), np.zeros((t, N, k))
    if M == 1 or N == 1:  # vectors: no LAPACK call needed
        if M == 1:
            nrm = np.linalg.norm(G[:, 0, :], axis=1)
            safe = np.where(nrm > 0, nrm, 1.0)
            U = np.where(nrm > 0, 1.0, 0.0)[:, None, None] * np.ones((t, 1, 1))
            V = (G[:, 0, :] / safe[:, None])[:, :, None]
        else:
            nrm = np.linalg.norm(G[:, :, 0], axis=1)
            safe = np.where(nrm > 0, nrm, 1.0)
            U = (G[:, :, 0] / safe[:, None])[:, :, None]
            V = np.where(nrm > 0, 1.0, 0.0)[:, None, None] * np.ones((t, 1, 1))
        return _pad_cols(U, k, 2), _pad_cols(nrm[:, None], k, 1), _pad_cols(V, k, 2)
    U, s, Vt = np.linalg.svd(G, full_matrices=False)
    V = np.swapaxes(Vt, 1, 2)
    return _pad_cols(U, k, 2), _pad_cols(s, k, 1), _pad_cols(V, k, 2)


#: :func:`batched_svd_gram` drops singular values below this fraction of the block's largest
#: (the Gram matrix cannot resolve them: their square is below rounding of the largest).
GRAM_RTOL = 1e-7


def batched_svd_gram(G: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` SVD of every block of ``G`` (t, M, N) from the eigen-decomposition of the
    Gram matrices of the shorter side (``G^T G`` when ``M >= N``): about half the time of
    :func:`batched_svd` for blocks up to a few hundred on a side. Same returns. Singular
    values below :data:`GRAM_RTOL` times the block's largest come back as zero with zero
    vectors; the others are accurate to rounding relative to the largest, so
    ``U diag(s) V^T`` is the projection of the block onto the returned right (left) vectors:
    a rank-``k`` approximation whose error is that of the truncated SVD up to rounding.
    Cost: O(t M N min(M, N)) for the Gram matrices plus a dense eigh of each."""
    t, M, N = G.shape
    if t == 0 or min(M, N) <= 1:
        return batched_svd(G, k)
    tall = M >= N
    H = G if tall else np.swapaxes(G, 1, 2)  # (t, big, small)
    S = np.matmul(np.swapaxes(H, 1, 2), H)
    w, W = np.linalg.eigh(S)
    kk = min(k, w.shape[1])
    w = w[:, ::-1][:, :kk]
    W = np.ascontiguousarray(W[:, :, ::-1][:, :, :kk])
    s = np.sqrt(np.maximum(w, 0.0))
    keep = s > GRAM_RTOL * s[:, :1]
    s = np.where(keep, s, 0.0)
    W *= keep[:, None, :]
    Z = np.matmul(H, W) / np.where(keep, s, 1.0)[:, None, :]  # (t, big, kk)
    U, V = (Z, W) if tall else (W, Z)
    return _pad_cols(U, k, 2), _pad_cols(s, k, 1), _pad_cols(V, k, 2)


def batched_psd_eig(G: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of the symmetric part of every block of ``G`` (t, M, M), with
    negative eigenvalues clipped to 0. Returns ``V`` (t, M, k), ``lam`` (t, k) >= 0."""
    t, M, _ = G.shape
    if t == 0 or M == 0:
        return np.zeros((t, M, k)), np.zeros((t, k))
    S = 0.5 * (G + np.swapaxes(G, 1, 2))
    lam, V = np.linalg.eigh(S)
    lam, V = lam[:, ::-1], V[:, :, ::-1]
    lam = np.maximum(lam, 0.0)
    return _pad_cols(V, k, 2), _pad_cols(lam, k, 1)


def _orth(Y: np.ndarray) -> np.ndarray:
    return np.linalg.qr(Y)[0]


def _range_finder_svd(
    M: Any, k: int, q: int, oversample: int,
    init: tuple[np.ndarray, np.ndarray] | None, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The randomized SVD of one matrix (a, b) (array or operator) or of a stack (t, a, b):
    the same steps, batched over the leading axis of a stack (numpy's ``@``, ``qr`` and
    ``svd`` broadcast); one test matrix shared by the blocks of a stack."""
    stack = isinstance(M, np.ndarray) and M.ndim == 3
    MT = np.swapaxes(M, 1, 2) if stack else M.T
    a, b = M.shape[-2:]
    ell = min(k + oversample, a, b)
    j = 0 if init is None else init[0].shape[-1]
    Om = rng.standard_normal((b, max(ell - j, 1)))
    if stack:
        Om = np.broadcast_to(Om, (M.shape[0], *Om.shape))
    if j:
        Om = np.concatenate([init[1], Om], axis=-1)
    Y = M @ Om
    for _ in range(q):
        Y = M @ _orth(MT @ _orth(Y))
    if j:
        Y = np.concatenate([init[0], Y], axis=-1)
    Q = _orth(Y)
    Us, s, Vt = np.linalg.svd(np.swapaxes(Q, -1, -2) @ M, full_matrices=False)
    return (_pad_cols(Q @ Us, k, -1), _pad_cols(s, k, -1),
            _pad_cols(np.swapaxes(Vt, -1, -2), k, -1))


def batched_randomized_svd(
    G: np.ndarray,
    k: int,
    *,
    q: int = 2,
    oversample: int = 10,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched twin of :func:`randomized_svd` for a stack ``G`` (t, M, N); ``init`` =
    ``(Bp, Cp)`` (t, M, j), (t, N, j). Returns ``U`` (t, M, k), ``s`` (t, k), ``V`` (t, N, k)."""
    rng = np.random.default_rng(0) if rng is None else rng
    return _range_finder_svd(np.asarray(G), k, q, oversample, init, rng)


def randomized_svd(
    M: Any,
    k: int,
    *,
    q: int = 2,
    oversample: int = 10,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` SVD of ``M`` (a, b) (an array or a ``LinearOperator``) by a randomized range
    finder, reading ``M`` 2(q+1) times.

    ``init = (B0, C0)`` (a, j) and (b, j): a warm start; ``C0`` joins the test matrix and
    ``B0`` the final range, so the best rank-k approximation returned is at least as good as
    ``B0 C0^T``. Returns ``U`` (a, k), ``s`` (k,), ``V`` (b, k).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    if isinstance(M, np.ndarray) and M.ndim != 2:
        raise ValueError(f"randomized_svd takes one matrix, got shape {M.shape}")
    return _range_finder_svd(M, k, q, oversample, init, rng)


def randomized_psd_eig(
    M: np.ndarray,
    k: int,
    *,
    q: int = 2,
    oversample: int = 10,
    init: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs (negative eigenvalues clipped) of the symmetric part of ``M``
    (a, a) by subspace iteration; ``init`` (a, j) is kept in the subspace (warm start).
    Returns ``V`` (a, k), ``lam`` (k,) >= 0."""
    rng = np.random.default_rng(0) if rng is None else rng
    a = M.shape[0]
    ell = min(k + oversample, a)
    j = 0 if init is None else init.shape[1]
    Om = rng.standard_normal((a, max(ell - j, 1)))
    if j:
        Om = np.hstack([init, Om])
    Q = _orth(Om)
    for _ in range(q + 1):
        Y = M @ Q
        Q = _orth(np.hstack([init, Y]) if j else Y)
    T = Q.T @ (M @ Q)
    T = 0.5 * (T + T.T)
    lam, W = np.linalg.eigh(T)
    lam, W = lam[::-1], W[:, ::-1]
    V = Q @ W
    return _pad_cols(V, k, 1), _pad_cols(np.maximum(lam, 0.0), k, 0)


def block_svd(
    M: np.ndarray,
    k: int,
    *,
    exact_max: int = 400,
    q: int = 2,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` SVD of one block: dense LAPACK when ``min(M.shape) <= exact_max`` or ``k`` is
    close to it, randomized otherwise; zeros for an exactly zero block."""
    a, b = M.shape
    if not np.any(M):
        return np.zeros((a, k)), np.zeros(k), np.zeros((b, k))
    if min(a, b) <= max(exact_max, 4 * (k + 10)):
        U, s, V = batched_svd(M[None], k)
        return U[0], s[0], V[0]
    return randomized_svd(M, k, q=q, init=init, rng=rng)


def block_psd_eig(
    M: np.ndarray,
    k: int,
    *,
    exact_max: int = 400,
    q: int = 2,
    init: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """PSD twin of :func:`block_svd` for a square (symmetric) block."""
    a = M.shape[0]
    if not np.any(M):
        return np.zeros((a, k)), np.zeros(k)
    if a <= max(exact_max, 4 * (k + 10)):
        V, lam = batched_psd_eig(M[None], k)
        return V[0], lam[0]
    return randomized_psd_eig(M, k, q=q, init=init, rng=rng)
