"""Training 2: a normalised autoregressive policy pi ~ p_lambda (distillation, DPG, plain PG).

* Distillation: a fresh model trained by maximum likelihood on samples of ``p_lambda`` (from
  :func:`~mlr_dask.sequence.sampling.rejection_sample`) plus the data D.
* DPG (distributional policy gradient): ``grad = E_{x~q}[P_lambda(x)/q(x) grad log pi(x)] / Z``,
  i.e. minus the gradient of ``CE(p_lambda, pi)``. On-policy: q = pi. Off-policy: q starts as r and
  is replaced by pi whenever pi is better (validation CE, or an IS estimate of
  ``KL(p||pi) - KL(p||q)``). A moving-average baseline ``b`` enters as ``b pi(x)/q(x)``, which
  has zero mean under q for any q, so the gradient stays unbiased off-policy.
* Plain policy gradient with reward ``P_lambda(x)`` (the baseline that collapses onto a few
  high-reward strings).

pi and q are scored without dropout (eval mode) so that the estimators are exact identities.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mlr_dask.errors import InputError
from mlr_dask.sequence.features import FeatureSet
from mlr_dask.sequence.models import (
    LSTMConfig,
    LSTMModel,
    TrainConfig,
    build_model,
    clone_model,
    fit_mle,
    sequence_ce,
)

SEQ_SYMBOLS = 31.0  # loss scale only (Adam is scale-free); n + EOS for the motif data


@dataclass(frozen=True)
class PolicyGradientConfig:
    """Budget and optimiser of DPG / PG.

    mode : "off" (q = r, replaced by pi when better), "on" (q = pi) or "fixed" (q = r always).
    q_update : "ce" (validation cross-entropy) or "kl" (IS estimate of the KL difference).
    batch : sequences drawn from q every ``reuse`` steps. The gradient of each step estimates
        the DPG expectation over *all* draws from the current q (valid because q is fixed until
        it is replaced): ``heavy_batch`` of the draws with ``R >= 1`` (all if None) and
        ``grad_batch`` of the latest light ones (all if None), reweighted to stay unbiased.
        Sampling is cheap and gradients are not; with q = r almost all the weight sits on the
        few motif hits, which this keeps and reuses.
    baseline : when to subtract the moving-average baseline ``b pi/q``: "always", "on-policy"
        (only when q = pi; off-policy with q far from p, the draws of small weight carry almost
        no signal and the baseline term mostly adds noise) or "never".
    max_seconds : optional wall-clock safety limit, checked at evaluations (None = off, the
        default: the budget is ``steps``, so a run is the same for the same seed on any machine;
        the history reports ``stopped_by_time`` when it fires).
    """

    steps: int = 1000
    batch: int = 1000
    grad_batch: int | None = None
    heavy_batch: int | None = None
    reuse: int = 1
    baseline: str = "on-policy"
    lr: float = 1e-3
    clip: float = 0.25
    baseline_decay: float = 0.9
    eval_every: int = 20
    mode: str = "off"
    q_update: str = "ce"
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("off", "on", "fixed"):
            raise InputError(f"unknown DPG mode {self.mode!r} (use off, on or fixed)")
        if self.q_update not in ("ce", "kl"):
            raise InputError(f"unknown q update rule {self.q_update!r} (use ce or kl)")
        if self.baseline not in ("always", "on-policy", "never"):
            raise InputError("baseline must be always, on-policy or never")


def dpg_surrogate(
    log_pi: torch.Tensor,
    log_p_unnorm: torch.Tensor,
    log_q: torch.Tensor,
    log_z: float,
    baseline: float = 0.0,
) -> torch.Tensor:
    """Per-sample DPG surrogate whose q-expectation has gradient ``grad CE(p_lambda, pi)``.

    log_pi : (B,) log pi(x) with gradients; log_p_unnorm : (B,) log P_lambda(x); log_q : (B,)
    log q(x) of the proposal that drew x; log_z : log Z_lambda. Returns (B,) values
    ``-(R - b pi/q) log pi`` with ``R = P_lambda / (Z q)``.
    """
    R = torch.exp(log_p_unnorm - log_q - log_z)
    ratio = torch.exp(log_pi.detach().double() - log_q)
    adv = R - baseline * ratio
    return -(adv.to(log_pi.dtype)) * log_pi


def _np64(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _step(model: LSTMModel, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float) -> None:
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


class _QBuffer:
    """Every draw from the current proposal q, kept as a stratified sample of its total.

    Heavy samples (``R >= 1``, where ``E_q[R] = 1``) are all kept; light ones only from the
    latest batch. ``estimate`` returns indices and coefficients ``c`` such that
    ``sum_i c_i f(x_i)`` is unbiased for the mean of f over all ``n_drawn`` draws from q:
    a uniform subsample of the heavy pool, scaled to its size, plus a uniform subsample of the
    latest light samples, scaled to the number of light draws so far. Cleared when q changes.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.heavy: list[tuple] = []
        self.latest_light: tuple | None = None
        self.n_drawn = 0
        self.n_light = 0

    def add(self, tokens, lengths, log_q, log_P, R) -> None:
        hv = R >= 1.0
        self.heavy.append((tokens[hv], lengths[hv], log_q[hv], log_P[hv], R[hv]))
        self.latest_light = (tokens[~hv], lengths[~hv], log_q[~hv], log_P[~hv], R[~hv])
        self.n_drawn += len(R)
        self.n_light += int((~hv).sum())
        if len(self.heavy) > 1:  # keep one concatenated block
            self.heavy = [tuple(np.concatenate(parts) for parts in zip(*self.heavy,
                                                                        strict=True))]

    def estimate(
        self, heavy_batch: int | None, light_batch: int | None, rng: np.random.Generator
    ) -> tuple[tuple, np.ndarray]:
        parts, coefs = [], []
        for pool, total, m in ((self.heavy[0] if self.heavy else None, None, heavy_batch),
                               (self.latest_light, self.n_light, light_batch)):
            if pool is None or len(pool[4]) == 0:
                continue
            n = len(pool[4])
            total = n if total is None else total
            if m is None or m >= n:
                pick = np.arange(n)
            else:
                pick = rng.choice(n, size=m, replace=False)
            parts.append(tuple(a[pick] for a in pool))
            coefs.append(np.full(len(pick), total / len(pick) / self.n_drawn))
        batch = tuple(np.concatenate(a) for a in zip(*parts, strict=True))
        return batch, np.concatenate(coefs)


