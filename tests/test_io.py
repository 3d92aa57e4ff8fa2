"""mlr_dask.io: output rules (refusals, atomic replacement), checksummed arrays, checked reads."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr

from mlr_dask import io
from mlr_dask.errors import DataError, FormatError, InputError
from mlr_dask.hierarchy import Hierarchy
from mlr_dask.mlr import MLRMatrix


def _write(path, value=1.0, kind="thing", overwrite=False, inputs=()):
    with io.atomic_group(path, kind, 1, overwrite=overwrite, inputs=inputs) as g:
        io.create_array(g, "x", data=np.full((6, 4), value), dims=("a", "b"), chunks=(2, 2))


def _leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------ create_array
def test_create_array_codecs_dims_and_all_chunks(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    a = io.create_array(g, "z", data=np.zeros((5, 4)), dims=("row", "col"), chunks=(2, 2))
    names = [type(c).__name__ for c in a.metadata.codecs]
    assert names == ["BytesCodec", "ZstdCodec", "Crc32cCodec"]
    assert a.metadata.dimension_names == ("row", "col")
    assert a.attrs[io.COMPLETE_KEY] is True
    # all-zero chunks (equal to the fill value) are written too
    files = [p for p in (tmp_path / "g.zarr" / "z" / "c").rglob("*") if p.is_file()]
    assert len(files) == a.nchunks == 6
    b = io.create_array(g, "u", shape=(3,), dtype="f4", dims=("k",), compress=False)
    b[...] = 1.0
    assert [type(c).__name__ for c in b.metadata.codecs] == ["BytesCodec", "Crc32cCodec"]
    with pytest.raises(ValueError, match="axes"):
        io.create_array(g, "bad", data=np.zeros((2, 2)), dims=("one",))


# ------------------------------------------------------------------------------ output rules
def test_existing_plain_directory_is_refused_and_untouched(tmp_path):
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an mlr-dask store"):
        _write(out)
    with pytest.raises(InputError, match="not an mlr-dask store"):
        _write(out, overwrite=True)
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert _leftovers(tmp_path) == []


def test_regular_file_is_refused(tmp_path):
    out = tmp_path / "file.zarr"
    out.write_text("data")
    with pytest.raises(InputError, match="is a file"):
        _write(out, overwrite=True)
    assert out.read_text() == "data"


def test_store_of_another_kind_is_refused(tmp_path):
    out = tmp_path / "a.zarr"
    _write(out, kind="other")
    with pytest.raises(InputError, match="'other' store, not 'thing'"):
        _write(out, overwrite=True)
    assert io.store_kind(out) == "other"


def test_same_kind_needs_overwrite_and_is_replaced(tmp_path):
    out = tmp_path / "a.zarr"
    _write(out, 1.0)
    with pytest.raises(InputError, match="overwrite"):
        _write(out, 2.0)
    assert zarr.open_group(str(out), mode="r")["x"][0, 0] == 1.0
    _write(out, 2.0, overwrite=True)
    assert zarr.open_group(str(out), mode="r")["x"][0, 0] == 2.0
    assert _leftovers(tmp_path) == []


def test_crash_inside_the_block_keeps_the_old_result(tmp_path):
    out = tmp_path / "a.zarr"
    _write(out, 1.0)
    with pytest.raises(RuntimeError, match="boom"), \
            io.atomic_group(out, "thing", 1, overwrite=True) as g:
        io.create_array(g, "x", data=np.full((6, 4), 7.0), dims=("a", "b"))
        raise RuntimeError("boom")
    g = io.open_group(out, "thing")
    np.testing.assert_array_equal(g["x"][:], np.full((6, 4), 1.0))
    assert _leftovers(tmp_path) == []
    # a crash while writing a new store leaves nothing
    new = tmp_path / "new.zarr"
    with pytest.raises(KeyboardInterrupt), io.atomic_group(new, "thing", 1):
        raise KeyboardInterrupt
    assert not new.exists() and _leftovers(tmp_path) == []


def test_leftovers_of_a_killed_writer_are_recovered(tmp_path):
    """A writer killed between its two renames left the old store under a temporary name; the
    next write of that path moves it back (and refuses to replace it without overwrite). Its
    temporary group is removed; a live writer's is not."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(proc.stdout)
    out = tmp_path / "a.zarr"
    _write(out, 5.0)
    host = io._tag().rsplit("-", 2)[0]
    os.replace(out, tmp_path / f".a.zarr.old-{host}-{dead}-0123abcd")
    (tmp_path / f".a.zarr.tmp-{host}-{dead}-89abcdef").mkdir()
    live = tmp_path / f".a.zarr.tmp-{host}-{os.getpid()}-00000000"
    live.mkdir()
    with pytest.raises(InputError, match="overwrite"):
        _write(out, 6.0)
    assert zarr.open_group(str(out), mode="r")["x"][0, 0] == 5.0
    assert _leftovers(tmp_path) == [live.name]


