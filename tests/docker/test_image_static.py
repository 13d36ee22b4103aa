"""What issue 15 fixed in the image, compose file and locks, checked without an engine (scripts/image-test.sh builds
and runs the image for real): the hash-pinned locks per Python and their agreement with pyproject.toml, the image and
CI installing from them, no dead wheel layer or home skeleton, the volume, the build context, a healthcheck per
compose service, the analyst token readable by uid 10001 only, and the loopback override."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DOCKER = ROOT / "docker"
REQ = ROOT / "requirements"
PYTHONS = ("311", "312")
ENFORCER_SERVICES = ("resolver", "proxy", "analyst")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a `pip-compile --generate-hashes` style file."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    text = path.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)\s+(.*)$", line)
        assert m, f"{path.name}: not pinned with hashes: {line[:80]}"
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", m.group(3)))
        assert hashes, f"{path.name}: {m.group(1)} has no sha256 hash"
        out[_norm(m.group(1))] = (m.group(2), hashes)
    return out


def _requirement_names(reqs: list[str]) -> set[str]:
    return {_norm(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in reqs}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("py", PYTHONS)
def test_image_lock_pins_every_runtime_dependency_with_hashes(py: str) -> None:
    lock = _lock(REQ / f"lock-py{py}.txt")
    project = _project()
    wanted = _requirement_names(project["dependencies"] + project["optional-dependencies"]["fast"])
    missing = wanted - set(lock)
    assert not missing, f"lock-py{py}.txt lacks {sorted(missing)}: run make lock"
    test_only = _requirement_names(project["optional-dependencies"]["test"]) - wanted
    assert not test_only & set(lock), "the image lock must not carry the test tools"


@pytest.mark.parametrize("py", PYTHONS)
def test_ci_lock_has_the_image_pins_and_the_test_tools(py: str) -> None:
    image, ci = _lock(REQ / f"lock-py{py}.txt"), _lock(REQ / f"lock-py{py}-test.txt")
    differ = {n: (image[n][0], ci.get(n, ("missing",))[0]) for n in image if ci.get(n) != image[n]}
    assert not differ, f"CI would test other versions than the image ships: {differ}"
    wanted = _requirement_names(_project()["optional-dependencies"]["test"])
    assert not wanted - set(ci), f"lock-py{py}-test.txt lacks {sorted(wanted - set(ci))}"


def test_the_locks_are_for_their_python() -> None:
    for py in PYTHONS:
        for name in (f"lock-py{py}.txt", f"lock-py{py}-test.txt"):
            head = (REQ / name).read_text().splitlines()[1]
            assert f"--python-version {py[0]}.{py[1:]}" in head, f"{name} was not compiled for Python {py}: {head}"
    for name in ("build.txt", "podman-compose.txt"):
        assert _lock(REQ / name)
    compose = _lock(REQ / "podman-compose.txt")["podman-compose"][0]
    assert tuple(map(int, compose.split(".")[:2])) >= (1, 1), "podman-compose >= 1.1 reads the Compose v2 name: key"


def _stages() -> tuple[str, str]:
    text = (DOCKER / "Dockerfile").read_text()
    _, build, runtime = re.split(r"^FROM ", text, maxsplit=2, flags=re.M)
    return build, runtime


def test_image_installs_the_lock_with_hashes_in_the_build_stage_only() -> None:
    build, runtime = _stages()
    assert re.search(r"--require-hashes[^\n]*\\\n\s*-r \"\$lock\"|--require-hashes.*-r \"\$lock\"", build), build
    assert 'lock="requirements/lock-py' in build
    assert "--require-hashes -r requirements/build.txt" in build
    assert "pip install" not in runtime and "/wheels" not in runtime, "no wheels and no install in the runtime stage"
    copies = re.findall(r"^COPY --from=(\S+) (\S+)", runtime, re.M)
    assert copies == [("build", "/opt/venv")], f"the runtime stage copies only the venv: {copies}"


def test_runtime_user_has_no_skeleton_and_data_is_a_volume() -> None:
    _, runtime = _stages()
    useradd = runtime.split("useradd", 1)[1].split("&&", 1)[0]
    assert "--no-create-home" in useradd and not re.search(r"--create-home|(^|\s)-m(\s|$)", useradd), useradd
    volume = re.search(r"^VOLUME \[?\"?/var/lib/enforcer\"?\]?$", runtime, re.M)
    assert volume
    assert runtime.index("install -d") < volume.start(), "directories must exist before VOLUME"


@pytest.mark.parametrize("path", [".venv/bin/python", "var/events/dns.jsonl", ".git/HEAD", ".mypy_cache/x",
                                  "enforcer/__pycache__/cli.cpython-311.pyc", "bench/out/x", "docker/analyst_token",
                                  "tests/conftest.py"])  # fmt: skip
def test_dockerignore_keeps_out_of_the_context(path: str) -> None:
    assert not _in_context(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "requirements/lock-py311.txt", "enforcer/cli.py",
                                  "blocklists/wechat.yaml", "docker/enforcer.docker.yaml"])  # fmt: skip
def test_dockerignore_keeps_what_the_dockerfile_copies(path: str) -> None:
    assert _in_context(path)


def _in_context(path: str) -> bool:
    """The .dockerignore rules as engines apply them: the last matching pattern wins, `!` re-includes."""
    keep = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        rx = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if re.fullmatch(rx + "(/.*)?", path):
            keep = neg
    return keep


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.mark.parametrize(("service", "probe"), [("resolver", "dns:"), ("proxy", "http://"), ("analyst", "http://")])
def test_every_enforcer_service_has_its_own_healthcheck(service: str, probe: str) -> None:
    svc = _compose()["services"][service]
    assert svc["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "enforcer.healthcheck"]
    assert svc["environment"]["ENFORCER_HEALTH"].startswith(probe)
    if service == "resolver":
        port = svc["command"][svc["command"].index("--listen") + 1].rsplit(":", 1)[1]
        assert svc["environment"]["ENFORCER_HEALTH"].endswith(f":{port}")


def test_analyst_token_is_installed_for_uid_10001_only() -> None:
    services = _compose()["services"]
    step, analyst = services["analyst-token"], services["analyst"]
    assert step["user"] in ("0", "0:0") and step["restart"] == "no", "read as root, once"
    script = " ".join(step["entrypoint"])
    m = re.search(r"install -o 10001 -g 10001 -m 0400 /run/secrets/analyst_token (\S+)", script)
    assert m, script
    assert "test -s /run/secrets/analyst_token" in script and "exit 1" in script
    cmd = analyst["command"]
    assert cmd[cmd.index("--token-file") + 1] == m.group(1)
    assert "secrets" not in analyst, "uid 10001 cannot read a 0600 secret file: the analyst takes the installed copy"
    assert analyst["depends_on"]["analyst-token"]["condition"] == "service_completed_successfully"
    assert any(v.startswith("analyst-token:") and v.endswith(":ro") for v in analyst["volumes"])
    assert f"rm -f {m.group(1)};" in script, "a withdrawn secret must not leave the previous token in use"
    # Where the token step failed (podman-compose starts the analyst anyway) the analyst waits instead of crash-looping.
    wait = " ".join(analyst["entrypoint"])
    assert f"t={m.group(1)};" in wait and 'exec enforcer "$$@"' in wait, wait


def test_the_secret_file_is_ignored_by_git() -> None:
    out = subprocess.run(["git", "check-ignore", "-q", "docker/analyst_token"], cwd=ROOT, timeout=30)
    assert out.returncode == 0, "docker/analyst_token must be in .gitignore"


def test_loopback_override_listens_on_127_only() -> None:
    text = (ROOT / "tests/docker/compose.loopback.yaml").read_text()
    over = yaml.load(text, Loader=_TagLoader)
    for name in ENFORCER_SERVICES:
        svc = over["services"][name]
        assert svc["network_mode"] == "host" and svc["ports"] == "!reset", name
        addresses = [svc["command"][i + 1] for i, a in enumerate(svc["command"]) if a in ("--listen", "--metrics")]
        assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), (name, addresses)
        assert "127.0.0.1:" in svc["environment"]["ENFORCER_HEALTH"]


def test_makefile_venv_installs_the_ci_lock() -> None:
    make = (ROOT / "Makefile").read_text()
    assert "LOCK := requirements/lock-py$(PYTAG)-test.txt" in make
    assert re.search(r"pip install --quiet --require-hashes --no-build-isolation -r \$\(LOCK\)", make)
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in make
    assert "scripts/image-test.sh" in (ROOT / ".ci/run").read_text()


class _TagLoader(yaml.SafeLoader):
    """Reads Compose's !reset / !override tags as plain markers."""


_TagLoader.add_constructor("!reset", lambda loader, node: "!reset")
_TagLoader.add_constructor("!override", lambda loader, node: loader.construct_sequence(node))
