"""The out-of-core reorder of a stored matrix against numpy's ``A[pr][:, pc]``."""

import os

import dask
import numpy as np
import pytest
import zarr

from mlr_dask.errors import InputError
from mlr_dask.fit.reorder import (
    ScratchSpaceError,
    read_amplification,
    reorder_array,
    reordered_store,
    scratch_bytes,
    scratch_location,
)


def _array(tmp_path, A, chunks):
    g = zarr.open_group(str(tmp_path / "src.zarr"), mode="w", zarr_format=3)
    arr = g.create_array("A", shape=A.shape, dtype=A.dtype, chunks=chunks)
    arr[...] = A
    return arr


@pytest.mark.parametrize("moved", ["both", "rows", "cols", "none"])
@pytest.mark.parametrize("in_process", [True, False])
def test_reorder_array_matches_numpy(tmp_path, moved, in_process):
    rng = np.random.default_rng(0)
    m, n = 37, 53  # stored chunks that divide neither side
    A = rng.standard_normal((m, n))
    src = _array(tmp_path, A, (10, 7))
    pr = rng.permutation(m) if moved in ("both", "rows") else np.arange(m)
    pc = rng.permutation(n) if moved in ("both", "cols") else np.arange(n)
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="w", zarr_format=3)
    seen = []
    with dask.config.set(scheduler="threads"):
        stats = reorder_array(src, pr, pc, out, band_items=200, in_process=in_process,
                              report=lambda *a, **k: seen.append(a))
    np.testing.assert_array_equal(out["A"][...], A[np.ix_(pr, pc)])
    assert list(out.array_keys()) == ["A"]  # the intermediate array is gone
    # bands of h = 3 rows (200 // 53) inside stored row chunks of 10: 4 bands per chunk
    assert stats["reads"] >= 1.0 and stats["writes"] == (2.0 if moved == "both" else 1.0)
    assert len(seen) == (2 if moved == "both" else 1)
    # every task's band within band_items: chunks of the result are w = 200 // 37 wide
    assert out["A"].chunks[1] <= 200 // m


def test_reorder_array_bad_input(tmp_path):
    A = np.ones((6, 5))
    src = _array(tmp_path, A, (4, 4))
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="w", zarr_format=3)
    with pytest.raises(InputError, match="permutations"):
        reorder_array(src, np.array([0, 0, 1, 2, 3, 4]), np.arange(5), out, band_items=50)
    with pytest.raises(InputError, match="band_items"):
        reorder_array(src, np.arange(6), np.arange(5), out, band_items=5)


def test_read_amplification():
    n = 100
    bounds = np.arange(0, n + 1, 25)
    ident = np.arange(n)
    assert read_amplification(ident, ident, bounds, bounds, (25, 25)) == 1.0
    p = np.random.default_rng(1).permutation(n)
    # each chunk of 25 random items meets all four stored chunks of 25
    assert read_amplification(p, p, bounds, bounds, (25, 25)) == pytest.approx(16.0)


def test_reordered_store_checked_format_and_cleanup(tmp_path):
    """A store in the project's format with stored hierarchies (positions != items) rewritten
    in a new order: the temporary store is a checked ``matrix`` store next to the input, whose
    hierarchies map back to the original items, and it is gone after the block (also after
    an error)."""
    from mlr_dask.datasets.mlr import write_matrix_store
    from mlr_dask.fit.store import load_matrix_store
    from mlr_dask.hierarchy import Hierarchy

    rng = np.random.default_rng(2)
    m, n = 45, 31
    A = rng.standard_normal((m, n))  # original order
    sr, sc = rng.permutation(m), rng.permutation(n)  # stored position -> original item
    rows0 = Hierarchy([np.array([0, m])], sr)
    cols0 = Hierarchy([np.array([0, n])], sc)
    write_matrix_store(tmp_path / "K.zarr", A[np.ix_(sr, sc)], kind="test", rows=rows0,
                       cols=cols0, chunk=8)
    store = load_matrix_store(tmp_path / "K.zarr")
    pr, pc = rng.permutation(m), rng.permutation(n)  # stored positions in the new order
    rows = Hierarchy([np.array([0, m]), np.array([0, 20, m])], sr[pr])
    cols = Hierarchy([np.array([0, n]), np.array([0, 11, n])], sc[pc])
    with reordered_store(store, pr, pc, rows, cols, band_items=120) as (new, stats):
        path = stats["path"]
        assert os.path.dirname(path) == str(tmp_path)
        assert os.path.basename(path).startswith(".K.zarr.reorder-")
        np.testing.assert_array_equal(new.array[...], A[np.ix_(rows.perm, cols.perm)])
        np.testing.assert_array_equal(new.dense_original(), A)
        np.testing.assert_array_equal(new.rows.boundaries[1], rows.boundaries[1])
        assert new.attrs["mlr_dask_format"] == "matrix"
    assert not os.path.exists(path)
    with pytest.raises(RuntimeError, match="boom"), \
            reordered_store(store, pr, pc, rows, cols, band_items=120) as (new, stats):
        path = stats["path"]
        raise RuntimeError("boom")
    assert not os.path.exists(path)
    assert sorted(os.listdir(tmp_path)) == ["K.zarr"]


