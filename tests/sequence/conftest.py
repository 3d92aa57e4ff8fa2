"""Helpers for the sequence tests: enumerating every sequence of a tiny model."""

import itertools

import numpy as np
import pytest


def enumerate_sequences(max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """All bit strings of length 0..max_len as a padded batch (tokens, lengths)."""
    rows, lens = [], []
    for L in range(max_len + 1):
        for bits in itertools.product([0, 1], repeat=L):
            row = np.full(max_len, 2, dtype=np.int8)
            row[:L] = bits
            rows.append(row)
            lens.append(L)
    return np.stack(rows), np.array(lens)


@pytest.fixture
def all_seqs3():
    return enumerate_sequences(3)
