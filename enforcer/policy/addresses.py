"""IP addresses as the platform resolver reads them: the one place that turns text into an address to judge.

- ``parse_ip_literal(text)``: every spelling that glibc's ``getaddrinfo``/``inet_aton`` turns into an address
  (``1296740613``, ``0x4d4ab105``, ``0115.0112.0261.05``, ``77.74.45317``, ``77.4894981``, mixes; IPv6 in any case
  with leading zeros, brackets and a ``%zone``), or None for a name. The proxy canonicalises CONNECT targets,
  absolute URIs, Host headers and SNI with it, so ``cidr`` rules see the address the connection would really reach.
- ``embedded_ipv4(addr, nat64_prefixes)``: the IPv4 address an IPv6 address stands for: IPv4-mapped
  ``::ffff:0:0/96``, IPv4-translated ``::ffff:0:0:0/96`` (RFC 2765), the NAT64 well-known prefix ``64:ff9b::/96``
  (RFC 6052), 6to4 ``2002::/16`` (RFC 3056) and the caller's own NAT64 prefixes in any RFC 6052 layout
  (/32, /40, /48, /56, /64, /96).
- ``check_nat64_prefix(net)``: refuse a prefix length RFC 6052 does not define (for config validation).

Pure functions, no I/O: a literal is parsed here, never by asking the resolver (a name would trigger a lookup).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from .model import IPAddress

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
IPv6Network = ipaddress.IPv6Network

NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
NAT64_LENGTHS = (32, 40, 48, 56, 64, 96)

# One inet_aton part as strtoul(base 0) reads it: hex after 0x, octal after a leading 0, else decimal. glibc
# rejects a part above 2**32-1 rather than wrapping, and "0x" without digits leaves "x" as trailing garbage.
_PART = r"(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)"
_INET_ATON_RE = re.compile(rf"({_PART})(?:\.({_PART}))?(?:\.({_PART}))?(?:\.({_PART}))?")
# The largest value of the last part for 1, 2, 3 and 4 parts: it fills the bytes the earlier parts left.
_LAST_MAX = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)
_IPV4_CHARS = frozenset("0123456789abcdefxABCDEFX.")

_MAPPED_HI = 0xFFFF << 32  # ::ffff:0:0/96
_TRANSLATED_HI = 0xFFFF << 48  # ::ffff:0:0:0/96
_WKP_HI = int(NAT64_WELL_KNOWN.network_address)
_LOW96 = (1 << 96) - 1
_LOW32 = 0xFFFFFFFF


def _part(text: str) -> int:
    if text[:2] in ("0x", "0X"):
        return int(text[2:], 16)
    if len(text) > 1 and text[0] == "0":
        return int(text[1:], 8)
    return int(text)


def parse_ipv4_literal(text: str) -> IPv4Address | None:
    """An IPv4 address in any form glibc ``inet_aton`` accepts (without its trailing-whitespace leniency)."""
    if not text or len(text) > 64 or not text[0].isdigit() or not _IPV4_CHARS.issuperset(text):
        return None
    m = _INET_ATON_RE.fullmatch(text)
    if m is None:
        return None
    parts = [_part(p) for p in m.groups() if p is not None]
    last = parts[-1]
    if last > _LAST_MAX[len(parts) - 1] or any(p > 0xFF for p in parts[:-1]):
        return None
    value = 0
    for i, p in enumerate(parts[:-1]):
        value |= p << (24 - 8 * i)
    return IPv4Address(value | last)


def parse_ip_literal(text: str) -> IPAddress | None:
    """The address ``text`` denotes, or None when it is a name (or nothing).

    Accepts an optional pair of brackets and an IPv6 ``%zone`` (dropped: it picks an interface, not a destination).
    ``1.2.3.4.`` is a name, as for glibc, which sends it to DNS.
    """
    if not text:
        return None
    t = text
    if t[0] == "[":
        if t[-1] != "]":
            return None
        t = t[1:-1]
    if ":" in t:
        t = t.split("%", 1)[0]
        try:
            return IPv6Address(t)
        except ValueError:
            return None
    return parse_ipv4_literal(t)


def check_nat64_prefix(net: IPv6Network) -> IPv6Network:
    """Return ``net`` when it is a NAT64 prefix RFC 6052 defines a layout for, else raise ValueError."""
    if net.prefixlen not in NAT64_LENGTHS:
        raise ValueError(
            f"NAT64 prefix {net} has length /{net.prefixlen}; RFC 6052 defines /32, /40, /48, /56, /64, /96"
        )
    return net


def _from_prefix(addr: IPv6Address, net: IPv6Network) -> IPv4Address | None:
    if addr not in net:
        return None
    plen = net.prefixlen
    if plen == 96:
        return IPv4Address(int(addr) & _LOW32)
    if plen not in NAT64_LENGTHS:
        return None
    packed = addr.packed
    # RFC 6052 section 2.2: bits 64-71 (the "u" octet) are always skipped; the IPv4 address follows the prefix.
    squeezed = packed[:8] + packed[9:]
    start = plen // 8
    return IPv4Address(squeezed[start : start + 4])


def embedded_ipv4(addr: IPv6Address, nat64_prefixes: Sequence[IPv6Network] = ()) -> IPv4Address | None:
    """The IPv4 address that traffic to ``addr`` would reach, when ``addr`` is one of the IPv4 embeddings."""
    value = int(addr)
    hi = value >> 32
    if hi == _MAPPED_HI >> 32 or hi == _TRANSLATED_HI >> 32 or value & ~_LOW32 == _WKP_HI:
        return IPv4Address(value & _LOW32)
    if value >> 112 == 0x2002:
        return IPv4Address((value >> 80) & _LOW32)
    for net in nat64_prefixes:
        found = _from_prefix(addr, net)
        if found is not None:
            return found
    return None
