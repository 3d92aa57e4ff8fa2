"""Global features phi(x) as composable, vectorized scorers.

A sequence batch is ``(tokens, lengths)``: tokens an integer array (B, T) of bits 0/1 (anything
at or after a row's length, e.g. EOS padding, is ignored) and lengths (B,) the number of bits
before EOS. A feature maps a batch to a float array (B,).

Convention: ``phi = 1`` when the property holds ("present"), 0 otherwise. (The papers' code stores
``1 - present``, which flips the sign of lambda; the GAM is the same model.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.sequence.motif import contains, validate_motif

FEATURE_CODE_LENGTH = 7
DISTRACTOR_PERIODS = ("10", "100", "0011")  # (10101)..., (1001001)..., (00110011)...


class Feature:
    """Base class: ``feature(tokens, lengths) -> (B,) float64``; subclasses set ``name``."""

    name: str = "feature"

    def __call__(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class SubstringFeature(Feature):
    """1 when ``pattern`` occurs in the sequence (KMP automaton, vectorized over the batch)."""

    pattern: str
    name: str = "substring"

    def __post_init__(self) -> None:
        validate_motif(self.pattern)

    def __call__(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return contains(tokens, lengths, self.pattern).astype(np.float64)


@dataclass(frozen=True)
class FirstBitFeature(Feature):
    """1 when the sequence is non-empty and its first bit equals ``bit``."""

    bit: int = 1
    name: str = "first_bit"

    def __call__(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths)
        if tokens.shape[1] == 0:
            return np.zeros(tokens.shape[0])
        return ((lengths > 0) & (tokens[:, 0] == self.bit)).astype(np.float64)


@dataclass(frozen=True)
class CallableFeature(Feature):
    """A user-defined feature from any vectorized ``fn(tokens, lengths) -> (B,)``."""

    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    name: str = "custom"

    def __call__(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        out = np.asarray(self.fn(tokens, lengths), dtype=np.float64)
        if out.shape != (np.asarray(tokens).shape[0],):
            raise InputError(f"feature {self.name!r} returned shape {out.shape}, expected (B,)")
        return out


@dataclass(frozen=True)
class FeatureSet:
    """An ordered list of features; ``phi(tokens, lengths)`` returns (B, k) float64."""

    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        if not self.features:
            raise InputError("a feature set needs at least one feature")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def k(self) -> int:
        return len(self.features)

    @property
    def binary(self) -> bool:
        """True when every feature is one of the built-in 0/1 features."""
        return all(isinstance(f, SubstringFeature | FirstBitFeature) for f in self.features)

    def __call__(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths)
        cols = [f(tokens, lengths) for f in self.features]
        return np.stack(cols, axis=1) if cols else np.zeros((tokens.shape[0], 0))

    def __add__(self, other: FeatureSet) -> FeatureSet:
        return FeatureSet(self.features + other.features)


def _periodic(period: str, length: int) -> str:
    return (period * (length // len(period) + 1))[:length]


def all_features(motif: str) -> list[Feature]:
    """The seven features of the spec for ``motif``, in code order 0..6."""
    validate_motif(motif)
    m = len(motif)
    half = max(1, m // 2)
    return [
        SubstringFeature(motif, name="motif"),
        SubstringFeature(motif + "0", name="supermotif"),
        SubstringFeature(motif[:half], name="submotif"),
        FirstBitFeature(1, name="first_bit"),
        SubstringFeature(_periodic(DISTRACTOR_PERIODS[0], m), name="distractor_10"),
        SubstringFeature(_periodic(DISTRACTOR_PERIODS[1], m + 2), name="distractor_100"),
        SubstringFeature(_periodic(DISTRACTOR_PERIODS[2], half), name="distractor_0011"),
    ]


def validate_feature_code(code: str) -> str:
    """Check a 7-character 0/1 feature code with at least one feature on."""
    if (
        not isinstance(code, str)
        or len(code) != FEATURE_CODE_LENGTH
        or set(code) - {"0", "1"}
        or "1" not in code
    ):
        raise InputError(
            f"unknown feature code {code!r}: expected {FEATURE_CODE_LENGTH} characters of 0/1 "
            "with at least one 1 (position j switches feature j on)"
        )
    return code


def feature_set_from_code(
    motif: str, code: str, extra: Sequence[Feature] = ()
) -> FeatureSet:
    """The features switched on by ``code`` (e.g. ``"1001111"``), plus user-defined ``extra``."""
    validate_feature_code(code)
    feats = [f for f, c in zip(all_features(motif), code, strict=True) if c == "1"]
    return FeatureSet(tuple(feats) + tuple(extra))
