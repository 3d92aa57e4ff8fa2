"""``mlr-dask run``: the job format, planning checks, the manifest and resuming."""

import json

import pytest

from mlr_dask.cli.main import main
from mlr_dask.cli.run import apply_overrides, plan_job, stage_argv

JOB = (
    '[job]\nname = "small"\n'
    '[[stage]]\nname = "data"\ncommand = "generate mlr"\n'
    'options = { n = 128, rank = 8, out = "m.zarr" }\n'
    '[[stage]]\nname = "info"\ncommand = "info"\nargs = ["m.zarr"]\n'
)


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_stage_argv_options():
    argv = stage_argv({"command": "fit-fm", "args": ["d.zarr"],
                       "options": {"ranks": [30, 20], "max_iter": 5, "resume": False,
                                   "centered": True}}, 0)
    assert argv == ["fit-fm", "d.zarr", "--ranks", "30,20", "--max-iter", "5", "--centered"]
    argv = stage_argv({"command": "gam sweep", "options": {"set": {"hidden": 8, "kind": "mam",
                                                                   "dpg_lr": 0.5}}}, 0)
    assert argv == ["gam", "sweep", "--set", "hidden=8", "--set", 'kind="mam"',
                    "--set", "dpg_lr=0.5"]


def test_overrides_name_stage_and_key():
    stages = [{"name": "data", "command": "generate mlr", "options": {"n": 128}},
              {"command": "gam sweep", "options": {"set": {"hidden": 8}}}]
    apply_overrides(stages, ["data.n=64", "gam-sweep.set.hidden=16", "data.args=[1]"])
    assert stages[0]["options"]["n"] == 64 and stages[0]["args"] == [1]
    assert stages[1]["options"]["set"]["hidden"] == 16
    with pytest.raises(ValueError, match="no stage named 'fit'"):
        apply_overrides(stages, ["fit.n=3"])
    with pytest.raises(ValueError, match="not a TOML value"):
        apply_overrides(stages, ["data.n=[1,"])


def test_run_job_manifest_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(JOB)
    code, out, _ = _run(["run", "job.toml", "--json", "--quiet", "--scheduler", "threads"],
                        capsys)
    assert code == 0
    res = json.loads(out)
    assert [s["name"] for s in res["stages"]] == ["data", "info"]
    assert res["stages"][1]["result"]["arrays"]["A"]["shape"] == [128, 128]
    man = json.loads((tmp_path / "small.manifest.json").read_text())
    assert man["status"] == "done" and [s["status"] for s in man["stages"]] == ["done", "done"]
    data = man["stages"][0]
    assert data["outputs"] == [str(tmp_path / "m.zarr")]  # resolved on the client
    assert str(tmp_path / "m.zarr") in data["command"] and data["seconds"] > 0
    stamp = (tmp_path / "m.zarr" / "zarr.json").stat().st_mtime_ns

    # rerun: everything complete, nothing runs again
    code, out, _ = _run(["run", "job.toml", "--json", "--quiet", "--scheduler", "threads"],
                        capsys)
    assert code == 0
    assert [s["skipped"] for s in json.loads(out)["stages"]] == [True, True]
    assert (tmp_path / "m.zarr" / "zarr.json").stat().st_mtime_ns == stamp

    # a changed option reruns that stage and every later one
    code, out, _ = _run(["run", "job.toml", "--json", "--quiet", "--scheduler", "threads",
                         "--set", "data.n=96"], capsys)
    assert code == 0
    res = json.loads(out)
    assert [s["skipped"] for s in res["stages"]] == [False, False]
    assert res["stages"][1]["result"]["arrays"]["A"]["shape"] == [96, 96]

    # --force reruns all
    code, out, _ = _run(["run", "job.toml", "--json", "--quiet", "--scheduler", "threads",
                         "--set", "data.n=96", "--force"], capsys)
    assert code == 0 and not any(s["skipped"] for s in json.loads(out)["stages"])


