"""Upstream behaviour through the running resolver: TCP retry on TC, tcp://, timeout -> SERVFAIL, failover, DoH."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from pathlib import Path

from aiohttp import web
from dnshelpers import BLOCKLISTS, DnsProcess, addresses, free_port, rcode
from fakeupstream import FakeUpstream

from tests.certs import self_signed


def start(tmp: Path, *upstreams: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> DnsProcess:
    args = [a for u in upstreams for a in ("--upstream", u)]
    return DnsProcess(tmp, *args, "--blocklist", str(BLOCKLISTS), *extra, env=env)


def test_udp_truncated_retried_over_tcp(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    up = FakeUpstream(truncate_udp=True)
    fakes.append(up)
    proc = start(tmp_path, up.address)
    try:
        msg = proc.query("tc.example", "A")
        assert addresses(msg) == ["192.0.2.53"]
        assert [(a.proto, a.name) for a in up.asked] == [("udp", "tc.example"), ("tcp", "tc.example")]
    finally:
        assert proc.stop() == 0


def test_tcp_upstream(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    up = FakeUpstream()
    fakes.append(up)
    proc = start(tmp_path, f"tcp://{up.address}")
    try:
        assert addresses(proc.query("viatcp.example", "A")) == ["192.0.2.53"]
        assert addresses(proc.query("viatcp2.example", "AAAA")) == ["2001:db8::53"]
        assert {a.proto for a in up.asked} == {"tcp"}
    finally:
        assert proc.stop() == 0


# Timing bounds below are relative to the configured --timeout, with a wide margin for a loaded 2-core machine; the
# timeouts are large enough that the behaviour a bound rules out would take clearly longer than the bound.
LOAD_MARGIN = 1.5  # seconds a loaded machine may add to a local exchange


def test_timeout_gives_servfail_within_timeout(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    up = FakeUpstream(silent=True)
    fakes.append(up)
    timeout = 3.0
    proc = start(tmp_path, up.address, extra=("--timeout", str(timeout)))
    try:
        t0 = time.monotonic()
        msg = proc.query("slow.example", "A", timeout=timeout + 10)
        elapsed = time.monotonic() - t0
        assert rcode(msg) == "SERVFAIL"
        # It waited for the upstream (not an instant SERVFAIL), and answered once the timeout ran out.
        assert timeout - 0.1 <= elapsed < timeout + LOAD_MARGIN, elapsed
        assert proc.metric("enforcer_dns_upstream_errors_total", upstream=up.address) >= 1
        assert proc.metric("enforcer_dns_queries_total", outcome="servfail") >= 1
        # Blocked names are still answered at once while the upstream is down: well before the upstream timeout
        # (had it been forwarded it would have waited the whole timeout, then answered SERVFAIL).
        t0 = time.monotonic()
        assert addresses(proc.query("weixin.qq.com", "A", timeout=timeout + 10)) == ["0.0.0.0"]
        assert time.monotonic() - t0 < timeout / 2
    finally:
        assert proc.stop() == 0


def test_failover_and_health(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    dead = FakeUpstream(silent=True)
    good = FakeUpstream()
    fakes.extend([dead, good])
    timeout = 4.0
    proc = start(tmp_path, dead.address, good.address, extra=("--timeout", str(timeout)))
    try:
        # The first query tries the dead upstream for its share of the timeout (timeout / 2 with two upstreams), then
        # the good one within the same overall timeout. Waiting the dead one's full timeout first would take longer
        # than the bound (and leave no time for the good one: SERVFAIL).
        t0 = time.monotonic()
        assert addresses(proc.query("failover1.example", "A", timeout=timeout + 10)) == ["192.0.2.53"]
        assert time.monotonic() - t0 < timeout * 0.75
        assert "failover1.example" in dead.names()
        # The dead upstream is now marked down: the next query goes to the good one at once, well before the dead
        # one's share of the timeout (timeout / 2) could have run out.
        t0 = time.monotonic()
        assert addresses(proc.query("failover2.example", "A", timeout=timeout + 10)) == ["192.0.2.53"]
        assert time.monotonic() - t0 < timeout / 2 - 0.5
        assert "failover2.example" not in dead.names()
        assert proc.metric("enforcer_dns_upstream_healthy", upstream=dead.address) == 0
        assert proc.metric("enforcer_dns_upstream_healthy", upstream=good.address) == 1
        assert proc.metric("enforcer_dns_upstream_errors_total", upstream=dead.address) >= 1
    finally:
        assert proc.stop() == 0


def test_failover_on_refused_port(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    good = FakeUpstream()
    fakes.append(good)
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: ICMP port unreachable -> immediate failover
    timeout = 4.0
    proc = start(tmp_path, closed, good.address, extra=("--timeout", str(timeout)))
    try:
        # Without the immediate failover the closed port would hold the query for its share (timeout / 2).
        t0 = time.monotonic()
        assert addresses(proc.query("refused-port.example", "A", timeout=timeout + 10)) == ["192.0.2.53"]
        assert time.monotonic() - t0 < timeout / 2 - 0.5
    finally:
        assert proc.stop() == 0


# -- DNS over HTTPS ---------------------------------------------------------------------------------------------
def _self_signed(tmp: Path) -> tuple[Path, Path]:
    return self_signed(tmp, "127.0.0.1", prefix="doh", days=1)


class DohServer:
    """A local RFC 8484 server (aiohttp, TLS) in a thread, answering through a FakeUpstream's answer()."""

    def __init__(self, fake: FakeUpstream, cert: Path, key: Path) -> None:
        self.fake = fake
        self.port = free_port()
        self.requests: list[tuple[str, str, int]] = []
        self.peers: set[int] = set()
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.content_type, int.from_bytes(body[:2], "big")))
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername")[1])
        reply = self.fake.answer(body, "doh")
        return web.Response(body=reply, content_type="application/dns-message")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/dns-query", self.handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl)
        self.loop.run_until_complete(site.start())
        self.ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_doh_upstream(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    fake = FakeUpstream(silent=True)  # its sockets are not used; only its answer() logic
    fake.silent = False
    fakes.append(fake)
    cert, key = _self_signed(tmp_path)
    server = DohServer(fake, cert, key)
    # The resolver verifies the server certificate; this test trusts its self-signed CA through SSL_CERT_FILE.
    proc = start(tmp_path, f"https://127.0.0.1:{server.port}/dns-query", env={"SSL_CERT_FILE": str(cert)})
    try:
        for i in range(3):
            assert addresses(proc.query(f"doh{i}.example", "A")) == ["192.0.2.53"]
        assert addresses(proc.query("weixin.qq.com", "A")) == ["0.0.0.0"]
        assert [a.name for a in fake.asked] == ["doh0.example", "doh1.example", "doh2.example"]
        assert all(m == "POST" and ct == "application/dns-message" and qid == 0 for m, ct, qid in server.requests)
        assert len(server.peers) == 1  # one reused session and connection
    finally:
        assert proc.stop() == 0
        server.close()
