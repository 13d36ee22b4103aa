"""The resolver's UDP listener over real sockets, on both paths: batched (enforcer/dns/udpbatch.py, recvmmsg/sendmmsg)
and the DatagramProtocol fallback (server.py ``UdpServer``). The real chain (chainharness.py: shipped lists, cache,
forwarder to the local fake upstream) answers; the listener runs on its own loop in a thread, and the clients are
plain sockets. Names that are blocked are only ever forwarded to the fake upstream on 127.0.0.1 if the code failed.

Each test runs on both paths and expects the same replies: a batch of mixed datagrams (blocked, forwarded, cached,
truncated, FORMERR, dropped garbage) queued while the loop is held, so that one recvmmsg drains many of them; IPv6;
a datagram of 65,000 bytes; a client that leaves before its forwarded answer comes back.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from chainharness import ChainHarness
from dnshelpers import BLOCKLISTS
from fakeupstream import FakeUpstream

from enforcer.dns import udpbatch
from enforcer.dns.server import Listener

PATHS = [pytest.param(True, id="batched"), pytest.param(False, id="protocol")]


class Served:
    """A ``Listener`` on ``host``:0 over the harness's chain, its loop running in a thread."""

    def __init__(self, harness: ChainHarness, host: str, batched: bool) -> None:
        self.harness = harness
        self.loop = harness.loop
        self.listener = Listener(host, 0, harness.handle, harness.observer.outcome, batched=batched)
        self.loop.run_until_complete(self.listener.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.address = (host, self.listener.port)

    def hold(self, seconds: float) -> None:
        """Keep the loop busy for ``seconds`` (datagrams sent meanwhile queue up in the socket: one batch)."""
        held = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (held.set(), time.sleep(seconds)))
        assert held.wait(5)

    def close(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop)
        fut.result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def served(request: pytest.FixtureRequest, upstream: FakeUpstream) -> Iterator[Any]:
    made: list[tuple[ChainHarness, Served]] = []

    def make(batched: bool, host: str = "127.0.0.1", allow: tuple[str, ...] | None = None) -> Served:
        extra = {"allow": allow} if allow is not None else {}
        harness = ChainHarness(upstream.address, BLOCKLISTS, timeout=2.0, **extra)
        s = Served(harness, host, batched)
        made.append((harness, s))
        if batched:
            assert isinstance(s.listener.udp, udpbatch.BatchedUdpServer)
        return s

    yield make
    for harness, s in made:
        s.close()
        harness.close()


def query(name: str, qtype: str, qid: int, edns: bool = False) -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=0 if edns else False, payload=1232)
    q.id = qid
    return q.to_wire()


def collect(sock: socket.socket, count: int, timeout: float = 10.0) -> dict[int, bytes]:
    """Replies by DNS id until ``count`` arrived (or the time is up: the caller's assertion says what is missing)."""
    replies: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < count and time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            break
        replies[struct.unpack("!H", data[:2])[0]] = data
    return replies


def client(host: str = "127.0.0.1") -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)


@pytest.mark.skipif(not udpbatch.available(), reason="recvmmsg/sendmmsg: Linux only")
def test_batched_is_the_default_on_linux() -> None:
    assert Listener("127.0.0.1", 0, lambda *a: None, lambda o: None).batched


@pytest.mark.parametrize("batched", PATHS)
def test_a_mixed_batch_gets_every_answer_right(served: Any, batched: bool) -> None:
    s = served(batched)
    blocked = [query("weixin.qq.com", "A", 100 + i) for i in range(20)]
    blocked += [query("dlm.kaspersky-labs.com", "AAAA", 120 + i) for i in range(10)]
    forwarded = [query(f"host{i}.batch.example", "A", 200 + i) for i in range(8)]
    formerr = struct.pack("!HHHHHH", 300, 0x0100, 1, 0, 0, 0) + b"\x07example"  # a question cut short
    garbage = b"\x01\x02\x03"  # not even a header: dropped, no reply
    big = query("big.example", "TXT", 400)  # 12 x 200-byte TXT: truncated to 512 bytes without EDNS
    with client() as c:
        s.hold(0.3)
        for data in [*blocked, formerr, garbage, *forwarded, big]:
            c.sendto(data, s.address)
        replies = collect(c, len(blocked) + len(forwarded) + 2)
        assert sorted(replies) == sorted([*range(100, 130), *range(200, 208), 300, 400])
        for qid in range(100, 130):
            msg = dns.message.from_wire(replies[qid])
            assert msg.rcode() == dns.rcode.NOERROR and msg.answer, msg
            assert msg.answer[0][0].address in ("0.0.0.0", "::")
        for qid in range(200, 208):
            msg = dns.message.from_wire(replies[qid])
            assert [rr.address for rr in msg.answer[0]] == ["192.0.2.53"]
        assert replies[300][3] & 0x0F == dns.rcode.FORMERR
        assert dns.message.from_wire(replies[400]).flags & dns.flags.TC and len(replies[400]) <= 512

        # Again, now from the cache (and the hot answers), in one batch as well.
        s.hold(0.3)
        for data in [*forwarded, big]:
            c.sendto(data, s.address)
        again = collect(c, len(forwarded) + 1)
        assert sorted(again) == [*range(200, 208), 400]
        assert all(again[qid][2:] == replies[qid][2:] for qid in again)  # same answers (TTLs: a fake clock)
    outcomes = s.harness.outcomes()
    assert outcomes["blocked"] == 30 and outcomes["forwarded"] == 9 and outcomes["cached"] == 9
    assert outcomes["formerr"] == 1 and outcomes["dropped"] == 1 and outcomes["truncated"] == 2
    if batched:
        udp = s.listener.udp
        assert udp.received == 30 + 2 + 8 + 1 + 9  # blocked, formerr + garbage, forwarded, big; then 9 again
        assert udp.batches < udp.received / 4, (udp.batches, udp.received)  # many datagrams per recvmmsg


@pytest.mark.parametrize("batched", PATHS)
def test_ipv6_clients_get_their_answers(served: Any, batched: bool) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s = served(batched, "::1")
    with client("::1") as c:
        s.hold(0.2)
        for i in range(12):
            c.sendto(query("weixin.qq.com" if i % 2 else f"v6-{i}.example", "AAAA", 500 + i), s.address)
        replies = collect(c, 12)
    assert sorted(replies) == list(range(500, 512))
    for qid, data in replies.items():
        msg = dns.message.from_wire(data)
        want = "::" if qid % 2 else "2001:db8::53"
        assert [rr.address for rr in msg.answer[0]] == [want], msg
    assert s.harness.outcomes()["blocked"] == 6


@pytest.mark.parametrize("batched", PATHS)
def test_a_datagram_of_65000_bytes_is_read_whole(served: Any, batched: bool) -> None:
    # A query padded with an EDNS option to 65,000 bytes: read whole (no truncation by a buffer), parsed, answered;
    # the next datagram of the same batch is answered too.
    s = served(batched)
    q = dns.message.make_query("weixin.qq.com", "A", use_edns=0, payload=4096)
    q.id = 600
    small = q.to_wire()
    padding = 65_000 - len(small) - 4
    q.use_edns(0, payload=4096, options=[dns.edns.GenericOption(65001, b"p" * padding)])
    huge = q.to_wire(max_size=65_535)
    assert len(huge) == 65_000
    with client() as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.hold(0.2)
        c.sendto(huge, s.address)
        c.sendto(query("weixin.qq.com", "A", 601), s.address)
        replies = collect(c, 2)
    assert sorted(replies) == [600, 601]
    msg = dns.message.from_wire(replies[600])
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer[0][0].address == "0.0.0.0"


@pytest.mark.parametrize("batched", PATHS)
def test_a_client_that_leaves_before_its_answer_does_not_stop_the_listener(served: Any, batched: bool) -> None:
    s = served(batched)
    gone = client()
    s.hold(0.2)
    for i in range(5):
        gone.sendto(query(f"leaver{i}.example", "A", 700 + i), s.address)
        gone.sendto(query("weixin.qq.com", "A", 710 + i), s.address)
    gone.close()  # the answers (blocked at once, forwarded later) go to a closed port
    time.sleep(0.5)
    with client() as c:
        for i in range(5):
            c.sendto(query(f"stayer{i}.example", "A", 800 + i), s.address)
        replies = collect(c, 5)
    assert sorted(replies) == list(range(800, 805))
    outcomes = s.harness.outcomes()
    assert outcomes["forwarded"] == 10 and outcomes["blocked"] == 5 and outcomes.get("dropped", 0) == 0


@pytest.mark.parametrize("batched", PATHS)
def test_a_client_outside_allow_is_refused_in_a_batch(served: Any, batched: bool) -> None:
    s = served(batched, allow=("10.0.0.0/8",))  # 127.0.0.1 is not allowed
    with client() as c:
        s.hold(0.2)
        for i in range(4):
            c.sendto(query("weixin.qq.com", "A", 900 + i), s.address)
        replies = collect(c, 4)
    assert sorted(replies) == list(range(900, 904))
    assert all(r[3] & 0x0F == dns.rcode.REFUSED for r in replies.values())
    assert s.harness.outcomes()["refused"] == 4


def test_raw_addresses_decode_as_the_socket_module_gives_them() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.sendto(b"x", a.getsockname())
        _, addr = a.recvfrom(10)
        raw = socket.AF_INET.to_bytes(2, "little") + addr[1].to_bytes(2, "big") + socket.inet_aton(addr[0]) + bytes(8)
        assert udpbatch.decode_address(raw) == addr
    raw6 = (
        socket.AF_INET6.to_bytes(2, "little") + (5353).to_bytes(2, "big") + (7).to_bytes(4, "big")
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + bytes(4)
    )  # fmt: skip
    assert udpbatch.decode_address(raw6) == ("2001:db8::1", 5353, 7, 0)