def test_output_may_not_be_an_input(tmp_path):
    src = tmp_path / "in.zarr"
    _write(src)
    for out in (src, Path(str(src) + "/"), src / "inner.zarr", tmp_path / "sub" / ".."):
        with pytest.raises(InputError, match="input"):
            io.check_output(out, "thing", overwrite=True, inputs=[src])
    link = tmp_path / "link.zarr"
    link.symlink_to(src)
    with pytest.raises(InputError, match="input"):
        io.check_output(link, "thing", overwrite=True, inputs=[src])
    # an input inside the output is refused too
    with pytest.raises(InputError, match="input"):
        io.check_output(tmp_path, "thing", overwrite=True, inputs=[src])
    assert io.check_output(tmp_path / "other.zarr", "thing", inputs=[src]) == str(
        tmp_path / "other.zarr")


def test_output_inside_another_store_is_refused(tmp_path):
    _write(tmp_path / "outer.zarr")
    (tmp_path / "outer.zarr" / "x" / "sub").mkdir()
    for inner in (tmp_path / "outer.zarr" / "new.zarr", tmp_path / "outer.zarr" / "x" / "sub"
                  / "new.zarr"):
        with pytest.raises(InputError, match="inside the zarr store"):
            _write(inner)
    assert io.verify_store(tmp_path / "outer.zarr")["arrays"] == 1


