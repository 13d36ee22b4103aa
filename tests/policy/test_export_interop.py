"""Exports loaded by the real software: named-checkzone, unbound-checkconf, dnsmasq --test, squid -k parse, nft -c.

Each check also feeds the tool one broken line, so a tool that accepts anything cannot make the test pass. The
behavioural tests start unbound (snippet and RPZ), BIND (RPZ) and dnsmasq on 127.0.0.1 with a local catch-all
upstream (so a name the export fails to block resolves to 192.0.2.53 instead of reaching the internet), query them
with dnspython and compare each answer with ``Policy.match_name``.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from enforcer.policy import Policy, load_policy
from enforcer.policy.export import export_policy
from tests.conftest import BLOCKLISTS, eventually, free_port, require_tool
from tests.dns.fakeupstream import FakeUpstream
from tests.policy.export_fixture import BLOCKED, NOT_BLOCKED, build
from tests.policy.policy_helpers import app_yaml, shipped, write

UPSTREAM_V4 = "192.0.2.53"  # FakeUpstream's answer for any A query
TOOL_TIMEOUT = 60


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False, **kw)  # type: ignore[call-overload]


@pytest.fixture(params=["shipped", "fixture", "no-names"])
def policy(request: pytest.FixtureRequest, tmp_path: Path) -> Policy:
    if request.param == "shipped":
        return shipped()
    if request.param == "no-names":
        # Nothing for DNS or the firewall: every export must still be a valid, empty file for its tool.
        path = write(tmp_path, "t.yaml", app_yaml("t", 'block:\n  - url: "dl.example/app/*"\n    category: download\n'))
        return load_policy(path)
    return build(tmp_path / "policy")


# -- static checks with the real tools -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nxdomain", "nodata", "null", "ip:192.0.2.1,2001:db8::1"])
def test_rpz_named_checkzone(policy: Policy, tmp_path: Path, mode: str) -> None:
    tool = require_tool("named-checkzone")
    zone = tmp_path / "rpz.zone"
    zone.write_text(export_policy(policy, "rpz", zone="rpz.enforcer.", mode=mode))
    # -k fail: check-names as BIND enforces it for primary zones.
    proc = _run([tool, "-k", "fail", "-i", "full", "rpz.enforcer", str(zone)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loaded serial" in proc.stdout and proc.stdout.strip().endswith("OK")
    broken = tmp_path / "broken.zone"
    broken.write_text(zone.read_text() + "bad..name CNAME .\n")
    assert _run([tool, "-k", "fail", "rpz.enforcer", str(broken)]).returncode != 0


def _unbound_conf(tmp: Path, snippet: Path, port: int = 0, upstream: int = 0, rpz: Path | None = None) -> Path:
    lines = [
        "server:",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{tmp}"',
        f'  pidfile: "{tmp}/unbound.pid"',
        "  use-syslog: no",
        '  logfile: ""',
        "  num-threads: 1",
        "  so-reuseport: no",
        "  do-ip6: no",
        "  interface: 127.0.0.1",
        f"  port: {port or 53}",
        "  access-control: 127.0.0.0/8 allow",
        "  do-not-query-localhost: no",
        f'  module-config: "{"respip iterator" if rpz else "iterator"}"',
        "  outgoing-range: 64",
        "  msg-cache-size: 4m",
        "  rrset-cache-size: 4m",
    ]
    if rpz is None:
        lines.append(f'include: "{snippet}"')
    else:
        lines += ["rpz:", '  name: "rpz.enforcer."', f'  zonefile: "{rpz}"']
    lines += ["remote-control:", "  control-enable: no"]
    if upstream:
        lines += ["forward-zone:", '  name: "."', f"  forward-addr: 127.0.0.1@{upstream}"]
    conf = tmp / "unbound.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


@pytest.mark.parametrize("mode", ["nxdomain", "nodata", "null", "refused", "ip:192.0.2.1"])
def test_unbound_checkconf(policy: Policy, tmp_path: Path, mode: str) -> None:
    tool = require_tool("unbound-checkconf")
    snippet = tmp_path / "enforcer.conf"
    snippet.write_text(export_policy(policy, "unbound", mode=mode))
    conf = _unbound_conf(tmp_path, snippet)
    proc = _run([tool, str(conf)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no errors" in proc.stdout
    snippet.write_text(snippet.read_text() + 'local-zone: "x.example." no_such_type\n')
    assert _run([tool, str(conf)]).returncode != 0


@pytest.mark.parametrize("mode", ["nxdomain", "null", "ip:192.0.2.1,2001:db8::1"])
def test_dnsmasq_test(policy: Policy, tmp_path: Path, mode: str) -> None:
    tool = require_tool("dnsmasq")
    conf = tmp_path / "enforcer.conf"
    conf.write_text(export_policy(policy, "dnsmasq", mode=mode))
    proc = _run([tool, "--test", f"--conf-file={conf}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "syntax check OK" in proc.stdout + proc.stderr
    conf.write_text(conf.read_text() + "address=/x.example/1.2.3.999\n")
    assert _run([tool, "--test", f"--conf-file={conf}"]).returncode != 0


def _squid_conf(tmp: Path, export: str, acl: Path) -> Path:
    """squid.conf from the header lines the export prints (so the documented configuration is the tested one)."""
    acl.write_text(export)
    lines = []
    for line in export.splitlines():
        if not line.startswith("#   "):
            continue
        text = line[4:].split("   #", 1)[0].strip()
        if text.startswith(("acl ", "http_access ")):
            lines.append(text.replace("/etc/squid/enforcer-block.acl", str(acl)))
    assert any(x.startswith("acl enforcer_block dstdomain") for x in lines), export[:2000]
    lines += [
        "http_access allow localhost",
        "http_access deny all",
        f"http_port 127.0.0.1:{free_port()}",
        f"pid_filename {tmp}/squid.pid",
        f"cache_log {tmp}/cache.log",
        "access_log none",
        "cache deny all",
        f"coredump_dir {tmp}",
    ]
    conf = tmp / "squid.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def test_squid_parse(policy: Policy, tmp_path: Path) -> None:
    tool = require_tool("squid")
    export = export_policy(policy, "squid")
    conf = _squid_conf(tmp_path, export, tmp_path / "enforcer-block.acl")
    proc = _run([tool, "-k", "parse", "-f", str(conf)])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Processing: acl enforcer_block dstdomain" in out
    # No entry is redundant or conflicting (squid would warn about subdomains of listed .domains).
    assert "WARNING" not in out and "ERROR" not in out, out
    bad = tmp_path / "bad.conf"
    bad.write_text(conf.read_text() + "http_access deny no_such_acl\n")
    assert _run([tool, "-k", "parse", "-f", str(bad)]).returncode != 0


def test_nftables_check(policy: Policy, tmp_path: Path) -> None:
    tool = require_tool("nft")
    rules = tmp_path / "enforcer.nft"
    rules.write_text(export_policy(policy, "nftables"))
    proc = _run([tool, "-c", "-f", str(rules)])
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"nft -c needs CAP_NET_ADMIN here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    # Overlapping prefixes are what nft rejects in an interval set (the export subtracts and merges them).
    rules.write_text(rules.read_text() + "add element inet enforcer blocked_v4 { 0.0.0.0/1, 1.0.0.0/8 }\n")
    assert _run([tool, "-c", "-f", str(rules)]).returncode != 0


# -- behaviour: real resolvers answering from the exports -----------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """What 'not blocked' looks like: every A gets UPSTREAM_V4 (TTL 5, so the engines cache little)."""
    u = FakeUpstream(ttl=5)
    yield u
    u.close()


def _ask(port: int, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


@contextlib.contextmanager
def _serving(cmd: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"{cmd[0]} exited with {proc.returncode}: {out[-2000:]}")
            try:
                _ask(port, "probe.invalid", timeout=0.3)
            except Exception:
                return False
            return True

        eventually(answers, timeout=15, interval=0.1, message=f"{cmd[0]} did not answer on 127.0.0.1:{port}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _a(resp: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in resp.answer for rr in rrset if rrset.rdtype == dns.rdatatype.A]


def _assert_engine(port: int, policy: Policy, blocked_answer: str, names: list[str]) -> None:
    for name in names:
        m = policy.match_name(name)
        resp = _ask(port, name)
        if m is not None and m.blocked:
            if blocked_answer == "nxdomain":
                assert resp.rcode() == dns.rcode.NXDOMAIN, f"{name}: {resp}"
            else:
                assert resp.rcode() == dns.rcode.NOERROR and _a(resp) == ["0.0.0.0"], f"{name}: {resp}"
        else:
            assert resp.rcode() == dns.rcode.NOERROR and _a(resp) == [UPSTREAM_V4], f"{name} not blocked: {resp}"


def _names(policy: Policy) -> list[str]:
    # The fixture's documented cases, with case and trailing-dot variants.
    return [*BLOCKED, *NOT_BLOCKED, "WWW.Blocked.Example.", "Open.BLOCKED.example."]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["nxdomain", "null"])
def test_unbound_serves_the_snippet(tmp_path: Path, upstream: FakeUpstream, mode: str) -> None:
    tool = require_tool("unbound")
    policy = build(tmp_path / "policy")
    snippet = tmp_path / "enforcer.conf"
    snippet.write_text(export_policy(policy, "unbound", mode=mode))
    port = free_port(host="127.0.0.1")
    conf = _unbound_conf(tmp_path, snippet, port=port, upstream=upstream.port)
    with _serving([tool, "-d", "-c", str(conf)], port):
        _assert_engine(port, policy, mode, _names(policy))
        if mode == "null":
            # Exact host: only that name is sinkholed, the names below it resolve; other types get NODATA.
            assert _a(_ask(port, "below.exact.shared.example")) == [UPSTREAM_V4]
            txt = _ask(port, "exact.shared.example", "TXT")
            assert txt.rcode() == dns.rcode.NOERROR and not txt.answer
            assert [rr.to_text() for rrset in _ask(port, "blocked.example", "AAAA").answer for rr in rrset] == ["::"]
        else:
            # Documented limit: unbound has no NXDOMAIN for one name only.
            assert _ask(port, "below.exact.shared.example").rcode() == dns.rcode.NXDOMAIN
    assert "open.blocked.example" in upstream.names()
    assert "blocked.example" not in upstream.names()


@pytest.mark.timeout(60)
def test_unbound_serves_the_rpz_zone(tmp_path: Path, upstream: FakeUpstream) -> None:
    tool = require_tool("unbound")
    policy = build(tmp_path / "policy")
    zone = tmp_path / "rpz.zone"
    zone.write_text(export_policy(policy, "rpz", mode="nxdomain"))
    port = free_port(host="127.0.0.1")
    conf = _unbound_conf(tmp_path, zone, port=port, upstream=upstream.port, rpz=zone)
    with _serving([tool, "-d", "-c", str(conf)], port):
        _assert_engine(port, policy, "nxdomain", _names(policy))
        # RPZ can express an exact host: the name below it is not blocked.
        assert _a(_ask(port, "below.exact.shared.example")) == [UPSTREAM_V4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["nxdomain", "null"])
def test_bind_serves_the_rpz_zone(tmp_path: Path, upstream: FakeUpstream, mode: str) -> None:
    """BIND, the reference RPZ implementation: exact vs wildcard triggers and passthru exceptions as the matcher."""
    tool = require_tool("named")
    policy = build(tmp_path / "policy")
    zone = tmp_path / "rpz.zone"
    zone.write_text(export_policy(policy, "rpz", mode=mode))
    port = free_port(host="127.0.0.1")
    conf = tmp_path / "named.conf"
    conf.write_text(
        "options {\n"
        f'  directory "{tmp_path}";\n'
        f'  pid-file "{tmp_path}/named.pid";\n'
        f"  listen-on port {port} {{ 127.0.0.1; }};\n"
        "  listen-on-v6 { none; };\n"
        "  recursion yes;\n"
        "  allow-query { 127.0.0.1; };\n"
        f"  forwarders {{ 127.0.0.1 port {upstream.port}; }};\n"
        "  forward only;\n"
        "  dnssec-validation no;\n"
        '  response-policy { zone "rpz.enforcer."; } qname-wait-recurse no;\n'
        "};\n"
        'zone "rpz.enforcer." { type primary; file "rpz.zone"; };\n'
        "controls { };\n"
    )
    with _serving([tool, "-g", "-c", str(conf), "-n", "1"], port):
        # In null mode '_' names are skipped (check-names), as the export's header says.
        names = _names(policy) if mode == "nxdomain" else [n for n in _names(policy) if "_" not in n]
        _assert_engine(port, policy, mode, names)
        assert _a(_ask(port, "below.exact.shared.example")) == [UPSTREAM_V4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["nxdomain", "null"])
def test_dnsmasq_serves_the_export(tmp_path: Path, upstream: FakeUpstream, mode: str) -> None:
    tool = require_tool("dnsmasq")
    policy = build(tmp_path / "policy")
    conf = tmp_path / "enforcer.conf"
    conf.write_text(export_policy(policy, "dnsmasq", mode=mode))
    port = free_port(host="127.0.0.1")
    cmd = [
        tool, "-k", f"--conf-file={conf}", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
        "--no-resolv", "--no-hosts", f"--server=127.0.0.1#{upstream.port}", f"--pid-file={tmp_path}/dnsmasq.pid",
        "--cache-size=0", "--log-facility=-", "--user=root",
    ]  # fmt: skip
    with _serving(cmd, port):
        _assert_engine(port, policy, mode, _names(policy))


def test_shipped_exports_are_bounded_and_name_the_policy() -> None:
    """Every format of the shipped policy has the header and no line a target would choke on."""
    policy = shipped()
    for fmt in ("rpz", "hosts", "domains", "dnsmasq", "unbound", "adblock", "squid", "nftables"):
        text = export_policy(policy, fmt)
        head = "\n".join(text.splitlines()[:4])
        assert policy.fingerprint in head and "generated: " in head, fmt
        assert "\t" not in text or fmt == "nftables"
    assert BLOCKLISTS.is_dir()
