"""The LSTM model, checkpoints, and (quasi-)rejection sampling on an enumerable case."""

import numpy as np
import pytest
from scipy import stats

torch = pytest.importorskip("torch")

from mlr_dask.sequence.features import FeatureSet, FirstBitFeature, SubstringFeature  # noqa: E402
from mlr_dask.sequence.models import (  # noqa: E402
    LSTMConfig,
    TrainConfig,
    build_model,
    fit_mle,
    load_checkpoint,
    save_checkpoint,
    sequence_ce,
)
from mlr_dask.sequence.sampling import draw_pool, rejection_sample  # noqa: E402


def _index(tokens, lengths, all_t, all_l):
    keys = {(tuple(t[:L]), int(L)) for t, L in zip(all_t, all_l, strict=True)}
    order = {k: i for i, k in enumerate(sorted(keys))}
    idx_all = np.array([order[(tuple(t[:L]), int(L))] for t, L in zip(all_t, all_l, strict=True)])
    idx = np.array([order[(tuple(t[:L]), int(L))] for t, L in zip(tokens, lengths, strict=True)])
    return idx, idx_all


def test_lstm_is_normalised_and_sample_scores_match(all_seqs3):
    model = build_model(LSTMConfig(hidden=8, max_len=3), seed=0)
    t, L = all_seqs3
    assert np.exp(model.log_prob(t, L)).sum() == pytest.approx(1.0, abs=1e-5)
    tok, lens, lp = model.sample(500, np.random.default_rng(1))
    assert tok.shape == (500, 3) and (lens <= 3).all()
    np.testing.assert_allclose(model.log_prob(tok, lens), lp, atol=1e-5)
    # empirical frequencies match the model's probabilities
    tok, lens, _ = model.sample(20000, np.random.default_rng(2))
    idx, idx_all = _index(tok, lens, t, L)
    p = np.zeros(len(t))
    p[idx_all] = np.exp(model.log_prob(t, L))
    counts = np.bincount(idx, minlength=len(t))
    assert stats.chisquare(counts, p / p.sum() * counts.sum()).pvalue > 1e-3


def test_checkpoint_roundtrip_and_training(tmp_path):
    model = build_model(LSTMConfig(hidden=8, max_len=6), seed=0)
    rng = np.random.default_rng(0)
    bits = np.zeros((400, 6), dtype=np.int8)
    bits[:, ::2] = 1  # deterministic data 101010
    lengths = np.full(400, 6)
    before = sequence_ce(model, bits, lengths)
    hist = fit_mle(model, (bits[:300], lengths[:300]), (bits[300:], lengths[300:]),
                   TrainConfig(lr=1e-2, batch_size=100, max_epochs=30), seed=1)
    assert hist["best_valid_ce"] < 0.5 * before
    assert sequence_ce(model, bits[300:], lengths[300:]) == pytest.approx(hist["best_valid_ce"])
    path = str(tmp_path / "m.pt")
    save_checkpoint(model, path)
    back = load_checkpoint(path)
    x, n, _ = model.sample(50, rng)
    np.testing.assert_allclose(back.log_prob(x, n), model.log_prob(x, n), atol=1e-6)


def _target_probs(model, fs, lam, t, L, quasi_log_beta=None):
    lw = fs(t, L) @ lam
    if quasi_log_beta is not None:
        lw = np.minimum(lw, quasi_log_beta)
    w = np.exp(model.log_prob(t, L) + lw)
    return w / w.sum()


@pytest.mark.parametrize("quasi", [False, True])
def test_rejection_sampling_distribution(all_seqs3, quasi):
    model = build_model(LSTMConfig(hidden=8, max_len=3), seed=3)
    fs = FeatureSet((FirstBitFeature(1), SubstringFeature("11")))
    lam = np.array([1.5, 2.0])
    t, L = all_seqs3
    log_beta = 1.0 if quasi else None
    out = rejection_sample(model, fs, lam, 20000, seed=4, log_beta=log_beta, n_shards=3,
                           batch=5000)
    assert len(out["lengths"]) == 20000
    assert out["exact"] is (not quasi)
    assert (out["over_bound"] > 0) is quasi
    p = _target_probs(model, fs, lam, t, L, quasi_log_beta=log_beta)
    idx, idx_all = _index(out["tokens"], out["lengths"], t, L)
    expected = np.zeros(len(t))
    expected[idx_all] = p
    counts = np.bincount(idx, minlength=len(t))
    assert stats.chisquare(counts, expected * counts.sum()).pvalue > 1e-3
    # acceptance rate matches Z / beta (exact) or E_r[min(w, beta)] / beta (quasi)
    lw = fs(t, L) @ lam
    lb = log_beta if quasi else lam.clip(min=0).sum()
    want = np.sum(np.exp(model.log_prob(t, L)) * np.exp(np.minimum(lw - lb, 0.0)))
    assert out["acceptance_rate"] == pytest.approx(want, rel=0.05)
    if quasi:  # the quasi distribution really differs from p_lambda here
        exact = _target_probs(model, fs, lam, t, L)
        assert np.abs(exact - p).sum() > 0.05


def test_sharded_over_dask_matches_in_process():
    from distributed import Client, LocalCluster

    model = build_model(LSTMConfig(hidden=8, max_len=5), seed=0)
    fs = FeatureSet((FirstBitFeature(1),))
    local = draw_pool(model, fs, 3000, seed=7, n_shards=3)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        remote = draw_pool(model, fs, 3000, seed=7, n_shards=3, client=client)
        rs = rejection_sample(model, fs, np.array([1.0]), 500, seed=1, n_shards=2,
                              client=client)
    for k in ("tokens", "lengths", "log_r", "phi"):
        np.testing.assert_allclose(local[k], remote[k])
    assert len(rs["lengths"]) == 500 and 0 < rs["acceptance_rate"] <= 1


def test_fit_mle_is_deterministic_and_reports_how_it_stopped():
    """Same seed -> identical training history; no wall-clock limit unless one is asked for."""
    assert TrainConfig().max_seconds is None
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 7, size=120)
    tokens = np.full((120, 6), 2, dtype=np.int8)
    for i, L in enumerate(lengths):
        tokens[i, :L] = rng.integers(0, 2, size=L)
    train, valid = (tokens[:80], lengths[:80]), (tokens[80:], lengths[80:])
    hists = []
    for _ in range(2):
        model = build_model(LSTMConfig(hidden=8, max_len=6), seed=2)
        hists.append(fit_mle(model, train, valid,
                             TrainConfig(lr=3e-2, batch_size=40, max_epochs=200, patience=3),
                             seed=4))
    assert hists[0]["valid_ce"] == hists[1]["valid_ce"]
    assert hists[0]["stopped_by"] == "patience" and hists[0]["epochs"] < 200
    model = build_model(LSTMConfig(hidden=8, max_len=6), seed=2)
    capped = fit_mle(model, train, valid, TrainConfig(max_epochs=50, max_seconds=1e-9), seed=4)
    assert capped["stopped_by"] == "time" and capped["epochs"] == 1
