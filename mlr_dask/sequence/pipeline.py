"""One end-to-end GAM run on the motif benchmark: data, r, lambda, Z, sampling, training 2.

Stages (each timed): ``data``, ``train_r``, ``pool`` (r-samples in shards), ``lambda``, ``z``,
``sample_plambda`` (rejection sampling in shards, needed by distillation), one stage per method
(``distill``, ``dpg``, ``pg``; run as parallel Dask tasks when a client is given), ``eval``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.sequence.features import feature_set_from_code, validate_feature_code
from mlr_dask.sequence.motif import MotifProcess, contains, read_splits, split_sizes, validate_motif

METHODS = ("distill", "dpg", "pg")
#: stage -> the optional wall-clock safety limit of that stage (all off by default)
TIME_LIMITS = {
    "train_r": "r_max_seconds",
    "distill": "distill_max_seconds",
    "dpg": "dpg_max_seconds",
    "pg": "pg_max_seconds",
}


def _check_type(name: str, annotation: str, value: Any) -> Any:
    """``value`` checked against a field annotation such as ``"int | None"`` (ints are accepted
    for floats); InputError naming the setting otherwise."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    if "int" in kinds and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "float" in kinds and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if "str" in kinds and isinstance(value, str):
        return value
    if "bool" in kinds and isinstance(value, bool):
        return value
    if not ({"int", "float", "str", "bool"} & set(kinds)):
        return value  # tuples, dicts: checked by validate()
    want = " or ".join(k for k in kinds)
    raise InputError(f"setting {name!r} must be {want}, got {value!r}")


