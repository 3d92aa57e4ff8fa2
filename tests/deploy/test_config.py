"""deploy/distributed.yaml: every key is a Dask setting, and its TLS block, uncommented and
pointed at certificates of deploy/make_certs.sh, gives every role a working TLS context."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dask
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "distributed.yaml"
#: settings whose children are free-form (environment variables)
FREE_FORM = ("distributed.nanny.pre-spawn-environ",)


def leaves(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and path not in FREE_FORM:
            out += leaves(value, path)
        else:
            out.append(path)
    return out


def tls_block() -> str:
    """The commented TLS lines, uncommented, as YAML under distributed.comm."""
    text = CONFIG.read_text()
    block = text[text.index("# --- TLS"):text.index("# --- end of TLS")]
    lines = [ln for ln in block.splitlines()[1:] if re.match(r"\s*# (require|tls|  )", ln)]
    body = "\n".join(re.sub(r"^(\s*)# ", r"\1", ln) for ln in lines)
    return "distributed:\n  comm:\n" + body + "\n"


def test_every_key_is_a_dask_setting():
    tree = yaml.safe_load(CONFIG.read_text())
    paths = leaves(tree)
    assert "distributed.worker.memory.target" in paths
    import distributed  # noqa: F401 (registers its defaults)

    defaults = dask.config.merge(*dask.config.defaults)  # dask's own defaults only
    for path in paths:
        node = defaults
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"{path} is not a Dask setting"
            node = node[part]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_block_configures_every_role(tmp_path):
    from distributed import Security

    certs = tmp_path / "certs"
    subprocess.run(["sh", str(REPO / "deploy" / "make_certs.sh"), str(certs)], check=True,
                   capture_output=True)
    text = tls_block().replace("/etc/mlr-dask/tls", str(certs))
    config = yaml.safe_load(text)
    comm = config["distributed"]["comm"]
    assert comm["require-encryption"] is True
    assert set(comm["tls"]) == {"ca-file", "scheduler", "worker", "client"}
    flat = {path: _get(config, path) for path in leaves(config)}
    with dask.config.set(flat):
        security = Security()
        assert security.require_encryption
        for role in ("scheduler", "worker", "client"):
            args = security.get_connection_args(role)
            assert args["require_encryption"] and args["ssl_context"] is not None, role
            listen = security.get_listen_args(role)
            assert listen["ssl_context"] is not None, role
        assert security.tls_client_cert == str(certs / "client.pem")
        assert security.tls_worker_cert == security.tls_scheduler_cert == str(
            certs / "cluster.pem")


def _get(tree: dict, path: str):
    for part in path.split("."):
        tree = tree[part]
    return tree


def test_plain_config_does_not_turn_tls_on():
    config = yaml.safe_load(CONFIG.read_text())
    assert "tls" not in config["distributed"]["comm"]
    assert "require-encryption" not in config["distributed"]["comm"]
