"""Shared checks of deploy/: a container command is an entry point the image installs and its
options parse with the installed command (nothing is started)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: where deploy/Dockerfile puts the repository's pipelines/ inside the image
IMAGE_APP = "/opt/mlr-dask"


def image_scripts() -> set[str]:
    """Executables the image provides: the package's scripts and dask's."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dask = {ep.name for ep in entry_points(group="console_scripts")
            if ep.dist is not None and ep.dist.name == "dask"}
    return set(pyproject["project"]["scripts"]) | dask


def parse_dask(argv: list[str]) -> None:
    """Parse ``dask scheduler|worker ...`` with the installed command (no process started)."""
    by_name = {ep.name: ep for ep in entry_points(group="dask_cli")}
    assert argv[0] == "dask" and argv[1] in by_name, f"dask has no subcommand {argv[1]!r}"
    command = by_name[argv[1]].load()
    command.make_context(f"dask {argv[1]}", list(argv[2:]))  # raises on an unknown option


@pytest.fixture(name="parse_dask")
def parse_dask_fixture() -> Callable[[list[str]], None]:
    return parse_dask


@pytest.fixture(name="image_scripts")
def image_scripts_fixture() -> set[str]:
    return image_scripts()


@pytest.fixture
def check_command(tmp_path, monkeypatch, capsys) -> Callable[[list[str]], None]:
    """Check a container command: ``dask ...`` parses; ``mlr-dask run JOB ...`` names a job
    file of pipelines/ (as the image holds it) that plans without error (a dry run, started in
    an empty directory like the shared volume)."""
    from mlr_dask.cli.main import main

    def check(argv: list[str]) -> None:
        assert isinstance(argv, list) and argv, argv
        assert argv[0] in image_scripts(), f"{argv[0]} is not installed in the image"
        if argv[0] == "dask":
            parse_dask(argv)
            return
        args = [a.replace(f"{IMAGE_APP}/", f"{REPO}/") for a in argv[1:]]
        job = Path(args[1])
        assert args[0] == "run" and job.is_file() and job.parent == REPO / "pipelines", args
        monkeypatch.chdir(tmp_path)
        assert main([*args, "--dry-run"]) == 0, capsys.readouterr().err
        capsys.readouterr()

    return check
