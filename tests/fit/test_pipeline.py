import json
import sys
import types

import numpy as np
import pytest

import mlr_dask.fit.pipeline as pipeline
from mlr_dask.datasets.matrices import radial_kernel
from mlr_dask.datasets.mlr import mlr_plus_noise
from mlr_dask.fit import Allocation, fit_mlr


def _rel(A, M):
    return np.linalg.norm(A - M.to_dense()) / np.linalg.norm(A)


def test_baselines_match_dense_reference():
    A = radial_kernel(70, 60, seed=2)
    LR, lr_err, D, d_err = pipeline.lowrank_baselines(A, 6)
    assert LR.rank == 6 and D.rank == 6 and LR.storage == D.storage == (70 + 60) * 6
    assert abs(_rel(A, LR) - lr_err) < 1e-10
    assert abs(_rel(A, D) - d_err) < 1e-10
    s = np.linalg.svd(A, compute_uv=False)
    exact = np.sqrt(np.sum(s[6:] ** 2) / np.sum(s**2))
    assert lr_err <= exact * (1 + 1e-3)
    # BCD from the rank-5 truncated SVD plus a zero diagonal: never worse than that start
    assert d_err <= np.sqrt(np.sum(s[5:] ** 2) / np.sum(s**2)) * (1 + 1e-3)


def test_lowrank_plus_diagonal_wins_and_is_returned():
    # a sample covariance of white noise: identity-like, the diagonal carries the energy
    rng = np.random.default_rng(11)
    X = rng.standard_normal((64, 200))
    S = X @ X.T / 200
    M = fit_mlr(S, 12, partition="dyadic", levels=4, allocate_ranks=False, max_iter=30)
    h = M.history_
    assert h["returned"] == "lowrank_diag"
    assert h["lowrank_diag_rel_error"] < h["mlr_rel_error"]
    assert h["lowrank_diag_rel_error"] < h["lowrank_rel_error"]
    err = _rel(S, M)
    assert abs(err - h["rel_error"][-1]) < 1e-10
    assert err <= min(h["mlr_rel_error"], h["lowrank_rel_error"]) + 1e-12
    assert M.rank == 12 and M.storage == 2 * 64 * 12


def test_learned_fit_never_worse_than_baselines_and_reports_them():
    truth, A = mlr_plus_noise(128, 96, rank=10, n_levels=4, noise=0.05, rng=4)
    M = fit_mlr(A, 10, levels=5, max_iter=30)
    h = M.history_
    err = _rel(A, M)
    assert abs(err - h["rel_error"][-1]) < 1e-10
    assert err <= h["lowrank_rel_error"] + 1e-12 and err <= h["lowrank_diag_rel_error"] + 1e-12
    assert h["returned"] == "mlr" and err < 0.5 * h["lowrank_rel_error"]


def test_rank_moves_are_bounded_and_reach_the_total():
    A = radial_kernel(64, seed=1)
    events = []
    M = fit_mlr(A, 32, init="bottom", allocation=Allocation(max_rank_moves=5), max_iter=3,
                baselines=False,
                progress=lambda stage, info: events.append((stage, info)))
    h = M.history_
    assert sum(M.ranks) == 32
    assert len(h["rank_moves"]) <= 5
    moves = [info for stage, info in events if stage == "rank_move"]
    assert moves and all(info["total"] == 5 and 1 <= info["step"] <= 5 for info in moves)
    assert moves[-1]["ranks"] == list(M.ranks) or len(moves) == 5


def test_progress_stages_totals_and_events(monkeypatch):
    published = []
    fake = types.ModuleType("mlr_dask.events")
    fake.publish = lambda stage, step, total=None, **m: published.append((stage, step, total, m))
    monkeypatch.setitem(sys.modules, "mlr_dask.events", fake)
    import mlr_dask

    monkeypatch.setattr(mlr_dask, "events", fake, raising=False)
    seen = []
    A = radial_kernel(96, seed=3)
    fit_mlr(A, 8, levels=5, init="uniform", max_iter=5,
            progress=lambda stage, info: seen.append((stage, info)))
    stages = {s for s, _ in seen}
    assert {"partition", "rank_move", "epoch"} <= stages or {"partition", "epoch"} <= stages
    assert [s for s, *_ in published] == [s for s, _ in seen]
    part = [info for s, info in seen if s == "partition"]
    assert [i["step"] for i in part] == list(range(1, len(part) + 1))
    assert all(i["total"] == 4 for i in part)
    for stage, step, total, metrics in published:
        json.dumps(metrics)
        if stage == "epoch":
            assert "rel_error" in metrics and total == 5 and step <= total


def test_stages_run_under_thread_limits():
    from threadpoolctl import threadpool_info

    seen = []

    def probe(stage, info):
        seen.append(max(p["num_threads"] for p in threadpool_info()))

    A = radial_kernel(80, seed=4)
    fit_mlr(A, 6, levels=4, max_iter=3, threads=2, progress=probe)
    assert seen and max(seen) == 1  # small matrices: BLAS single-threaded


