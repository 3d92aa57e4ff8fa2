"""Exact data for the motif processes: KMP automaton of a motif times a backward DP.

Strings are binary of fixed length ``n``; the "motif" process is white noise (p(1) = 1/2)
conditioned on containing the motif as a substring, i.e. uniform over those strings. The "mam"
process draws a motif string with probability ``p_motif`` (0.9) and otherwise a uniform string of
length ``n`` *without* the motif.

Everything here is pure numpy. Counts are exact integers (int64, so ``n <= 62``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mlr_dask.errors import InputError

EOS = 2
"""Token id of the end-of-sequence symbol; bits are tokens 0 and 1."""


def validate_motif(motif: str, n: int | None = None) -> str:
    """Return ``motif`` if it is a non-empty string over {0, 1} (of length <= n), else raise."""
    if not isinstance(motif, str) or not motif:
        raise InputError("the motif must be a non-empty string of 0s and 1s")
    bad = sorted(set(motif) - {"0", "1"})
    if bad:
        raise InputError(f"motif {motif!r} has characters outside the alphabet {{0,1}}: {bad}")
    if n is not None and len(motif) > n:
        raise InputError(f"motif of length {len(motif)} cannot fit in strings of length {n}")
    return motif


def kmp_automaton(pattern: str) -> np.ndarray:
    """Transition table of the KMP automaton of ``pattern`` over {0, 1}.

    Returns ``delta`` of shape (m + 1, 2), int64: state s = length of the longest prefix of the
    pattern that is a suffix of the input read so far; state m (pattern found) is absorbing.
    """
    validate_motif(pattern)
    m = len(pattern)
    p = [int(c) for c in pattern]
    fail = [0] * (m + 1)  # fail[s]: longest proper border of pattern[:s]
    k = 0
    for i in range(1, m):
        while k and p[i] != p[k]:
            k = fail[k]
        if p[i] == p[k]:
            k += 1
        fail[i + 1] = k
    delta = np.zeros((m + 1, 2), dtype=np.int64)
    for s in range(m + 1):
        for b in (0, 1):
            if s == m:
                delta[s, b] = m
            elif p[s] == b:
                delta[s, b] = s + 1
            else:
                delta[s, b] = 0 if s == 0 else delta[fail[s], b]
    return delta


def contains(tokens: np.ndarray, lengths: np.ndarray | None, pattern: str) -> np.ndarray:
    """Whether each row of ``tokens`` contains ``pattern`` within its first ``lengths`` symbols.

    tokens : (B, T) integer array of bits (anything at or after ``lengths`` is ignored);
    lengths : (B,) integers, or None for all T. Returns a (B,) bool array. Vectorized over rows.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise InputError(f"tokens must be 2-D (batch, time), got shape {tokens.shape}")
    B, T = tokens.shape
    delta = kmp_automaton(pattern)
    m = len(pattern)
    if lengths is None:
        lengths = np.full(B, T)
    lengths = np.asarray(lengths)
    state = np.zeros(B, dtype=np.int64)
    bits = np.clip(tokens, 0, 1).astype(np.int64)
    for t in range(min(T, int(lengths.max(initial=0)))):
        live = t < lengths
        state = np.where(live, delta[state, bits[:, t]], state)
    return state == m


