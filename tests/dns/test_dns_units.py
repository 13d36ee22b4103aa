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
                fast_ev._lazy = (*fast_ev._lazy[:9], rng.uniform(1.7e9, 1.8e9), fast_ev._lazy[10])
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
        assert parsed.edns == (edns or 0) and parsed.do == bool(edns)
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
    with pytest.raises(ValueError):
        parse_upstream(text)