@dataclass(frozen=True)
class GamRunConfig:
    """Everything one run needs; validated by :meth:`validate` before any work.

    Every training budget is deterministic: r and distillation stop by early stopping on the
    validation CE (patience 8, best checkpoint restored) or ``*_max_epochs``. r's default budget
    is the papers' (at most 130 epochs, i.e. 260 Adam updates at |D| = 1000): the GAM's
    premise is an r trained on little data with a modest budget. Trained much longer
    (``r_max_epochs=1000``) the LSTM learns the motif from D itself at |D| = 1000 (motif
    10001010001, seed 1234: validation CE 0.665 at 130 epochs, 0.638 at 200, 0.556 at 300, best
    0.529 at 466) and P_lambda then has little to add. DPG and PG run
    ``dpg_steps`` / ``pg_steps`` steps. The ``*_max_seconds`` settings are optional wall-clock
    safety limits, off (None) by default; a run where one fires is reported in the summary's
    ``stopped_by_time`` (its result then depends on the machine's load, not only on the seed).
    ``torch_threads`` pins torch's thread count while the driver trains r (float reductions may
    depend on the thread count; the Dask tasks always use one thread); None leaves it alone.
    """

    motif: str = "10001010001"
    features: str = "1001111"
    train_size: int = 1000
    seed: int = 1234
    hidden: int = 64
    kind: str = "motif"
    n: int = 30
    max_len: int | None = None
    methods: tuple[str, ...] = METHODS
    data_path: str | None = None
    data_available: int = 20000
    test_size: int = 5000
    r_max_epochs: int = 130
    r_max_seconds: float | None = None
    pool_size: int = 40000
    lambda_estimator: str = "snis"
    lambda_max_iter: int = 1000
    lambda_tol: float = 1e-3
    distill_samples: int = 10000
    max_proposals: int = 6_000_000
    log_beta: float | None = None
    distill_max_epochs: int = 400
    distill_init: str = "r"
    distill_max_seconds: float | None = None
    dpg_steps: int = 800
    dpg_batch: int = 5000
    dpg_grad_batch: int | None = 100
    dpg_heavy_batch: int | None = 200
    dpg_reuse: int = 4
    dpg_lr: float = 1e-3
    dpg_mode: str = "off"
    dpg_q_update: str = "ce"
    dpg_max_seconds: float | None = None
    pg_steps: int = 20
    pg_max_seconds: float | None = None
    torch_threads: int | None = 1
    free_samples: int = 2000
    n_shards: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GamRunConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown configuration keys: {unknown}")
        d = dict(d)
        if isinstance(d.get("methods"), str):
            d["methods"] = tuple(m.strip() for m in d["methods"].split(",") if m.strip())
        elif "methods" in d:
            d["methods"] = tuple(d["methods"])
        for key in TIME_LIMITS.values():
            if isinstance(d.get(key), str) and d[key].strip().lower() in ("none", "off", ""):
                d[key] = None
        for f in fields(cls):
            if f.name in d:
                d[f.name] = _check_type(f.name, str(f.type), d[f.name])
        return cls(**d)

    @property
    def model_max_len(self) -> int:
        """Bits after which the models force EOS (default n: the models know the length bound;
        they still choose between 0, 1 and EOS at every earlier position)."""
        return self.n if self.max_len is None else int(self.max_len)

    def validate(self) -> GamRunConfig:
        validate_motif(self.motif, self.n)
        validate_feature_code(self.features)
        if self.kind not in ("motif", "mam"):
            raise InputError(f"unknown data kind {self.kind!r} (use motif or mam)")
        if not self.methods:
            raise InputError("give at least one method")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise InputError(f"unknown methods {bad}; choose from {list(METHODS)}")
        for name in ("train_size", "hidden", "pool_size", "distill_samples", "dpg_steps",
                     "dpg_batch", "pg_steps", "free_samples", "n_shards", "test_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be positive")
        for key in TIME_LIMITS.values():
            value = getattr(self, key)
            if value is not None and (isinstance(value, str) or not float(value) > 0):
                raise InputError(f"{key} must be a positive number of seconds or none")
        if self.torch_threads is not None and int(self.torch_threads) < 1:
            raise InputError("torch_threads must be positive or none")
        if self.model_max_len < self.n:
            raise InputError(f"max_len ({self.model_max_len}) must be at least n ({self.n})")
        available = self.data_available
        if self.data_path is not None:
            if not os.path.exists(self.data_path):
                raise InputError(f"data file {self.data_path!r} does not exist")
            splits, meta = read_splits(self.data_path)
            if meta["motif"] != self.motif or meta["n"] != self.n:
                raise InputError(
                    f"data file is for motif {meta['motif']} and n={meta['n']}, not "
                    f"{self.motif} and n={self.n}"
                )
            available = len(splits["train"])
        if self.train_size > available:
            raise InputError(
                f"|D| = {self.train_size} is larger than the {available} training strings "
                "available"
            )
        if self.dpg_mode not in ("off", "on", "fixed"):
            raise InputError(f"unknown DPG mode {self.dpg_mode!r} (use off, on or fixed)")
        if self.dpg_q_update not in ("ce", "kl"):
            raise InputError(f"unknown q update rule {self.dpg_q_update!r} (use ce or kl)")
        if self.distill_init not in ("r", "fresh"):
            raise InputError("distill_init must be r or fresh")
        if self.lambda_estimator not in ("snis", "rejection"):
            raise InputError("lambda_estimator must be snis or rejection")
        return self


def _load_data(cfg: GamRunConfig, process: MotifProcess) -> dict[str, np.ndarray]:
    if cfg.data_path is not None:
        splits, _ = read_splits(cfg.data_path)
        return {
            "train": splits["train"][: cfg.train_size],
            "valid": splits["valid"],
            "test": splits["test"],
        }
    sizes = split_sizes(cfg.train_size, cfg.test_size)
    rng = np.random.default_rng([cfg.seed, 0xDA7A])
    # the training set of size |D| is a prefix of the same stream for every |D| <= available
    train = process.sample(cfg.train_size, rng)
    rng_eval = np.random.default_rng([cfg.seed, 0xE7A1])
    return {
        "train": train,
        "valid": process.sample(sizes["valid"], rng_eval),
        "test": process.sample(sizes["test"], rng_eval),
    }


def _method_task(*args: Any) -> dict[str, Any]:
    """Train one policy and evaluate it (runs in a Dask task or in-process); the arguments are
    those of :func:`_method_task_locked`.

    Holds :data:`~mlr_dask.sequence.models.TORCH_RNG_LOCK` (torch's global generator feeds
    dropout), so methods sharing a process run one after the other and stay reproducible.
    """
    from mlr_dask.sequence.models import TORCH_RNG_LOCK

    with TORCH_RNG_LOCK:
        return _method_task_locked(*args)