@dataclass(frozen=True)
class MotifProcess:
    """The exact motif (or mam) distribution over binary strings of length ``n``.

    ``count[t, s]`` is the number of bit strings of length ``n - t`` that, read from automaton
    state s, reach the motif: shape (n + 1, m + 1), int64.
    """

    motif: str
    n: int = 30
    kind: str = "motif"
    p_motif: float = 0.9
    delta: np.ndarray = field(init=False, repr=False, compare=False)
    count: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_motif(self.motif, self.n)
        if self.kind not in ("motif", "mam"):
            raise InputError(f"unknown process kind {self.kind!r} (use 'motif' or 'mam')")
        if not 1 <= self.n <= 62:
            raise InputError(f"string length must be in [1, 62], got {self.n}")
        if not 0.0 < self.p_motif < 1.0:
            raise InputError("p_motif must be in (0, 1)")
        delta = kmp_automaton(self.motif)
        m = len(self.motif)
        count = np.zeros((self.n + 1, m + 1), dtype=np.int64)
        count[self.n, m] = 1
        for t in range(self.n - 1, -1, -1):
            count[t] = count[t + 1][delta[:, 0]] + count[t + 1][delta[:, 1]]
        object.__setattr__(self, "delta", delta)
        object.__setattr__(self, "count", count)

    # ---- exact constants -------------------------------------------------------------
    @property
    def n_strings(self) -> int:
        """Number of length-n strings containing the motif."""
        return int(self.count[0, 0])

    @property
    def z(self) -> float:
        """P(motif in x) under white noise: ``n_strings / 2**n``."""
        return self.n_strings / 2.0**self.n

    @property
    def entropy(self) -> float:
        """Entropy in nats of the process (``ln n_strings`` for "motif")."""
        N, total = self.n_strings, 2**self.n
        if self.kind == "motif":
            return math.log(N)
        p, q = self.p_motif, 1.0 - self.p_motif
        return -p * math.log(p / N) - q * math.log(q / (total - N))

    @property
    def entropy_rate(self) -> float:
        """Entropy per symbol, EOS counted: ``entropy / (n + 1)``."""
        return self.entropy / (self.n + 1)

    # ---- sampling and scoring ----------------------------------------------------------
    def _sample_counted(self, size: int, rng: np.random.Generator, with_motif: bool) -> np.ndarray:
        n, m = self.n, len(self.motif)
        cnt = self.count.astype(np.float64)
        if not with_motif:  # complement counts: completions that never reach the motif
            rem = 2.0 ** (n - np.arange(n + 1))[:, None]
            cnt = rem - cnt
            cnt[:, m] = 0.0
        out = np.empty((size, n), dtype=np.int8)
        state = np.zeros(size, dtype=np.int64)
        for t in range(n):
            c0 = cnt[t + 1][self.delta[state, 0]]
            c1 = cnt[t + 1][self.delta[state, 1]]
            bit = (rng.random(size) * (c0 + c1) >= c0).astype(np.int64)
            out[:, t] = bit
            state = self.delta[state, bit]
        return out

    def sample(self, size: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Exact samples: an int8 array of shape (size, n) of bits (EOS implicit after n)."""
        rng = np.random.default_rng(rng)
        if self.kind == "motif":
            return self._sample_counted(size, rng, True)
        hit = rng.random(size) < self.p_motif
        out = np.empty((size, self.n), dtype=np.int8)
        k = int(hit.sum())
        out[hit] = self._sample_counted(k, rng, True)
        out[~hit] = self._sample_counted(size - k, rng, False)
        return out

    def log_prob(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Exact log-probability of sequences (B, T) with lengths (B,); -inf off the support."""
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths)
        has = contains(tokens, lengths, self.motif)
        ok = lengths == self.n
        N, total = self.n_strings, 2**self.n
        if self.kind == "motif":
            lp = np.where(has, -math.log(N), -np.inf)
        else:
            lp = np.where(
                has,
                math.log(self.p_motif / N),
                math.log((1 - self.p_motif) / (total - N)),
            )
        return np.where(ok, lp, -np.inf)


def split_sizes(train_size: int, test_size: int = 5000) -> dict[str, int]:
    """Sizes of the splits: validation ``min(max(b, |D|/4), 2000)`` with ``b = min(|D|, 500)``."""
    if train_size < 1:
        raise InputError("the training set size must be positive")
    b = min(train_size, 500)
    return {
        "train": int(train_size),
        "valid": int(min(max(b, train_size // 4), 2000)),
        "test": int(test_size),
    }


def make_splits(
    process: MotifProcess,
    train_size: int,
    seed: int,
    test_size: int = 5000,
) -> dict[str, np.ndarray]:
    """Draw independent train / valid / test splits, each an int8 array (size, n) of bits."""
    sizes = split_sizes(train_size, test_size)
    rng = np.random.default_rng([seed, 0x5E0])
    return {name: process.sample(k, rng) for name, k in sizes.items()}


def write_splits(path: str, splits: dict[str, np.ndarray], process: MotifProcess) -> None:
    """Write splits to an ``.npz`` (no pickled objects), under a temporary name then renamed."""
    import os

    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez_compressed(
        tmp,
        motif=np.array(process.motif),
        n=np.array(process.n),
        kind=np.array(process.kind),
        **splits,
    )
    os.replace(tmp, path)


def read_splits(path: str) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Read splits written by :func:`write_splits`; returns (splits, metadata)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = {"motif": str(f["motif"]), "n": int(f["n"]), "kind": str(f["kind"])}
            splits = {k: f[k] for k in ("train", "valid", "test")}
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"cannot read splits from {path!r}: {exc}") from None
    return splits, meta