def train_dpg(
    pi: LSTMModel,
    r: LSTMModel,
    features: FeatureSet,
    lam: np.ndarray,
    log_z: float,
    valid: tuple[np.ndarray, np.ndarray],
    config: PolicyGradientConfig | None = None,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``pi`` in place by DPG toward ``p_lambda``; restores the best pi (validation CE).

    Each step's gradient is the DPG estimate over every draw from the current q so far
    (see :class:`_QBuffer`); a new batch of ``batch`` draws is added every ``reuse`` steps.
    """
    cfg = config or PolicyGradientConfig()
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0xD96])
    lam = np.asarray(lam, dtype=np.float64)
    pi.eval()
    r.eval()
    q: LSTMModel = r
    q_is_r = True
    q_ce = sequence_ce(q, *valid)
    best = (sequence_ce(pi, *valid), -1)
    best_state = copy.deepcopy(pi.state_dict())
    opt = torch.optim.Adam(pi.parameters(), lr=cfg.lr)
    baseline = 1.0  # E_q[R] = 1 when Z is exact
    kl_num = kl_den = 0.0
    history: list[tuple[int, float]] = []
    q_swaps = 0
    ess_sum = 0.0
    n_batches = 0
    buf = _QBuffer()
    step = 0
    stopped_by_time = False
    for step in range(cfg.steps):
        if cfg.mode == "on":
            buf.clear()  # q = pi changes every step
        if buf.n_drawn == 0 or step % max(1, cfg.reuse) == 0:
            proposal = pi if cfg.mode == "on" else q
            tokens, lengths, log_q_np = proposal.sample(cfg.batch, rng)
            phi = features(tokens, lengths)
            use_q = q_is_r and cfg.mode != "on"
            log_r_np = log_q_np if use_q else r.log_prob(tokens, lengths)
            log_P_np = log_r_np + phi @ lam
            R_np = np.exp(log_P_np - log_q_np - log_z)
            ess_sum += float(R_np.sum() ** 2 / max(np.sum(R_np**2), 1e-300)) / cfg.batch
            n_batches += 1
            baseline = (cfg.baseline_decay * baseline
                        + (1 - cfg.baseline_decay) * float(R_np.mean()))
            buf.add(tokens, lengths, log_q_np, log_P_np, R_np)
        (tok, lens, lq, lP, R), coef = buf.estimate(cfg.heavy_batch, cfg.grad_batch, rng)
        log_pi = pi.log_prob_torch(
            torch.as_tensor(tok, dtype=torch.long), torch.as_tensor(lens, dtype=torch.long)
        )
        use_b = cfg.baseline == "always" or (cfg.baseline == "on-policy" and cfg.mode == "on")
        sur = dpg_surrogate(log_pi, _np64(lP), _np64(lq), log_z, baseline if use_b else 0.0)
        loss = (torch.as_tensor(coef, dtype=sur.dtype) * sur).sum() / SEQ_SYMBOLS
        _step(pi, opt, loss, cfg.clip)
        if cfg.q_update == "kl":
            lp_sel = log_pi.detach().double().numpy()
            kl_num += float(np.sum(coef * R * (lq - lp_sel)))
            kl_den += float(np.sum(coef * R))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            ce = sequence_ce(pi, *valid)
            history.append((step + 1, ce))
            if callback is not None:
                callback(step, ce)
            if ce < best[0]:
                best = (ce, step)
                best_state = copy.deepcopy(pi.state_dict())
            if cfg.mode == "off":
                better = ce < q_ce if cfg.q_update == "ce" else (kl_den > 0 and kl_num < 0)
                if better:
                    q, q_is_r, q_ce, q_swaps = clone_model(pi), False, ce, q_swaps + 1
                    q.eval()
                    buf.clear()  # draws of the old q are not draws of the new one
            kl_num = kl_den = 0.0
            if _out_of_time(cfg, t0):
                stopped_by_time = True
                break
    pi.load_state_dict(best_state)
    pi.eval()
    return {
        "valid_ce": history,
        "best_valid_ce": best[0],
        "steps": step + 1,
        "stopped_by_time": stopped_by_time,
        "q_swaps": q_swaps,
        "q_batches": n_batches,
        "mean_relative_ess": ess_sum / max(n_batches, 1),
        "seconds": time.perf_counter() - t0,
    }


def train_pg(
    pi: LSTMModel,
    r: LSTMModel,
    features: FeatureSet,
    lam: np.ndarray,
    log_z: float,
    valid: tuple[np.ndarray, np.ndarray],
    config: PolicyGradientConfig | None = None,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Plain policy gradient (REINFORCE) with reward ``P_lambda(x) / Z``, on-policy.

    Rewards are centred by a moving-average baseline and scaled by a moving standard deviation
    (without that, rewards of order 1e-7 are below Adam's epsilon). This maximises
    ``E_pi[P_lambda]`` -- a mode-seeking objective; the final pi is returned as trained (it is
    the failing baseline, no best-checkpoint rescue).
    """
    cfg = config or PolicyGradientConfig()
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0x9E])
    lam = np.asarray(lam, dtype=np.float64)
    pi.eval()
    r.eval()
    opt = torch.optim.Adam(pi.parameters(), lr=cfg.lr)
    mean = None
    var = None
    history: list[tuple[int, float]] = []
    step = 0
    stopped_by_time = False
    for step in range(cfg.steps):
        tokens, lengths, _ = pi.sample(cfg.batch, rng)
        phi = features(tokens, lengths)
        reward = np.exp(r.log_prob(tokens, lengths) + phi @ lam - log_z)
        m, v = float(reward.mean()), float(reward.var())
        mean = m if mean is None else cfg.baseline_decay * mean + (1 - cfg.baseline_decay) * m
        var = v if var is None else cfg.baseline_decay * var + (1 - cfg.baseline_decay) * v
        adv = torch.as_tensor((reward - mean) / math.sqrt(var + 1e-300), dtype=torch.float32)
        log_pi = pi.log_prob_torch(
            torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(lengths, dtype=torch.long)
        )
        _step(pi, opt, -(adv * log_pi).mean() / SEQ_SYMBOLS, cfg.clip)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            ce = sequence_ce(pi, *valid)
            history.append((step + 1, ce))
            if callback is not None:
                callback(step, ce)
            if _out_of_time(cfg, t0):
                stopped_by_time = True
                break
    pi.eval()
    return {"valid_ce": history, "steps": step + 1, "stopped_by_time": stopped_by_time,
            "seconds": time.perf_counter() - t0}


def _out_of_time(cfg: PolicyGradientConfig, t0: float) -> bool:
    """The optional wall-clock safety limit (off when ``max_seconds`` is None)."""
    return cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds


def distill(
    samples: tuple[np.ndarray, np.ndarray],
    data: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    model_config: LSTMConfig,
    train_config: TrainConfig | None = None,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
    init: LSTMModel | None = None,
) -> tuple[LSTMModel, dict[str, Any]]:
    """pi trained by maximum likelihood on samples of p_lambda plus the data D.

    ``init=None`` starts from a fresh model (the papers' recipe); passing r starts from a copy
    of r's weights (the same start as DPG; converges in far fewer epochs on a CPU).
    """
    tokens = np.concatenate([samples[0], data[0]])
    lengths = np.concatenate([samples[1], data[1]])
    pi = build_model(model_config, seed) if init is None else clone_model(init)
    hist = fit_mle(pi, (tokens, lengths), valid, train_config, seed=seed, callback=callback)
    hist["n_train"] = int(len(lengths))
    return pi, hist
