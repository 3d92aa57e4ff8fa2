"""The autoregressive-model interface, sequence batches and a numpy reference model.

A *sequence batch* is ``(tokens, lengths)``: tokens an int8 array (B, T) of bits padded with EOS
(token 2), lengths (B,) the number of bits before EOS. Every model here ends sequences with EOS
and forces it after ``max_len`` bits, so the model is a proper distribution over strings of at most
``max_len`` bits, and ``log_prob`` scores exactly what ``sample`` draws.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from mlr_dask.sequence.motif import EOS


@runtime_checkable
class AutoregressiveModel(Protocol):
    """What the GAM machinery needs from a model r, q or pi."""

    max_len: int

    def sample(
        self, size: int, rng: np.random.Generator | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``size`` sequences: tokens (size, max_len) int8, lengths (size,), log-probs."""
        ...

    def log_prob(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Log-probabilities (B,) of a sequence batch (EOS included)."""
        ...


def tokens_per_sequence(lengths: np.ndarray) -> np.ndarray:
    """Symbols scored per sequence, EOS counted: ``lengths + 1``."""
    return np.asarray(lengths) + 1


def cross_entropy(logp: np.ndarray, lengths: np.ndarray) -> float:
    """Per-symbol cross-entropy in nats: ``-sum(logp) / sum(lengths + 1)``."""
    return float(-np.sum(logp) / np.sum(tokens_per_sequence(lengths)))


def pad_bits(bits: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-length bit strings (B, n) as a padded batch (B, max_len) with lengths (B,)."""
    bits = np.asarray(bits, dtype=np.int8)
    B, n = bits.shape
    if n > max_len:
        raise ValueError(f"strings of length {n} exceed the model's max_len {max_len}")
    out = np.full((B, max_len), EOS, dtype=np.int8)
    out[:, :n] = bits
    return out, np.full(B, n, dtype=np.int64)


class BernoulliModel:
    """Reference model in numpy: i.i.d. bits with P(1) = ``p1``, EOS exactly after ``length`` bits.

    Useful for tests with known answers (e.g. SNIS moments of a first-bit feature).
    """

    def __init__(self, p1: float = 0.5, length: int = 30) -> None:
        if not 0.0 < p1 < 1.0:
            raise ValueError("p1 must be in (0, 1)")
        self.p1 = float(p1)
        self.max_len = int(length)

    def sample(
        self, size: int, rng: np.random.Generator | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(rng)
        bits = (rng.random((size, self.max_len)) < self.p1).astype(np.int8)
        tokens, lengths = pad_bits(bits, self.max_len)
        return tokens, lengths, self.log_prob(tokens, lengths)

    def log_prob(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths)
        ones = (tokens[:, : self.max_len] == 1).sum(axis=1)
        zeros = (tokens[:, : self.max_len] == 0).sum(axis=1)
        lp = ones * np.log(self.p1) + zeros * np.log1p(-self.p1)
        return np.where(lengths == self.max_len, lp, -np.inf)
