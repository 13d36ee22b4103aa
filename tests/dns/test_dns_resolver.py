"""The running resolver (shipped blocklists, mode null) against a fake upstream: the shared match table, query
types, case, response policy, TCP, truncation, events and metrics (the cache on a fake clock: test_chain.py)."""

from __future__ import annotations

import socket
import struct

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml
from dnshelpers import BLOCKLISTS, ROOT, DnsProcess, addresses, ede_texts, rcode, wire_name
from fakeupstream import FakeUpstream

from enforcer.policy import load_policy

CASES = [c for c in yaml.safe_load((ROOT / "tests/data/match_cases.yaml").read_text()) if c["kind"] == "domain"]


@pytest.mark.parametrize("case", CASES, ids=[f"{c['verdict']}:{c['query']}" for c in CASES])
def test_match_table(resolver: DnsProcess, upstream: FakeUpstream, case: dict) -> None:
    msg = resolver.query(case["query"], "A", edns=0)
    name = wire_name(case["query"])
    if case["verdict"] == "block":
        assert rcode(msg) == "NOERROR"
        assert addresses(msg) == ["0.0.0.0"], msg
        assert msg.answer[0].ttl == 60
        texts = ede_texts(msg)
        assert texts and texts[0][0] == 15
        if case.get("rule"):
            assert case["rule"] in texts[0][1]
        assert name not in upstream.names()
    else:
        assert rcode(msg) == "NOERROR"
        assert addresses(msg) == ["192.0.2.53"], msg
        assert not ede_texts(msg)
        assert name in upstream.names()


@pytest.mark.parametrize("qtype", ["A", "AAAA", "HTTPS", "SVCB", "MX", "TXT", "ANY", "NS", "CNAME"])
def test_blocked_for_every_type_and_never_upstream(resolver: DnsProcess, upstream: FakeUpstream, qtype: str) -> None:
    for name in ("dns.weixin.qq.com", "MMbiz.Weixin.QQ.com.", "dnl-01.geo.kaspersky.com"):
        msg = resolver.query(name, qtype, edns=0)
        assert rcode(msg) == "NOERROR"
        if qtype == "A":
            assert addresses(msg) == ["0.0.0.0"]
        elif qtype == "AAAA":
            assert addresses(msg) == ["::"]
        else:
            assert msg.answer == []
            assert [rr.rdtype for rr in msg.authority] == [dns.rdatatype.SOA]  # NODATA with SOA
        assert ede_texts(msg)
    policy = load_policy([BLOCKLISTS])
    leaked = [n for n in upstream.names() if (m := policy.match_name(n)) is not None and m.blocked]
    assert not leaked


def test_no_ede_without_edns(resolver: DnsProcess) -> None:
    msg = resolver.query("weixin.qq.com", "A", edns=False)
    assert addresses(msg) == ["0.0.0.0"]
    assert msg.edns < 0 and not msg.options


def test_case_preserved_in_answer(resolver: DnsProcess) -> None:
    # 0x20 randomised case: the reply echoes the question as sent, for blocked and for cached names.
    for name in ("wEiXiN.qQ.CoM.", "ExAmPlE.oRg.", "ExAmPlE.oRg."):
        q = dns.message.make_query(name, "A")
        r = dns.query.udp(q, "127.0.0.1", port=resolver.port, timeout=3)
        assert r.question[0].name.to_text() == name  # dns.name compares case-insensitively; to_text does not


def test_allow_rule_forwarded(resolver: DnsProcess, upstream: FakeUpstream) -> None:
    msg = resolver.query("work.weixin.qq.com", "A")
    assert addresses(msg) == ["192.0.2.53"]
    assert "work.weixin.qq.com" in upstream.names()


@pytest.mark.parametrize(
    ("name", "qtype", "rule"),
    [
        ("cdn-alias.example", "A", "wechat:domain:weixin.qq.com"),  # CNAME chain reaches a blocked name
        ("kav-ip.example", "A", "kaspersky:cidr:185.85.12.0/24"),  # A in a blocked CIDR
        ("kav-hint.example", "HTTPS", "kaspersky:cidr:185.85.14.0/23"),  # HTTPS ipv4hint in a blocked CIDR
        ("wx-target.example", "HTTPS", "wechat:domain:weixin.qq.com"),  # HTTPS target name blocked
    ],
)
def test_response_policy(resolver: DnsProcess, name: str, qtype: str, rule: str) -> None:
    for _ in range(2):  # the second answer comes from the cache and is blocked as well
        msg = resolver.query(name, qtype, edns=0)
        assert rcode(msg) == "NOERROR"
        if qtype == "A":
            assert addresses(msg) == ["0.0.0.0"]
        else:
            assert msg.answer == [] and msg.authority  # NODATA + SOA
        assert msg.question[0].name.to_text(omit_final_dot=True) == name
        assert any(rule in t for _, t in ede_texts(msg)), ede_texts(msg)
    events = resolver.events_for(name, 2)
    assert len(events) == 2
    assert {e["event"]["action"] for e in events} == {"dns-response-block"}
    assert {e["rule"]["id"] for e in events} == {rule}