def _method_task_locked(
    method: str,
    cfg: GamRunConfig,
    r: Any,
    lam: np.ndarray,
    log_z: float,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    distill_samples: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any]:
    import torch

    from mlr_dask.sequence import policy
    from mlr_dask.sequence.models import LSTMConfig, TrainConfig, clone_model, sequence_ce
    from mlr_dask.sequence.sampling import single_thread

    single_thread()
    t0 = time.perf_counter()
    features = feature_set_from_code(cfg.motif, cfg.features)
    seed = cfg.seed + 1000 * (METHODS.index(method) + 1)
    torch.manual_seed(seed)
    if method == "distill":
        assert distill_samples is not None
        pi, hist = policy.distill(
            distill_samples, data["train"], data["valid"],
            LSTMConfig(hidden=cfg.hidden, max_len=cfg.model_max_len),
            TrainConfig(max_epochs=cfg.distill_max_epochs, max_seconds=cfg.distill_max_seconds),
            seed=seed, init=r if cfg.distill_init == "r" else None,
        )
    else:
        pi = clone_model(r)
        pgc = policy.PolicyGradientConfig(
            steps=cfg.dpg_steps if method == "dpg" else cfg.pg_steps,
            batch=cfg.dpg_batch, grad_batch=cfg.dpg_grad_batch, reuse=cfg.dpg_reuse,
            heavy_batch=cfg.dpg_heavy_batch,
            lr=cfg.dpg_lr, mode=cfg.dpg_mode, q_update=cfg.dpg_q_update,
            max_seconds=cfg.dpg_max_seconds if method == "dpg" else cfg.pg_max_seconds,
        )
        train = policy.train_dpg if method == "dpg" else policy.train_pg
        hist = train(pi, r, features, lam, log_z, data["valid"], pgc, seed=seed)
    t1 = time.perf_counter()
    ce = sequence_ce(pi, *data["test"])
    tok, lens, _ = pi.sample(cfg.free_samples, np.random.default_rng([seed, 7]))
    freq = float(contains(tok, lens, cfg.motif).mean())
    hist.pop("valid_ce", None)
    return {
        "method": method,
        "ce": ce,
        "motif_freq": freq,
        "train_seconds": t1 - t0,
        "eval_seconds": time.perf_counter() - t1,
        "history": hist,
        "state": {k: v.detach().numpy() for k, v in pi.state_dict().items()},
    }


def _method_task_packed(method: str, args: tuple) -> dict[str, Any]:
    from mlr_dask.sequence.models import TORCH_RNG_LOCK
    from mlr_dask.sequence.sampling import materialize

    # building the models draws their initial weights from torch's global generator: keep it
    # out of another method's training in this process
    with TORCH_RNG_LOCK:
        return _method_task(method, *(materialize(a) for a in args))


class _Stages:
    """Times the stages of a run and publishes a ``gam`` event as each ends (``step`` of
    ``total`` stages, ``gam_stage``, ``seconds``); unless quiet, tqdm bars on stderr are driven
    by those events."""

    def __init__(self, names: list[str], quiet: bool) -> None:
        from mlr_dask.events import ProgressBars

        self.seconds: dict[str, float] = {}
        self.total = len(names)
        self.bars = ProgressBars(file=sys.stderr, disable=quiet).__enter__()
        self._t = time.perf_counter()
        self._name = ""

    def start(self, name: str) -> None:
        self._t = time.perf_counter()
        self._name = name

    def stop(self, seconds: float | None = None) -> None:
        from mlr_dask import events

        self.seconds[self._name] = (
            time.perf_counter() - self._t if seconds is None else seconds
        )
        events.publish("gam", len(self.seconds), self.total, gam_stage=self._name,
                       seconds=self.seconds[self._name])

    def close(self) -> None:
        self.bars.__exit__(None, None, None)


