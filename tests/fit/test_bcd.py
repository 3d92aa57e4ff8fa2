import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from mlr_dask.datasets.mlr import mlr_plus_noise
from mlr_dask.fit import fit_factors
from mlr_dask.fit.bcd import epoch_levels, epoch_order, fit_level, init_state, run_bcd
from mlr_dask.hierarchy import Hierarchy


def _pair(rng, m, n, levels):
    rows = Hierarchy.dyadic(m, levels)
    cols = Hierarchy.dyadic(n, levels)
    return rows.with_perm(rng.permutation(m)), cols.with_perm(rng.permutation(n))


def _dense_loss(A, M):
    return float(np.linalg.norm(A - M.to_dense()) ** 2)


@settings(max_examples=25)
@given(hst.integers(0, 10_000), hst.booleans(), hst.sampled_from([4, 10_000]))
def test_bcd_never_increases_loss_and_tracks_it(seed, psd, exact_max):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 70))
    m = n if psd else int(rng.integers(20, 70))
    rows = Hierarchy.random(m, 4, rng=rng, permute=False)
    bounds = rows.boundaries
    if psd:
        X = rng.standard_normal((n, n))
        Ap = X @ X.T / n
        cb = bounds
    else:
        Ap = rng.standard_normal((m, n))
        cb = [np.unique(np.round(b * n / m).astype(np.int64)) for b in bounds]
        if any(c.size != b.size for c, b in zip(cb, bounds, strict=True)):
            return  # a block would be empty on the column side
    caps = [int(min(np.diff(a).min(), np.diff(b).min())) for a, b in zip(bounds, cb, strict=True)]
    ranks = [int(rng.integers(0, c + 1)) for c in caps]
    st = init_state(Ap, bounds, cb, ranks, psd=psd, exact_max=exact_max, q=1, seed=seed)
    losses = [st.loss]
    for lvl in list(range(len(ranks))) + epoch_order(len(ranks)) * 2:
        fit_level(st, lvl)
        losses.append(st.loss)
    assert np.all(np.diff(losses) <= 1e-9 * losses[0] + 1e-12)
    tracked = st.loss
    assert abs(st.exact_loss() - tracked) <= 1e-8 * max(losses[0], 1e-300)
    # the residual equals A minus the model (dense reference)
    model = np.zeros_like(Ap)
    for lvl in range(len(ranks)):
        rb, c = bounds[lvl], cb[lvl]
        for k in range(rb.size - 1):
            model[rb[k]:rb[k + 1], c[k]:c[k + 1]] += (
                st.B[lvl][rb[k]:rb[k + 1]] @ st.C[lvl][c[k]:c[k + 1]].T)
    np.testing.assert_allclose(st.R, Ap - model, atol=1e-10 * np.abs(Ap).max())


@pytest.mark.parametrize("shape", [(60, 45), (120, 120)])
def test_one_level_is_truncated_svd(rng, shape):
    A = rng.standard_normal(shape)
    r = 7
    M = fit_factors(A, Hierarchy([[0, shape[0]]]), Hierarchy([[0, shape[1]]]), [r])
    s = np.linalg.svd(A, compute_uv=False)
    best = np.sqrt((s[r:] ** 2).sum()) / np.linalg.norm(A)
    err = np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)
    assert abs(err - best) <= 1e-10
    assert abs(M.history_["rel_error"][-1] - best) <= 1e-10


def test_one_level_randomized_path_is_truncated_svd(rng):
    U = np.linalg.qr(rng.standard_normal((500, 40)))[0]
    V = np.linalg.qr(rng.standard_normal((450, 40)))[0]
    A = (U * 0.8 ** np.arange(40)) @ V.T
    st = init_state(A, [np.array([0, 500])], [np.array([0, 450])], [5], exact_max=50, q=3)
    run_bcd(st, max_iter=5, tol=0)
    s = np.linalg.svd(A, compute_uv=False)
    best = np.sqrt((s[5:] ** 2).sum()) / np.linalg.norm(A)
    assert abs(st.rel_error - best) <= 1e-10


