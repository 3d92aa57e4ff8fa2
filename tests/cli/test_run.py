import json

from mlr_dask.cli.main import main
from mlr_dask.cli.run import stage_argv


def test_stage_argv_options():
    argv = stage_argv({"command": "fit-fm", "args": ["d.zarr"],
                       "options": {"ranks": [30, 20], "max_iter": 5, "json": True,
                                   "resume": False}}, 0)
    assert argv == ["fit-fm", "d.zarr", "--ranks", "30,20", "--max-iter", "5", "--json"]


def test_run_job_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(
        '[[stage]]\ncommand = "generate mlr"\n'
        'options = { n = 128, rank = 8, out = "m.zarr" }\n'
        '[[stage]]\ncommand = "info"\nargs = ["m.zarr"]\n'
    )
    assert main(["run", "job.toml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["command"].split()[0] for s in out["stages"]] == ["generate", "info"]
    assert out["stages"][1]["result"]["arrays"]["A"]["shape"] == [128, 128]


def test_run_job_checks_every_stage_first(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(
        '[[stage]]\ncommand = "generate mlr"\noptions = { n = 128, out = "m.zarr" }\n'
        '[[stage]]\ncommand = "generate mlr"\noptions = { n = "many", out = "x.zarr" }\n'
    )
    assert main(["run", "job.toml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: stage 1") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.zarr").exists()


def test_run_job_bad_files(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.toml")]) == 2
    (tmp_path / "bad.toml").write_text("[[stage]\n")
    assert main(["run", str(tmp_path / "bad.toml")]) == 2
    (tmp_path / "empty.toml").write_text("x = 1\n")
    assert main(["run", str(tmp_path / "empty.toml")]) == 2
    assert capsys.readouterr().err.count("error:") == 3
