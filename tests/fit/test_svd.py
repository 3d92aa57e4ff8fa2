import numpy as np
import pytest

from mlr_dask.fit import svd


def _lowrank(rng, m, n, r, decay=0.5):
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return (U * decay ** np.arange(r)) @ V.T


def test_batched_svd_matches_numpy(rng):
    G = rng.standard_normal((5, 7, 4))
    U, s, V = svd.batched_svd(G, 6)
    assert U.shape == (5, 7, 6) and s.shape == (5, 6) and V.shape == (5, 4, 6)
    for t in range(5):
        ref = np.linalg.svd(G[t], compute_uv=False)
        np.testing.assert_allclose(s[t, :4], ref, rtol=1e-12)
        assert np.all(s[t, 4:] == 0)
        np.testing.assert_allclose((U[t] * s[t]) @ V[t].T, G[t], atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 1, 5), (6, 5, 1)])
def test_batched_svd_vectors(rng, shape):
    G = rng.standard_normal(shape)
    G[0] = 0
    U, s, V = svd.batched_svd(G, 2)
    np.testing.assert_allclose(np.einsum("tik,tk,tjk->tij", U, s, V), G, atol=1e-12)
    assert np.all(s[0] == 0)


def test_randomized_svd_exact_on_low_rank(rng):
    M = _lowrank(rng, 300, 250, 8)
    U, s, V = svd.randomized_svd(M, 8, q=1, rng=rng)
    np.testing.assert_allclose(s, np.linalg.svd(M, compute_uv=False)[:8], rtol=1e-8)
    np.testing.assert_allclose((U * s) @ V.T, M, atol=1e-10)


def test_randomized_svd_warm_start_never_worse(rng):
    M = rng.standard_normal((200, 180))
    U, s, V = np.linalg.svd(M)
    B0 = U[:, :5] * np.sqrt(s[:5])
    C0 = V[:5].T * np.sqrt(s[:5])
    best = np.linalg.norm(M - B0 @ C0.T)
    for seed in range(5):
        U2, s2, V2 = svd.randomized_svd(M, 5, q=0, oversample=2, init=(B0, C0),
                                        rng=np.random.default_rng(seed))
        assert np.linalg.norm(M - (U2 * s2) @ V2.T) <= best * (1 + 1e-12)


def test_batched_randomized_matches_single(rng):
    G = np.stack([_lowrank(rng, 80, 70, 6) for _ in range(3)])
    U, s, V = svd.batched_randomized_svd(G, 6, q=1)
    for t in range(3):
        np.testing.assert_allclose((U[t] * s[t]) @ V[t].T, G[t], atol=1e-10)


def test_psd_eig_clips_negative(rng):
    X = rng.standard_normal((30, 30))
    S = X + X.T
    V, lam = svd.batched_psd_eig(S[None], 30)
    assert np.all(lam >= 0)
    ev = np.linalg.eigvalsh(S)
    np.testing.assert_allclose(np.sort(lam[0])[::-1][: (ev > 0).sum()],
                               np.sort(ev[ev > 0])[::-1], rtol=1e-10)
    Vr, lr = svd.randomized_psd_eig(S, 4, q=3, rng=rng)
    assert np.all(lr >= 0)


def test_zero_block_gives_zero_factors():
    U, s, V = svd.block_svd(np.zeros((500, 400)), 3)
    assert not np.any(U) and not np.any(s) and not np.any(V)
    V2, lam = svd.block_psd_eig(np.zeros((500, 500)), 3)
    assert not np.any(V2) and not np.any(lam)


def test_randomized_svd_operator_equals_array(rng):
    from scipy.sparse.linalg import aslinearoperator

    M = _lowrank(rng, 120, 90, 5) + 1e-3 * rng.standard_normal((120, 90))
    a = svd.randomized_svd(M, 5, q=1, rng=np.random.default_rng(3))
    b = svd.randomized_svd(aslinearoperator(M), 5, q=1, rng=np.random.default_rng(3))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-12)
    G = np.stack([M[:60, :45], M[60:, 45:]])
    U, s, V = svd.batched_randomized_svd(G, 5, q=1, rng=np.random.default_rng(3))
    U1, s1, V1 = svd.randomized_svd(G[1], 5, q=1, rng=np.random.default_rng(3))
    np.testing.assert_allclose(s[1], s1, rtol=1e-12)  # one test matrix, shared by the stack


@pytest.mark.parametrize("shape", [(5, 30, 20), (3, 20, 31), (1, 128, 128), (4, 2, 9)])
@pytest.mark.parametrize("k", [1, 6, 40])
def test_batched_svd_gram_matches_the_dense_svd(rng, shape, k):
    from mlr_dask.fit.svd import batched_svd, batched_svd_gram

    t, M, N = shape
    # a decaying spectrum, like a residual block
    G = np.stack([(rng.standard_normal((M, min(M, N))) * 0.7 ** np.arange(min(M, N)))
                  @ rng.standard_normal((min(M, N), N)) for _ in range(t)])
    U, s, V = batched_svd_gram(G, k)
    U0, s0, V0 = batched_svd(G, k)
    assert U.shape == U0.shape and s.shape == s0.shape and V.shape == V0.shape
    scale = s0[:, :1]
    np.testing.assert_allclose(s, s0, atol=1e-9 * scale.max())
    # the rank-k approximations agree (vectors may differ in sign and within ties)
    for i in range(t):
        A = U[i] * s[i] @ V[i].T
        A0 = U0[i] * s0[i] @ V0[i].T
        np.testing.assert_allclose(A, A0, atol=1e-7 * scale[i, 0])
        big = s[i] > 1e-4 * scale[i, 0]
        for X in (U[i][:, big], V[i][:, big]):  # the divided side loses ~ eps s_1^2 / s_j^2
            np.testing.assert_allclose(X.T @ X, np.eye(big.sum()), atol=1e-6)


def test_batched_svd_gram_zero_and_rank_deficient_blocks(rng):
    from mlr_dask.fit.svd import batched_svd_gram

    G = np.zeros((3, 12, 9))
    G[1] = np.outer(rng.standard_normal(12), rng.standard_normal(9))
    U, s, V = batched_svd_gram(G, 4)
    assert np.all(s[0] == 0) and np.all(U[0] == 0) and np.all(V[0] == 0)
    assert s[1, 0] > 0 and np.all(s[1, 1:] == 0) and np.all(U[1][:, 1:] == 0)
    np.testing.assert_allclose(U[1] * s[1] @ V[1].T, G[1], atol=1e-12)
