import numpy as np

from mlr_dask.datasets.mlr import mlr_plus_noise
from mlr_dask.fit.bcd import init_state, run_bcd
from mlr_dask.fit.ranks import allocate_ranks, grow_ranks, move_rank, rank_caps


def _state(ranks, seed=0):
    truth, A = mlr_plus_noise(160, 128, ranks=[6, 1, 4, 1], n_levels=4, noise=0.02, rng=seed)
    Ap = A[truth.rows.perm][:, truth.cols.perm]
    st = init_state(Ap, truth.rows.boundaries, truth.cols.boundaries, ranks)
    run_bcd(st, max_iter=3, tol=0)
    return st


def test_allocation_never_worse_and_improves_bad_start():
    st = _state([1, 6, 1, 4])
    start = st.loss
    out, moves = allocate_ranks(st, n_jobs=2, eps=1e-6)
    assert out.loss <= start
    assert sum(out.ranks) == 12
    assert len(moves) >= 1 and out.loss < 0.9 * start
    for m in moves:
        assert set(m) == {"step", "src", "dst", "rel_error", "ranks"}
    errs = [st.rel_error] + [m["rel_error"] for m in moves]
    assert np.all(np.diff(errs) < 0)
    caps = rank_caps(out.rb, out.cb)
    assert all(0 <= r <= c for r, c in zip(out.ranks, caps, strict=True))


def test_allocation_sequential_equals_parallel():
    a, _ = allocate_ranks(_state([1, 6, 1, 4]), n_jobs=1, max_steps=3)
    b, _ = allocate_ranks(_state([1, 6, 1, 4]), n_jobs=2, max_steps=3)
    assert a.ranks == b.ranks
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)


def test_allocation_from_good_start_is_not_worse():
    st = _state([6, 1, 4, 1])
    start = st.loss
    out, _ = allocate_ranks(st)
    assert out.loss <= start


def test_move_rank_keeps_residual_consistent():
    st = _state([3, 3, 3, 3])
    move_rank(st, 1, 0)
    assert st.ranks == [4, 2, 3, 3]
    assert [b.shape[1] for b in st.B] == st.ranks
    Ap = st.R.copy()
    for lvl in range(4):
        rb, cb = st.rb[lvl], st.cb[lvl]
        for k in range(rb.size - 1):
            Ap[rb[k]:rb[k + 1], cb[k]:cb[k + 1]] += (
                st.B[lvl][rb[k]:rb[k + 1]] @ st.C[lvl][cb[k]:cb[k + 1]].T)
    st2 = init_state(Ap, st.rb, st.cb, st.ranks, B=st.B, C=st.C)
    np.testing.assert_allclose(st2.R, st.R, atol=1e-10)


def test_move_rank_from_pool_adds_a_rank():
    st = _state([3, 3, 3, 0])
    before = st.loss
    move_rank(st, None, 1)
    assert st.ranks == [3, 4, 3, 0] and st.B[1].shape[1] == 4 and st.C[1].shape[1] == 4
    assert st.loss < before


def test_growth_reaches_total_with_decreasing_loss():
    st = _state([0, 0, 0, 1])
    start = st.loss
    caps = rank_caps(st.rb, st.cb)
    for n_trials in (1, 3):
        out, steps = grow_ranks(st.copy(), 12, n_trials=n_trials, n_jobs=2)
        assert sum(out.ranks) == 12 and len(steps) == 11
        assert all(0 <= r <= c for r, c in zip(out.ranks, caps, strict=True))
        errs = [st.rel_error] + [s["rel_error"] for s in steps]
        assert np.all(np.diff(errs) < 0) and out.loss < start
        assert all(s["src"] is None for s in steps)
        assert [b.shape[1] for b in out.B] == out.ranks == steps[-1]["ranks"]


def test_pick_by_gains_takes_the_largest_gains_within_caps():
    from mlr_dask.fit.ranks import pick_by_gains

    gains = np.array([[9.0, 5.0, 1.0, 0.5], [8.0, 7.0, 6.0, 0.1], [3.0, 2.0, 2.0, 2.0]])
    add = pick_by_gains(gains, [0, 0, 0], [10, 10, 10], 4)
    assert add.tolist() == [1, 3, 0]  # 9, 8, 7, 6
    add = pick_by_gains(gains, [0, 9, 0], [10, 10, 10], 4)  # level 1 has room for one
    assert add.tolist() == [2, 1, 1]  # 9, 8, 5, 3
    # past the curve's depth a level's last gain repeats
    assert pick_by_gains(gains, [0, 0, 0], [1, 1, 10], 6).tolist() == [1, 1, 4]


def test_grow_by_gains_reaches_the_total_and_never_goes_up():
    from mlr_dask.fit.ranks import grow_by_gains

    st = _state([0, 0, 0, 1])
    start = st.loss
    out, steps = grow_by_gains(st, 12)
    assert sum(out.ranks) == 12 and len(steps) == 11
    errs = [np.sqrt(start / out.norm2)] + [s["rel_error"] for s in steps]
    assert np.all(np.diff(errs) <= 1e-12)
    caps = rank_caps(out.rb, out.cb)
    assert all(0 <= r <= c for r, c in zip(out.ranks, caps, strict=True))
    # bounded: the last of max_steps adds all that is left
    out, steps = grow_by_gains(_state([0, 0, 0, 1]), 12, max_steps=3)
    assert sum(out.ranks) == 12 and len(steps) == 3


def test_exchange_never_worse_and_fixes_a_bad_start():
    from mlr_dask.fit.ranks import exchange_ranks

    st = _state([1, 6, 1, 4])
    start = st.loss
    out, moves = exchange_ranks(st, eps=1e-6, max_steps=40, threads=2)
    assert out.loss <= start and sum(out.ranks) == 12
    assert len(moves) >= 1 and out.loss < 0.9 * start
    errs = [np.sqrt(start / out.norm2)] + [m["rel_error"] for m in moves]
    assert np.all(np.diff(errs) < 0)
    np.testing.assert_allclose(out.loss, np.sum(out.R**2), rtol=1e-9)
    a, _ = exchange_ranks(_state([1, 6, 1, 4]), max_steps=3, threads=1)
    b, _ = exchange_ranks(_state([1, 6, 1, 4]), max_steps=3, threads=2)
    assert a.ranks == b.ranks
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)
