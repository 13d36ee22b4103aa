"""The sinkhole (enforcer/dns/sinkhole.py) as a unit: every mode and query type against dnspython's reading of the
reply, the SOA owner at the blocked suffix, the Extended DNS Error, and the bounded template store."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnshelpers import BLOCKLISTS

from enforcer.dns import sinkhole as sinkhole_mod
from enforcer.dns import wire
from enforcer.dns.sinkhole import Sinkhole, parse_mode
from enforcer.policy import load_policy
from enforcer.policy.matcher import Policy


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy([BLOCKLISTS])


def blocked(sink: Sinkhole, policy: Policy, name: str, qtype: str, *, edns: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0 if edns else False)
    data = query.to_wire()
    q = wire.parse_query(data)
    assert q is not None
    rule = policy.match_key(q.key)
    assert rule is not None and rule.action == "block"
    reply = dns.message.from_wire(sink.answer(data, q, rule))
    assert reply.id == query.id and reply.question == query.question
    return reply


EXPECTED = {  # mode -> qtype -> (rcode, answer addresses or None for no answer)
    "null": {"A": ("NOERROR", ["0.0.0.0"]), "AAAA": ("NOERROR", ["::"]), "HTTPS": ("NOERROR", None)},
    "nxdomain": {"A": ("NXDOMAIN", None), "AAAA": ("NXDOMAIN", None), "TXT": ("NXDOMAIN", None)},
    "nodata": {"A": ("NOERROR", None), "MX": ("NOERROR", None)},
    "refused": {"A": ("REFUSED", None)},
    "ip:192.0.2.66": {"A": ("NOERROR", ["192.0.2.66"]), "AAAA": ("NOERROR", None)},
    "ip:192.0.2.66,2001:db8::66": {"AAAA": ("NOERROR", ["2001:db8::66"]), "ANY": ("NOERROR", None)},
}


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_every_mode_and_type(policy: Policy, mode: str) -> None:
    sink = Sinkhole(parse_mode(mode), ttl=77)
    for qtype, (code, addrs) in EXPECTED[mode].items():
        for edns in (False, True):
            reply = blocked(sink, policy, "Long.WEIXIN.qq.com", qtype, edns=edns)
            assert dns.rcode.to_text(reply.rcode()) == code, (mode, qtype)
            got = [rd.to_text() for rrset in reply.answer for rd in rrset]
            assert got == (addrs or []), (mode, qtype)
            assert all(rrset.ttl == 77 for rrset in reply.answer + reply.authority)
            if code != "REFUSED" and not addrs:  # negative: an SOA whose owner is the blocked domain (RFC 2308)
                assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]
                assert reply.authority[0].name.to_text() == "WEIXIN.qq.com."  # in the client's own case
                assert reply.authority[0][0].minimum == 77
            ede = [o for o in reply.options if isinstance(o, dns.edns.EDEOption)]
            if edns:
                assert [(o.code, o.text) for o in ede] == [(15, "blocked by policy rule wechat:domain:weixin.qq.com "
                                                              "(wechat)")]  # fmt: skip
            else:
                assert reply.edns < 0 and not ede


def test_templates_are_reused_and_bounded(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Sinkhole(parse_mode("nxdomain"))
    first = blocked(sink, policy, "a.weixin.qq.com", "A")
    assert sink._count == 1
    again = blocked(sink, policy, "b.weixin.qq.com", "A")  # same rule and variant: the same template
    assert sink._count == 1 and again.authority[0].name.to_text() == "weixin.qq.com."
    assert first.authority[0].name == again.authority[0].name
    monkeypatch.setattr(sinkhole_mod, "MAX_TEMPLATES", 2)
    blocked(sink, policy, "a.weixin.qq.com", "AAAA")
    assert sink._count == 2
    # The store is full: the next rule's first template starts a fresh store (a rule has at most 12 variants).
    blocked(sink, policy, "kaspersky.com", "A")
    assert sink._count == 1 and list(sink._templates) == ["kaspersky:domain:kaspersky.com"]
    sink.clear()
    assert sink._count == 0
