"""deploy/kubernetes: the DaskCluster and DaskJob validate against the Dask operator's CRD
schemas (tests/deploy/crds, see the README there), strictly: a field the schema does not know
is an error, as ``kubectl apply`` (strict field validation) makes it. The volume claim they
mount is defined, everything speaks TLS with the one secret, nothing is exposed outside the
cluster, and the Helm values pin the chart and start `dask scheduler` / `dask worker`."""

from __future__ import annotations

import copy
import functools
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
CRDS = Path(__file__).parent / "crds"
MANIFESTS = {"DaskCluster": K8S / "daskcluster.yaml", "DaskJob": K8S / "daskjob.yaml"}
SECRET = "mlr-dask-tls"
CLAIM = "mlr-dask-data"


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its
    properties and does not keep unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster on 0.5 MB
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=loader)
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            # every object has these; Kubernetes checks them, not the CRD's schema
            schema["properties"] |= {"apiVersion": {"type": "string"},
                                     "kind": {"type": "string"},
                                     "metadata": {"type": "object"}}
            schema = strict(schema)
            return jsonschema.Draft7Validator(schema)
    raise AssertionError(f"no CRD for {kind} in {CRDS}")


def errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_validates_against_the_operator_crd(kind):
    (doc,) = load_all(MANIFESTS[kind])
    assert doc["kind"] == kind and doc["apiVersion"] == "kubernetes.dask.org/v1"
    assert errors(crd_validator(kind), doc) == []


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_validation_catches_mistakes(kind):
    """The check can fail: a misspelt field, a wrong type and a missing required key."""
    validator = crd_validator(kind)
    (doc,) = load_all(MANIFESTS[kind])
    cluster = doc["spec"] if kind == "DaskCluster" else doc["spec"]["cluster"]["spec"]
    typo = copy.deepcopy(doc)
    c = typo["spec"] if kind == "DaskCluster" else typo["spec"]["cluster"]["spec"]
    c["worker"]["replica"] = c["worker"].pop("replicas")
    assert any("replica" in e for e in errors(validator, typo))
    wrong = copy.deepcopy(doc)
    c = wrong["spec"] if kind == "DaskCluster" else wrong["spec"]["cluster"]["spec"]
    c["worker"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 1
    assert errors(validator, wrong)
    missing = copy.deepcopy(doc)
    c = missing["spec"] if kind == "DaskCluster" else missing["spec"]["cluster"]["spec"]
    del c["scheduler"]["spec"]["containers"][0]["name"]
    assert errors(validator, missing)
    assert cluster  # the original is untouched
    assert errors(validator, doc) == []


def clusters() -> list[tuple[str, dict, dict | None]]:
    """(cluster name, DaskCluster spec, job pod spec or None) of each manifest."""
    (dc,) = load_all(MANIFESTS["DaskCluster"])
    (dj,) = load_all(MANIFESTS["DaskJob"])
    return [(dc["metadata"]["name"], dc["spec"], None),
            # the operator names a job's cluster after the job
            (dj["metadata"]["name"], dj["spec"]["cluster"]["spec"], dj["spec"]["job"]["spec"])]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def mounts_of(pod: dict, container: dict) -> dict[str, dict]:
    """mountPath -> volume of a container."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}


def test_the_volume_claim_is_defined_read_write_many():
    (pvc,) = load_all(K8S / "pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == CLAIM
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "ReadWriteMany" in (K8S / "pvc.yaml").read_text().split("apiVersion")[0]  # noted
    claims = set(re.findall(r"claimName:\s*([\w-]+)", "".join(
        p.read_text() for p in K8S.glob("*.yaml"))))
    assert claims == {CLAIM}


def test_every_pod_mounts_the_data_volume_and_its_tls_files(check_command):
    made = {"ca.pem", "cluster.pem", "cluster-key.pem", "client.pem", "client-key.pem"}
    for name, spec, job in clusters():
        scheduler_address = f"tls://{name}-scheduler:8786"
        pods = {"scheduler": spec["scheduler"]["spec"], "worker": spec["worker"]["spec"]}
        if job is not None:
            pods["client"] = job
        for role, pod in pods.items():
            (container,) = pod["containers"]
            check_command(container["args"])
            mounts = mounts_of(pod, container)
            assert mounts["/data"]["persistentVolumeClaim"]["claimName"] == CLAIM
            tls = [v for v in mounts.values() if "secret" in v]
            assert len(tls) == 1 and tls[0]["secret"]["secretName"] == SECRET
            (tls_path,) = [p for p, v in mounts.items() if "secret" in v]
            keys = {i["key"] for i in tls[0]["secret"]["items"]}
            pair = "client" if role == "client" else "cluster"
            assert keys == {"ca.pem", f"{pair}.pem", f"{pair}-key.pem"} and keys <= made
            env = env_of(container)
            assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "true"
            assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == f"{tls_path}/ca.pem"
            key = f"DASK_DISTRIBUTED__COMM__TLS__{role.upper()}"
            assert env[f"{key}__CERT"] == f"{tls_path}/{pair}.pem"
            assert env[f"{key}__KEY"] == f"{tls_path}/{pair}-key.pem"
            args = container["args"]
            if role == "scheduler":
                assert args[:2] == ["dask", "scheduler"]
                assert args[args.index("--protocol") + 1] == "tls"
            elif role == "worker":
                assert args[:2] == ["dask", "worker"]
                # the operator sets a tcp:// address unless the container sets its own
                assert env["DASK_SCHEDULER_ADDRESS"] == scheduler_address
            else:
                assert args[:2] == ["mlr-dask", "run"]
                assert args[args.index("--scheduler") + 1] == scheduler_address
                assert container["workingDir"] == "/data"
                assert pod["restartPolicy"] == "Never"


def test_scheduler_service_is_internal_and_selects_the_scheduler():
    for name, spec, _ in clusters():
        service = spec["scheduler"]["service"]
        assert service["type"] == "ClusterIP"
        assert service["selector"] == {"dask.org/cluster-name": name,
                                       "dask.org/component": "scheduler"}
        ports = {p["containerPort"] for p in spec["scheduler"]["spec"]["containers"][0]["ports"]}
        assert {p["port"] for p in service["ports"]} == {8786, 8787} == ports
    text = "".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert not re.search(r"^\s*(type|serviceType):\s*(LoadBalancer|NodePort)", text, re.M)


# -- Helm values ---------------------------------------------------------------------------

HELM = K8S / "helm-values.yaml"


def helm_version() -> str:
    m = re.search(r"^# chart-version: (\S+)$", HELM.read_text(), re.M)
    assert m, "helm-values.yaml does not pin a chart version"
    return m.group(1)


def test_helm_values_pin_the_chart_version_everywhere_it_is_installed():
    version = helm_version()
    assert re.fullmatch(r"\d{4}\.\d{1,2}\.\d+", version)
    installs = [ln for p in (HELM, REPO / "deploy" / "README.md")
                for ln in p.read_text().splitlines() if "helm install" in ln]
    assert installs
    for line in installs:
        assert "dask/dask" in line and f"--version {version}" in line, line


def test_helm_values_start_dask_scheduler_and_dask_worker_over_tls(tmp_path, parse_dask):
    values = yaml.safe_load(HELM.read_text())
    sched, worker = values["scheduler"], values["worker"]
    assert sched["serviceType"] == "ClusterIP"
    assert values["jupyter"]["enabled"] is False
    assert values["webUI"]["ingress"]["enabled"] is False
    # the argument lists the chart's templates build (the first word is fixed by the chart for
    # the scheduler, `worker.image.dask_worker` for the workers), as the image runs them
    sched_argv = ["dask-scheduler", "--port=8786", "--dashboard-address=:8787",
                  *sched["extraArgs"]]
    worker_argv = [worker["image"]["dask_worker"], "mlr-dask-scheduler:8786", "--nthreads",
                   str(worker["threads_per_worker"]), "--memory-limit",
                   worker["resources"]["limits"]["memory"], "--no-dashboard",
                   "--dashboard-address", "8790", *worker["extraArgs"]]
    ran = [run_entrypoint(argv, tmp_path) for argv in (sched_argv, worker_argv)]
    assert ran[0][:2] == ["dask", "scheduler"] and ran[0][2:] == sched_argv[1:]
    assert ran[1][:2] == ["dask", "worker"] and ran[1][2:] == worker_argv[1:]
    for argv in ran:
        parse_dask(argv)
    assert sched["extraArgs"][sched["extraArgs"].index("--protocol") + 1] == "tls"
    for role, part in (("SCHEDULER", sched), ("WORKER", worker)):
        env = {e["name"]: e for e in part["env"]}
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"]["value"] == "true"
        for var, key in (("CA_FILE", "ca.pem"), (f"{role}__CERT", "cluster.pem"),
                         (f"{role}__KEY", "cluster-key.pem")):
            ref = env[f"DASK_DISTRIBUTED__COMM__TLS__{var}"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": SECRET, "key": key}
    worker_env = {e["name"]: e.get("value") for e in worker["env"]}
    assert worker_env["DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME"] == "tls"
    (vol,) = worker["mounts"]["volumes"]
    assert vol["persistentVolumeClaim"]["claimName"] == CLAIM


def run_entrypoint(argv: list[str], tmp_path: Path) -> list[str]:
    """Run deploy/entrypoint.sh with ``argv`` and a stand-in ``dask`` on PATH; returns the
    command line the stand-in was started with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "argv"
    fake = bin_dir / "dask"
    fake.write_text(f'#!/bin/sh\nfor a in dask "$@"; do printf "%s\\n" "$a"; done > {record}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["sh", str(REPO / "deploy" / "entrypoint.sh"), *argv], check=True, env=env)
    return record.read_text().splitlines()


def test_entrypoint_runs_other_commands_unchanged(tmp_path):
    assert run_entrypoint(["dask", "worker", "tls://x:8786"], tmp_path) == [
        "dask", "worker", "tls://x:8786"]
    out = subprocess.run(["sh", str(REPO / "deploy" / "entrypoint.sh"), "echo", "a b", "c"],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "a b c\n"


def test_crds_are_the_files_the_readme_names():
    import hashlib

    table = dict(re.findall(r"^\| (\S+\.yaml) \| ([0-9a-f]{64}) \|$",
                            (CRDS / "README.md").read_text(), re.M))
    assert set(table) == {p.name for p in CRDS.glob("*.yaml")} == {"daskcluster.yaml",
                                                                  "daskjob.yaml"}
    for name, digest in table.items():
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == digest
