"""Response policy (enforcer/dns/response_policy.py) as a unit: what in an answer blocks it (alias names, addresses
in blocked ranges, IPv4 embedded in IPv6, HTTPS/SVCB targets and hints), what an allow exception skips, and the
answers it refuses to judge (``WireError``: the chain answers SERVFAIL)."""

from __future__ import annotations

import ipaddress

import dns.message
import dns.rrset
import pytest
from dnshelpers import BLOCKLISTS

from enforcer.dns import response_policy, wire
from enforcer.policy import load_policy
from enforcer.policy.matcher import Policy


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy([BLOCKLISTS])


def answer(qname: str, *records: str, qtype: str = "A") -> bytes:
    msg = dns.message.make_response(dns.message.make_query(qname, qtype))
    for text in records:
        msg.answer.append(dns.rrset.from_text(*text.split(" ", 4)))
    return msg.to_wire()


def verdict(policy: Policy, reply: bytes, qkey: str = "q.example", **kw: object) -> tuple[str, str] | None:
    hit = response_policy.check(policy, reply, qkey, **kw)  # type: ignore[arg-type]
    return None if hit is None else (hit[0].id, hit[1])


BLOCKING = [  # (records, qtype, expected (rule id, what matched))
    (["q.example. 60 IN CNAME edge.long.weixin.qq.com.", "edge.long.weixin.qq.com. 60 IN A 192.0.2.1"], "A",
     ("wechat:domain:weixin.qq.com", "edge.long.weixin.qq.com")),
    (["q.example. 60 IN A 77.74.177.5"], "A", ("kaspersky:cidr:77.74.176.0/21", "77.74.177.5")),
    (["q.example. 60 IN AAAA ::ffff:77.74.177.5"], "AAAA", ("kaspersky:cidr:77.74.176.0/21", "::ffff:4d4a:b105")),
    (["q.example. 60 IN AAAA 64:ff9b::4d4a:b105"], "AAAA", ("kaspersky:cidr:77.74.176.0/21", "64:ff9b::4d4a:b105")),
    (["q.example. 60 IN HTTPS 1 . alpn=h2 ipv4hint=77.74.177.5"], "HTTPS",
     ("kaspersky:cidr:77.74.176.0/21", "77.74.177.5")),
    (["q.example. 60 IN HTTPS 1 svc.weixin.qq.com. alpn=h2"], "HTTPS", ("wechat:domain:weixin.qq.com",
                                                                        "svc.weixin.qq.com")),
]  # fmt: skip


@pytest.mark.parametrize(("records", "qtype", "expected"), BLOCKING)
def test_what_blocks_an_answer(policy: Policy, records: list[str], qtype: str, expected: tuple[str, str]) -> None:
    assert verdict(policy, answer("q.example", *records, qtype=qtype)) == expected


def test_clean_answers_and_the_question_itself_pass(policy: Policy) -> None:
    assert verdict(policy, answer("q.example", "q.example. 60 IN A 192.0.2.1")) is None
    assert verdict(policy, answer("q.example", "q.example. 60 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.9",
                                  qtype="HTTPS")) is None  # fmt: skip
    # The question was already decided by the sinkhole: its own name is not looked up again.
    assert verdict(policy, answer("weixin.qq.com", "weixin.qq.com. 60 IN A 192.0.2.1"), "weixin.qq.com") is None


def test_allow_exception_skips_names_not_addresses(policy: Policy) -> None:
    alias = answer("work.weixin.qq.com", "work.weixin.qq.com. 60 IN CNAME edge.long.weixin.qq.com.",
                   "edge.long.weixin.qq.com. 60 IN A 192.0.2.1")  # fmt: skip
    assert verdict(policy, alias, "work.weixin.qq.com", names=False) is None
    banned = answer("work.weixin.qq.com", "work.weixin.qq.com. 60 IN A 77.74.177.5")
    assert verdict(policy, banned, "work.weixin.qq.com", names=False) == ("kaspersky:cidr:77.74.176.0/21",
                                                                           "77.74.177.5")  # fmt: skip


def test_nat64_prefix_is_judged_only_when_configured(policy: Policy) -> None:
    reply = answer("q.example", "q.example. 60 IN AAAA 2001:db8:64::4d4a:b105", qtype="AAAA")
    assert verdict(policy, reply) is None
    prefix = (ipaddress.IPv6Network("2001:db8:64::/96"),)
    assert verdict(policy, reply, nat64=prefix) == ("kaspersky:cidr:77.74.176.0/21", "2001:db8:64::4d4a:b105")


def test_unreadable_answers_raise(policy: Policy) -> None:
    good = answer("q.example", "q.example. 60 IN A 192.0.2.1")
    short_a = bytearray(good)
    short_a[-6:-4] = b"\x00\x03"  # RDLENGTH 3 for an A record
    forward = bytearray(good)
    at = good.index(b"\xc0\x0c", 12)  # the owner's pointer, pointed forward at itself
    forward[at : at + 2] = bytes((0xC0, at))
    for bad in (bytes(short_a[:-1]), bytes(forward), good[:-2]):
        with pytest.raises(wire.WireError):
            response_policy.check(policy, bad, "q.example")
