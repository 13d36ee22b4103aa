"""Unit checks of the resolver's hand-written parts against their reference implementations (dnslib, HitEvent)."""

from __future__ import annotations

import json
import random

import dnslib
import pytest
from dnshelpers import BLOCKLISTS

from enforcer.dns import wire
from enforcer.dns.cache import Cache, cache_key
from enforcer.dns.observe import DnsHitEvent
from enforcer.dns.upstream import parse_upstream
from enforcer.policy import load_policy


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policy([BLOCKLISTS])


def test_fast_event_json_equals_hitevent(policy) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(5)
    rule = policy.match_key("weixin.qq.com")
    cidr = next(r for r in policy.rules if r.kind == "cidr")
    for i in range(500):
        for addr in (("127.0.0.1", 5353), ("::1", 7, 0, 0)):
            for qname in ('we"ird\\.weixin.qq.com', "a.weixin.qq.com", "é\x01.x"):
                r = rule if i % 2 else cidr
                fast_ev = DnsHitEvent(policy, r, "m", "dns-block", i % 3 == 0, i % 3 == 1, addr, qname, 65)
                fast_ev._lazy = (*fast_ev._lazy[:9], rng.uniform(1.7e9, 1.8e9), *fast_ev._lazy[10:])
                reference = DnsHitEvent(policy, r, "m", "dns-block", True, False, None, "x", 1)
                reference._lazy = fast_ev._lazy
                assert json.loads(fast_ev.to_json()) == reference.to_ecs()  # to_ecs is HitEvent's own
    # Reading a field builds the full HitEvent.
    ev = DnsHitEvent(policy, rule, "weixin.qq.com", "dns-block", True, False, ("10.0.0.1", 1), "weixin.qq.com", 1)
    assert ev.rule_id == rule.id and ev.source_ip == "10.0.0.1" and ev.dns_question_type == "A"


@pytest.mark.parametrize("name", ["weixin.qq.com", "A.b.C", "x", "", "a" * 63 + ".com"])
@pytest.mark.parametrize("edns", [None, 1232, 4096])
def test_parse_query_matches_dnslib(name: str, edns: int | None) -> None:
    for _ in range(2):  # the second parse comes from the memo
        q = dnslib.DNSRecord(dnslib.DNSHeader(id=7, rd=1), q=dnslib.DNSQuestion(name or ".", dnslib.QTYPE.HTTPS))
        if edns:
            q.add_ar(dnslib.EDNS0(udp_len=edns, flags="do"))
        data = bytes(q.pack())
        parsed = wire.parse_query(data)
        assert parsed is not None
        assert parsed.key == name.lower()
        assert (parsed.qtype, parsed.qclass) == (65, 1)
        # The size is kept at most MAX_UDP_SIZE: the most that is ever sent over UDP, whatever the client offers.
        assert parsed.edns == (min(edns, wire.MAX_UDP_SIZE) if edns else 0) and parsed.do == bool(edns)
        assert data[12 : parsed.qend] == wire.encode_name(name) + b"\x00\x41\x00\x01"


def test_cache_ttl_and_bounds() -> None:
    cache = Cache(max_entries=3, max_bytes=10_000)
    keys = []
    for i in range(5):
        q = dnslib.DNSRecord.question(f"n{i}.example")
        data = bytes(q.pack())
        reply = q.reply()
        reply.add_answer(dnslib.RR(f"n{i}.example", rdata=dnslib.A("192.0.2.1"), ttl=100 + i))
        parsed = wire.parse_query(data)
        assert parsed is not None
        key = cache_key(parsed, data)
        keys.append(key)
        assert cache.store(key, bytes(reply.pack()))
    assert len(cache) == 3 and cache.lookup(keys[0]) is None and cache.lookup(keys[4]) is not None
    big = Cache(max_entries=100, max_bytes=1000)
    assert not big.store(("x", 1, 1, 0), bytes(dnslib.DNSRecord.question("x").reply().pack()))  # no SOA: not kept


@pytest.mark.parametrize(
    ("text", "kind", "port"),
    [
        ("1.1.1.1", "udp", 53),
        ("[::1]:5353", "udp", 5353),
        ("tcp://9.9.9.9:853", "tcp", 853),
        ("https://dns.example/dns-query", "doh", 443),
    ],
)
def test_parse_upstream(text: str, kind: str, port: int) -> None:
    spec = parse_upstream(text)
    assert (spec.kind, spec.port) == (kind, port)


@pytest.mark.parametrize("text", ["dns.google", "1.1.1.1:99999", "tcp://", "https://"])
def test_parse_upstream_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid upstream"):
        parse_upstream(text)