def test_response_policy_leaves_clean_answers(resolver: DnsProcess) -> None:
    msg = resolver.query("clean-hint.example", "HTTPS")
    assert msg.answer and not ede_texts(msg)
    # An alias to the allowed WeCom host is not blocked by name.
    msg = resolver.query("work-alias.example", "A")
    assert addresses(msg) == ["192.0.2.81"]


def test_tcp_several_queries_per_connection(resolver: DnsProcess) -> None:
    names = ["weixin.qq.com", "tcp1.example", "kaspersky.com", "tcp2.example"]
    with socket.create_connection(("127.0.0.1", resolver.port), timeout=5) as s:
        for i, name in enumerate(names):
            wire = dns.message.make_query(name, "A")
            wire.id = 1000 + i
            data = wire.to_wire()
            s.sendall(struct.pack("!H", len(data)) + data)
            (length,) = struct.unpack("!H", _recv(s, 2))
            reply = dns.message.from_wire(_recv(s, length))
            assert reply.id == 1000 + i
            expected = "0.0.0.0" if name in ("weixin.qq.com", "kaspersky.com") else "192.0.2.53"
            assert addresses(reply) == [expected]


def test_truncation_then_tcp(resolver: DnsProcess) -> None:
    msg = resolver.query("big.example", "TXT", edns=False)  # 512 bytes without EDNS
    assert msg.flags & dns.flags.TC and not msg.answer
    msg = resolver.query("big.example", "TXT", edns=0, payload=1232)
    assert msg.flags & dns.flags.TC
    # Never more than 1,232 bytes over UDP, whatever the client offers (like Unbound's and BIND's max-udp-size): a
    # 41-byte query offering 65,535 reflected a 12,810-byte answer at whoever its source address named.
    for payload in (4096, 65535):
        msg = resolver.query("big.example", "TXT", edns=0, payload=payload)
        assert msg.flags & dns.flags.TC and not msg.answer, payload
    msg = resolver.query("big.example", "TXT", tcp=True)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 12


def test_events_content(resolver: DnsProcess) -> None:
    resolver.query("evtest.sgshort.wechat.com", "AAAA")
    hits = resolver.events_for("evtest.sgshort.wechat.com")
    assert len(hits) == 1
    e = hits[0]
    assert e["event"]["action"] == "dns-block"
    assert e["event"]["dataset"] == "enforcer.dns"
    assert e["event"]["type"] == ["denied"] and e["event"]["kind"] == "alert"
    assert e["observer"]["type"] == "dns"
    assert e["dns"]["question"]["type"] == "AAAA"
    assert e["source"]["ip"] == "127.0.0.1" and isinstance(e["source"]["port"], int)
    assert e["rule"]["id"] == "wechat:domain:wechat.com" and e["rule"]["ruleset"] == "wechat"
    assert e["rule"]["reference"].startswith("blocklists/wechat.yaml:") or "wechat.yaml:" in e["rule"]["reference"]
    assert e["rule"]["category"] and e["rule"]["version"]
    assert e["@timestamp"].endswith("Z")


def test_metrics(resolver: DnsProcess) -> None:
    resolver.query("weixin.qq.com", "A")
    for _ in range(2):  # forwarded, then cached (whatever other tests of this module ran before)
        resolver.query("metrics-cached.example", "A")
    m = resolver.metrics()
    blocked = sum(v for (n, labels), v in m.items() if n == "enforcer_blocked_total" and ("component", "dns") in labels)
    assert blocked >= 1
    assert m[("enforcer_dns_queries_total", (("outcome", "blocked"),))] >= 1
    assert m[("enforcer_dns_queries_total", (("outcome", "forwarded"),))] >= 1
    assert m[("enforcer_dns_queries_total", (("outcome", "cached"),))] >= 1
    assert m[("enforcer_dns_query_duration_seconds_count", ())] >= 3
    assert ("enforcer_dns_upstream_errors_total", (("upstream", resolver_upstream(resolver)),)) in m
    assert m[("enforcer_policy_reloads_total", (("result", "success"),))] >= 1
    assert any(n == "enforcer_policy_rules" and v > 0 for (n, _), v in m.items())
    assert m[("enforcer_events_written_total", ())] >= 1
    assert ("enforcer_events_dropped_total", ()) in m


def resolver_upstream(resolver: DnsProcess) -> str:
    args = resolver.proc.args
    return args[args.index("--upstream") + 1]


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf
