import pytest

from mlr_dask import InputError
from mlr_dask.cli.main import main
from mlr_dask.cluster import connect


def test_unreachable_scheduler_is_input_error():
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        with connect("tcp://127.0.0.1:9", quiet=True, timeout=2):
            pass


def test_cli_unreachable_scheduler_exit_2(tmp_path, capsys, monkeypatch):
    import mlr_dask.cluster as cluster

    real = cluster.connect
    monkeypatch.setattr(cluster, "connect", lambda a, **k: real(a, **{**k, "timeout": 2}))
    code = main(["demo", "--n", "128", "--scheduler", "tcp://127.0.0.1:9", "--quiet",
                 "--keep", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: cannot reach")
    assert list(tmp_path.iterdir()) == []  # nothing written before the check


def _worker_settings():
    import os

    import dask

    from mlr_dask.kernels import blocks, gather

    return {"profile": dask.config.get("distributed.worker.profile.enabled"),
            "spill": dask.config.get("distributed.worker.memory.spill"),
            "mmap": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
            "compiled": bool(gather._gather_rows.signatures)
            and bool(blocks._segment_sum.signatures)}


@pytest.mark.parametrize("out_of_core", [False, True])
def test_embedded_workers_profile_and_warm_kernels(out_of_core):
    with connect(n_workers=1, quiet=True, memory_limit="1GB", out_of_core=out_of_core) as client:
        (got,) = client.run(_worker_settings).values()
    assert got["compiled"]  # the worker plugin compiled the kernels before any task
    if out_of_core:
        assert got == {"profile": False, "spill": False, "mmap": "131072", "compiled": True}
    else:
        assert got["profile"] is True and got["spill"] is not False
