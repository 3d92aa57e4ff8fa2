"""deploy/README.md: every command it shows names files that exist and parses with the command
it runs (dask, mlr-dask, submit.py, docker compose services, kubectl files)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "deploy" / "README.md"
CERTS = {"ca.pem", "cluster.pem", "cluster-key.pem", "client.pem", "client-key.pem"}


def commands() -> list[list[str]]:
    """The shell commands of the README's bash blocks (continuations joined, comments, `&`
    and variable assignments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip().rstrip("&").strip()
            if not line or line.startswith(("#", "export ")):
                continue
            words = shlex.split(line)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            out.append(words)
    return out


def test_readme_shows_every_mode():
    firsts = {tuple(c[:2]) for c in commands()}
    for expected in [("dask", "scheduler"), ("dask", "worker"), ("mlr-dask", "run"),
                     ("docker", "compose"), ("kubectl", "apply"), ("helm", "install"),
                     ("python", "deploy/slurm/submit.py"), ("sh", "deploy/make_certs.sh")]:
        assert expected in firsts, expected


def _mlr_dask(argv: list[str]) -> None:
    from mlr_dask.cli.main import build_parser

    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"mlr-dask rejects {argv}: exit {exc.code}")


def test_every_command_parses(parse_dask, capsys):
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    spec = importlib.util.spec_from_file_location("submit", REPO / "deploy/slurm/submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    checked = 0
    for argv in commands():
        if argv[0] == "dask":
            parse_dask(argv)
        elif argv[0] == "mlr-dask":
            _mlr_dask(argv)
        elif argv[:2] == ["python", "deploy/slurm/submit.py"]:
            words = argv[2:]
            cut = words.index("--") if "--" in words else len(words)
            args = submit.build_parser().parse_args(words[:cut])
            assert (REPO / args.job).is_file(), args.job
        elif argv[:2] == ["docker", "compose"]:
            assert argv[2] == "-f" and (REPO / argv[3]).is_file()
            rest = argv[4:]
            services = [w for w in rest[1:] if w in compose["services"]]
            assert services or rest[0] == "down", argv
            if rest[0] == "run":
                inner = rest[rest.index(services[0]) + 1:]
                if inner:
                    inner = [w.replace("/opt/mlr-dask/", "") for w in inner]
                    (parse_dask if inner[0] == "dask" else _mlr_dask)(inner)
        elif argv[0] == "kubectl" and argv[1] == "apply":
            for i, w in enumerate(argv):
                if w == "-f":
                    assert (REPO / argv[i + 1]).is_file(), argv[i + 1]
        elif argv[:3] == ["kubectl", "create", "secret"]:
            files = {w.split("=", 1)[1] for w in argv if w.startswith("--from-file=")}
            assert {Path(f).name for f in files} == CERTS  # all but the CA's key
        elif argv[0] == "sh":
            assert (REPO / argv[1]).is_file()
        else:
            continue
        checked += 1
    assert checked >= 20
    capsys.readouterr()
