"""standardize=True, hierarchy='learn' and ranks='auto'."""

import numpy as np
import pytest
from fm_dense import small_problem

from mlr_dask import InputError
from mlr_dask.fm import MultilevelFactorModel, select
from mlr_dask.hierarchy import Hierarchy


def test_standardize_reports_original_units(tmp_path):
    h, ranks, Y = small_problem(seed=2, n=24, N=80, levels=2, ranks=(2, 1))
    Y = Y * np.linspace(0.01, 100, h.n)
    m = MultilevelFactorModel(h, ranks, max_iter=15, standardize=True).fit(Y)
    s = Y.std(0)
    np.testing.assert_allclose(m.scale_, s, rtol=1e-12)
    ref = MultilevelFactorModel(h, ranks, max_iter=15).fit(Y / s)
    jac = np.log(s).sum()
    np.testing.assert_allclose(m.loglike_, np.array(ref.loglike_) - jac, rtol=1e-10)
    assert m.score(Y) == pytest.approx(ref.score(Y / s) - jac, rel=1e-10)
    assert m.loglike_[-1] == pytest.approx(m.score(Y), rel=1e-10)
    np.testing.assert_allclose(m.loadings_, ref.loadings_ * s[:, None], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.transform(Y), ref.transform(Y / s), rtol=1e-8, atol=1e-10)
    m.save(tmp_path / "m.zarr")
    m2 = MultilevelFactorModel.load(tmp_path / "m.zarr")
    np.testing.assert_allclose(m2.scale_, s)
    assert m2.score(Y) == pytest.approx(m.score(Y), rel=1e-12)


