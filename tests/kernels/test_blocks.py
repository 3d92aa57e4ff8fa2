import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mlr_dask.kernels import block_matmat, block_matmat_numpy, segment_sum, segment_sum_numpy

from strategies import hierarchy_pairs


@given(hierarchy_pairs(max_levels=3), st.integers(0, 4), st.integers(1, 3), st.integers(0, 99))
def test_block_matmat_matches_twin(pair, r, t, seed):
    rows, cols = pair
    rng = np.random.default_rng(seed)
    lvl = rows.n_levels - 1
    B = rng.standard_normal((rows.n, r))
    C = rng.standard_normal((cols.n, r))
    X = rng.standard_normal((cols.n, t))
    out0 = rng.standard_normal((rows.n, t))
    a = block_matmat(B, C, X, rows.boundaries[lvl], cols.boundaries[lvl], out0.copy())
    b = block_matmat_numpy(B, C, X, rows.boundaries[lvl], cols.boundaries[lvl], out0.copy())
    assert np.allclose(a, b, atol=1e-12)
    # and against an explicit block loop
    ref = out0.copy()
    rb, cb = rows.boundaries[lvl], cols.boundaries[lvl]
    for k in range(rb.size - 1):
        ref[rb[k]:rb[k + 1]] += B[rb[k]:rb[k + 1]] @ (C[cb[k]:cb[k + 1]].T @ X[cb[k]:cb[k + 1]])
    assert np.allclose(a, ref, atol=1e-12)


@given(hierarchy_pairs(max_levels=3), st.integers(1, 4), st.integers(0, 99))
def test_segment_sum_matches_twin(pair, q, seed):
    h, _ = pair
    X = np.random.default_rng(seed).standard_normal((h.n, q))
    for b in h.boundaries:
        assert np.allclose(segment_sum(X, b), segment_sum_numpy(X, b), atol=1e-12)
        assert segment_sum(X, b).shape == (b.size - 1, q)
