"""Rich HTML displays (``_repr_html_``) of :class:`~mlr_dask.hierarchy.Hierarchy`,
:class:`~mlr_dask.mlr.MLRMatrix` and :class:`~mlr_dask.fm.model.MultilevelFactorModel`: a table
of the key figures and, for hierarchies, a small inline SVG block picture (one row of blocks per
level, widths proportional to block sizes). Cost: O(blocks drawn); levels with more than
:data:`MAX_DRAWN` blocks are drawn as one grey bar.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["hierarchy_html", "mlr_html", "model_html", "hierarchy_svg"]

#: most blocks drawn one by one on a level of the SVG picture
MAX_DRAWN = 128
_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6",
           "#9d755d")
_STYLE = ("border-collapse:collapse;font-size:12px;font-family:sans-serif;"
          "text-align:left")


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _table(title: str, rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th style='padding:1px 8px;font-weight:600'>{_esc(k)}</th>"
        f"<td style='padding:1px 8px'>{_esc(v)}</td></tr>" for k, v in rows
    )
    return (f"<table style='{_STYLE}'><caption style='text-align:left;font-weight:bold'>"
            f"{_esc(title)}</caption>{body}</table>")


def _count(n: float) -> str:
    """A count with a unit prefix (12.3k, 4.56M)."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{int(n)}"


def hierarchy_svg(boundaries: Sequence[Any], names: Sequence[str] | None = None,
                  width: int = 320, row: int = 14) -> str:
    """Inline SVG: one row per level (root on top), one rectangle per block, width proportional
    to the block's size; a level with more than :data:`MAX_DRAWN` blocks is one grey bar."""
    label_w = 70
    levels = [np.asarray(b) for b in boundaries]
    n = int(levels[0][-1]) if levels else 1
    h = row * len(levels) + 2
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width + label_w}' height='{h}' "
             f"style='display:block'>"]
    for lvl, b in enumerate(levels):
        y = lvl * row + 1
        name = names[lvl] if names is not None else f"level {lvl}"
        parts.append(f"<text x='0' y='{y + row - 4}' font-size='10' "
                     f"font-family='sans-serif'>{_esc(name)[:12]}</text>")
        p = b.size - 1
        if p > MAX_DRAWN:
            parts.append(f"<rect x='{label_w}' y='{y}' width='{width}' height='{row - 2}' "
                         f"fill='#bbbbbb'><title>{p} blocks</title></rect>")
            continue
        for k in range(p):
            x0 = label_w + width * (b[k] / n)
            w = max(width * ((b[k + 1] - b[k]) / n) - 0.5, 0.5)
            parts.append(f"<rect x='{x0:.2f}' y='{y}' width='{w:.2f}' height='{row - 2}' "
                         f"fill='{_COLORS[k % len(_COLORS)]}'>"
                         f"<title>block {k}: {int(b[k + 1] - b[k])} items</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


def hierarchy_html(h: Any) -> str:
    """HTML of a Hierarchy: items, levels, blocks per level (with level names), smallest and
    largest finest blocks, whether the order is permuted, and the block picture."""
    sizes = h.block_sizes(h.n_levels - 1)
    names = h.level_names
    blocks = [f"{names[i]}: {p}" if names else str(p) for i, p in enumerate(h.n_blocks)]
    rows = [
        ("items", h.n),
        ("levels", h.n_levels),
        ("blocks per level", ", ".join(blocks)),
        ("finest block sizes", f"{int(sizes.min())} to {int(sizes.max())}"),
        ("atoms (singletons last)", "yes" if h.has_atoms else "no"),
        ("permuted", "no" if np.array_equal(h.perm, np.arange(h.n)) else "yes"),
    ]
    return ("<div>" + _table("Hierarchy", rows)
            + hierarchy_svg(h.boundaries, names) + "</div>")


def mlr_html(M: Any) -> str:
    """HTML of an MLRMatrix: shape, symmetry, dtype, ranks and blocks per level, total rank,
    numbers stored against the dense matrix, and the row hierarchy's block picture."""
    m, n = M.shape
    dense = m * n
    ranks = list(M.ranks)
    per_level = ", ".join(f"{r} x {p}" for r, p in zip(ranks, M.rows.n_blocks))
    rows = [
        ("shape", f"{m} x {n}"),
        ("symmetric", "yes" if M.symmetric else "no"),
        ("dtype", M.dtype),
        ("ranks per level", ranks),
        ("rank x blocks per level", per_level),
        ("total rank", M.rank),
        ("stored numbers", f"{_count(M.storage)} ({M.storage})"),
        ("dense numbers", f"{_count(dense)} ({dense})"),
        ("storage / dense", f"{M.storage / dense:.4g}"),
    ]
    return ("<div>" + _table("MLRMatrix", rows)
            + hierarchy_svg(M.rows.boundaries, M.rows.level_names) + "</div>")


def model_html(model: Any) -> str:
    """HTML of a MultilevelFactorModel: its parameters and, when fitted, features, samples,
    groups and ranks per factor level, EM iterations, convergence and the final average
    log-likelihood per sample, and the factor hierarchy's block picture."""
    fitted = hasattr(model, "hierarchy_")
    rows: list[tuple[str, Any]] = [("fitted", "yes" if fitted else "no")]
    if not fitted:
        rows += [("ranks", model.ranks), ("max_iter", model.max_iter),
                 ("tol", model.tol), ("init", model.init)]
        h = model.hierarchy
        if h is not None and hasattr(h, "n_blocks"):
            rows += [("features", h.n), ("groups per level", list(h.n_blocks))]
        elif h is not None:
            rows.append(("hierarchy", h))
        return "<div>" + _table("MultilevelFactorModel", rows) + "</div>"
    h = model.hierarchy_
    ranks = list(model.ranks_)
    groups = list(h.n_blocks)
    names = h.level_names
    rows += [
        ("features", model.n_features_in_),
        ("samples", model.n_samples_),
        ("ranks per factor level", ranks),
        ("groups per factor level", ", ".join(
            f"{names[i]}: {g}" if names else str(g) for i, g in enumerate(groups))),
        ("factors", int(sum(r * g for r, g in zip(ranks, groups)))),
        ("EM iterations", model.n_iter_),
        ("converged", "yes" if getattr(model, "converged_", False) else "no"),
    ]
    ll = list(getattr(model, "loglike_", []))
    if ll:
        rows.append(("log-likelihood per sample", f"{ll[-1]:.6g}"))
    return ("<div>" + _table("MultilevelFactorModel", rows)
            + hierarchy_svg(h.boundaries, names) + "</div>")
