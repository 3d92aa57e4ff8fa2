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
