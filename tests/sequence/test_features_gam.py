"""Features and the numpy side of GAM training (SNIS, Z, CE of P_lambda)."""

import math

import numpy as np
import pytest

from mlr_dask.errors import InputError
from mlr_dask.sequence.base import BernoulliModel
from mlr_dask.sequence.features import (
    CallableFeature,
    FeatureSet,
    FirstBitFeature,
    all_features,
    feature_set_from_code,
)
from mlr_dask.sequence.gam import (
    ce_plambda,
    estimate_z,
    fit_lambda_rejection,
    fit_lambda_snis,
    snis_moments,
)


def _loop_contains(row, L, pat):
    return float(pat in "".join(str(int(b)) for b in row[:L]))


def test_features_match_python_loop():
    motif = "10001010001"
    feats = all_features(motif)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(300, 30)).astype(np.int8)
    x[:50, 5:16] = [int(c) for c in motif]
    lengths = rng.integers(0, 31, size=300)
    phi = FeatureSet(tuple(feats))(x, lengths)
    assert phi.shape == (300, 7)
    pats = [motif, motif + "0", motif[:5], None, "10101010101", "1001001001001", "00110"]
    for j, pat in enumerate(pats):
        if pat is None:
            want = [float(L > 0 and r[0] == 1) for r, L in zip(x, lengths, strict=True)]
        else:
            want = [_loop_contains(r, L, pat) for r, L in zip(x, lengths, strict=True)]
        np.testing.assert_array_equal(phi[:, j], want)


def test_feature_codes():
    fs = feature_set_from_code("10001010001", "1001111")
    assert fs.names == ["motif", "first_bit", "distractor_10", "distractor_100",
                        "distractor_0011"]
    assert fs.binary
    for bad in ["100111", "10011112", "1001a11", "0000000", ""]:
        with pytest.raises(InputError):
            feature_set_from_code("10001010001", bad)
    custom = CallableFeature(lambda t, n: (n > 3).astype(float), name="long")
    fs2 = feature_set_from_code("0110", "1000000", extra=[custom])
    assert fs2.names == ["motif", "long"] and not fs2.binary
    out = fs2(np.array([[0, 1, 1, 0, 2]]), np.array([4]))
    np.testing.assert_array_equal(out, [[1.0, 1.0]])


def test_snis_moments_unigram_first_bit():
    """r = i.i.d. bits with P(1)=0.3; phi = first bit; p_lambda(first=1) is known in closed form."""
    r = BernoulliModel(0.3, length=8)
    tokens, lengths, _ = r.sample(200_000, 5)
    fs = FeatureSet((FirstBitFeature(1),))
    phi = fs(tokens, lengths)
    lam = np.array([1.2])
    mom, ess = snis_moments(phi, lam)
    exact = 0.3 * math.e**1.2 / (0.3 * math.e**1.2 + 0.7)
    assert mom[0] == pytest.approx(exact, abs=4e-3)
    assert 0.5 * len(phi) < ess < len(phi)

    z = estimate_z(phi, lam)
    z_exact = 0.3 * math.e**1.2 + 0.7
    assert abs(z.z - z_exact) < 4 * z.stderr
    assert z.stderr > 0 and z.log_z == pytest.approx(math.log(z.z))

    # fitting lambda recovers the closed-form solution for a target moment
    m = 0.8
    fit = fit_lambda_snis(phi, np.array([m]), tol=1e-6, max_iter=5000)
    lam_exact = math.log(m / (1 - m) * 0.7 / 0.3)
    assert fit.lam[0] == pytest.approx(lam_exact, abs=0.03)
    assert fit.l1_gap < 1e-4
    fit_rs = fit_lambda_rejection(phi, np.array([m]), rng=1, max_iter=300, tol=0.0)
    assert fit_rs.lam[0] == pytest.approx(lam_exact, abs=0.15)


def test_ce_plambda_against_exact():
    """With r uniform on bits of length 8 and the first-bit feature, CE(p_lambda) is exact."""
    n = 8
    r = BernoulliModel(0.5, length=n)
    fs = FeatureSet((FirstBitFeature(1),))
    lam = np.array([2.0])
    pool_t, pool_l, _ = r.sample(100_000, 9)
    z = estimate_z(fs(pool_t, pool_l), lam)
    test_t, test_l, log_r = r.sample(5000, 10)
    out = ce_plambda(log_r, fs(test_t, test_l), test_l, lam, z)
    logZ = math.log((math.e**2 + 1) / 2)
    want = -(log_r + fs(test_t, test_l)[:, 0] * 2.0 - logZ).sum() / (5000 * (n + 1))
    assert out["ce"] == pytest.approx(want, abs=3 * out["stderr_z"] + 1e-9)
    assert out["stderr"] >= out["stderr_z"] > 0


def test_pool_shape_errors():
    with pytest.raises(InputError):
        fit_lambda_snis(np.zeros((10, 2)), np.zeros(3))
    with pytest.raises(InputError):
        fit_lambda_snis(np.full((10, 1), np.nan), np.zeros(1))