def run_gam(
    cfg: GamRunConfig,
    client: Any = None,
    quiet: bool = True,
    out_dir: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every stage of one configuration; returns a flat JSON-able summary.

    ``client``: a ``distributed.Client`` for the sharded sampling and the parallel methods, or
    None to do everything in this process (what a sweep task does). ``out_dir``: where to write
    the checkpoints (``r.pt``, ``pi_<method>.pt``) and ``summary.json``.
    """
    cfg.validate()
    import torch

    from mlr_dask.sequence import gam
    from mlr_dask.sequence.base import cross_entropy, pad_bits
    from mlr_dask.sequence.models import (
        TORCH_RNG_LOCK,
        LSTMConfig,
        LSTMModel,
        TrainConfig,
        build_model,
        fit_mle,
        save_checkpoint,
    )
    from mlr_dask.sequence.sampling import draw_pool, rejection_sample

    say = log or (lambda _msg: None)
    t_all = time.perf_counter()
    stage_names = ["data", "train_r", "pool", "lambda", "z"]
    if "distill" in cfg.methods:
        stage_names.append("sample_plambda")
    stage_names += list(cfg.methods) + ["eval"]
    st = _Stages(stage_names, quiet)
    process = MotifProcess(cfg.motif, cfg.n, cfg.kind)
    features = feature_set_from_code(cfg.motif, cfg.features)
    mcfg = LSTMConfig(hidden=cfg.hidden, max_len=cfg.model_max_len)

    st.start("data")
    raw = _load_data(cfg, process)
    data = {k: pad_bits(v, mcfg.max_len) for k, v in raw.items()}
    st.stop()

    st.start("train_r")
    with TORCH_RNG_LOCK:
        threads_before = torch.get_num_threads()
        if cfg.torch_threads is not None:
            torch.set_num_threads(int(cfg.torch_threads))
        try:
            r = build_model(mcfg, cfg.seed)
            hist_r = fit_mle(r, data["train"], data["valid"],
                             TrainConfig(max_epochs=cfg.r_max_epochs,
                                         max_seconds=cfg.r_max_seconds),
                             seed=cfg.seed)
        finally:
            torch.set_num_threads(threads_before)
    st.stop()
    say(f"r: {hist_r['epochs']} epochs ({hist_r['stopped_by']}), "
        f"valid CE {hist_r['best_valid_ce']:.4f}")

    st.start("pool")
    pool = draw_pool(r, features, cfg.pool_size, cfg.seed + 1, cfg.n_shards, client)
    st.stop()

    st.start("lambda")
    target = features(*data["train"]).mean(axis=0)
    if cfg.lambda_estimator == "snis":
        fit = gam.fit_lambda_snis(pool["phi"], target, max_iter=cfg.lambda_max_iter,
                                  tol=cfg.lambda_tol)
    else:
        fit = gam.fit_lambda_rejection(pool["phi"], target, cfg.seed + 2,
                                       max_iter=cfg.lambda_max_iter, tol=cfg.lambda_tol)
    lam = fit.lam
    st.stop()
    say(f"lambda {np.round(lam, 3).tolist()}, L1 gap {fit.l1_gap:.2e}")

    st.start("z")
    zest = gam.estimate_z(pool["phi"], lam)
    st.stop()

    samples = None
    rej: dict[str, Any] = {}
    if "distill" in cfg.methods:
        st.start("sample_plambda")
        rej = rejection_sample(r, features, lam, cfg.distill_samples, cfg.seed + 3,
                               log_beta=cfg.log_beta, max_proposals=cfg.max_proposals,
                               n_shards=cfg.n_shards, client=client)
        samples = (rej["tokens"], rej["lengths"])
        st.stop()
        say(f"rejection sampling: {rej['accepted']} of {rej['proposed']} accepted")
        if rej["accepted"] == 0:
            raise RuntimeError("rejection sampling accepted nothing; raise max_proposals")

    results: dict[str, dict[str, Any]] = {}
    args = (cfg, r, lam, zest.log_z, data, samples)
    if client is not None and len(cfg.methods) > 1:
        from distributed import as_completed

        t_m = time.perf_counter()
        # one future holding all the shared inputs (scattering a tuple would split it)
        from mlr_dask.sequence.sampling import portable

        [packed] = client.scatter([tuple(portable(a) for a in args)], broadcast=True,
                                  hash=False)
        futs = [client.submit(_method_task_packed, m, packed, pure=False) for m in cfg.methods]
        for fut in as_completed(futs):
            res = fut.result()
            results[res["method"]] = res
            st.start(res["method"])
            st.stop(res["train_seconds"] + res["eval_seconds"])
        methods_wall = time.perf_counter() - t_m
    else:
        t_m = time.perf_counter()
        for m in cfg.methods:
            st.start(m)
            results[m] = _method_task(m, *args)
            st.stop()
        methods_wall = time.perf_counter() - t_m

    st.start("eval")
    log_r_test = r.log_prob(*data["test"])
    ce_r = cross_entropy(log_r_test, data["test"][1])
    ce_pl = gam.ce_plambda(log_r_test, features(*data["test"]), data["test"][1], lam, zest)
    tok, lens, _ = r.sample(cfg.free_samples, np.random.default_rng([cfg.seed, 11]))
    freq_r = float(contains(tok, lens, cfg.motif).mean())
    st.stop()
    st.close()

    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        save_checkpoint(r, os.path.join(out_dir, "r.pt"))
        for m, res in results.items():
            pi = LSTMModel(mcfg)
            pi.load_state_dict({k: torch.as_tensor(v) for k, v in res["state"].items()})
            save_checkpoint(pi, os.path.join(out_dir, f"pi_{m}.pt"))

    H = process.entropy_rate
    # which stages were stopped by their optional wall-clock limit (all False unless one is set)
    stopped_by_time = {"train_r": _time_capped(hist_r)}
    stopped_by_time.update({m: _time_capped(res["history"]) for m, res in results.items()})
    if any(stopped_by_time.values()):
        say(f"WARNING: stopped by a wall-clock limit: "
            f"{[k for k, v in stopped_by_time.items() if v]} (result depends on machine load)")
    summary: dict[str, Any] = {
        "motif": cfg.motif,
        "features": cfg.features,
        "feature_names": features.names,
        "train_size": cfg.train_size,
        "seed": cfg.seed,
        "hidden": cfg.hidden,
        "entropy_rate": H,
        "z_true": process.z,
        "ce_r": ce_r,
        "ce_plambda": ce_pl["ce"],
        "ce_plambda_stderr": ce_pl["stderr"],
        "ce_pi": {m: res["ce"] for m, res in results.items()},
        "ce_r_over_h": ce_r / H,
        "ce_pi_over_h": {m: res["ce"] / H for m, res in results.items()},
        "lambda": lam.tolist(),
        "moment_target": target.tolist(),
        "l1_gap": fit.l1_gap,
        "lambda_iterations": fit.iterations,
        "z": zest.z,
        "z_stderr": zest.stderr,
        "z_ess": zest.ess,
        "pool_size": cfg.pool_size,
        "acceptance_rate": rej.get("acceptance_rate"),
        "proposals": rej.get("proposed"),
        "accepted": rej.get("accepted"),
        "rejection_exact": rej.get("exact"),
        "motif_freq_data": float(contains(raw["train"], None, cfg.motif).mean()),
        "motif_freq_r": freq_r,
        "motif_freq_pi": {m: res["motif_freq"] for m, res in results.items()},
        "r_epochs": hist_r["epochs"],
        "r_best_epoch": hist_r["best_epoch"],
        "r_stopped_by": hist_r["stopped_by"],
        "epochs_used": {"train_r": hist_r["epochs"],
                        **{m: _budget_used(res["history"]) for m, res in results.items()}},
        "stopped_by_time": stopped_by_time,
        "method_details": {m: res["history"] for m, res in results.items()},
        "seconds": {**st.seconds, "methods_wall": methods_wall,
                    "total": time.perf_counter() - t_all},
    }
    if out_dir is not None:
        path = os.path.join(out_dir, "summary.json")
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(_plain(summary), f, indent=1)
        os.replace(tmp, path)
    return summary


def _budget_used(hist: dict[str, Any]) -> int | None:
    """Epochs (distillation) or steps (DPG, PG) a method used."""
    value = hist.get("epochs", hist.get("steps"))
    return None if value is None else int(value)


def _time_capped(hist: dict[str, Any]) -> bool:
    return hist.get("stopped_by") == "time" or bool(hist.get("stopped_by_time", False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def config_dict(cfg: GamRunConfig) -> dict[str, Any]:
    """The configuration as a plain dict (for tables and JSON)."""
    d = asdict(cfg)
    d["methods"] = ",".join(cfg.methods)
    return d
