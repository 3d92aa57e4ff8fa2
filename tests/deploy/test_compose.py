"""deploy/docker-compose.yml and deploy/Dockerfile: the image builds from this repository, every
service runs an entry point the image installs with options that entry point accepts, nothing
is published beyond loopback by default, every connection is TLS, the data volume is shared."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
#: where the Dockerfile puts the repository's pipelines/ inside the image
IMAGE_APP = "/opt/mlr-dask"
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with no variable set: the default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)


def compose_validator():
    import jsonschema

    schema = json.loads((Path(__file__).parent / "compose_spec" / "compose-spec.json")
                        .read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def test_compose_file_validates_against_the_compose_specification(compose):
    validator = compose_validator()
    assert [e.message for e in validator.iter_errors(compose)] == []
    # the check can fail: an unknown service key, a wrong type, an unknown dependency condition
    for path, value in ((("services", "worker", "replica"), 2),
                        (("services", "scheduler", "ports"), "8786:8786"),
                        (("services", "driver", "depends_on", "scheduler", "condition"), "up")):
        bad = copy.deepcopy(compose)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert list(validator.iter_errors(bad)), path


def test_compose_spec_is_the_file_the_readme_names():
    folder = Path(__file__).parent / "compose_spec"
    digest = re.search(r"sha256 ([0-9a-f]{64})", (folder / "README.md").read_text()).group(1)
    assert hashlib.sha256((folder / "compose-spec.json").read_bytes()).hexdigest() == digest


def test_every_service_builds_the_image_from_the_repository(services):
    assert set(services) >= {"scheduler", "worker", "driver"}
    images = set()
    for name, svc in services.items():
        build = svc.get("build")
        assert build, f"service {name} has no build:"
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO, name
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        images.add(svc["image"])
    assert len(images) == 1  # one image, built once, for every service


def test_dockerfile_installs_cpu_torch_before_the_package():
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    text = "\n".join(lines)
    torch_at = next(i for i, ln in enumerate(lines) if "pip install" in ln and "torch==" in ln)
    package_at = next(i for i, ln in enumerate(lines) if re.search(r"pip install \"\.\[", ln))
    assert torch_at < package_at
    assert "--index-url" in lines[torch_at]
    index = re.search(r"ARG TORCH_INDEX=(\S+)", text).group(1)
    assert index.rstrip("/").endswith("/cpu")
    version = re.search(r"ARG TORCH_VERSION=(\S+)", text).group(1)
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    # every path the image copies exists in the repository
    for src in re.findall(r"^COPY\s+(.+)\s+\S+$", text, flags=re.M):
        for path in src.split():
            assert (REPO / path).exists(), path
    assert re.search(rf"WORKDIR {IMAGE_APP}\n(?:.*\n)*COPY pipelines \./pipelines", text)


def test_every_command_is_an_entry_point_of_the_image(services, check_command, image_scripts):
    assert {"dask", "mlr-dask"} <= image_scripts
    for svc in services.values():
        check_command(svc["command"])
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"]
    assert services["worker"]["command"][:2] == ["dask", "worker"]
    assert services["driver"]["command"][:2] == ["mlr-dask", "run"]


def test_ports_are_published_on_loopback_only(services):
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                host = interpolate(str(port.get("host_ip", "")))
            else:
                parts = interpolate(str(port)).split(":")
                assert len(parts) == 3, f"{name}: {port} publishes on every interface"
                host = parts[0]
            assert host == "127.0.0.1", f"{name}: {port}"
            published += 1
    assert published == 2  # the scheduler and its dashboard
    assert not services["worker"].get("ports")


def test_every_connection_is_tls(compose, services):
    secrets = compose["secrets"]
    for name, svc in services.items():
        env = svc["environment"]
        assert str(env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"]).lower() == "true"
        role = {"scheduler": "SCHEDULER", "worker": "WORKER", "driver": "CLIENT"}[name]
        files = [env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"],
                 env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"],
                 env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"]]
        mounted = set(svc["secrets"])
        for f in files:  # each file is a secret this service mounts
            assert f.startswith("/run/secrets/") and f.removeprefix("/run/secrets/") in mounted
        pair = "client" if name == "driver" else "cluster"
        assert mounted == {"ca.pem", f"{pair}.pem", f"{pair}-key.pem"}, name
    cmd = services["scheduler"]["command"]
    assert cmd[cmd.index("--protocol") + 1] == "tls"
    assert services["worker"]["command"][2].startswith("tls://scheduler:")
    driver = services["driver"]["command"]
    assert driver[driver.index("--scheduler") + 1].startswith("tls://scheduler:")
    # the secrets are the files make_certs.sh writes; the CA's key is never mounted
    made = set(re.search(r'for f in (ca ca-key [^;]+); do',
                         (DEPLOY / "make_certs.sh").read_text()).group(1).split())
    for key, spec in secrets.items():
        path = Path(spec["file"])
        assert path.parent == Path("certs") and path.stem in made and path.stem != "ca-key"
        assert key == path.name


def test_data_volume_is_shared_at_the_same_path(compose, services):
    mounts = {}
    for name, svc in services.items():
        vols = [v for v in svc.get("volumes", []) if str(v).split(":")[0] in compose["volumes"]]
        assert len(vols) == 1, f"{name} does not mount the data volume"
        mounts[name] = vols[0]
    assert len(set(mounts.values())) == 1, mounts
    volume, path = next(iter(mounts.values())).split(":")[:2]
    assert volume in compose["volumes"]
    assert services["driver"]["working_dir"] == path  # relative job paths land on the volume


def test_docker_compose_config(tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    # a copy with stand-in certificate files, so the check does not need make_certs.sh's output
    work = tmp_path / "deploy"
    work.mkdir()
    shutil.copy(COMPOSE, work / COMPOSE.name)
    (work / "certs").mkdir()
    for name in ("ca", "cluster", "cluster-key", "client", "client-key"):
        (work / "certs" / f"{name}.pem").write_text("x")
    run = subprocess.run([docker, "compose", "-f", str(work / COMPOSE.name), "config", "-q"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
