"""``mlr-dask gam``: bad input exits 2 with one error line; tiny end-to-end runs."""

import json
import os

import pytest

from mlr_dask.cli.main import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def scheduler():
    """An in-process cluster (threads): no worker processes to start, so the tests stay fast."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["gam", "run", "--motif", "10201", "--quiet"], "alphabet"),
        (["gam", "run", "--motif", "", "--quiet"], "motif"),
        (["gam", "run", "--features", "1001112", "--quiet"], "feature code"),
        (["gam", "run", "--features", "10011", "--quiet"], "feature code"),
        (["gam", "run", "--train-size", "50000", "--quiet"], "larger than"),
        (["gam", "run", "--methods", "distill,foo", "--quiet"], "unknown methods"),
        (["gam", "run", "--set", "nonsense=1", "--quiet"], "unknown configuration"),
        (["gam", "run", "--train-size", "abc"], "invalid int"),
        (["gam", "frobnicate"], "invalid choice"),
        (["gam", "sweep", "--train-sizes", "60,x", "--quiet"], "train_sizes"),
    ],
)
def test_bad_input_exit_2(argv, needle, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0]
    assert out == ""


def test_train_size_larger_than_data_file(tmp_path, capsys):
    path = str(tmp_path / "d.npz")
    code, out, _ = _run(["gam", "data", "--motif", "0110", "--train-size", "100", "--out", path,
                         "--json"], capsys)
    assert code == 0 and json.loads(out)["sizes"]["train"] == 100
    code, _, err = _run(["gam", "run", "--motif", "0110", "--data", path, "--train-size", "101",
                         "--quiet"], capsys)
    assert code == 2 and "larger than the 100" in err


def test_sweep_config_validation(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["gam", "sweep", "--motifs", "10001010001,12", "--quiet"], capsys)
    assert code == 2 and "alphabet" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stage]]\nname = "sweep"\ncommand = "gam sweep"\n'
                   'options = { motifs = ["0110"], set = { dpg_steps = "abc" } }\n')
    code, _, err = _run(["run", str(bad), "--quiet"], capsys)
    assert code == 2 and "dpg_steps" in err and len(err.strip().splitlines()) == 1
    assert "stage 'sweep'" in err and sorted(os.listdir(tmp_path)) == ["bad.toml"]


def test_tiny_run_json(tmp_path, capsys, scheduler):
    pytest.importorskip("torch")
    argv = [
        "gam", "run", "--motif", "0110", "--features", "1001111", "--train-size", "60",
        "--hidden", "8", "--seed", "3", "--methods", "distill,dpg,pg", "--json", "--quiet",
        "--scheduler", scheduler, "--out", str(tmp_path / "run"),
        "--set", "n=8", "--set", "test_size=200", "--set", "r_max_epochs=3",
        "--set", "pool_size=2000", "--set", "distill_samples=100",
        "--set", "distill_max_epochs=2", "--set", "dpg_steps=3", "--set", "dpg_batch=200",
        "--set", "pg_steps=3", "--set", "free_samples=100", "--set", "n_shards=2",
    ]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    res = json.loads(out)
    for key in ("ce_r", "ce_plambda", "ce_pi", "entropy_rate", "z", "z_stderr",
                "acceptance_rate", "motif_freq_r", "motif_freq_pi", "seconds"):
        assert key in res
    assert set(res["ce_pi"]) == {"distill", "dpg", "pg"} == set(res["motif_freq_pi"])
    assert 0 < res["acceptance_rate"] <= 1 and res["z_stderr"] > 0
    assert {"train_r", "pool", "lambda", "z", "sample_plambda", "distill", "dpg", "pg",
            "eval"} <= set(res["seconds"])
    assert sorted(os.listdir(tmp_path / "run")) == [
        "pi_distill.pt", "pi_dpg.pt", "pi_pg.pt", "r.pt", "summary.json"]


TINY = [
    "gam", "run", "--motif", "0110", "--features", "1001111", "--train-size", "60",
    "--hidden", "8", "--seed", "5", "--methods", "distill,dpg,pg", "--json", "--quiet",
    "--set", "n=8", "--set", "test_size=200", "--set", "r_max_epochs=60",
    "--set", "pool_size=2000", "--set", "distill_samples=100",
    "--set", "distill_max_epochs=3", "--set", "dpg_steps=3", "--set", "dpg_batch=200",
    "--set", "pg_steps=3", "--set", "free_samples=100", "--set", "n_shards=2",
]


def test_same_seed_same_result(capsys, scheduler):
    """Budgets are epochs/steps + early stopping, never seconds: two runs with the same seed
    (r trained to early stopping, methods as parallel Dask tasks) give identical figures."""
    pytest.importorskip("torch")
    runs = []
    for _ in range(2):
        code, out, _ = _run(TINY + ["--scheduler", scheduler], capsys)
        assert code == 0
        runs.append(json.loads(out))
    a, b = runs
    assert a["r_stopped_by"] in ("patience", "max_epochs")
    assert a["stopped_by_time"] == {"train_r": False, "distill": False, "dpg": False,
                                    "pg": False}
    assert a["epochs_used"]["dpg"] == 3 and a["epochs_used"]["pg"] == 3
    for key in ("ce_r", "ce_plambda", "ce_pi", "lambda", "z", "z_stderr", "acceptance_rate",
                "motif_freq_r", "motif_freq_pi", "r_epochs", "epochs_used"):
        assert a[key] == b[key], key
    # a different seed is a different run (the comparison above is not vacuous)
    code, out, _ = _run(TINY[:TINY.index("--seed") + 1] + ["6"] + TINY[TINY.index("--seed") + 2:]
                        + ["--scheduler", scheduler], capsys)
    assert code == 0 and json.loads(out)["ce_r"] != a["ce_r"]


def test_time_limit_is_optional_and_reported(capsys):
    """A wall-clock limit only fires when set, and the summary then says the stage was capped."""
    pytest.importorskip("torch")
    argv = TINY[:]
    argv[argv.index("distill,dpg,pg")] = "dpg"
    code, out, _ = _run(argv + ["--set", "r_max_seconds=1e-9", "--set", "dpg_max_seconds=none"],
                        capsys)
    assert code == 0
    res = json.loads(out)
    assert res["stopped_by_time"] == {"train_r": True, "dpg": False}
    assert res["r_stopped_by"] == "time" and res["r_epochs"] == 1


def test_bad_time_limit_exit_2(capsys):
    code, out, err = _run(["gam", "run", "--set", "r_max_seconds=-1", "--quiet"], capsys)
    assert code == 2 and "r_max_seconds" in err and out == ""


def test_tiny_sweep(tmp_path, capsys, scheduler):
    pytest.importorskip("torch")
    pytest.importorskip("pyarrow")
    job = os.path.join(REPO, "pipelines", "gam_motif_sweep_small.toml")
    code, out, _ = _run(["run", job, "--set", f"sweep.out={json.dumps(str(tmp_path))}",
                         "--manifest", str(tmp_path / "m.json"), "--scheduler", scheduler,
                         "--json", "--quiet"], capsys)
    assert code == 0
    res = json.loads(out)["stages"][0]["result"]
    assert res["configurations"] == 2 and res["failed"] == 0
    import pandas as pd

    table = pd.read_parquet(res["table"])
    assert len(table) == 2 and set(table["method"]) == {"distill", "dpg"}
    assert (table["seconds_train_r"] > 0).all()
    assert not table["stopped_by_time"].any() and (table["budget_used"] > 0).all()
    assert os.path.getsize(res["plot"]) > 1000


@pytest.mark.slow
def test_acceptance_run(capsys):
    """The issue's acceptance run (about 12 minutes): the papers' effect on motif 10001010001,
    with r on the papers' budget (at most 130 epochs; trained to convergence, r learns this
    motif by itself at |D| = 1000 and the GAM has little left to add)."""
    pytest.importorskip("torch")
    argv = ["gam", "run", "--motif", "10001010001", "--features", "1001111", "--train-size",
            "1000", "--hidden", "64", "--seed", "1234", "--json", "--quiet"]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    res = json.loads(out)
    assert not any(res["stopped_by_time"].values())  # budgets, not the machine, ended training
    ce_pi = res["ce_pi"]
    assert ce_pi["distill"] <= 0.9 * res["ce_r"]
    assert res["ce_plambda"] < res["ce_r"]
    assert res["motif_freq_pi"]["distill"] > 10 * res["motif_freq_r"]
    assert ce_pi["dpg"] <= 1.05 * ce_pi["distill"]
    # "far worse": on its budget plain PG stays near r instead of approaching P_lambda
    assert ce_pi["pg"] > 1.2 * ce_pi["distill"]
    assert res["motif_freq_pi"]["pg"] < 0.5 * res["motif_freq_pi"]["distill"]
    assert res["seconds"]["total"] < 20 * 60


def test_gam_run_publishes_stage_events(capsys):
    pytest.importorskip("torch")
    from mlr_dask import events

    got = []
    unsubscribe = events.subscribe(got.append)
    try:
        code, _, _ = _run(["gam", "run", "--motif", "0110", "--train-size", "60", "--hidden",
                           "8", "--methods", "distill", "--set", "n=8", "--set",
                           "test_size=200", "--set", "r_max_epochs=2", "--set",
                           "pool_size=2000", "--set", "distill_samples=100", "--set",
                           "max_proposals=20000", "--set", "distill_max_epochs=2", "--set",
                           "free_samples=100", "--set", "n_shards=2", "--scheduler", "threads",
                           "--json", "--quiet"], capsys)
    finally:
        unsubscribe()
    assert code == 0
    gam = [e for e in got if e["stage"] == "gam"]
    assert [e["step"] for e in gam] == list(range(1, len(gam) + 1))
    assert gam[-1]["step"] == gam[-1]["total"] and gam[-1]["gam_stage"] == "eval"
    assert {e["gam_stage"] for e in gam} >= {"train_r", "pool", "lambda", "distill"}
