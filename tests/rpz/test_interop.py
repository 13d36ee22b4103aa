"""Real Unbound and real BIND as RPZ secondaries of a real `enforcer dns --rpz-zone`, with nothing but loopback.

Each engine transfers the zone from the feed, forwards every other name to a local fake upstream (TEST-NET answers,
TTL 0 so nothing is cached), and must give the same verdict as enforcer for every domain case of the shared match
table. After a blocklist edit the feed bumps its serial and sends NOTIFY; the engine must serve the new verdict within
10 s (IXFR). Real hostnames never leave the machine: the engines' only upstream is the fake one on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from enforcer.policy import load_policy
from tests.conftest import BLOCKLISTS, DATA, free_port, require_tool
from tests.dns.dnshelpers import DnsProcess
from tests.dns.fakeupstream import FakeUpstream

ZONE = "rpz.enforcer."
pytestmark = pytest.mark.e2e


def _domain_cases() -> list[dict]:
    cases = yaml.safe_load((DATA / "match_cases.yaml").read_text())
    return [c for c in cases if c["kind"] == "domain"]


async def _query(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return await asyncio.to_thread(dns.query.udp, q, "127.0.0.1", timeout=3, port=port)


def _verdict(msg: dns.message.Message) -> str:
    """The resolver runs in its default mode (null): a blocked name is answered 0.0.0.0 by the engine."""
    addrs = [rr.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]
    if msg.rcode() == dns.rcode.NOERROR and addrs == ["0.0.0.0"]:
        return "block"
    if msg.rcode() == dns.rcode.NOERROR and addrs == ["192.0.2.53"]:
        return "pass"
    return f"unexpected {dns.rcode.to_text(msg.rcode())} {addrs}"


async def _wait_for(port: int, name: str, verdict: str, timeout: float) -> float:
    """Seconds until the engine gives ``verdict`` for ``name``; fails after ``timeout``."""
    start = time.monotonic()
    last: object = None
    while time.monotonic() - start < timeout:
        try:
            last = _verdict(await _query(port, name))
            if last == verdict:
                return time.monotonic() - start
        except Exception as exc:  # engine still starting
            last = exc
        await asyncio.sleep(0.2)
    pytest.fail(f"{name}: expected {verdict} within {timeout} s, last answer {last!r}")


@pytest.fixture
def feed_env(tmp_path: Path) -> Iterator[dict]:
    """A real `enforcer dns --rpz-zone` (the feed) whose NOTIFY goes to the engine's port, and the fake upstream."""
    bl = tmp_path / "blocklists"
    shutil.copytree(BLOCKLISTS, bl)
    engine_port = free_port()
    upstream = FakeUpstream(ttl=0)
    resolver = DnsProcess(
        tmp_path, "--blocklist", str(bl), "--upstream", upstream.address,
        "--rpz-zone", ZONE, "--notify", f"127.0.0.1:{engine_port}",
    )  # fmt: skip
    try:
        yield {
            "bl": bl,
            "feed_port": resolver.port,
            "engine_port": engine_port,
            "up_port": upstream.port,
            "upstream": upstream,
            "tmp": tmp_path,
            "resolver": resolver,
        }
    finally:
        resolver.stop()
        upstream.close()


async def _start(argv: list[str], env: dict) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    env["proc"] = proc
    return proc


async def _check_verdicts_and_follow_edit(env: dict) -> None:
    port = env["engine_port"]
    # The zone arrived when a blocked name is answered NXDOMAIN.
    await _wait_for(port, "weixin.qq.com", "block", 20)
    env["upstream"].clear()  # queries sent while the zone was still loading do not count
    policy = load_policy(env["bl"])
    mismatches = []
    for case in _domain_cases():
        name = case["query"]
        got = _verdict(await _query(port, name))
        match = policy.match_name(name)
        want = "block" if match is not None and match.blocked else "pass"
        if got != want:
            mismatches.append(f"{name}: engine {got}, enforcer {want}")
    assert not mismatches, "\n".join(mismatches)
    assert "weixin.qq.com" not in env["upstream"].names(), "a blocked name reached the upstream"
    assert "qq.com" in env["upstream"].names(), "allowed names are forwarded"

    # An edit: the feed reloads, bumps the serial, NOTIFYs; the engine follows by IXFR.
    assert _verdict(await _query(port, "newly-banned.example")) == "pass"
    wechat = env["bl"] / "wechat.yaml"
    wechat.write_text(
        wechat.read_text().replace("block:\n", "block:\n  - domain: newly-banned.example\n    category: web\n", 1)
    )
    took = await _wait_for(port, "sub.newly-banned.example", "block", 10)
    print(f"engine on port {port} served the edited policy {took:.1f} s after the file was written")
    assert took < 10