def _blocks(seed=0, N=300, sizes=(6, 6, 6, 6)):
    """Features in 4 correlated blocks (two pairs of blocks share a factor), shuffled."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    Y = 0.3 * rng.standard_normal((N, 1)) @ rng.standard_normal((1, n))
    starts = np.cumsum((0, *sizes))
    for pair in ((0, 1), (2, 3)):
        a, b = starts[pair[0]], starts[pair[1] + 1]
        Y[:, a:b] += rng.standard_normal((N, 1)) * rng.uniform(0.5, 0.8, b - a)
    for k in range(len(sizes)):
        a, b = starts[k], starts[k + 1]
        Y[:, a:b] += rng.standard_normal((N, 1)) * rng.uniform(1.0, 1.5, b - a)
    Y += 0.5 * rng.standard_normal((N, n))
    perm = rng.permutation(n)
    block = np.repeat(np.arange(len(sizes)), sizes)
    return Y[:, perm], block[perm]


def test_learned_hierarchy_finds_the_blocks():
    Y, block = _blocks()
    h = select.learn_hierarchy(Y, 3)
    assert h.n_levels == 3 and h.n_blocks[1] == 2 and h.n_blocks[2] == 4
    groups = h.block_of(2)[h.iperm]  # group of each original feature at the finest level
    for g in range(4):  # every learned group holds exactly one true block
        assert len(set(block[groups == g])) == 1
    m = MultilevelFactorModel("learn", [1, 1, 1], levels=3, max_iter=100).fit(Y)
    assert m.hierarchy_ == h
    flat = MultilevelFactorModel(ranks=3, max_iter=100).fit(Y)
    assert m.score(Y) > flat.score(Y) - 1.0  # same parameter budget order, no worse


def test_learn_needs_levels():
    Y, _ = _blocks()
    with pytest.raises(InputError, match="levels"):
        MultilevelFactorModel("learn", 1).fit(Y)


def test_auto_ranks_greedy_by_held_out_likelihood():
    Y, block = _blocks(seed=1, N=400)
    h = Hierarchy.from_labels([block])
    m = MultilevelFactorModel(h, "auto", max_iter=200, random_state=0).fit(Y)
    trials = m.rank_trials_
    taken = [t for t in trials if t["accepted"]]  # the move taken in each round
    best = max(taken, key=lambda t: t["validation"])
    # the model is refitted on all the data with the best choice seen
    assert best["group_ranks"] == [g.tolist() for g in m.group_ranks_]
    K = select.n_folds(Y.shape[0])
    # the shrinkage for the K/(K-1) times larger data: the same prior weight in samples
    assert m.shrinkage_ == pytest.approx(best["shrinkage"] * (K - 1) / K, rel=1e-12)
    assert all(t["validation"] <= best["validation"] + select.MIN_GAIN for t in trials
               if t["shrinkage"] == best["shrinkage"])
    # the truth has one global factor, two pair factors (no level of their own here: the
    # root takes them) and one factor per block
    assert m.ranks_[1] == 1 and m.ranks_[0] >= 1
    assert any(not t["accepted"] for t in trials)  # it stopped when no move paid
    moves = {t["move"].split()[0] for t in trials}
    assert {"start", "level", "shrinkage"} <= moves
    assert any("group" in t["move"] for t in trials)  # per-group moves were tried


def test_auto_ranks_per_group_where_it_pays():
    """Four groups of 8 features: the first has three factors of its own, the others one; the
    per-group phase gives the first group more factors than the other groups of its level."""
    rng = np.random.default_rng(4)
    N, sizes = 300, (8, 8, 8, 8)
    n = sum(sizes)
    Y = 0.6 * rng.standard_normal((N, 1)) @ rng.standard_normal((1, n))
    starts = np.cumsum((0, *sizes))
    for k in range(4):
        a, b = starts[k], starts[k + 1]
        r = 3 if k == 0 else 1
        Y[:, a:b] += rng.standard_normal((N, r)) @ rng.standard_normal((r, b - a))
    Y += 0.5 * rng.standard_normal((N, n))
    block = np.repeat(np.arange(4), sizes)
    h = Hierarchy.from_labels([block])
    m = MultilevelFactorModel(h, "auto", max_iter=500, random_state=0).fit(Y)
    g = m.group_ranks_[1]
    assert g[0] > g[1:].max(), m.group_ranks_
    assert any("group" in t["move"] and t["accepted"] for t in m.rank_trials_)


def test_auto_ranks_choice_is_stable_across_fold_draws():
    Y, block = _blocks(seed=1, N=400)
    h = Hierarchy.from_labels([block])
    choices = []
    for seed in range(3):
        m = MultilevelFactorModel(h, "auto", max_iter=200, random_state=seed).fit(Y)
        choices.append((m.ranks_[0], np.asarray(m.group_ranks_[1])))
    # the draws of the folds move the choice by at most one factor per group: the root rank
    # and every block's rank within one of each other across the draws
    roots = [c[0] for c in choices]
    blocks = np.stack([c[1] for c in choices])
    assert max(roots) - min(roots) <= 1, choices
    assert np.all(blocks.max(axis=0) - blocks.min(axis=0) <= 1), choices
    assert np.all(blocks.max(axis=0) >= 1), choices  # every block keeps a factor of its own


def test_auto_ranks_trials_as_futures_give_the_same_choice():
    from distributed import Client

    Y, block = _blocks(seed=1, N=400)
    h = Hierarchy.from_labels([block])
    ref = MultilevelFactorModel(h, "auto", max_iter=200, random_state=0).fit(Y)
    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None):
        m = MultilevelFactorModel(h, "auto", max_iter=200, random_state=0).fit(Y)
    assert m.rank_trials_ == ref.rank_trials_ and m.ranks_ == ref.ranks_


def test_correlations_on_dask_and_with_nan_match_numpy():
    import dask.array as da

    Y, _ = _blocks(seed=2, N=120)
    C = select.correlations(da.from_array(Y, chunks=(50, 7)))
    np.testing.assert_allclose(C, np.corrcoef(Y.T), rtol=1e-10, atol=1e-12)
    Yn = Y.copy()
    Yn[3, 4] = np.nan
    Cn = select.correlations(Yn)
    assert np.all(np.isfinite(Cn)) and np.allclose(np.diag(Cn), 1.0)


def test_learn_and_auto_from_a_data_store_path(tmp_path):
    from mlr_dask.fm.data import generate_fm, write_fm

    prob = generate_fm(60, 300, 3, ranks=[2, 1], points=[2, 3])
    path = tmp_path / "fm.zarr"
    write_fm(path, prob)
    h = select.learn_hierarchy(str(path), 2)
    assert h == select.learn_hierarchy(prob.Y, 2)
    a = MultilevelFactorModel(None, "auto", max_iter=100, random_state=0).fit(str(path))
    b = MultilevelFactorModel(prob.hierarchy, "auto", max_iter=100, random_state=0).fit(prob.Y)
    assert a.ranks_ == b.ranks_ and a.shrinkage_ == b.shrinkage_
    assert [t["validation"] for t in a.rank_trials_] == pytest.approx(
        [t["validation"] for t in b.rank_trials_], rel=1e-6)
    assert a.score(prob.Y) == pytest.approx(b.score(prob.Y), rel=1e-6)
    c = MultilevelFactorModel("learn", "auto", levels=2, max_iter=100,
                              random_state=0).fit(str(path))
    assert c.hierarchy_.n_blocks[0] == 1 and c.hierarchy_.n_levels == 2


def test_auto_with_missing_values_searches_ranks_on_the_samples():
    Y, block = _blocks(seed=3, N=240)
    Y = Y.copy()
    Y[np.arange(0, 240, 40), np.arange(6)] = np.nan  # few missingness patterns: a fast test
    h = Hierarchy.from_labels([block])
    m = MultilevelFactorModel(h, "auto", max_iter=30, random_state=0).fit(Y)
    assert m.shrinkage_ == 0.0 and m.missing_
    assert {t["shrinkage"] for t in m.rank_trials_} == {0.0}
    assert len(m.rank_trials_) > 3 and np.isfinite(m.score(Y))
    with pytest.raises(InputError, match="complete data"):
        MultilevelFactorModel(h, "auto", shrinkage=0.1, max_iter=100).fit(Y)


def test_auto_ranks_keeps_factor_analysis_without_a_significant_gain(monkeypatch):
    """Root-only factors with heavy-tailed (t, 2 df) noise under a hierarchy of 4 groups with no
    structure of their own: the moves of the search drift to a factor of one group (mean gains
    over the folds), which is not significant against the factor analysis model of its root
    phase, so that model is returned."""
    rng = np.random.default_rng(9)
    N, n = 150, 16
    Y = rng.standard_normal((N, 3)) @ rng.standard_normal((3, n))
    Y += 0.7 * rng.standard_t(2, (N, n))
    h = Hierarchy.from_labels([np.arange(n) % 4])
    m = MultilevelFactorModel(h, "auto", max_iter=300, random_state=0).fit(Y)
    trials = m.rank_trials_
    ref = [t for t in trials if t["move"].startswith("shrinkage") and t["accepted"]][-1]
    chosen = [g.tolist() for g in m.group_ranks_]
    assert trials[-1]["move"] == "factor analysis kept" and trials[-1]["accepted"]
    assert trials[-1]["folds"] == ref["folds"]
    assert chosen == ref["group_ranks"] and chosen[1] == [0, 0, 0, 0]
    monkeypatch.setattr(select, "KEEP_FA", False)  # without the test: the drift is kept
    m2 = MultilevelFactorModel(h, "auto", max_iter=300, random_state=0).fit(Y)
    assert any(r > 0 for r in m2.group_ranks_[1])
