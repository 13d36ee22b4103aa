"""DoT's own TLS (enforcer/dns/encrypted.py ``DotProtocol``: an ``ssl.SSLObject`` over the plain TCP transport, one
idle sweep per listener) against a real ``enforcer dns``: a query split into one-byte TLS records and several
pipelined in one record are answered, a client that is not TLS is counted as a failed handshake, an idle
connection is closed by the sweep and counted, a busy one is not, a close_notify ends the connection cleanly, and
a handshake dribbled a byte at a time still times out.
Names are sinkholed or answered by the local fake upstream."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest
from dnshelpers import addresses
from encryptedhelpers import EncResolver, dot_recv, dot_send, tls_connect
from fakeupstream import FakeUpstream

from tests.conftest import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CONNECTIONS = "enforcer_dns_encrypted_connections_total"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[EncResolver]:
    r = EncResolver(tmp_path_factory.mktemp("dot-tls"), upstream.address, "--tls-idle-timeout", "1.5")
    yield r
    r.stop()


def _frame(name: str, qid: int) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    wire = q.to_wire()
    return struct.pack("!H", len(wire)) + wire


def test_one_byte_records_and_pipelined_queries(resolver: EncResolver) -> None:
    with tls_connect(resolver.dot_port, None, None) as sock:
        for byte in _frame("weixin.qq.com", 7):  # each byte its own TLS record: the frame is reassembled
            sock.sendall(bytes([byte]))
        reply = dot_recv(sock)
        assert reply.id == 7 and addresses(reply) == ["0.0.0.0"]
        sock.sendall(b"".join(_frame("weixin.qq.com", qid) for qid in range(100, 120)))  # 20 in one record
        assert sorted(dot_recv(sock).id for _ in range(20)) == list(range(100, 120))


def test_not_tls_is_a_failed_handshake(resolver: EncResolver) -> None:
    before = resolver.metric(CONNECTIONS, transport="dot", outcome="handshake_failed")
    with socket.create_connection(("127.0.0.1", resolver.dot_port), timeout=5) as raw:
        raw.sendall(_frame("weixin.qq.com", 1))  # plain DNS over TCP on the DoT port
        received = b""
        while chunk := raw.recv(4096):  # an alert at most, then the server closes (a timeout here fails the test)
            received += chunk
        assert len(received) < 100  # no DNS answer, at most a TLS alert record
    eventually(lambda: resolver.metric(CONNECTIONS, transport="dot", outcome="handshake_failed") == before + 1,
               timeout=5)  # fmt: skip
    assert resolver.alive()


def test_idle_connection_closed_by_the_sweep_busy_one_kept(resolver: EncResolver) -> None:
    before = resolver.metric(CONNECTIONS, transport="dot", outcome="idle_timeout")
    idle = tls_connect(resolver.dot_port, None, None, timeout=10)
    busy = tls_connect(resolver.dot_port, None, None, timeout=10)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3.5:  # the busy one asks every half second, longer than the timeout
            dot_send(busy, dns.message.make_query("weixin.qq.com", "A"))
            assert addresses(dot_recv(busy)) == ["0.0.0.0"]
            time.sleep(0.5)
        assert idle.recv(1) == b""  # closed by the server (1.5 s idle timeout, swept at most 0.375 s later)
        eventually(lambda: resolver.metric(CONNECTIONS, transport="dot", outcome="idle_timeout") >= before + 1,
                   timeout=5)  # fmt: skip
    finally:
        idle.close()
        busy.close()


def test_close_notify_ends_the_connection(resolver: EncResolver, tmp_path: Path) -> None:
    sock = tls_connect(resolver.dot_port, None, None)
    dot_send(sock, dns.message.make_query("weixin.qq.com", "A"))
    assert addresses(dot_recv(sock)) == ["0.0.0.0"]
    raw = sock.unwrap()  # sends close_notify and waits for the server's
    try:
        assert raw.recv(1) == b""
    finally:
        raw.close()
    assert resolver.alive()


def test_a_handshake_dribbled_byte_by_byte_still_times_out(tmp_path: Path, upstream: FakeUpstream) -> None:
    """The handshake timeout counts from the connection's start, not from the last byte (a slow-loris client)."""
    r = EncResolver(tmp_path, upstream.address, "--tls-handshake-timeout", "1")
    try:
        hello = _client_hello()
        with socket.create_connection(("127.0.0.1", r.dot_port), timeout=10) as raw:
            started = time.monotonic()
            closed_after = None
            for byte in hello:  # one byte every 0.2 s: the whole hello would take far longer than the timeout
                try:
                    raw.sendall(bytes([byte]))
                except OSError:
                    closed_after = time.monotonic() - started
                    break
                time.sleep(0.2)
                if time.monotonic() - started > 6:
                    break
            if closed_after is None:
                raw.settimeout(3)
                with contextlib.suppress(ConnectionResetError):
                    assert raw.recv(1) == b""
                closed_after = time.monotonic() - started
        assert closed_after < 4, closed_after  # 1 s timeout + at most a 0.25 s sweep, with room for a slow machine
        eventually(lambda: r.metric(CONNECTIONS, transport="dot", outcome="handshake_timeout") == 1, timeout=5)
    finally:
        r.stop()


def _client_hello() -> bytes:
    """A real TLS ClientHello (from Python's own client, over memory BIOs)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="dns.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()