def test_dry_run_prints_resolved_stages(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(JOB)
    code, out, _ = _run(["run", "job.toml", "--dry-run", "--json", "--set", "data.n=64"],
                        capsys)
    assert code == 0
    stages = json.loads(out)["stages"]
    assert "--n 64" in stages[0]["command"]
    assert stages[1]["inputs"] == [str(tmp_path / "m.zarr")]
    assert not (tmp_path / "m.zarr").exists() and not (tmp_path / "small.manifest.json").exists()


@pytest.mark.parametrize("text,needle", [
    ('[[stage]]\ncommand = "generate mlr"\noptions = { n = 128, out = "m.zarr" }\n'
     '[[stage]]\ncommand = "generate mlr"\nname = "two"\noptions = { n = "many", out = "x" }\n',
     "stage 'two'"),
    ('[[stage]]\ncommand = "fit-fm"\nname = "fit"\nargs = ["d.zarr"]\n'
     'options = { rnaks = [1], out = "o.zarr" }\n', "fit-fm has no option 'rnaks'"),
    ('[[stage]]\ncommand = "fit-fm"\nname = "fit"\nargs = ["d.zarr"]\n'
     'options = { ranks = [1], out = "o.zarr" }\n', "input"),
    ('[[stage]]\ncommand = "info"\nargs = ["x"]\n[extra]\na = 1\n', "unknown top-level"),
    ('[[stage]]\ncommand = "info"\nargs = ["x"]\nopts = {}\n', "unknown keys"),
    ('[[stage]]\ncommand = "frob"\n', "unknown command 'frob'"),
    ('[[stage]]\ncommand = "generate mlr"\noptions = { n = 128, out = "m.zarr", '
     'scheduler = "threads" }\n', "belongs to the whole job"),
    ('[[stage]]\ncommand = "generate mlr"\noptions = { n = 128, out = "a" }\n'
     '[[stage]]\ncommand = "generate mlr"\noptions = { n = 128, out = "b" }\n',
     "two stages are named"),
    ('[job]\nname = "x"\ncolour = 1\n[[stage]]\ncommand = "info"\nargs = ["x"]\n',
     "unknown keys in [job]"),
])
def test_plan_errors_before_any_work(tmp_path, capsys, monkeypatch, text, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(text)
    code, out, err = _run(["run", "job.toml", "--scheduler", "threads"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.toml"]


def test_run_job_bad_files(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none.toml")]) == 2
    (tmp_path / "bad.toml").write_text("[[stage]\n")
    assert main(["run", str(tmp_path / "bad.toml")]) == 2
    (tmp_path / "empty.toml").write_text("x = 1\n")
    assert main(["run", str(tmp_path / "empty.toml")]) == 2
    (tmp_path / "binary.toml").write_bytes(bytes(range(256)))
    assert main(["run", str(tmp_path / "binary.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 4 and "Traceback" not in err


def test_failing_stage_is_one_line_naming_stage_and_store(tmp_path, capsys, monkeypatch):
    """A store that passes planning but breaks while the stage runs: exit 1, one line naming
    the stage and the store, the traceback in a log file, the manifest says failed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLR_DASK_LOG_DIR", str(tmp_path))
    (tmp_path / "job.toml").write_text(JOB)
    assert main(["run", "job.toml", "--quiet", "--scheduler", "threads"]) == 0
    capsys.readouterr()
    import mlr_dask.cli.basic as basic

    def boom(group):
        raise RuntimeError("chunk decode failed")

    monkeypatch.setattr(basic, "_describe", boom)
    code, out, err = _run(["run", "job.toml", "--quiet", "--scheduler", "threads", "--force"],
                          capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: stage 'info' (info on ")
    assert "m.zarr" in lines[0] and "RuntimeError: chunk decode failed" in lines[0]
    log = lines[0].split("traceback in ")[1].rstrip(")")
    assert "Traceback" in open(log).read()
    man = json.loads((tmp_path / "small.manifest.json").read_text())
    assert man["status"] == "failed"
    assert [s["status"] for s in man["stages"]] == ["done", "failed"]


def test_plan_job_resolves_paths_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(JOB)
    name, stages = plan_job("job.toml")
    assert name == "small"
    assert stages[0].outputs == [str(tmp_path / "m.zarr")]
    assert stages[1].parsed.path == str(tmp_path / "m.zarr")


def test_failure_lines_for_cluster_errors():
    from types import SimpleNamespace

    from distributed.scheduler import KilledWorker

    from mlr_dask.cli.main import _describe_failure
    from mlr_dask.cli.run import StageError

    killed = KilledWorker("chunk-3", SimpleNamespace(address="tcp://w:1"), 3)
    msg, code = _describe_failure(StageError("fit", "fit-fm", killed, ["/d/Y.zarr"]), None)
    assert code == 1 and msg.startswith("stage 'fit' (fit-fm on '/d/Y.zarr'): workers died")
    assert "memory" in msg
    msg, code = _describe_failure(MemoryError(), None)
    assert code == 1 and msg.endswith("out of memory")
