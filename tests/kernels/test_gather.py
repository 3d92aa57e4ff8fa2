import numpy as np
from hypothesis import given
from hypothesis import strategies as hst

from mlr_dask.kernels import gather as bo


def _bounds(rng, n, p):
    cuts = np.sort(rng.choice(np.arange(1, n), size=p - 1, replace=False))
    return np.concatenate(([0], cuts, [n])).astype(np.int64)


@given(hst.integers(0, 10_000), hst.integers(1, 6))
def test_gather_scatter_match_numpy(seed, p):
    rng = np.random.default_rng(seed)
    m, n = p + int(rng.integers(0, 12)), p + int(rng.integers(0, 12))
    rb, cb = _bounds(rng, m, p), _bounds(rng, n, p)
    R = rng.standard_normal((m, n))
    idx = np.sort(rng.choice(p, size=int(rng.integers(1, p + 1)), replace=False)).astype(np.int64)
    BM, BN = int(np.diff(rb)[idx].max()), int(np.diff(cb)[idx].max())
    G = bo.gather_blocks(R, rb, cb, idx, BM, BN)
    np.testing.assert_array_equal(G, bo.gather_blocks_numpy(R, rb, cb, idx, BM, BN))
    G2 = rng.standard_normal(G.shape)
    np.testing.assert_array_equal(bo.scatter_blocks(R.copy(), rb, cb, idx, G2),
                                  bo.scatter_blocks_numpy(R.copy(), rb, cb, idx, G2))
    F = rng.standard_normal((m, 3))
    Fp = bo.gather_rows(F, rb, idx, BM)
    np.testing.assert_array_equal(Fp, bo.gather_rows_numpy(F, rb, idx, BM))
    Fp2 = rng.standard_normal(Fp.shape)
    np.testing.assert_array_equal(bo.scatter_rows(F.copy(), rb, idx, Fp2),
                                  bo.scatter_rows_numpy(F.copy(), rb, idx, Fp2))


def test_gather_pads_with_zeros_and_scatter_round_trips(rng):
    rb = np.array([0, 2, 5], dtype=np.int64)
    cb = np.array([0, 3, 4], dtype=np.int64)
    R = rng.standard_normal((5, 4))
    idx = np.array([0, 1], dtype=np.int64)
    G = bo.gather_blocks(R, rb, cb, idx, 3, 3)
    np.testing.assert_array_equal(G[0, :2, :3], R[:2, :3])
    assert np.all(G[0, 2] == 0) and np.all(G[1, :, 1:] == 0)
    out = bo.scatter_blocks(np.zeros_like(R), rb, cb, idx, G)
    mask = np.zeros_like(R, dtype=bool)
    mask[:2, :3] = mask[2:, 3:] = True
    np.testing.assert_array_equal(out[mask], R[mask])
    assert np.all(out[~mask] == 0)