@pytest.mark.parametrize("psd", [False, True])
def test_mlr_plus_noise_reaches_noise_level(psd):
    rng = np.random.default_rng(3)
    if psd:
        rows = Hierarchy.dyadic(600, 4)
        rows = rows.refine(rows.block_sizes(-1)).with_perm(rng.permutation(600))
        ranks = [3, 2, 2, 1, 1]
        from mlr_dask.mlr import MLRMatrix

        truth = MLRMatrix.random(rows, None, ranks, rng=rng)
        T = truth.to_dense()
        E = rng.standard_normal(T.shape)
        E = (E + E.T) / 2
        E *= 0.05 * np.linalg.norm(T) / np.linalg.norm(E)
        A = T + E
        cols = rows
    else:
        truth, A = mlr_plus_noise(600, 500, rank=8, n_levels=5, noise=0.05, rng=3)
        rows, cols, ranks = truth.rows, truth.cols, truth.ranks
        E = A - truth.to_dense()
    noise_rel = np.linalg.norm(E) / np.linalg.norm(A)
    M = fit_factors(A, rows, cols, ranks, psd=psd, max_iter=300, tol=1e-7)
    err = np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)
    # the storage is a few % of m n, so the fit can absorb only a few % of the noise energy
    assert abs(err - noise_rel) <= 0.02 * noise_rel
    if psd:
        assert M.symmetric
        ev = np.linalg.eigvalsh(M.to_dense())
        assert ev.min() >= -1e-10 * ev.max()


def test_psd_fit_of_indefinite_target_is_psd(rng):
    X = rng.standard_normal((64, 64))
    A = X + X.T
    h = Hierarchy.dyadic(64, 3)
    M = fit_factors(A, h, h, [3, 2, 2], psd=True)
    ev = np.linalg.eigvalsh(M.to_dense())
    assert ev.min() >= -1e-10 * max(ev.max(), 1.0)
    # a PSD fit can only use the positive part: error at least that of A's negative part
    w = np.linalg.eigvalsh(A)
    neg = np.sqrt((w[w < 0] ** 2).sum())
    assert np.linalg.norm(A - M.to_dense()) >= neg - 1e-9


def test_als_and_bcd_agree(rng):
    truth, A = mlr_plus_noise(96, 80, rank=10, n_levels=4, noise=0.1, rng=5)
    res = {}
    for method in ("bcd", "als"):
        M = fit_factors(A, truth.rows, truth.cols, truth.ranks, method=method, max_iter=500,
                        tol=1e-9)
        res[method] = np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)
        h = M.history_["rel_error"]
        assert np.all(np.diff(h) <= 1e-12)
    assert abs(res["als"] - res["bcd"]) <= 0.01 * res["bcd"]


def test_rank_larger_than_block_is_refused(rng):
    from mlr_dask.errors import InputError

    h = Hierarchy.dyadic(16, 3)
    with pytest.raises(InputError, match="smallest block"):
        fit_factors(rng.standard_normal((16, 16)), h, h, [1, 1, 5])


def test_epoch_levels_drop_the_repeated_root():
    assert epoch_levels(4, 1) == [0, 1, 2, 3, 2, 1, 0] == epoch_order(4)
    assert epoch_levels(4, 2) == [1, 2, 3, 2, 1, 0]
    assert epoch_levels(1, 5) == [0]


def test_refitting_the_level_just_fitted_changes_nothing(rng):
    """Why run_bcd skips level 0 at the start of its second and later epochs: with the others
    fixed, the level's subproblem is the one just solved (exactly, with dense SVDs)."""
    truth, A = mlr_plus_noise(64, 48, rank=7, n_levels=4, noise=0.1, rng=3)
    Ah = A[truth.rows.perm][:, truth.cols.perm]
    st = init_state(Ah, truth.rows.boundaries, truth.cols.boundaries, truth.ranks)
    run_bcd(st, max_iter=2, tol=0.0)
    before, B0 = st.loss, st.B[0].copy() @ st.C[0].T
    fit_level(st, 0)
    assert st.loss == pytest.approx(before, rel=1e-10)
    np.testing.assert_allclose(st.B[0] @ st.C[0].T, B0, atol=1e-10)