def test_scratch_location(tmp_path):
    (tmp_path / "scratch").mkdir()
    loc = scratch_location(str(tmp_path / "K.zarr"), tmp_path / "scratch")
    assert os.path.dirname(loc) == str(tmp_path / "scratch")
    with pytest.raises(InputError, match="does not exist"):
        scratch_location(str(tmp_path / "K.zarr"), tmp_path / "nowhere")
    # a leftover of a writer that no longer runs is removed
    host = scratch_location(str(tmp_path / "K.zarr")).rsplit(".reorder-", 1)[1]
    dead = tmp_path / f".K.zarr.reorder-{host.rsplit('-', 2)[0]}-999999999-abcd"
    dead.mkdir()
    scratch_location(str(tmp_path / "K.zarr"))
    assert not dead.exists()


def _low_disk(monkeypatch, free):
    import shutil as sh

    usage = sh.disk_usage(".")
    monkeypatch.setattr("mlr_dask.fit.reorder.shutil.disk_usage",
                        lambda p: usage._replace(free=free))


def test_scratch_bytes_counts_the_stored_size(tmp_path):
    """The estimate follows the stored (compressed) bytes: a constant matrix needs far less
    than its uncompressed size, random numbers about it; twice that when both sides move."""
    zeros = _array(tmp_path, np.zeros((200, 200)), (50, 50))
    assert scratch_bytes(zeros) < 0.1 * zeros.nbytes
    rnd = _array(tmp_path, np.random.default_rng(0).standard_normal((200, 200)), (50, 50))
    one = scratch_bytes(rnd, rows_moved=True, cols_moved=False)
    assert 0.8 * rnd.nbytes < one < 1.3 * rnd.nbytes
    assert scratch_bytes(rnd) == pytest.approx(2 * one, abs=2)


def test_reordered_store_refuses_without_disk_space(tmp_path, monkeypatch):
    """Too little free space where the rewrite would go: a ScratchSpaceError naming the
    directory and the sizes, raised before anything is written."""
    from mlr_dask.datasets.mlr import write_matrix_store
    from mlr_dask.fit.store import load_matrix_store
    from mlr_dask.hierarchy import Hierarchy

    rng = np.random.default_rng(3)
    A = rng.standard_normal((40, 40))
    write_matrix_store(tmp_path / "K.zarr", A, kind="test", chunk=8)
    store = load_matrix_store(tmp_path / "K.zarr")
    pr, pc = rng.permutation(40), rng.permutation(40)
    rows = Hierarchy([np.array([0, 40])], pr)
    cols = Hierarchy([np.array([0, 40])], pc)
    _low_disk(monkeypatch, 1000)
    with pytest.raises(ScratchSpaceError, match="scratch space .* 1000 B free"), \
            reordered_store(store, pr, pc, rows, cols, band_items=200):
        pass
    assert sorted(os.listdir(tmp_path)) == ["K.zarr"]


def test_learned_fit_without_scratch_space(tmp_path, monkeypatch):
    """On the learned Dask path, ``reorder="always"`` is refused before any work when the
    disk lacks the space of the rewrite; ``"auto"`` warns, fits in the stored order and says
    why in ``history_["reorder"]``."""
    from mlr_dask.datasets.matrices import radial_kernel
    from mlr_dask.datasets.mlr import write_matrix_store
    from mlr_dask.fit.learn_dask import LearnOptions, learn_mlr_dask
    from mlr_dask.fit.store import load_matrix_store

    A = radial_kernel(160, seed=1)
    write_matrix_store(tmp_path / "K.zarr", A, kind="radial", chunk=64)
    store = load_matrix_store(tmp_path / "K.zarr")
    _low_disk(monkeypatch, 1000)
    seen = []
    with pytest.raises(ScratchSpaceError, match="scratch space"):
        learn_mlr_dask(store, 6, 4, opts=LearnOptions(reorder="always", block_items=80),
                       progress=lambda stage, info: seen.append(stage))
    assert seen == []  # no stage started
    with dask.config.set(scheduler="sync"), pytest.warns(RuntimeWarning, match="stored order"):
        M = learn_mlr_dask(store, 6, 4, max_iter=1,
                           opts=LearnOptions(block_items=80, init="uniform", exchange_steps=1))
    assert M.history_["reorder"]["done"] is False
    assert M.history_["reorder"]["skipped"] == "disk space"
    assert sorted(os.listdir(tmp_path)) == ["K.zarr"]


def test_fit_mlr_passes_reorder_and_scratch(tmp_path, monkeypatch):
    """``DaskSettings(reorder=, scratch=)`` reach the learned Dask path: ``"never"`` fits in the
    stored order, ``"always"`` rewrites into the given scratch directory."""
    import mlr_dask.fit.reorder as ro
    from mlr_dask.datasets.matrices import radial_kernel
    from mlr_dask.datasets.mlr import write_matrix_store
    from mlr_dask.fit import DaskSettings, fit_mlr

    write_matrix_store(tmp_path / "K.zarr", radial_kernel(128, seed=2), kind="radial", chunk=64)
    (tmp_path / "scr").mkdir()
    where = []
    real = ro.scratch_location
    monkeypatch.setattr(ro, "scratch_location",
                        lambda p, s=None: where.append(s) or real(p, s))
    out = {}
    with dask.config.set(scheduler="sync"):
        for mode in ("never", "always"):
            out[mode] = fit_mlr(str(tmp_path / "K.zarr"), 6, levels=4, backend="dask",
                                init="uniform", max_iter=1, baselines=False,
                                dask=DaskSettings(block_items=64, reorder=mode,
                                                  scratch=str(tmp_path / "scr"),
                                                  exchange_steps=1)).history_["reorder"]
    assert out["never"]["done"] is False and out["always"]["done"] is True
    assert where and all(s == str(tmp_path / "scr") for s in where)
    assert os.listdir(tmp_path / "scr") == []
