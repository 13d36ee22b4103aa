"""Fuzz the packet path: the in-process chain (bytes in -> bytes or None out, never an exception).

The chain is the real one, driven by the harness every in-process resolver test uses (chainharness.py: shipped
policy, sinkhole, cache, forwarder to a local fake upstream); inputs are raw
bytes, mutated valid queries and structured queries with random header fields, names, types and EDNS options.
``test_fuzz_packet_path`` runs 600 fixed (derandomized) inputs by default, ~10 s; ``test_fuzz_packet_path_long``
(slow) 100,000 random ones.
The real process surviving random datagrams is checked in test_dns_hostile.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import dnslib
import pytest
from chainharness import ChainHarness
from dnshelpers import BLOCKLISTS
from fakeupstream import FakeUpstream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class Harness(ChainHarness):
    def __init__(self, upstream: FakeUpstream) -> None:
        super().__init__(upstream.address, BLOCKLISTS)


@pytest.fixture(scope="module")
def harness(upstream: FakeUpstream) -> Iterator[Harness]:
    h = Harness(upstream)
    yield h
    h.close()


NAMES = ["weixin.qq.com", "Long.Weixin.QQ.com", "kaspersky.com", "work.weixin.qq.com", "example.org", "big.example",
         "cdn-alias.example", "kav-hint.example", "gone.example", ""]  # fmt: skip
labels = st.one_of(
    st.sampled_from(["www", "weixin", "qq", "com", "kaspersky", "a" * 63, "x.y", "\x00", "é"]),
    st.binary(min_size=1, max_size=63).map(lambda b: b.decode("latin-1")),
)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    flags = draw(st.integers(0, 0xFFFF))
    counts = draw(st.tuples(*[st.integers(0, 3)] * 4))
    if draw(st.booleans()):
        flags &= 0x07FF  # mostly queries
        counts = (1, 0, 0, draw(st.integers(0, 1)))
    name_labels = draw(st.lists(labels, max_size=6)) if draw(st.booleans()) else draw(st.sampled_from(NAMES)).split(".")
    wire = b""
    for lab in name_labels:
        raw = lab.encode("latin-1", "replace")[:63]
        if raw:
            wire += bytes([len(raw)]) + raw
    wire += b"\x00"
    qtype = draw(st.sampled_from([1, 28, 65, 64, 15, 16, 255, 5, 6, 41, 0, 65535]))
    qclass = draw(st.sampled_from([1, 3, 255, 254, 0]))
    packet = (
        struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, *counts) + wire + struct.pack("!HH", qtype, qclass)
    )
    if counts[3]:
        opts = draw(st.binary(max_size=40))
        packet += b"\x00\x00\x29" + struct.pack("!HBBHH", draw(st.integers(0, 0xFFFF)), 0, draw(st.integers(0, 2)),
                                               draw(st.integers(0, 0xFFFF)), len(opts)) + opts  # fmt: skip
    if draw(st.booleans()):
        packet += draw(st.binary(max_size=20))
    return packet


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(NAMES[:-1]))
    qtype = getattr(dnslib.QTYPE, draw(st.sampled_from(["A", "AAAA", "HTTPS", "TXT"])))
    # dnslib's DNSRecord.question() draws a random id; hypothesis wants every choice drawn from it.
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=draw(st.integers(0, 0xFFFF)), rd=1), q=dnslib.DNSQuestion(name, qtype))
    if draw(st.booleans()):
        q.add_ar(dnslib.EDNS0(udp_len=draw(st.integers(0, 65535))))
    data = bytearray(q.pack())
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


packets = st.one_of(st.binary(max_size=600), structured(), mutated())


def check(harness: Harness, data: bytes, tcp: bool) -> None:
    out = harness.run(data, tcp)
    assert out is None or type(out) is bytes
    if out is not None:
        assert len(out) >= 12 and out[:2] == data[:2] and out[2] & 0x80  # a reply to this query's id
        if not tcp:
            assert len(out) <= 65535


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=packets, tcp=st.booleans())
def test_fuzz_packet_path(harness: Harness, data: bytes, tcp: bool) -> None:
    check(harness, data, tcp)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@settings(max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=packets, tcp=st.booleans())
def test_fuzz_packet_path_long(harness: Harness, data: bytes, tcp: bool) -> None:
    check(harness, data, tcp)


# Crafted inputs, one or more per outcome, so the check below does not depend on what the fuzz run happened to draw.
REACH_EVERY_OUTCOME: list[tuple[bytes, bool]] = [
    (bytes(dnslib.DNSRecord.question("weixin.qq.com", "A").pack()), False),  # blocked
    (bytes(dnslib.DNSRecord.question("dlm.kaspersky-labs.com", "AAAA").pack()), True),  # blocked, over TCP
    (struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x3fabc", False),  # label past the end: formerr
    (b"\x12\x34\x01", False),  # shorter than a header: dropped
    (bytes(dnslib.DNSRecord.question("example.org", "A").pack()), False),  # forwarded to the fake upstream
    (bytes(dnslib.DNSRecord.question("example.org", "A").pack()), True),  # the same again: cached
]


def test_fuzz_reached_every_outcome(upstream: FakeUpstream) -> None:
    """The harness is not vacuous: the chain answered, blocked, forwarded and rejected through it.

    Self-contained: its own harness and a fixed list of inputs, so it holds when run alone or in any order.
    """
    h = Harness(upstream)
    try:
        for data, tcp in REACH_EVERY_OUTCOME:
            check(h, data, tcp)
        seen = {labels[0] for labels, n in h.observer.queries.values.items() if n}
    finally:
        h.close()
    assert {"blocked", "formerr", "dropped"} <= seen, seen
    assert seen & {"forwarded", "cached"}, seen