def test_output_larger_than_the_free_space_is_refused(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    assert io.check_output(tmp_path / "a.zarr", "thing", nbytes=1000) == str(tmp_path / "a.zarr")
    with pytest.raises(InputError, match=r"needs about .*iB but its filesystem has"):
        io.check_output(tmp_path / "a.zarr", "thing", nbytes=free * 2 + 2**30)


def test_missing_or_read_only_parent_is_refused_before_work(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="does not exist"):
        io.check_output(tmp_path / "no" / "a.zarr", "thing")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkstemp", denied)
    with pytest.raises(InputError, match="not writable.*Permission denied"):
        io.check_output(tmp_path / "a.zarr", "thing")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not writable"):
            _write(ro / "a.zarr")
    finally:
        ro.chmod(0o755)


def test_checkpoints_are_superseded_by_the_model(tmp_path):
    out = tmp_path / "m.zarr"
    _write(out, kind="fm-checkpoints")
    assert io.check_output(out, "fm-model") == str(out)  # no overwrite needed
    with pytest.raises(InputError, match="'fm-checkpoints' store, not 'fm-data'"):
        io.check_output(out, "fm-data", overwrite=True)


def test_url_store_written_in_place(tmp_path):
    url = "memory://io-test/a.zarr"
    _write(url, 3.0)
    assert io.store_kind(url) == "thing"
    with pytest.raises(InputError, match="overwrite"):
        _write(url, 4.0)
    _write(url, 4.0, overwrite=True)
    g = io.open_group(url, "thing")
    assert g["x"][1, 1] == 4.0
    with pytest.raises(RuntimeError), io.atomic_group("memory://io-test/b.zarr", "thing", 1):
        raise RuntimeError
    assert io.store_kind("memory://io-test/b.zarr") is None


def test_mlr_matrix_save_rules(tmp_path):
    M = MLRMatrix.random(Hierarchy.dyadic(16, 2), Hierarchy.dyadic(12, 2), [2, 1], rng=0)
    out = tmp_path / "M.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    with pytest.raises(InputError, match="not an mlr-dask store"):
        M.save(out, overwrite=True)
    assert (out / "precious.txt").exists()
    out2 = tmp_path / "M2.zarr"
    M.save(out2)
    with pytest.raises(InputError, match="overwrite"):
        M.save(out2)
    M2 = MLRMatrix.random(M.rows, M.cols, [2, 1], rng=1)
    M2.save(out2, overwrite=True)
    np.testing.assert_array_equal(MLRMatrix.load(out2).B, M2.B)


# ------------------------------------------------------------------------------ checked reads
@pytest.fixture()
def store(tmp_path):
    path = tmp_path / "s.zarr"
    with io.atomic_group(path, "thing", 1) as g:
        io.create_array(g, "x", data=np.arange(48.0).reshape(6, 8), dims=("a", "b"),
                        chunks=(3, 4))
        sub = g.create_group("sub")
        io.create_array(sub, "y", data=np.zeros(5), dims=("c",), chunks=(2,))
    return path


def test_missing_chunk_found_on_open(store):
    (store / "x" / "c" / "1" / "0").unlink()
    with pytest.raises(DataError, match=r"array 'x', chunk \(1, 0\): missing"):
        io.open_group(store, "thing")
    with pytest.raises(DataError, match=r"chunk \(1, 0\)"):
        io.verify_store(store)


def test_zero_chunk_deleted_is_found(store):
    (store / "sub" / "y" / "c" / "2").unlink()
    with pytest.raises(DataError, match=r"array 'sub/y', chunk \(2,\): missing"):
        io.open_group(store)
    # also when the listing is skipped: the read itself fails
    g = io.open_group(store, verify=False)
    with pytest.raises(DataError, match=r"'sub/y', chunk \(2,\)"):
        g["sub"]["y"][:]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_chunk_named_on_read(store, damage):
    chunk = store / "x" / "c" / "0" / "1"
    raw = chunk.read_bytes()
    if damage == "truncate":
        chunk.write_bytes(raw[: len(raw) // 2])
    else:
        chunk.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    g = io.open_group(store, "thing")  # presence is fine
    np.testing.assert_array_equal(g["x"][3:, :], np.arange(48.0).reshape(6, 8)[3:])
    with pytest.raises(DataError, match=r"s\.zarr'.*array 'x', chunk \(0, 1\).*checksum"):
        g["x"][:]
    with pytest.raises(DataError, match=r"chunk \(0, 1\)"):
        io.verify_store(store, checksums=True)
    assert io.verify_store(store)["arrays"] == 2


def test_checked_store_travels_into_dask_tasks(store):
    import dask
    import dask.array as da

    chunk = store / "x" / "c" / "1" / "1"
    chunk.write_bytes(b"\0" * len(chunk.read_bytes()))
    arr = io.open_group(store)["x"]
    again = pickle.loads(pickle.dumps(arr))
    with pytest.raises(DataError, match=r"chunk \(1, 1\)"):
        again[:]
    with dask.config.set(scheduler="threads"), \
            pytest.raises(DataError, match=r"array 'x', chunk \(1, 1\)"):
        da.from_zarr(arr).sum().compute()
    with pytest.raises(DataError, match=r"chunk \(1, 1\)"):
        io.read_region(io.open_array(store, "x"), (slice(None), slice(4, 8)), name="x")


def test_read_region_names_the_chunk_of_an_old_store(tmp_path):
    """Stores written before checksums (zstd only): a garbage chunk fails to decode; the error
    becomes a DataError naming the chunk."""
    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    g.attrs.update({io.FORMAT_KEY: "thing", io.VERSION_KEY: 1})
    a = g.create_array("x", data=np.arange(40.0).reshape(5, 8), chunks=(5, 4))
    chunk = tmp_path / "old.zarr" / "x" / "c" / "0" / "1"
    chunk.write_bytes(b"garbage!" * 3)
    arr = io.open_group(tmp_path / "old.zarr", "thing")["x"]
    assert a.metadata.dimension_names is None
    np.testing.assert_array_equal(io.read_region(arr, (slice(None), slice(0, 4))),
                                  np.arange(40.0).reshape(5, 8)[:, :4])
    with pytest.raises(DataError, match=r"array 'x', chunk \(0, 1\): does not decode"):
        io.read_region(arr, (slice(None), slice(2, 8)))


def test_open_group_format_errors(tmp_path):
    with pytest.raises(FormatError, match="no such store"):
        io.open_group(tmp_path / "none.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FormatError, match="not a zarr 3 group"):
        io.open_group(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    with pytest.raises(FormatError, match="not an mlr-dask store"):
        io.open_group(tmp_path / "foreign.zarr")
    assert io.store_kind(tmp_path / "foreign.zarr") is None


@pytest.mark.filterwarnings("ignore:The data type")
def test_open_dataset_checks_an_xarray_store(tmp_path):
    import dask
    import xarray as xr
    from zarr.codecs import Crc32cCodec

    ds = xr.Dataset({"Y": (("sample", "feature"), np.arange(40.0).reshape(4, 10))},
                    coords={"feature": [f"f{i}" for i in range(10)]})
    ds.to_zarr(tmp_path / "x.zarr", consolidated=False, zarr_format=3, encoding={
        "Y": {"chunks": (4, 5), "compressors": [Crc32cCodec()]}})
    got = io.open_dataset(tmp_path / "x.zarr")
    xr.testing.assert_identical(got.load(), ds)
    chunk = tmp_path / "x.zarr" / "Y" / "c" / "0" / "1"
    chunk.write_bytes(b"\1" * len(chunk.read_bytes()))
    with dask.config.set(scheduler="threads"), \
            pytest.raises(DataError, match=r"x\.zarr'.*array 'Y', chunk \(0, 1\)"):
        io.open_dataset(tmp_path / "x.zarr")["Y"].sum().compute()
    with pytest.raises(FormatError, match="no such store"):
        io.open_dataset(tmp_path / "none.zarr")
