"""Sweeps: configurations (motif x features x |D| x seed x method) as independent Dask tasks.

Each task runs :func:`~mlr_dask.sequence.pipeline.run_gam` in-process, single-threaded
(``torch.set_num_threads(1)``). Results are appended, one row per finished configuration, to one
parquet table (rewritten under a temporary name and renamed, so it is always complete), and a
plot of CE/H against |D| per method is written with matplotlib (Agg).

A sweep is a stage of a job file (``pipelines/gam_motif_sweep.toml``) or one command line::

    mlr-dask gam sweep --motifs 10001010001,1000101111 --train-sizes 500,1000 \
        --methods distill,dpg --out results/gam_sweep --set hidden=32

With a distributed client the configurations run as futures across the workers; without one
(``--scheduler threads``) they run one after another in this process.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.sequence.pipeline import GamRunConfig


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the run configurations and where the results go."""

    name: str
    out_dir: str
    configs: tuple[GamRunConfig, ...]

    @property
    def table_path(self) -> str:
        return os.path.join(self.out_dir, "results.parquet")

    @property
    def plot_path(self) -> str:
        return os.path.join(self.out_dir, "ce_vs_d.png")


def _as_list(v: Any, key: str) -> list:
    if isinstance(v, list | tuple):
        if not v:
            raise InputError(f"sweep option {key!r} is empty")
        return list(v)
    return [v]


def _ints(v: Any, key: str) -> list[int]:
    out = []
    for x in _as_list(v, key):
        try:
            out.append(int(x))
        except (TypeError, ValueError):
            raise InputError(f"sweep option {key!r}: expected integers, got {x!r}") from None
    return out


def build_sweep(
    name: str,
    out_dir: str | None = None,
    *,
    motifs: Any = None,
    features: Any = None,
    train_sizes: Any = None,
    seeds: Any = None,
    methods: Any = None,
    run: dict[str, Any] | None = None,
) -> Sweep:
    """A validated sweep: the grid motifs x features x train_sizes x seeds x methods (each a
    value or a list; None takes the run default), every configuration built from ``run`` (any
    :class:`GamRunConfig` field) and validated before any work."""
    base = GamRunConfig.from_dict(dict(run or {}))
    grid = itertools.product(
        _as_list(base.motif if motifs is None else motifs, "motifs"),
        _as_list(base.features if features is None else features, "features"),
        _ints(base.train_size if train_sizes is None else train_sizes, "train_sizes"),
        _ints(base.seed if seeds is None else seeds, "seeds"),
        _as_list(list(base.methods) if methods is None else methods, "methods"),
    )
    configs = []
    for motif, feats, size, seed, method in grid:
        cfg = replace(base, motif=str(motif), features=str(feats), train_size=size,
                      seed=seed, methods=(str(method),))
        configs.append(cfg.validate())
    out = out_dir or os.path.join("results", name)
    return Sweep(str(name), str(out), tuple(configs))


def run_config(cfg: GamRunConfig) -> dict[str, Any]:
    """One sweep task: a full run in this process, single-threaded; returns one table row."""
    import torch

    torch.set_num_threads(1)
    from mlr_dask.sequence.pipeline import run_gam

    method = cfg.methods[0]
    row: dict[str, Any] = {
        "motif": cfg.motif, "features": cfg.features, "train_size": cfg.train_size,
        "seed": cfg.seed, "method": method, "hidden": cfg.hidden, "error": "",
    }
    t0 = time.perf_counter()
    from mlr_dask.sequence.models import TORCH_RNG_LOCK

    try:
        with TORCH_RNG_LOCK:  # torch's global generator: one run at a time per process
            s = run_gam(cfg, client=None, quiet=True)
    except Exception as exc:  # a failed configuration is recorded, not fatal to the sweep
        row["error"] = "".join(traceback.format_exception_only(exc)).strip()
        row["seconds_total"] = time.perf_counter() - t0
        return row
    H = s["entropy_rate"]
    row.update({
        "entropy_rate": H,
        "ce_r": s["ce_r"],
        "ce_plambda": s["ce_plambda"],
        "ce_plambda_stderr": s["ce_plambda_stderr"],
        "ce_pi": s["ce_pi"][method],
        "ce_r_over_h": s["ce_r"] / H,
        "ce_plambda_over_h": s["ce_plambda"] / H,
        "ce_pi_over_h": s["ce_pi"][method] / H,
        "z": s["z"],
        "z_stderr": s["z_stderr"],
        "z_ess": s["z_ess"],
        "acceptance_rate": s["acceptance_rate"] if s["acceptance_rate"] is not None else np.nan,
        "motif_freq_r": s["motif_freq_r"],
        "motif_freq_pi": s["motif_freq_pi"][method],
        "l1_gap": s["l1_gap"],
        "lambda": json.dumps([round(v, 6) for v in s["lambda"]]),
    })
    for stage, sec in s["seconds"].items():
        row[f"seconds_{stage}"] = sec
    # budgets used, and whether an optional wall-clock limit cut this configuration short
    row["r_epochs"] = s["r_epochs"]
    row["r_stopped_by"] = s["r_stopped_by"]
    row["budget_used"] = s["epochs_used"].get(method)
    row["stopped_by_time"] = bool(s["stopped_by_time"].get("train_r", False)
                                  or s["stopped_by_time"].get(method, False))
    return row


