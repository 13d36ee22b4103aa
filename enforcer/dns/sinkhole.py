"""The blocked answer: what a blocked name gets, per ``--mode``, built from prebuilt wire templates.

- ``parse_mode(text)`` -> ``Mode``: ``nxdomain``, ``null`` (0.0.0.0 / ::), ``nodata``, ``refused``, ``ip:ADDR[,ADDR6]``.
- ``Sinkhole(mode, ttl).answer(data, q, rule)``: the reply bytes for query ``data`` (question ``q``) blocked by
  ``rule``, in the rule's own ``dns_action`` when it has one (a canary such as use-application-dns.net must be
  NXDOMAIN whatever ``--mode`` is: Firefox reads an A 0.0.0.0 as "keep using DoH"), else in ``mode``. A and AAAA
  (class IN) get the sinkhole address in ``null``/``ip:`` modes; every other type gets NODATA, so HTTPS/SVCB/MX/TXT/
  ANY never reveal anything. Negative answers (NXDOMAIN, NODATA) carry an SOA in the authority section (owner: the
  blocked domain when it is a suffix of the name, TTL and minimum = the block TTL, RFC 2308).
  When the client sent EDNS, an Extended DNS Error (RFC 8914, info-code 15 "Blocked") names the rule.

Templates: the reply is ``query id + header + the query's own question bytes + a tail`` where the tail (answer,
authority, OPT) depends only on (rule, type family, EDNS, RD) and is built once per rule and reused; building one
costs tens of microseconds, using one a few hundred nanoseconds. ``clear()`` after a policy reload. A rule's
``dns_action`` is read only when its templates are built, so it costs nothing per query. The answer depends only on
the packet after its id and the rule, so the chain memoises it whole with the packet's verdict (enforcer/dns/chain.py
``Blocked``): a device retrying a blocked name does not come here again.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..policy.model import DNS_ACTIONS, Rule
from ..policy.modes import parse_mode as parse_answer_mode
from . import wire
from .wire import Question

SOA_MNAME = wire.encode_name("sinkhole.enforcer.invalid")
SOA_RNAME = wire.encode_name("hostmaster.enforcer.invalid")
MAX_TEMPLATES = 50_000  # rules x variants; a 1M-name include feed shares one rule, so this is rarely reached


@dataclass(frozen=True, slots=True)
class Mode:
    name: str  # nxdomain | null | nodata | refused | ip
    ipv4: bytes | None = None  # packed address for A answers, None = NODATA
    ipv6: bytes | None = None

    def __str__(self) -> str:
        if self.name != "ip":
            return self.name
        addrs = [str(ipaddress.ip_address(a)) for a in (self.ipv4, self.ipv6) if a is not None]
        return "ip:" + ",".join(addrs)


def parse_mode(text: str) -> Mode:
    """``--mode`` value -> Mode; ValueError with the reason on a bad value.

    The syntax is the one the exports use (``enforcer.policy.modes.parse_mode``): one parser for every ``--mode``.
    """
    m = parse_answer_mode(text)
    if m.kind in ("null", "ip"):
        v4, v6 = m.addresses
        return Mode(
            m.kind,
            ipaddress.ip_address(v4).packed if v4 else None,
            ipaddress.ip_address(v6).packed if v6 else None,
        )
    return Mode(m.kind)


class Sinkhole:
    """Blocked answers for one mode and TTL."""

    def __init__(self, mode: Mode, ttl: int = 60) -> None:
        self.mode = mode
        self.ttl = ttl
        # The modes a rule's dns_action may ask for, parsed once.
        self._rule_modes = {action: parse_mode(action) for action in DNS_ACTIONS}
        # rule id -> variant code -> (header after the id, tail, SOA-owner pointer position in tail or -1)
        self._templates: dict[str, dict[int, tuple[bytes, bytes, int, int]]] = {}
        self._count = 0

    def clear(self) -> None:
        self._templates = {}
        self._count = 0

    def answer(self, data: bytes, q: Question, rule: Rule) -> bytes:
        """The blocked reply for ``data``: two dict look-ups and a few byte joins."""
        if q.qclass == wire.CLASS_IN and q.qtype in (wire.QTYPE_A, wire.QTYPE_AAAA):
            family = 1 if q.qtype == wire.QTYPE_A else 2
        else:
            family = 0
        code = family * 4 + (2 if q.edns else 0) + (data[2] & 0x01)
        variants = self._templates.get(rule.id)
        if variants is None:
            if self._count >= MAX_TEMPLATES:
                self.clear()
            variants = self._templates[rule.id] = {}
        tpl = variants.get(code)
        if tpl is None:
            tpl = variants[code] = self._build(family, bool(q.edns), data[2] & 0x01, rule)
            self._count += 1
        head, tail, ptr_at, suffix_len = tpl
        question = data[12 : q.qend]
        if ptr_at >= 0:
            # The SOA owner points into the question at the blocked suffix (the qname if it is not a suffix).
            key = q.key
            klen = len(key)
            off = 12
            # (A key with escaped dots does not map to wire offsets one to one: it keeps the qname.)
            if (
                0 < suffix_len < klen
                and key[klen - suffix_len - 1] == "."
                and key.endswith(rule.value)
                and "\\" not in key
            ):
                off = 12 + klen - suffix_len
            tail = tail[:ptr_at] + bytes((0xC0 | (off >> 8), off & 0xFF)) + tail[ptr_at + 2 :]
        return data[:2] + head + question + tail

    def mode_for(self, rule: Rule) -> Mode:
        """The answer mode of ``rule``: its ``dns_action``, else the resolver's ``--mode``."""
        return self._rule_modes[rule.dns_action] if rule.dns_action is not None else self.mode

    def _build(self, family: int, edns: bool, rd: int, rule: Rule) -> tuple[bytes, bytes, int, int]:
        mode = self.mode_for(rule)
        ttl = self.ttl
        answers = b""
        an = 0
        rcode = wire.RCODE_NOERROR
        if mode.name == "nxdomain":
            rcode = wire.RCODE_NXDOMAIN
        elif mode.name == "refused":
            rcode = wire.RCODE_REFUSED
        elif mode.name in ("null", "ip"):
            addr = mode.ipv4 if family == 1 else mode.ipv6 if family == 2 else None
            if addr is not None:
                rtype = wire.QTYPE_A if family == 1 else wire.QTYPE_AAAA
                answers = b"\xc0\x0c" + struct.pack("!HHIH", rtype, wire.CLASS_IN, ttl, len(addr)) + addr
                an = 1
        authority = b""
        ns = 0
        ptr_at = -1
        if an == 0 and mode.name != "refused":
            soa = SOA_MNAME + SOA_RNAME + struct.pack("!IIIII", 1, 3600, 600, 86400, ttl)
            ptr_at = len(answers)
            authority = b"\xc0\x0c" + struct.pack("!HHIH", wire.QTYPE_SOA, wire.CLASS_IN, ttl, len(soa)) + soa
            ns = 1
        additional = b""
        ar = 0
        if edns:
            text = f"blocked by policy rule {rule.id} ({rule.app})".encode()
            ede = struct.pack("!HHH", wire.EDE_OPTION, 2 + len(text), wire.EDE_BLOCKED) + text
            additional = wire.opt_record(options=ede)
            ar = 1
        flags = bytes((0x80 | 0x04 | rd, 0x80 | rcode))  # QR, AA (we are the authority for the sinkhole), RD, RA
        head = flags + struct.pack("!HHHH", 1, an, ns, ar)
        suffix_len = len(rule.value) if rule.kind in ("domain", "host") else 0
        return head, answers + authority + additional, ptr_at, suffix_len
