import numpy as np

from mlr_dask.datasets.mlr import mlr_plus_noise
from mlr_dask.fit.bcd import init_state, run_bcd
from mlr_dask.fit.ranks import move_rank, rank_caps


def _state(ranks, seed=0):
    truth, A = mlr_plus_noise(160, 128, ranks=[6, 1, 4, 1], n_levels=4, noise=0.02, rng=seed)
    Ap = A[truth.rows.perm][:, truth.cols.perm]
    st = init_state(Ap, truth.rows.boundaries, truth.cols.boundaries, ranks)
    run_bcd(st, max_iter=3, tol=0)
    return st


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


def _rebuilt_residual(st, Ap):
    R = Ap.copy()
    for lvl in range(len(st.ranks)):
        rb, cb = st.rb[lvl], st.cb[lvl]
        for k in range(rb.size - 1):
            R[rb[k]:rb[k + 1], cb[k]:cb[k + 1]] -= (
                st.B[lvl][rb[k]:rb[k + 1]] @ st.C[lvl][cb[k]:cb[k + 1]].T)
    return R


def test_grow_trials_keep_the_residual_consistent_and_match_across_threads():
    from mlr_dask.fit.ranks import grow_by_gains

    st = _state([0, 0, 0, 1])
    Ap = st.R - _rebuilt_residual(st, np.zeros_like(st.R))  # the target: R + sum of A_l
    a, steps = grow_by_gains(st.copy(), 12, n_trials=3, threads=1, trial_ratio=0.0)
    assert sum(a.ranks) == 12 and all(s["trials"] >= 2 for s in steps[:-1])
    # the trial copies reuse buffers: the residual is still the target less the factors
    np.testing.assert_allclose(a.R, _rebuilt_residual(a, Ap), atol=1e-9)
    b, _ = grow_by_gains(st.copy(), 12, n_trials=3, threads=2, trial_ratio=0.0)
    assert a.ranks == b.ranks
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)
    # trials only where the predicted gains are close: never more trials, never below 1
    c, steps_c = grow_by_gains(st.copy(), 12, n_trials=3, threads=2)
    assert sum(c.ranks) == 12 and all(1 <= s["trials"] <= 3 for s in steps_c)
    errs = [s["rel_error"] for s in steps_c]
    assert np.all(np.diff(errs) <= 1e-12)


def test_state_copy_into_a_buffer_equals_a_plain_copy():
    st = _state([2, 1, 1, 1])
    buf = np.full_like(st.R, np.nan)
    a, b = st.copy(), st.copy(out=buf)
    assert b.R is buf
    np.testing.assert_array_equal(a.R, b.R)
    assert a.loss == b.loss and a.ranks == b.ranks
    b.B[0][:] = 0.0  # factors are not shared
    assert np.any(st.B[0])


def test_late_growth_trials_only_from_their_step():
    from mlr_dask.fit.ranks import grow_by_gains

    st = _state([0, 0, 0, 1])
    Ap = st.R - _rebuilt_residual(st, np.zeros_like(st.R))
    a, steps = grow_by_gains(st.copy(), 12, late_trials=3, late_from=5, threads=2,
                             trial_ratio=0.0)
    assert sum(a.ranks) == 12
    assert all(s["trials"] == 1 for s in steps[:5])
    assert all(s["trials"] >= 2 for s in steps[5:])
    np.testing.assert_allclose(a.R, _rebuilt_residual(a, Ap), atol=1e-9)
    # the late steps are the steps of n_trials=3 from there on: the same path
    b, _ = grow_by_gains(st.copy(), 12, late_trials=3, late_from=5, threads=1,
                         trial_ratio=0.0)
    assert a.ranks == b.ranks
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)