def test_als_that_costs_too_much_falls_back_to_bcd(monkeypatch):
    import time

    truth, A = mlr_plus_noise(96, 80, rank=6, n_levels=3, noise=0.05, rng=3)
    kw = dict(hierarchy=(truth.rows, truth.cols), ranks=[4, 2, 0], allocate_ranks=False,
              max_iter=20, tol=1e-9, baselines=False)
    assert fit_mlr(A, **kw).history_["method"] == "als"
    real = pipeline.run_als

    def slow(*a, **k):  # the guard counts CPU seconds: burn them
        t0 = time.process_time()
        while time.process_time() - t0 < 0.3:
            pass
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "run_als", slow)
    M = fit_mlr(A, **kw)
    h = M.history_
    assert h["method"] == "bcd" and any("ALS" in n for n in h["notes"])
    assert np.all(np.diff(h["rel_error"]) <= 1e-12)
    assert abs(_rel(A, M) - h["rel_error"][-1]) < 1e-10


def test_pick_start_runs_on_a_submatrix():
    A = radial_kernel(128 * pipeline.PICK_DIVISOR, seed=5)
    opts = pipeline.Options(threads=1)
    picked, errs, secs = pipeline.pick_start(A, 12, opts, None)
    assert picked in pipeline.BEST_INITS and set(errs) == set(pipeline.BEST_INITS)
    assert errs[picked] == min(errs.values()) and secs > 0
    small = 128 * pipeline.PICK_DIVISOR - 1
    assert pipeline.pick_start(A[:small, :small], 12, opts, None)[0] == ""  # no submatrix


@pytest.mark.parametrize("scheduler", ["threads"])
def test_cli_scheduler_threads_runs_in_memory(tmp_path, capsys, scheduler):
    from mlr_dask.cli.main import main
    from mlr_dask.datasets.mlr import write_matrix_store

    A = radial_kernel(72, seed=6)
    write_matrix_store(tmp_path / "a.zarr", A, kind="radial")
    rc = main(["fit-mlr", str(tmp_path / "a.zarr"), "--rank", "6", "--json", "--quiet",
               "--scheduler", scheduler, "--max-iter", "5", "--max-rank-moves", "4",
               "--threads", "1"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["rank_moves"] <= 4
    assert res["rel_error"] <= min(res["lowrank_rel_error"], res["lowrank_diag_rel_error"])
    assert res["init"] in pipeline.BEST_INITS  # learned in memory (the Dask path cannot)


def test_full_rank_returns_the_exact_low_rank_fast():
    A = radial_kernel(96, seed=7)
    M = fit_mlr(A, 96)
    h = M.history_
    assert h["returned"] == "lowrank" and M.rank == 96
    assert _rel(A, M) < 1e-12 and h["rel_error"][-1] < 1e-12
    assert h["seconds"]["total"] < 5


def test_events_are_published_to_subscribers():
    from mlr_dask import events

    got = []
    unsubscribe = events.subscribe(got.append)
    try:
        fit_mlr(radial_kernel(80, seed=8), 6, levels=4, init="bottom", max_iter=4)
    finally:
        unsubscribe()
    stages = [e["stage"] for e in got]
    assert {"partition", "rank_move", "epoch"} <= set(stages)
    moves = [e for e in got if e["stage"] == "rank_move"]
    assert all(e["total"] is not None and e["step"] <= e["total"] for e in moves)
    assert all("rel_error" in e and "ranks" in e for e in moves)


def test_growth_trials_never_worse_than_their_best_candidate():
    A = radial_kernel(128, seed=9)
    one = fit_mlr(A, 10, init="bottom", allocate_ranks=False, max_iter=1, baselines=False)
    three = fit_mlr(A, 10, init="bottom", allocate_ranks=False, max_iter=1, baselines=False,
                    allocation=Allocation(grow_trials=3), threads=2)
    g1 = [m for m in one.history_["rank_moves"] if m["src"] is None]
    g3 = [m for m in three.history_["rank_moves"] if m["src"] is None]
    assert len(g1) == len(g3) == 9 and sum(three.ranks) == 10
    # the first step tries the level the one-trial growth takes, among others
    assert g3[0]["rel_error"] <= g1[0]["rel_error"] + 1e-12
    assert np.all(np.diff([m["rel_error"] for m in g3]) < 0)


def test_best_on_a_small_matrix_runs_one_final_fit(monkeypatch):
    A = radial_kernel(100, seed=8)
    calls = []
    real = pipeline.fit

    def counted(plan):
        calls.append(plan.init)
        real(plan)

    monkeypatch.setattr(pipeline, "fit", counted)
    M = fit_mlr(A, 8, init="best", threads=1)
    h = M.history_
    assert calls == [h["init"]]  # the loser stopped after its allocation
    assert set(h["starts"]) == set(pipeline.BEST_INITS)
    assert h["starts"][h["init"]] == min(h["starts"].values())
    assert abs(h["mlr_rel_error"] - h["starts"][h["init"]]) < 1e-12
