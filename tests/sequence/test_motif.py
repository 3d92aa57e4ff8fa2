"""Exact motif data: constants of the spec's table, the sampler's support and uniformity."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from mlr_dask.errors import InputError
from mlr_dask.sequence.motif import (
    MotifProcess,
    contains,
    kmp_automaton,
    make_splits,
    read_splits,
    split_sizes,
    write_splits,
)

SPEC_TABLE = [
    ("1000101111", 0.02042, 0.5453),
    ("10001010001", 0.009644, 0.5211),
    ("1000101000101", 0.002174, 0.4730),
    ("10001011111000", 0.001037, 0.4491),
    ("01011101101", 0.009744, 0.5214),
    ("001001100111", 0.004637, 0.4974),
    ("1011100111001", 0.002197, 0.4733),
]


def _sig4(x: float) -> float:
    return float(f"{x:.4g}")


@pytest.mark.parametrize("motif,z,h31", SPEC_TABLE)
def test_spec_constants(motif, z, h31):
    p = MotifProcess(motif, 30)
    assert _sig4(p.z) == pytest.approx(z, rel=1e-12)
    assert _sig4(p.entropy_rate) == pytest.approx(h31, rel=1e-12)
    assert p.entropy == pytest.approx(math.log(p.n_strings))


def _brute_count(motif: str, n: int) -> int:
    return sum(motif in "".join(b) for b in itertools.product("01", repeat=n))


@pytest.mark.parametrize("motif", ["0", "11", "101", "0110", "1001", "0000"])
def test_count_matches_brute_force(motif):
    for n in range(len(motif), 11):
        assert MotifProcess(motif, n).n_strings == _brute_count(motif, n)


def test_automaton_agrees_with_substring_search():
    rng = np.random.default_rng(0)
    for motif in ["10001010001", "0110", "111", "010010"]:
        x = rng.integers(0, 2, size=(400, 20))
        lengths = rng.integers(0, 21, size=400)
        got = contains(x, lengths, motif)
        want = [motif in "".join(map(str, row[:L])) for row, L in zip(x, lengths, strict=True)]
        assert got.tolist() == want
        assert kmp_automaton(motif).shape == (len(motif) + 1, 2)


def test_samples_contain_motif_and_are_uniform():
    motif, n = "101", 6
    p = MotifProcess(motif, n)
    x = p.sample(20000, 1)
    assert contains(x, None, motif).all()
    codes = x.astype(np.int64) @ (1 << np.arange(n)[::-1])
    support = [
        int("".join(b), 2) for b in itertools.product("01", repeat=n) if motif in "".join(b)
    ]
    assert len(support) == p.n_strings
    counts = np.array([np.sum(codes == s) for s in support])
    assert counts.sum() == len(codes)  # nothing outside the support
    chi2 = stats.chisquare(counts)
    assert chi2.pvalue > 1e-3


def test_mam_mixture():
    motif, n = "0110", 8
    p = MotifProcess(motif, n, kind="mam")
    x = p.sample(20000, 2)
    has = contains(x, None, motif)
    assert abs(has.mean() - 0.9) < 0.015
    # strings without the motif are uniform over their set
    codes = x[~has].astype(np.int64) @ (1 << np.arange(n)[::-1])
    without = [
        int("".join(b), 2) for b in itertools.product("01", repeat=n) if motif not in "".join(b)
    ]
    counts = np.array([np.sum(codes == s) for s in without])
    assert counts.sum() == (~has).sum()
    assert stats.chisquare(counts).pvalue > 1e-3
    total = sum(math.exp(v) for v in p.log_prob(np.array([[0] * 8]), np.array([8])))
    assert total == pytest.approx(0.1 / (2**n - p.n_strings))


def test_bad_motif():
    for bad in ["", "10201", "1 0", "abc"]:
        with pytest.raises(InputError):
            MotifProcess(bad)
    with pytest.raises(InputError):
        MotifProcess("1" * 31, 30)


def test_splits_roundtrip(tmp_path):
    p = MotifProcess("0110", 12)
    sizes = split_sizes(1000)
    assert sizes == {"train": 1000, "valid": 500, "test": 5000}
    assert split_sizes(8000)["valid"] == 2000 and split_sizes(100)["valid"] == 100
    s = make_splits(p, 300, seed=3, test_size=50)
    path = str(tmp_path / "d.npz")
    write_splits(path, s, p)
    back, meta = read_splits(path)
    assert meta == {"motif": "0110", "n": 12, "kind": "motif"}
    for k in s:
        np.testing.assert_array_equal(back[k], s[k])
