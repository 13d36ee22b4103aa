"""docker/ checked without a Docker engine: hadolint, the compose file against `enforcer --help`, promtool on the
Prometheus config and alert rules (incl. rule unit tests), and every metric the dashboard and rules query defined in
enforcer/metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from enforcer.cli import build_parser
from enforcer.config import section_defaults
from enforcer.metrics import SPECS
from tests.conftest import ROOT, require_tool

DOCKER = ROOT / "docker"
ENFORCER_IMAGE_SERVICES = ("resolver", "proxy", "analyst")


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or require_tool("hadolint")
    out = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_shape() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2, "a build stage and a runtime stage"
    # Both stages start from BASE (scripts/image-standin.sh swaps in a local stand-in); its default must be pinned.
    assert froms == ["${BASE}", "${BASE}"], froms
    base = re.findall(r"^ARG BASE=(\S+)", text, re.M)
    assert len(base) == 1 and re.search(r":\d+\.\d+\.\d+", base[0]), f"the base image must be pinned: {base}"
    runtime = text.split("\nFROM ", 2)[2]
    assert "HEALTHCHECK" in runtime
    user = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user and not user[-1].startswith(("0", "root")), "runtime must not run as root"
    assert not re.search(r"apt-get install|gcc|build-essential", runtime), "no build tools in the final stage"
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), f"COPY source missing: {src}"


def test_compose_services_and_volumes() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) >= {"resolver", "proxy", "analyst", "prometheus", "grafana"}
    for name in ENFORCER_IMAGE_SERVICES:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile"
        assert (DOCKER / svc["build"]["context"]).resolve() == ROOT
        vols = svc["volumes"]
        assert "../blocklists:/etc/enforcer/blocklists:ro" in vols, f"{name}: blocklists must be mounted read-only"
        assert any(v.startswith("events:") for v in vols), f"{name}: must share the events volume"
    assert (DOCKER / "../blocklists").resolve().is_dir()
    for name in ("prometheus", "grafana"):
        assert re.search(r":v?\d+\.\d+\.\d+$", services[name]["image"]), "pin peer images"
        for vol in services[name]["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name}: missing {src}"
    assert set(compose["volumes"]) >= {"events", "analyst-db"}


def test_compose_commands_exist_in_enforcer_cli() -> None:
    parser, subparsers = build_parser()
    compose = _compose()
    config_file = DOCKER / "enforcer.docker.yaml"
    config = yaml.safe_load(config_file.read_text())
    node = yaml.compose(config_file.read_text())
    for name in ENFORCER_IMAGE_SERVICES:
        cmd = compose["services"][name]["command"]
        assert cmd[0] in subparsers, f"{name}: `enforcer {cmd[0]}` does not exist"
        sub = subparsers[cmd[0]]
        flags = {opt for action in sub._actions for opt in action.option_strings}
        for arg in cmd[1:]:
            if arg.startswith("--"):
                assert arg in flags, f"{name}: `enforcer {cmd[0]}` has no flag {arg}"
        parser.parse_args([a if a != "/etc/enforcer/enforcer.yaml" else str(config_file) for a in cmd])
        # The baked-in config's section must be valid for the command (unknown keys raise ConfigError).
        section_defaults(sub, config, node, cmd[0], str(config_file))


def test_promtool_config_and_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    for args in (
        ["check", "config", str(DOCKER / "prometheus/prometheus.yml")],
        ["check", "rules", str(DOCKER / "prometheus/alerts.yml")],
        ["test", "rules", str(DOCKER / "prometheus/alerts_test.yml")],
    ):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}{out.stderr}"


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"\benforcer_[a-z0-9_]+", text))


def _defined(name: str) -> bool:
    if name in SPECS:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and base in SPECS and SPECS[base].kind == "histogram":
            return True
    return False


@pytest.mark.parametrize(
    "path", ["prometheus/alerts.yml", "grafana/dashboards/enforcer.json"], ids=["alert-rules", "grafana-dashboard"]
)
def test_every_queried_metric_is_defined(path: str) -> None:
    text = (DOCKER / path).read_text()
    names = _metric_names(text)
    assert names, f"{path} queries no enforcer metric"
    undefined = sorted(n for n in names if not _defined(n))
    assert not undefined, f"{path} queries metrics not defined in enforcer/metrics.py: {undefined}"


def test_grafana_provisioning() -> None:
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    uid = ds["datasources"][0]["uid"]
    dash = json.loads((DOCKER / "grafana/dashboards/enforcer.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in (
        "per app",
        "category",
        "non-compliant",
        "dns queries",
        "latency",
        "upstream",
        "reload",
        "fingerprint",
        "dropped",
    ):
        assert topic in titles, f"dashboard lacks a panel about {topic!r}"
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == uid
        for t in p["targets"]:
            assert t["expr"].strip()


def test_image_default_command_plans_children_from_the_baked_config() -> None:
    """`docker run enforcer` = `serve --config /etc/enforcer/enforcer.yaml`: every child gets the image's blocklists,
    and everything writable is under /var/lib/enforcer (the only directory the non-root user owns)."""
    from enforcer.serve import plan

    config_file = DOCKER / "enforcer.docker.yaml"
    parser, subparsers = build_parser()
    text = config_file.read_text()
    data, node = yaml.safe_load(text), yaml.compose(text)
    subparsers["serve"].set_defaults(
        **section_defaults(subparsers["serve"], data, node, "serve", str(config_file)), _config_data=data
    )
    args = parser.parse_args(["serve", "--config", str(config_file)])
    children, info = plan(args)
    assert [c.name for c in children] == ["dns", "proxy", "analyst"]
    for child in children:
        argv = child.argv
        assert argv[argv.index("--blocklist") + 1] == "/etc/enforcer/blocklists", argv
        for flag in ("--events", "--confdir", "--db", "--token-file"):
            if flag in argv:
                assert argv[argv.index(flag) + 1].startswith("/var/lib/enforcer/"), (flag, argv)
    assert info["analyst_token_file"].startswith("/var/lib/enforcer/")
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for sub in ("events", "mitmproxy", "analyst"):
        assert f"/var/lib/enforcer/{sub}" in dockerfile, f"the image must create /var/lib/enforcer/{sub}"
