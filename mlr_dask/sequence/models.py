"""The default autoregressive model: a 2-layer LSTM over {0, 1, EOS}, and its training.

Needs torch (the ``seq`` extra). Checkpoints are ``state_dict``s of tensors written with
``torch.save`` and read back with ``weights_only=True``; no Python objects are pickled.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mlr_dask.sequence.base import cross_entropy
from mlr_dask.sequence.motif import EOS

BOS = 3
VOCAB_OUT = 3  # 0, 1, EOS
VOCAB_IN = 4  # 0, 1, EOS (unused as input), BOS


@dataclass(frozen=True)
class LSTMConfig:
    """Architecture of :class:`LSTMModel` (the spec: 2 layers, dropout 0.2, one-hot inputs)."""

    hidden: int = 64
    layers: int = 2
    dropout: float = 0.2
    max_len: int = 60


@dataclass(frozen=True)
class TrainConfig:
    """Maximum-likelihood training recipe: Adam, gradient clipping, early stopping."""

    lr: float = 1e-3
    batch_size: int = 500
    clip: float = 0.25
    patience: int = 8
    max_epochs: int = 400
    max_seconds: float | None = None
    """Optional wall-clock safety limit (None = off). Off by default so that a run gives the
    same result for the same seed on any machine; when it triggers, the history says so."""


class LSTMModel(nn.Module):
    """LSTM language model over bits with EOS; EOS is forced after ``max_len`` bits.

    Implements the :class:`~mlr_dask.sequence.base.AutoregressiveModel` interface on numpy
    batches (``sample``, ``log_prob``) plus ``log_prob_torch`` for gradients.
    """

    def __init__(self, config: LSTMConfig | None = None) -> None:
        super().__init__()
        self.config = config or LSTMConfig()
        c = self.config
        self.max_len = c.max_len
        self.lstm = nn.LSTM(
            VOCAB_IN, c.hidden, num_layers=c.layers, batch_first=True,
            dropout=c.dropout if c.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden, VOCAB_OUT)

    def portable(self) -> LSTMSpec:
        """A plain (non-torch) description to send to Dask workers: config + numpy weights."""
        state = {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}
        return LSTMSpec(asdict(self.config), state)

    # ---- scoring ----------------------------------------------------------------------
    def _logits(self, inputs: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        x = nn.functional.one_hot(inputs, VOCAB_IN).float()
        h, state = self.lstm(x, state)
        return self.out(self.drop(h)), state

    def _mask_forced(self, logp: torch.Tensor, t0: int = 0) -> torch.Tensor:
        """Force EOS at step ``max_len``: bits impossible, log P(EOS) = 0 there."""
        T = logp.shape[1]
        if t0 + T <= self.max_len:
            return logp
        k = self.max_len - t0
        forced = torch.full_like(logp[:, k], -math.inf)
        forced[:, EOS] = 0.0
        return torch.cat([logp[:, :k], forced.unsqueeze(1), logp[:, k + 1:]], dim=1)

    def log_prob_torch(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B,) with gradients; tokens (B, T) long, lengths (B,) long."""
        B = tokens.shape[0]
        L = int(lengths.max().item()) if B else 0
        steps = L + 1
        tgt = torch.full((B, steps), EOS, dtype=torch.long)
        if L:
            tgt[:, :L] = tokens[:, :L].long()
        pos = torch.arange(steps).unsqueeze(0)
        tgt = torch.where(pos < lengths.unsqueeze(1), tgt, torch.full_like(tgt, EOS))
        inp = torch.cat([torch.full((B, 1), BOS, dtype=torch.long), tgt[:, :-1]], dim=1)
        logits, _ = self._logits(inp)
        logp = self._mask_forced(torch.log_softmax(logits, dim=-1))
        tok_lp = logp.gather(2, tgt.unsqueeze(2)).squeeze(2)
        live = pos <= lengths.unsqueeze(1)
        return torch.where(live, tok_lp, torch.zeros_like(tok_lp)).sum(dim=1)

    @torch.no_grad()
    def log_prob(self, tokens: np.ndarray, lengths: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Log-probabilities (B,) of a numpy batch, in eval mode, without gradients."""
        was = self.training
        if was:  # models in eval mode are never toggled (safe to share between threads)
            self.eval()
        out = []
        try:
            for i in range(0, len(lengths), batch):
                t = torch.as_tensor(np.asarray(tokens[i:i + batch]), dtype=torch.long)
                n = torch.as_tensor(np.asarray(lengths[i:i + batch]), dtype=torch.long)
                out.append(self.log_prob_torch(t, n).double().numpy())
        finally:
            self.train(was)
        return np.concatenate(out) if out else np.zeros(0)

    # ---- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, size: int, rng: np.random.Generator | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ancestral sampling in eval mode: tokens (size, max_len) int8, lengths, log-probs."""
        rng = np.random.default_rng(rng)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        was = self.training
        if was:
            self.eval()
        try:
            tokens = torch.full((size, self.max_len), EOS, dtype=torch.int8)
            lengths = torch.full((size,), self.max_len, dtype=torch.long)
            logp = torch.zeros(size, dtype=torch.float64)
            rows = torch.arange(size)  # original index of each live row
            inp = torch.full((size, 1), BOS, dtype=torch.long)
            state = None
            for t in range(self.max_len + 1):
                logits, state = self._logits(inp, state)
                lp = self._mask_forced(torch.log_softmax(logits, dim=-1), t0=t)[:, 0]
                u = torch.rand(len(rows), 1, generator=gen, dtype=lp.dtype)
                cdf = lp.exp().cumsum(dim=1)
                tok = (u > cdf[:, :-1]).sum(dim=1).clamp_(max=VOCAB_OUT - 1)
                logp[rows] += lp.gather(1, tok.unsqueeze(1)).squeeze(1).double()
                ended = tok == EOS
                lengths[rows[ended]] = t
                if t < self.max_len:
                    tokens[rows, t] = torch.where(ended, EOS, tok).to(torch.int8)
                keep = ~ended
                if not bool(keep.any()):
                    break
                if not bool(keep.all()):  # drop finished rows from the batch
                    rows, tok = rows[keep], tok[keep]
                    state = tuple(s[:, keep] for s in state)
                inp = tok.unsqueeze(1)
        finally:
            self.train(was)
        return tokens.numpy(), lengths.numpy(), logp.numpy()


@dataclass
class LSTMSpec:
    """Config and numpy weights of an :class:`LSTMModel`; ``materialize()`` rebuilds it."""

    config: dict[str, Any]
    state: dict[str, np.ndarray]

    def materialize(self) -> LSTMModel:
        model = LSTMModel(LSTMConfig(**self.config))
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.state.items()})
        return model.eval()


