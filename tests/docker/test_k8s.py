"""docker/k8s manifests validated offline: kubernetes-validate (strict) on every built-in kind, the ConfigMap that
README.md tells admins to create, a structural check of the ServiceMonitor (a CRD, unknown to the validator), and the
containers' arguments parsed by enforcer's own CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from enforcer.cli import build_parser
from tests.conftest import BLOCKLISTS, ROOT

K8S = ROOT / "docker" / "k8s"
BUILTIN = ["namespace.yaml", "events-pvc.yaml", "resolver.yaml", "proxy.yaml", "analyst.yaml"]


def _validator() -> str:
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubernetes-validate"
    )
    if exe is None:
        pytest.fail("kubernetes-validate is not installed (it is in the test extra)")
    return exe


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted([*BUILTIN, "servicemonitor.yaml"])


@pytest.mark.parametrize("name", BUILTIN)
def test_manifest_validates_strictly(name: str) -> None:
    out = subprocess.run([_validator(), "--strict", str(K8S / name)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == len(_docs(name)), out.stdout


def test_blocklists_configmap_validates(tmp_path: Path) -> None:
    # What `kubectl create configmap enforcer-blocklists --from-file=blocklists/` produces.
    data = {p.name: p.read_text() for p in sorted(BLOCKLISTS.glob("*.yaml"))}
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "enforcer-blocklists", "namespace": "enforcer"},
        "data": data,
    }
    path = tmp_path / "cm.yaml"
    path.write_text(yaml.safe_dump(cm))
    out = subprocess.run([_validator(), "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len((yaml.safe_dump(cm)).encode()) < 1024 * 1024, "ConfigMaps are limited to 1 MiB"


def test_resolver_deployment_shape() -> None:
    deploy, service = _docs("resolver.yaml")
    spec = deploy["spec"]
    assert spec["replicas"] >= 2
    assert spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    container = spec["template"]["spec"]["containers"][0]
    assert "enforcer.healthcheck" in " ".join(container["readinessProbe"]["exec"]["command"])
    protocols = {(p["port"], p["protocol"]) for p in service["spec"]["ports"]}
    assert {(53, "UDP"), (53, "TCP")} <= protocols


def test_container_args_are_valid_enforcer_commands() -> None:
    parser, _ = build_parser()
    for name in ("resolver.yaml", "proxy.yaml", "analyst.yaml"):
        for doc in _docs(name):
            if doc["kind"] != "Deployment":
                continue
            args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
            parser.parse_args(args)  # SystemExit on an unknown command or flag


def test_servicemonitor_targets_named_ports() -> None:
    (sm,) = _docs("servicemonitor.yaml")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    service_ports = set()
    for name in ("resolver.yaml", "proxy.yaml", "analyst.yaml"):
        for doc in _docs(name):
            if doc["kind"] == "Service":
                assert doc["metadata"]["labels"].items() >= sm["spec"]["selector"]["matchLabels"].items()
                service_ports |= {p["name"] for p in doc["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