def test_merged_batches_match_a_per_block_dense_svd(rng):
    """Uneven small blocks fall into few padded batches; the level fit still equals the
    truncated SVD of every block, and the predicted gains its next singular values."""
    from mlr_dask.fit.bcd import _buckets, _plan, merge_buckets

    m, n, r = 150, 130, 2
    rb = np.concatenate(([0], np.sort(rng.choice(np.arange(1, m), 24, replace=False)), [m]))
    cb = np.concatenate(([0], np.sort(rng.choice(np.arange(1, n), 24, replace=False)), [n]))
    bm, bn = np.diff(rb), np.diff(cb)
    caps = np.minimum(bm, bn)
    Ap = rng.standard_normal((m, n))
    st = init_state(Ap, [np.array([0, m]), rb], [np.array([0, n]), cb], [0, r])
    fine = _buckets(np.arange(bm.size), bm, bn)
    merged = merge_buckets(fine, bm, bn)
    assert len(merged) < len(fine)
    assert np.array_equal(np.sort(np.concatenate(merged)), np.arange(bm.size))
    batches, big = _plan(st, 1, r, st.exact_max)
    assert big.size == 0 and len(batches) == len(merged)
    fit_level(st, 1)
    dplus = 0.0
    for k in range(bm.size):
        blk = Ap[rb[k]:rb[k + 1], cb[k]:cb[k + 1]]
        U, s, Vt = np.linalg.svd(blk, full_matrices=False)
        kk = min(r, caps[k])
        best = (U[:, :kk] * s[:kk]) @ Vt[:kk]
        got = st.B[1][rb[k]:rb[k + 1]] @ st.C[1][cb[k]:cb[k + 1]].T
        np.testing.assert_allclose(got, best, atol=1e-10)
        dplus += s[r] ** 2 if s.size > r else 0.0
    np.testing.assert_allclose(st.delta_plus[1], dplus, rtol=1e-10)
    np.testing.assert_allclose(st.loss, np.sum(st.R**2), rtol=1e-10)


@pytest.mark.parametrize(("psd", "n"), [(False, 400), (False, 600), (True, 600)])
def test_randomized_gains_converge_to_the_exact_tail(rng, psd, n):
    # one n x n block on the randomized path (batched at 400, alone at 600): the next
    # GAIN_DEPTH singular values of the level (its side output) come from a sketch; the stored
    # tail vectors join the next warm start, so refitting the unchanged level converges to
    # the dense values
    from mlr_dask.fit.bcd import GAIN_DEPTH

    U = np.linalg.qr(rng.standard_normal((n, 60)))[0]
    V = U if psd else np.linalg.qr(rng.standard_normal((n, 60)))[0]
    A = (U * 0.93 ** np.arange(60)) @ V.T + 1e-3 * rng.standard_normal((n, n))
    if psd:
        A = 0.5 * (A + A.T)
    r = 4
    st = init_state(A, [np.array([0, n])], [np.array([0, n])], [r], exact_max=20, q=0,
                    psd=psd)
    fit_level(st, 0)
    if psd:
        lam = np.linalg.eigvalsh(A)[::-1]
        exact = np.maximum(lam[r:r + GAIN_DEPTH], 0) ** 2
    else:
        exact = np.linalg.svd(A, compute_uv=False)[r:r + GAIN_DEPTH] ** 2
    first = np.abs(st.gains[0] - exact).max() / exact[0]
    assert np.any(st.tail_B[0])
    for _ in range(15):
        fit_level(st, 0)
    last = np.abs(st.gains[0] - exact).max() / exact[0]
    assert last < 1e-3 < first
    # the tail columns are unit vectors orthogonal to the level's factors
    T = st.tail_B[0]
    np.testing.assert_allclose(np.linalg.norm(T, axis=0), 1.0, atol=1e-8)
    assert np.abs(T.T @ st.B[0]).max() < 1e-6 * np.abs(st.B[0]).max()
