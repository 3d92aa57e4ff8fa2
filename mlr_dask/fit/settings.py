"""The expert settings of :func:`mlr_dask.fit.fit_mlr`, one group per stage, so that the
function itself takes only what most fits need (the matrix, the rank, the hierarchy, the start,
the engine). Each group validates itself (``check``) before any work; the defaults are the
pipeline's.

- :class:`Partitioning`: how the in-memory pipeline splits a block;
- :class:`Allocation`: the growth and exchange of ranks between levels (in memory);
- :class:`DaskSettings`: chunks, blocks and passes of the Dask path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlr_dask.errors import InputError
from mlr_dask.fit.options import DEFAULT_MAX_RANK_MOVES

__all__ = ["Partitioning", "Allocation", "DaskSettings"]


def _positive_int(name: str, value: object, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise InputError(f"{name} must be an integer of at least {low}, got {value!r}")


@dataclass(frozen=True)
class Partitioning:
    """How a block is split (see :func:`mlr_dask.fit.partition.spectral_partition`).

    ``balanced``: equal halves instead of the cut of lowest normalized cut; ``refine``: greedy
    swaps after each cut; ``split``: ``"normalized"`` co-clustering of ``A o A`` or
    ``"centered"`` splits; ``split_vectors``: the dimension of each split's embedding;
    ``epochs``: BCD epochs of the coarser levels before each level is split."""

    balanced: bool = False
    refine: bool = True
    split: str = "normalized"
    split_vectors: int = 4
    epochs: int = 1

    def check(self) -> None:
        if self.split not in ("normalized", "centered"):
            raise InputError(f"split must be 'normalized' or 'centered', got {self.split!r}")
        _positive_int("split_vectors", self.split_vectors)
        _positive_int("partition epochs", self.epochs, 0)


@dataclass(frozen=True)
class Allocation:
    """Rank allocation between levels (in memory; the Dask path has its own bounds in
    :class:`DaskSettings`).

    ``eps``: an exchange is kept when it lowers the loss by this fraction; ``max_rank_moves``:
    bound on the steps of growth and exchange together (when growth would need more, its last
    step adds all the rest by the predicted gains); ``grow_trials``: levels tried per growth
    step of ``init="bottom"``, each on a copy with one BCD epoch (parallel threads), the best
    kept; 1 takes the level of largest predicted gain without a trial; ``late_trials``: the
    same, only in the second half of the growth steps (off at 1)."""

    eps: float = 1e-3
    max_rank_moves: int = DEFAULT_MAX_RANK_MOVES
    grow_trials: int = 1
    late_trials: int = 1

    def check(self) -> None:
        if not 0 <= float(self.eps) < 1:
            raise InputError(f"allocation eps must be in [0, 1), got {self.eps!r}")
        _positive_int("max_rank_moves", self.max_rank_moves)
        _positive_int("grow_trials", self.grow_trials)
        _positive_int("late_trials", self.late_trials)


@dataclass(frozen=True)
class DaskSettings:
    """The Dask path (:mod:`mlr_dask.fit.dask`, :mod:`mlr_dask.fit.learn_dask`).

    ``chunk_items``: rows (columns) per chunk of the factor fit (default 4096, or the block
    size when the hierarchy is learned); ``power_iters``: power iterations of each randomized
    product; ``block_items``: the largest block side one task learns in memory (default from
    the workers' memory limit, at most 4096); ``sample_items``: sampled rows (columns) on which
    ``init="best"`` picks its start; ``grow_per_step`` / ``exchange_steps``: ranks added per
    growth epoch and the bound on the rank exchanges of the learned fit; ``reorder``: rewrite
    a store in the learned hierarchy's order before the final fit (``"auto"``: when the fit
    would otherwise read scattered chunks; ``"always"``; ``"never"``); ``scratch``: the
    directory of that rewrite (default: next to the input store; it must be one every worker
    sees)."""

    chunk_items: int | None = None
    power_iters: int = 2
    block_items: int | None = None
    sample_items: int = 1024
    grow_per_step: int = 1
    exchange_steps: int = 8
    reorder: str = "auto"
    scratch: str | None = None

    def check(self) -> None:
        if self.chunk_items is not None:
            _positive_int("chunk_items", self.chunk_items)
        _positive_int("power_iters", self.power_iters, 0)
        if self.block_items is not None:
            _positive_int("block_items", self.block_items, 16)
        _positive_int("sample_items", self.sample_items, 16)
        _positive_int("grow_per_step", self.grow_per_step)
        _positive_int("exchange_steps", self.exchange_steps, 0)
        if self.reorder not in ("auto", "always", "never"):
            raise InputError(f"reorder must be 'auto', 'always' or 'never', got "
                             f"{self.reorder!r}")
        if self.scratch is not None:
            from mlr_dask.fit.reorder import scratch_directory

            scratch_directory(self.scratch)
