"""Real Unbound and real BIND as RPZ secondaries of enforcer's feed, with nothing but loopback.

Each engine transfers the zone from the feed, forwards every other name to a local fake upstream (TEST-NET answers,
TTL 0 so nothing is cached), and must give the same verdict as enforcer for every domain case of the shared match
table. After a blocklist edit the feed bumps its serial and sends NOTIFY; the engine must serve the new verdict within
10 s (IXFR). Real hostnames never leave the machine: the engines' only upstream is the fake one on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from enforcer.policy import load_policy
from enforcer.policy.reloader import PolicyHolder
from enforcer.rpz.feed import RpzFeed
from enforcer.rpz.server import FeedServer
from tests.conftest import BLOCKLISTS, DATA, free_port, require_tool
from tests.rpz.fake_upstream import FakeUpstream

ZONE = "rpz.enforcer."
pytestmark = pytest.mark.e2e


def _domain_cases() -> list[dict]:
    cases = yaml.safe_load((DATA / "match_cases.yaml").read_text())
    return [c for c in cases if c["kind"] == "domain"]


async def _query(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return await asyncio.to_thread(dns.query.udp, q, "127.0.0.1", timeout=3, port=port)


async def _wait_for(port: int, name: str, rcode: dns.rcode.Rcode, timeout: float) -> float:
    """Seconds until ``name`` gets ``rcode`` from the engine; fails after ``timeout``."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        try:
            last = (await _query(port, name)).rcode()
            if last == rcode:
                return time.monotonic() - start
        except Exception as exc:  # engine still starting
            last = exc
        await asyncio.sleep(0.2)
    pytest.fail(f"{name}: expected {dns.rcode.to_text(rcode)} within {timeout} s, last answer {last!r}")


@pytest.fixture
async def feed_env(tmp_path: Path) -> AsyncIterator[dict]:
    bl = tmp_path / "blocklists"
    shutil.copytree(BLOCKLISTS, bl)
    engine_port = free_port()
    feed = RpzFeed(ZONE, notify=[("127.0.0.1", engine_port)])
    loop = asyncio.get_running_loop()

    def on_change(policy: object) -> None:  # runs in the reload thread
        if feed.update(policy):  # type: ignore[arg-type]
            loop.call_soon_threadsafe(feed.schedule_notify)

    holder = PolicyHolder(bl, on_change=on_change)
    feed.update(holder.policy)
    feed_port = free_port()
    server = FeedServer(feed)
    await server.start("127.0.0.1", feed_port)
    upstream = FakeUpstream()
    up_port = await upstream.start()
    watcher = asyncio.create_task(holder.watch(interval=0.3, settle=0.1))
    try:
        yield {
            "bl": bl,
            "feed": feed,
            "feed_port": feed_port,
            "engine_port": engine_port,
            "up_port": up_port,
            "upstream": upstream,
            "tmp": tmp_path,
        }
    finally:
        watcher.cancel()
        await server.close()
        upstream.close()


async def _start(argv: list[str], env: dict) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    env["proc"] = proc
    return proc


async def _check_verdicts_and_follow_edit(env: dict) -> None:
    port = env["engine_port"]
    # The zone arrived when a blocked name is answered NXDOMAIN.
    await _wait_for(port, "weixin.qq.com", dns.rcode.NXDOMAIN, 20)
    env["upstream"].seen.clear()  # queries sent while the zone was still loading do not count
    policy = load_policy(env["bl"])
    mismatches = []
    for case in _domain_cases():
        name = case["query"]
        r = await _query(port, name)
        got = "block" if r.rcode() == dns.rcode.NXDOMAIN else ("pass" if r.rcode() == dns.rcode.NOERROR else r.rcode())
        match = policy.match_name(name)
        want = "block" if match is not None and match.blocked else "pass"
        if got != want:
            mismatches.append(f"{name}: engine {got}, enforcer {want}")
    assert not mismatches, "\n".join(mismatches)
    assert "weixin.qq.com." not in env["upstream"].seen, "a blocked name reached the upstream"
    assert "qq.com." in env["upstream"].seen, "allowed names are forwarded"

    # An edit: the feed reloads, bumps the serial, NOTIFYs; the engine follows by IXFR.
    assert (await _query(port, "newly-banned.example")).rcode() == dns.rcode.NOERROR
    wechat = env["bl"] / "wechat.yaml"
    wechat.write_text(
        wechat.read_text().replace("block:\n", "block:\n  - domain: newly-banned.example\n    category: web\n", 1)
    )
    took = await _wait_for(port, "sub.newly-banned.example", dns.rcode.NXDOMAIN, 10)
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
    print("UNBOUND-OUT", out[-3000:])
    assert "rpz" in out.lower() or proc.returncode is not None


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
    except BaseException:
        proc.terminate()
        print(proc.communicate(timeout=15)[0].decode(errors="replace")[-4000:])
        raise
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=15)
