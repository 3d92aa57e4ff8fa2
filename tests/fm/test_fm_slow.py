"""Long acceptance runs of the factor model (``pytest -m slow tests/fm``)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the benchmarks package


@pytest.mark.slow
def test_out_of_core_matches_in_memory(tmp_path):
    """n = 100,000 in zarr, 2 worker processes with memory_limit totalling Y / 4: the fit
    completes, its log-likelihoods equal the in-memory ones, and each worker's peak resident
    memory above its baseline (see ``benchmarks/bench_fm_ooc.py``) stays under its limit."""
    from benchmarks.bench_fm_ooc import run

    r = run(n=100_000, iters=3, tmpdir=str(tmp_path))
    assert r["worker_memory_limit_MiB"] * r["workers"] <= r["Y_MiB"] / 4 + 1e-9
    assert r["max_rel_diff_loglike"] < 1e-10
    assert max(r["worker_peak_growth_MiB"]) <= r["worker_memory_limit_MiB"]


@pytest.mark.slow
def test_quality_beats_factor_analysis_and_ledoit_wolf():
    from benchmarks.bench_fm_quality import run

    r = run(n=10_000, iters=20)
    assert r["test_loglike_mfm"] >= r["test_loglike_factor_analysis"]
    assert r["test_loglike_mfm"] >= r["test_loglike_ledoit_wolf"]