def _query(name: str, qtype: str = "A", qid: int = 0x4242) -> bytes:
    return bytes(
        dnslib.DNSRecord(
            dnslib.DNSHeader(id=qid, rd=1), q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype))
        ).pack()
    )


def test_answer_mismatch_accepts_the_answer_in_any_case_and_nothing_else() -> None:
    sent = _query("Weixin.QQ.com")
    reply = bytearray(sent)
    reply[2] |= 0x80
    assert wire.answer_mismatch(sent, bytes(reply)) is None
    mixed = bytes(reply).replace(b"Weixin", b"wEIXIN").replace(b"QQ", b"qq")  # 0x20-randomised by the upstream
    assert wire.answer_mismatch(sent, mixed) is None
    # HTTPS is type 65 (0x41 = "A"): folding the whole question would take type 97 for it.
    https, type97 = _query("x.example", "HTTPS"), bytearray(_query("x.example", "HTTPS"))
    type97[-3] = 97
    type97[2] |= 0x80
    assert wire.answer_mismatch(https, bytes(type97)) == "question differs"
    other = bytearray(_query("weixin.qq.org"))
    other[2] |= 0x80
    assert wire.answer_mismatch(sent, bytes(other)) == "question differs"
    assert wire.answer_mismatch(sent, sent) == "not a response (QR=0)"
    assert wire.answer_mismatch(sent, b"\x00\x00" + bytes(reply[2:])) == "id differs"
    assert wire.answer_mismatch(sent, bytes(reply[:4]) + bytes(8)) == "not exactly one question"


def test_read_name_is_strict_about_pointers() -> None:
    base = b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00"
    name = b"\x06weixin\x02qq\x03com\x00"
    wire_ = base + name + b"\x04edge\xc0\x0c" + b"\xc0\x1b"  # a pointer chain: edge.weixin.qq.com, then a pointer to it
    assert wire.read_name(wire_, 12 + len(name)) == "edge.weixin.qq.com"
    assert wire.read_name(wire_, 12 + len(name) + 7) == "edge.weixin.qq.com"
    for bad, at in (
        (base + b"\xc0\x0c", 12),  # points at itself
        (base + b"\xc0\x0e\x00", 12),  # points forward
        (base + name + b"\xc0\x02", 12 + len(name)),  # points into the header
    ):
        with pytest.raises(wire.WireError):
            wire.read_name(bad, at)
    chain = bytearray(base + name)
    last = 12
    for _ in range(wire.MAX_POINTER_HOPS + 1):
        here = len(chain)
        chain += bytes([0xC0 | (last >> 8), last & 0xFF])
        last = here
    with pytest.raises(wire.WireError, match="too long"):
        wire.read_name(bytes(chain), last)
    assert wire.read_name(bytes(chain), last - 2) == "weixin.qq.com"  # exactly MAX_POINTER_HOPS hops: still read


def test_strip_ecs_keeps_every_other_option() -> None:
    ecs = dnslib.EDNSOption(8, b"\x00\x01\x18\x00\xc6\x33\x64")
    cookie = dnslib.EDNSOption(10, b"\x01" * 8)
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=7, rd=1), q=dnslib.DNSQuestion("a.example"))
    q.add_ar(dnslib.EDNS0(udp_len=1232, opts=[cookie, ecs, cookie]))
    data = bytes(q.pack())
    parsed = wire.parse_query(data)
    assert parsed is not None
    stripped = wire.strip_ecs(data, parsed)
    opts = [(o.code, bytes(o.data)) for r in dnslib.DNSRecord.parse(stripped).ar for o in r.rdata]
    assert opts == [(10, b"\x01" * 8), (10, b"\x01" * 8)]
    assert wire.parse_query(stripped) is not None
    plain = bytes(dnslib.DNSRecord.question("a.example").pack())
    assert wire.strip_ecs(plain, wire.parse_query(plain)) is plain  # type: ignore[arg-type]


def test_cache_clamps_ttls_top_bit_first() -> None:
    cache = Cache(10, min_ttl=5, max_ttl=100)
    q = dnslib.DNSRecord.question("t.example")
    r = q.reply()
    for ttl in (0x8000_0001, 1, 50, 1000):
        r.add_answer(dnslib.RR("t.example", rdata=dnslib.A("192.0.2.1"), ttl=ttl & 0x7FFF_FFFF))
    packed = bytearray(r.pack())
    walked = wire.walk_records(bytes(packed))
    packed[walked.records[0].ttl_at] |= 0x80  # dnslib refuses to pack a TTL >= 2**31
    clamped = cache.clamp(bytes(packed))
    assert [rec.ttl for rec in wire.walk_records(clamped).records] == [5, 5, 50, 100]
    untouched = bytes(dnslib.DNSRecord.question("u.example").reply().pack())
    assert cache.clamp(untouched) is untouched