#: Held while seeding torch's global generator and training with it (dropout draws from it).
#: Tasks that share a process (threaded Dask workers, in-process runs) would otherwise interleave
#: their draws and a run would depend on thread scheduling; worker processes with one thread each
#: never wait on it. Re-entrant, so a sweep task can hold it around a whole run.
TORCH_RNG_LOCK = threading.RLock()


def build_model(config: LSTMConfig, seed: int) -> LSTMModel:
    """A freshly initialised model (deterministic in ``seed``)."""
    torch.manual_seed(seed)
    return LSTMModel(config).eval()


def clone_model(model: LSTMModel) -> LSTMModel:
    """An independent copy (same config and weights)."""
    return copy.deepcopy(model)


def save_checkpoint(model: LSTMModel, path: str) -> None:
    """Write the model's state_dict (tensors only) and config, via a temporary name + rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    state = dict(model.state_dict())
    for k, v in asdict(model.config).items():
        state[f"__config__.{k}"] = torch.tensor(float(v))
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> LSTMModel:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    state = torch.load(path, weights_only=True)
    cfg = {k.split(".", 1)[1]: v.item() for k, v in state.items() if k.startswith("__config__.")}
    config = LSTMConfig(
        hidden=int(cfg["hidden"]), layers=int(cfg["layers"]),
        dropout=float(cfg["dropout"]), max_len=int(cfg["max_len"]),
    )
    model = LSTMModel(config).eval()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("__config__.")})
    return model


def sequence_ce(model: LSTMModel, tokens: np.ndarray, lengths: np.ndarray) -> float:
    """Per-symbol cross-entropy (nats, EOS counted) of ``model`` on a batch."""
    return cross_entropy(model.log_prob(tokens, lengths), lengths)


def fit_mle(
    model: LSTMModel,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    config: TrainConfig | None = None,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Maximum likelihood with Adam, clipping and early stopping; restores the best checkpoint.

    train, valid : (tokens (N, T), lengths (N,)). Returns a history dict with the validation CE
    per epoch, the best epoch, its CE, the seconds spent and ``stopped_by``: "patience" (early
    stopping), "max_epochs" or "time" (the optional ``max_seconds`` safety limit fired: the result
    then depends on the machine's speed and load, not only on the seed).
    """
    cfg = config or TrainConfig()
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(train[0], dtype=torch.long)
    N = torch.as_tensor(train[1], dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    best = (sequence_ce(model, *valid), -1)
    best_state = copy.deepcopy(model.state_dict())
    history: list[float] = []
    bs = max(1, min(cfg.batch_size, len(N)))
    stopped_by = "max_epochs"
    for epoch in range(cfg.max_epochs):
        model.train()
        perm = torch.randperm(len(N), generator=g)
        for i in range(0, len(N), bs):
            idx = perm[i:i + bs]
            lp = model.log_prob_torch(X[idx], N[idx])
            loss = -lp.sum() / (N[idx] + 1).sum()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
        ce = sequence_ce(model, *valid)
        history.append(ce)
        if callback is not None:
            callback(epoch, ce)
        if ce < best[0]:
            best = (ce, epoch)
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best[1] >= cfg.patience:
            stopped_by = "patience"
            break
        if cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds:
            stopped_by = "time"
            break
    model.load_state_dict(best_state)
    model.eval()
    return {
        "valid_ce": history,
        "best_epoch": best[1],
        "best_valid_ce": best[0],
        "epochs": len(history),
        "stopped_by": stopped_by,
        "seconds": time.perf_counter() - t_start,
    }
