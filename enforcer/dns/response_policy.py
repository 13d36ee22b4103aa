"""Response policy: decide a forwarded answer by what it contains, not only by the name asked.

``check(policy, reply, qkey, names, nat64)`` -> ``(Rule, matched)`` of the first blocking rule, or None:
- every owner name and CNAME/DNAME target in the answer section (a CNAME chain that reaches a blocked name, e.g. a
  CDN alias disguising a banned host) is looked up with ``policy.match_key``;
- every A/AAAA address in the answer section is looked up in the blocked ``cidr`` rules (``policy.match_ip``), an
  IPv6 address also by the IPv4 address it embeds (IPv4-mapped, NAT64 64:ff9b::/96 and the ``--nat64-prefix``
  prefixes, 6to4 2002::/16: the extraction lives in policy/addresses.py);
- HTTPS/SVCB records (RFC 9460): the TargetName and the ``ipv4hint``/``ipv6hint`` addresses (judged the same way),
  which clients connect to directly without asking for A/AAAA.
Allow rules win here as in the sinkhole: a name that matches an allow rule does not block the answer.

Fails closed: anything in the answer section that cannot be read (an owner or target name with a forward or looping
compression pointer or a long pointer chain, an A/AAAA of the wrong size, a cut SVCB parameter) raises
``wire.WireError``, as does a reply that does not parse strictly (``wire.walk_records``): a client's parser may read
what ours could not, so the chain answers SERVFAIL instead of serving it unchecked. The caller (chain.py) replaces a
blocked answer with the sinkhole answer for the original question.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

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


def _ip_rule(policy: Policy, packed: bytes, nat64: Sequence[ipaddress.IPv6Network]) -> tuple[Rule, str] | None:
    addr = ipaddress.ip_address(packed)
    m = policy.match_ip(addr, nat64)
    if m is not None and m.rule.action == "block":
        return m.rule, str(addr)
    return None


def check(
    policy: Policy, reply: bytes, qkey: str, names: bool = True, nat64: Sequence[ipaddress.IPv6Network] = ()
) -> tuple[Rule, str] | None:
    """The rule that blocks this forwarded reply and what matched (a name or an address), or None.

    Raises ``wire.WireError`` for a reply whose answer section cannot be read in full: it cannot be checked, so it
    is not served.

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
        # Read even when names are not judged: an owner no parser of ours can read is a malformed answer.
        owner = wire.read_name(reply, rec.name_at)
        if names and owner not in seen:
            seen.add(owner)
            hit = _name_rule(policy, owner)
            if hit:
                return hit
        if rtype in (wire.QTYPE_CNAME, 39):  # CNAME, DNAME
            target = wire.read_name(reply, rec.rdata_at)
            if wire.skip_name(reply, rec.rdata_at) != rec.rdata_at + rec.rdlen:
                raise wire.WireError("alias target does not fill its record")
            if names:
                hit = _name_rule(policy, target)
                if hit:
                    return hit
        elif rtype == wire.QTYPE_A or rtype == wire.QTYPE_AAAA:
            size = 4 if rtype == wire.QTYPE_A else 16
            if rec.rdlen != size:
                raise wire.WireError(f"{'A' if size == 4 else 'AAAA'} record of the wrong size")
            if has_cidrs:
                hit = _ip_rule(policy, reply[rec.rdata_at : rec.rdata_at + size], nat64)
                if hit:
                    return hit
        elif rtype in (wire.QTYPE_HTTPS, wire.QTYPE_SVCB):
            hit = _svcb(policy, reply, rec.rdata_at, rec.rdlen, has_cidrs, names, nat64)
            if hit:
                return hit
    return None


def _svcb(
    policy: Policy,
    reply: bytes,
    at: int,
    rdlen: int,
    has_cidrs: bool,
    names: bool,
    nat64: Sequence[ipaddress.IPv6Network],
) -> tuple[Rule, str] | None:
    end = at + rdlen
    if rdlen < 3:
        raise wire.WireError("SVCB record too short")
    target = wire.read_name(reply, at + 2)  # SVCB targets are never compressed, but read_name copes either way
    if target and names:
        hit = _name_rule(policy, target)
        if hit:
            return hit
    if not has_cidrs:
        return None
    i = wire.skip_name(reply, at + 2)
    while i < end:
        if i + 4 > end:
            raise wire.WireError("SVCB parameter cut short")
        key, length = struct.unpack_from("!HH", reply, i)
        i += 4
        if i + length > end:
            raise wire.WireError("SVCB parameter runs past its record")
        value = reply[i : i + length]
        i += length
        size = 4 if key == SVC_IPV4HINT else 16 if key == SVC_IPV6HINT else 0
        if size:
            if length % size:
                raise wire.WireError("SVCB address hint of the wrong size")
            for j in range(0, length, size):
                hit = _ip_rule(policy, value[j : j + size], nat64)
                if hit:
                    return hit
    return None
