"""DPG's gradient identity and training behaviour on enumerable toy cases."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlr_dask.sequence.features import FeatureSet, FirstBitFeature, SubstringFeature  # noqa: E402
from mlr_dask.sequence.models import LSTMConfig, build_model, clone_model  # noqa: E402
from mlr_dask.sequence.policy import (  # noqa: E402
    PolicyGradientConfig,
    dpg_surrogate,
    train_dpg,
    train_pg,
)


def _setup(all_seqs3):
    r = build_model(LSTMConfig(hidden=8, max_len=3), seed=0)
    pi = build_model(LSTMConfig(hidden=8, max_len=3), seed=1)
    fs = FeatureSet((FirstBitFeature(1), SubstringFeature("11")))
    lam = np.array([1.0, 2.5])
    t, L = all_seqs3
    log_P = r.log_prob(t, L) + fs(t, L) @ lam
    log_z = float(np.log(np.exp(log_P).sum()))
    return r, pi, fs, lam, t, L, log_P, log_z


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten().clone() for p in model.parameters()])


@pytest.mark.parametrize("proposal", ["r", "pi"])
@pytest.mark.parametrize("baseline", [0.0, 0.7])
def test_dpg_gradient_equals_ce_gradient(all_seqs3, proposal, baseline):
    r, pi, fs, lam, t, L, log_P, log_z = _setup(all_seqs3)
    pi.eval()
    tt, LL = torch.as_tensor(t, dtype=torch.long), torch.as_tensor(L, dtype=torch.long)
    p = torch.as_tensor(np.exp(log_P - log_z))
    ce = -(p * pi.log_prob_torch(tt, LL).double()).sum()
    g_exact = _grads(pi, ce)

    log_q = (r if proposal == "r" else pi).log_prob(t, L)
    q = torch.as_tensor(np.exp(log_q))
    sur = dpg_surrogate(pi.log_prob_torch(tt, LL), torch.as_tensor(log_P),
                        torch.as_tensor(log_q), log_z, baseline)
    g_dpg = _grads(pi, (q * sur.double()).sum())  # exact expectation over x ~ q
    torch.testing.assert_close(g_dpg, g_exact, rtol=1e-4, atol=1e-6)

    if proposal == "r" and baseline:
        # a baseline without the pi/q correction is biased off-policy: the test can tell
        R = torch.as_tensor(np.exp(log_P - log_q - log_z))
        naive = -((R - baseline) * pi.log_prob_torch(tt, LL).double())
        g_naive = _grads(pi, (q * naive).sum())
        assert not torch.allclose(g_naive, g_exact, rtol=1e-2, atol=1e-4)


def _kl(p_log, model, t, L):
    p = np.exp(p_log)
    return float(np.sum(p * (p_log - model.log_prob(t, L))))


def _toy_valid(p_log, t, L):
    draw = np.random.default_rng(5).choice(len(L), size=2000, p=np.exp(p_log))
    return t[draw], L[draw]  # exact samples of p_lambda


@pytest.mark.parametrize("mode", ["off", "on"])
def test_dpg_training_reduces_kl(all_seqs3, mode):
    r, _, fs, lam, t, L, log_P, log_z = _setup(all_seqs3)
    p_log = log_P - log_z
    pi = clone_model(r)
    kl0 = _kl(p_log, pi, t, L)
    cfg = PolicyGradientConfig(steps=100, batch=256, lr=1e-2, eval_every=10, mode=mode,
                               heavy_batch=64, grad_batch=64)
    hist = train_dpg(pi, r, fs, lam, log_z, _toy_valid(p_log, t, L), cfg, seed=0)
    assert _kl(p_log, pi, t, L) < 0.3 * kl0
    if mode == "off":
        assert hist["q_swaps"] >= 1


def test_pg_collapses(all_seqs3):
    r, _, fs, lam, t, L, log_P, log_z = _setup(all_seqs3)
    p_log = log_P - log_z
    pg = clone_model(r)
    train_pg(pg, r, fs, lam, log_z, _toy_valid(p_log, t, L),
             PolicyGradientConfig(steps=100, batch=256, lr=1e-2))
    probs = np.exp(pg.log_prob(t, L))
    assert probs.max() > 0.9  # mode-seeking: nearly all mass on one string
    assert _kl(p_log, pg, t, L) > 5 * _kl(p_log, r, t, L)