def append_rows(path: str, rows: list[dict[str, Any]]) -> None:
    """Append rows to the parquet table at ``path`` (rewrite to a temporary name, rename)."""
    import pandas as pd

    new = pd.DataFrame(rows)
    if os.path.exists(path):
        new = pd.concat([pd.read_parquet(path), new], ignore_index=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    new.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def plot_ce_vs_d(table: Any, path: str, title: str = "") -> None:
    """CE/H against |D| per method (mean and range over motifs, features, seeds), with r and
    P_lambda for reference; written with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["error"] == ""] if "error" in table else table
    fig, ax = plt.subplots(figsize=(6, 4))
    series = [("r", ok.drop_duplicates(["motif", "features", "train_size", "seed"]),
               "ce_r_over_h", "k--"),
              ("P_lambda", ok.drop_duplicates(["motif", "features", "train_size", "seed"]),
               "ce_plambda_over_h", "k:")]
    series += [(f"pi ({m})", ok[ok["method"] == m], "ce_pi_over_h", "o-")
               for m in sorted(ok["method"].unique())]
    for label, df, col, style in series:
        if df.empty or col not in df:
            continue
        g = df.groupby("train_size")[col]
        x = np.array(sorted(g.groups))
        mean, lo, hi = g.mean().loc[x], g.min().loc[x], g.max().loc[x]
        ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt=style, capsize=3, label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("|D| (training strings)")
    ax.set_ylabel("cross-entropy / entropy rate")
    ax.set_title(title or "GAM: CE/H vs |D|")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def run_sweep(sweep: Sweep, client: Any = None, quiet: bool = True) -> dict[str, Any]:
    """Run every configuration (a Dask task each with a distributed ``client``, else in this
    process one after another); append rows as they finish; plot at the end. Publishes a
    ``sweep`` event per finished configuration."""
    import pandas as pd
    from distributed import as_completed
    from tqdm.auto import tqdm

    os.makedirs(sweep.out_dir, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    from mlr_dask import events

    total = len(sweep.configs)
    if client is not None:
        futures = [client.submit(run_config, cfg, pure=False) for cfg in sweep.configs]
        rows = (fut.result() for fut in as_completed(futures))
    else:  # no cluster: one configuration after another in this process
        rows = (run_config(cfg) for cfg in sweep.configs)
    bar = tqdm(total=total, desc=f"sweep {sweep.name}", file=sys.stderr, disable=quiet)
    failed = 0
    for done, row in enumerate(rows, start=1):
        row["run_id"] = run_id
        row["finished_at"] = time.time()
        failed += bool(row["error"])
        append_rows(sweep.table_path, [row])
        bar.update(1)
        events.publish("sweep", done, total, motif=row["motif"], train_size=row["train_size"],
                       method=row["method"], ce_pi_over_h=row.get("ce_pi_over_h"),
                       error=row["error"] or None)
    bar.close()
    wall = time.perf_counter() - t0
    table = pd.read_parquet(sweep.table_path)
    mine = table[table["run_id"] == run_id]
    plot_ce_vs_d(mine, sweep.plot_path, title=sweep.name)
    good = mine[mine["error"] == ""]
    summary: dict[str, Any] = {
        "table": sweep.table_path,
        "plot": sweep.plot_path,
        "run_id": run_id,
        "configurations": len(sweep.configs),
        "failed": failed,
        "seconds": wall,
        "task_seconds": float(mine["seconds_total"].sum()),
    }
    if not good.empty:
        by = good.groupby(["method", "train_size"])
        summary["ce_pi_over_h"] = {
            f"{m}@{d}": float(v) for (m, d), v in by["ce_pi_over_h"].mean().items()
        }
        summary["ce_r_over_h"] = {
            str(d): float(v) for d, v in good.groupby("train_size")["ce_r_over_h"].mean().items()
        }
    return summary
