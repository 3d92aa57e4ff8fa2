"""Sizes that cannot fit are refused before any allocation, with the estimate."""

import pytest

from mlr_dask.bounds import check_chunk_items, check_disk, check_memory
from mlr_dask.cli.main import main
from mlr_dask.errors import InputError


def test_memory_and_disk_estimates_in_the_message(tmp_path):
    with pytest.raises(InputError, match=r"needs about 1024\.0 TiB of memory; .* available"):
        check_memory(2.0**50, "this")
    with pytest.raises(InputError, match=r"writes about 1024\.0 TiB; .* free on the disk"):
        check_disk(tmp_path / "x.zarr", 2.0**50, "this")
    check_memory(1024, "small")
    check_disk(tmp_path / "x.zarr", 1024, "small")
    check_disk("memory://x.zarr", 2.0**50, "object stores are not checked")
    with pytest.raises(InputError, match="at least 64"):
        check_chunk_items(1)


@pytest.mark.parametrize("argv", [
    ["generate", "fm", "--n", "10000000", "--samples", "280", "--out", "big.zarr"],
    ["generate", "mlr", "--n", "3000000", "--out", "big.zarr"],
    ["generate", "radial", "--n", "3000000", "--seed", "0", "--out", "big.zarr"],
])
def test_huge_generate_refused_before_work(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "memory" in err[0] or "free" in err[0]  # the estimate against what is there
    assert list(tmp_path.iterdir()) == []


def test_tiny_chunks_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "mlr", "--n", "128", "--out", "m.zarr", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["fit-mlr", "m.zarr", "--rank", "4", "--backend", "dask", "--chunk-items", "1",
                 "--scheduler", "threads"]) == 2
    assert "at least 64" in capsys.readouterr().err