async def test_unbound_follows_the_feed(feed_env: dict) -> None:
    unbound = require_tool("unbound")
    tmp: Path = feed_env["tmp"]
    conf = tmp / "unbound.conf"
    conf.write_text(f"""
server:
  interface: 127.0.0.1
  port: {feed_env["engine_port"]}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{tmp}"
  pidfile: "{tmp}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 1
  do-ip6: no
  do-not-query-localhost: no
  module-config: "respip iterator"
  access-control: 127.0.0.0/8 allow
  cache-max-ttl: 0
  cache-max-negative-ttl: 0
remote-control:
  control-enable: no
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{feed_env["up_port"]}
rpz:
  name: "{ZONE}"
  primary: 127.0.0.1@{feed_env["feed_port"]}
  allow-notify: 127.0.0.1
  rpz-log: yes
  rpz-log-name: "enforcer"
""")
    check = subprocess.run([require_tool("unbound-checkconf"), str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = await _start([unbound, "-d", "-c", str(conf)], feed_env)
    try:
        await _check_verdicts_and_follow_edit(feed_env)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
    _fleet_hits_reach_the_report(out, "unbound", feed_env)


async def test_bind_follows_the_feed(feed_env: dict) -> None:
    named = require_tool("named")
    tmp: Path = feed_env["tmp"]
    conf = tmp / "named.conf"
    conf.write_text(f"""
options {{
  directory "{tmp}";
  pid-file "{tmp}/named.pid";
  listen-on port {feed_env["engine_port"]} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion yes;
  allow-query {{ 127.0.0.0/8; }};
  allow-recursion {{ 127.0.0.0/8; }};
  forwarders {{ 127.0.0.1 port {feed_env["up_port"]}; }};
  forward only;
  dnssec-validation no;
  max-cache-ttl 0;
  max-ncache-ttl 0;
  notify no;
  # Without qname-wait-recurse no, BIND resolves a name before applying the policy: blocked names would leak.
  # min-update-interval: BIND otherwise defers applying a new RPZ version for 60 s.
  response-policy {{ zone "{ZONE.rstrip(".")}" min-update-interval 1; }} qname-wait-recurse no;
}};
zone "{ZONE.rstrip(".")}" {{
  type secondary;
  primaries {{ 127.0.0.1 port {feed_env["feed_port"]}; }};
  file "rpz.db";
  allow-notify {{ 127.0.0.1; }};
}};
""")
    check = subprocess.run([require_tool("named-checkconf"), str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = await _start([named, "-g", "-c", str(conf), "-n", "1"], feed_env)
    try:
        await _check_verdicts_and_follow_edit(feed_env)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode(errors="replace")
    _fleet_hits_reach_the_report(out, "bind", feed_env)


def _fleet_hits_reach_the_report(log_text: str, engine: str, env: dict) -> None:
    """The engine's own RPZ hit log -> `enforcer rpz-log` -> `enforcer report`: the fleet's devices are visible.

    The expected count is taken from the log independently: lines where the engine says it rewrote a WeChat name.
    """
    log = env["tmp"] / f"{engine}.log"
    log.write_text(log_text)
    policy = load_policy(env["bl"])
    pattern = (
        re.compile(r"rpz: applied \[enforcer\] \S+ \S+ 127\.0\.0\.1@\d+ (\S+)\. ")
        if engine == "unbound"
        else re.compile(r"\): rpz QNAME \S+ rewrite ([^/]+)/")
    )
    expected = 0
    for line in log_text.splitlines():
        m = pattern.search(line)
        if m:
            match = policy.match_name(m.group(1))
            expected += match is not None and match.blocked and match.rule.app == "wechat"
    assert expected > 50, f"the engine logged only {expected} WeChat hits"
    events = env["tmp"] / f"{engine}-rpz.jsonl"
    run = [sys.executable, "-m", "enforcer"]
    conv = subprocess.run([*run, "rpz-log", "--engine", engine, "--events", str(events), "--blocklist", str(env["bl"]),
                           str(log)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert conv.returncode == 0, conv.stderr
    rep = subprocess.run([*run, "report", "--events", str(events), "--blocklist", str(env["bl"]), "--format", "json"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert rep.returncode == 0, rep.stderr
    rows = [c for c in json.loads(rep.stdout)["clients"] if c["app"] == "wechat"]
    assert len(rows) == 1 and rows[0]["client"] == "127.0.0.1", rows
    assert rows[0]["hits"] == expected  # every logged rewrite is one hit; attempts group them into bursts
    assert 1 <= rows[0]["attempts"] <= expected
