"""IP literals as the platform resolver reads them, and IPv6 addresses that embed IPv4, judged by the ``cidr`` rules.

``socket.getaddrinfo(..., AI_NUMERICHOST)`` is the oracle for literal spellings: it never does a lookup, and it is
what mitmproxy's connection code ends up calling.
"""

from __future__ import annotations

import ipaddress
import platform
import random
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from enforcer.policy import load_policy
from enforcer.policy.addresses import check_nat64_prefix, embedded_ipv4, parse_ip_literal
from tests.policy.policy_helpers import app_yaml, write

V4 = ipaddress.IPv4Address("77.74.177.5")
GLIBC = platform.libc_ver()[0] == "glibc"

SPELLINGS_V4 = [
    "77.74.177.5",
    "1296740613",
    "0x4d4ab105",
    "0X4D4AB105",
    "0115.0112.0261.05",
    "77.74.45317",
    "77.4894981",
    "0x4d.74.0261.5",
    "0115.0x4a.45317",
    "0x4d.0x4ab105",
    "00000115.74.177.5",
]
SPELLINGS_V6 = [
    "[::ffff:77.74.177.5]",
    "[::ffff:4d4a:b105]",
    "[::FFFF:4D4A:B105]",
    "[0000:0000:0000:0000:0000:ffff:4d4a:b105]",
    "[::ffff:4d4a:b105%eth0]",
    "[64:ff9b::4d4a:b105]",
    "[64:ff9b::77.74.177.5]",
    "[0064:FF9B:0000::4D4A:B105]",
    "[2002:4d4a:b105::]",
    "[2002:4d4a:b105:1234::1]",
    "[::ffff:0:4d4a:b105]",
]
NOT_LITERALS = [
    "1.2.3.4.",
    "0x",
    "09",
    "1.2.3.4.5",
    "4294967296",
    "1.256.1.1",
    "1.2.65536",
    "weixin.qq.com",
    "",
    "[::1",
]


@pytest.mark.parametrize("text", SPELLINGS_V4)
def test_ipv4_spellings_denote_the_address(text: str) -> None:
    assert parse_ip_literal(text) == V4
    if GLIBC:
        assert socket.getaddrinfo(text, None, flags=socket.AI_NUMERICHOST)[0][4][0] == "77.74.177.5"


@pytest.mark.parametrize("text", SPELLINGS_V6)
def test_ipv6_spellings_embed_the_address(text: str) -> None:
    addr = parse_ip_literal(text)
    assert isinstance(addr, ipaddress.IPv6Address)
    assert embedded_ipv4(addr) == V4


@pytest.mark.parametrize("text", NOT_LITERALS)
def test_names_and_invalid_literals_are_not_addresses(text: str) -> None:
    assert parse_ip_literal(text) is None


@pytest.mark.skipif(not GLIBC, reason="the oracle is glibc's getaddrinfo")
def test_parser_agrees_with_getaddrinfo_on_random_spellings() -> None:
    rng = random.Random(20261130)
    fmts: list[Callable[[int], str]] = [str, hex, lambda v: "0" + oct(v)[2:], lambda v: hex(v).upper()]
    checked = 0
    for _ in range(3000):
        value = rng.getrandbits(32)
        nparts = rng.randint(1, 4)
        sizes = [8] * (nparts - 1) + [32 - 8 * (nparts - 1)]
        parts, shift = [], 32
        for size in sizes:
            shift -= size
            parts.append((value >> shift) & ((1 << size) - 1))
        if rng.random() < 0.1:
            parts[rng.randrange(nparts)] += 1 << rng.choice((8, 16, 24, 32))  # out of range: both must refuse
        text = ".".join(rng.choice(fmts)(p) for p in parts)
        oracle: str | None
        try:
            oracle = str(socket.getaddrinfo(text, None, socket.AF_INET, flags=socket.AI_NUMERICHOST)[0][4][0])
        except socket.gaierror:
            oracle = None
        ours = parse_ip_literal(text)
        assert (str(ours) if ours else None) == oracle, text
        checked += 1
    assert checked == 3000


def test_nat64_prefix_layouts_rfc6052() -> None:
    # RFC 6052 section 2.4 examples: 192.0.2.33 in each prefix length.
    v4 = ipaddress.IPv4Address("192.0.2.33")
    examples = {
        "2001:db8::/32": "2001:db8:c000:221::",
        "2001:db8:100::/40": "2001:db8:1c0:2:21::",
        "2001:db8:122::/48": "2001:db8:122:c000:2:2100::",
        "2001:db8:122:300::/56": "2001:db8:122:3c0:0:221::",
        "2001:db8:122:344::/64": "2001:db8:122:344:c0:2:2100:0",
        "2001:db8:122:344::/96": "2001:db8:122:344::192.0.2.33",
    }
    for prefix, text in examples.items():
        net = check_nat64_prefix(ipaddress.IPv6Network(prefix))
        addr = ipaddress.IPv6Address(text)
        assert embedded_ipv4(addr) is None  # not a default embedding
        assert embedded_ipv4(addr, [net]) == v4, prefix
    with pytest.raises(ValueError, match="RFC 6052"):
        check_nat64_prefix(ipaddress.IPv6Network("2001:db8::/80"))


CIDRS = """\
block:
  - cidr: 77.74.176.0/21
    category: update
  - cidr: 2001:db8:bad::/48
    category: update
allow:
  - cidr: 77.74.177.128/25
"""


def test_match_ip_judges_embedded_ipv4(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "t.yaml", app_yaml("t", CIDRS)))
    for text in [s.strip("[]") for s in SPELLINGS_V6] + SPELLINGS_V4:
        m = policy.match_ip(text)
        assert m is not None and m.blocked and m.matched == "77.74.176.0/21", text
        addr = parse_ip_literal(text)
        assert addr is not None
        m = policy.match_ip(addr)  # the default-argument form the resolver used so far
        assert m is not None and m.blocked, text
    # The allow exception inside the range holds through an embedding too.
    m = policy.match_ip(ipaddress.IPv6Address("64:ff9b::77.74.177.200"))
    assert m is not None and m.verdict == "allow"
    # A site NAT64 prefix is an embedding only when the caller names it.
    site = ipaddress.IPv6Network("2001:db8:64::/96")
    addr = ipaddress.IPv6Address("2001:db8:64::4d4a:b105")
    assert policy.match_ip(addr) is None
    m = policy.match_ip(addr, nat64_prefixes=[site])
    assert m is not None and m.blocked
    m = policy.match_ip(ipaddress.IPv6Address("2001:db8:14d:4ab1:5::"), [ipaddress.IPv6Network("2001:db8:100::/40")])
    assert m is not None and m.blocked
    # IPv6 rules still apply to IPv6 addresses; an address embedding an unlisted IPv4 matches nothing.
    m = policy.match_ip("2001:db8:bad::1")
    assert m is not None and m.blocked
    assert policy.match_ip("64:ff9b::8.8.8.8") is None
    assert policy.match_ip("2002:0808:0808::1") is None
    assert policy.match_ip("::1") is None


def test_match_host_canonicalises_literals(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "t.yaml", app_yaml("t", CIDRS)))
    for text in SPELLINGS_V4 + SPELLINGS_V6:
        m = policy.match_host(text)
        assert m is not None and m.blocked, text
    assert policy.match_host("1.2.3.4") is None
