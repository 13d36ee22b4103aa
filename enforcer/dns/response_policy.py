"""Response policy: decide a forwarded answer by what it contains, not only by the name asked.

``check(policy, reply)`` -> ``(Rule, matched)`` of the first blocking rule, or None:
- every owner name and CNAME/DNAME target in the answer section (a CNAME chain that reaches a blocked name, e.g. a
  CDN alias disguising a banned host) is looked up with ``policy.match_key``;
- every A/AAAA address in the answer section is looked up in the blocked ``cidr`` rules (``policy.match_ip``);
- HTTPS/SVCB records (RFC 9460): the TargetName and the ``ipv4hint``/``ipv6hint`` addresses, which clients connect
  to directly without asking for A/AAAA.
Allow rules win here as in the sinkhole: a name that matches an allow rule does not block the answer.

The caller (chain.py) replaces a blocked answer with the sinkhole answer for the original question. A reply that does
not parse strictly (``wire.walk_records`` raises) cannot be inspected: the chain answers SERVFAIL instead.
"""

from __future__ import annotations

import ipaddress
import struct

from ..policy.matcher import Policy
from ..policy.model import Rule
from . import wire

SVC_IPV4HINT = 4
SVC_IPV6HINT = 6


def _name_rule(policy: Policy, key: str) -> tuple[Rule, str] | None:
    rule = policy.match_key(key)
    if rule is not None and rule.action == "block":
        return rule, key
    return None


def _ip_rule(policy: Policy, packed: bytes) -> tuple[Rule, str] | None:
    addr = ipaddress.ip_address(packed)
    m = policy.match_ip(addr)
    if m is not None and m.rule.action == "block":
        return m.rule, str(addr)
    return None


def check(policy: Policy, reply: bytes, qkey: str, names: bool = True) -> tuple[Rule, str] | None:
    """The rule that blocks this forwarded reply and what matched (a name or an address), or None.

    Raises ``wire.WireError`` for a reply that does not parse strictly: it cannot be checked, so it is not served.

    ``qkey`` (the question, already decided by the sinkhole) is not looked up again. ``names=False`` skips the
    name checks: the chain passes it when the question itself matched an allow rule (an explicit exception, such
    as WeCom, stays reachable even if its CDN alias sits under a blocked domain); addresses are still checked.
    """
    resp = wire.walk_records(reply)  # WireError propagates: the chain answers SERVFAIL, never the unchecked reply
    has_cidrs = bool(policy.cidrs)
    seen: set[str] = {qkey}
    for rec in resp.records:
        if rec.section != 0:
            continue
        rtype = rec.rtype
        try:
            owner = wire.read_name(reply, rec.name_at) if names else qkey
            if owner not in seen:
                seen.add(owner)
                hit = _name_rule(policy, owner)
                if hit:
                    return hit
            if rtype in (wire.QTYPE_CNAME, 39) and names:  # CNAME, DNAME
                target = wire.read_name(reply, rec.rdata_at)
                hit = _name_rule(policy, target)
                if hit:
                    return hit
            elif rtype == wire.QTYPE_A and rec.rdlen == 4 and has_cidrs:
                hit = _ip_rule(policy, reply[rec.rdata_at : rec.rdata_at + 4])
                if hit:
                    return hit
            elif rtype == wire.QTYPE_AAAA and rec.rdlen == 16 and has_cidrs:
                hit = _ip_rule(policy, reply[rec.rdata_at : rec.rdata_at + 16])
                if hit:
                    return hit
            elif rtype in (wire.QTYPE_HTTPS, wire.QTYPE_SVCB) and rec.rdlen >= 3:
                hit = _svcb(policy, reply, rec.rdata_at, rec.rdlen, has_cidrs, names)
                if hit:
                    return hit
        except (wire.WireError, ValueError, struct.error):
            continue  # one odd record does not hide the others
    return None


def _svcb(policy: Policy, reply: bytes, at: int, rdlen: int, has_cidrs: bool, names: bool) -> tuple[Rule, str] | None:
    end = at + rdlen
    target = wire.read_name(reply, at + 2)  # SVCB targets are never compressed, but read_name copes either way
    if target and names:
        hit = _name_rule(policy, target)
        if hit:
            return hit
    if not has_cidrs:
        return None
    i = wire.skip_name(reply, at + 2)
    while i + 4 <= end:
        key, length = struct.unpack_from("!HH", reply, i)
        i += 4
        value = reply[i : min(i + length, end)]
        i += length
        size = 4 if key == SVC_IPV4HINT else 16 if key == SVC_IPV6HINT else 0
        if size:
            for j in range(0, len(value) - size + 1, size):
                hit = _ip_rule(policy, value[j : j + size])
                if hit:
                    return hit
    return None
