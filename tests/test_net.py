"""enforcer.net: peer addresses, networks with a memo, host:port."""

from __future__ import annotations

import ipaddress
import re
import time

import pytest

from enforcer.net import (
    MEMO_MAX,
    NetworkMap,
    NetworkSet,
    fold_mapped,
    format_host_port,
    parse_network,
    peer_address,
    split_host_port,
    strip_zone,
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::ffff:a00:1", "10.0.0.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("fe80::1%2", "fe80::1"),
        ("2001:db8::5", "2001:db8::5"),
        ("64:ff9b::a00:1", "64:ff9b::a00:1"),  # NAT64 is not folded here: that is embedded_ipv4's judgement
    ],
)
def test_peer_address(host: str, expected: str) -> None:
    assert peer_address(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["", "example.com", "300.1.1.1", "1.2.3", "::g", "[::1]", "%eth0"])
def test_peer_address_not_an_address(host: str) -> None:
    # Peers and config values are canonical: the lenient glibc spellings belong to parse_ip_literal.
    assert peer_address(host) is None


def test_strip_zone_and_fold() -> None:
    assert strip_zone("fe80::1%eth0") == "fe80::1"
    assert strip_zone("10.0.0.1") == "10.0.0.1"
    assert fold_mapped(ipaddress.IPv6Address("::ffff:1.2.3.4")) == ipaddress.IPv4Address("1.2.3.4")
    assert fold_mapped(ipaddress.IPv6Address("::1")) == ipaddress.IPv6Address("::1")
    assert fold_mapped(ipaddress.IPv4Address("1.2.3.4")) == ipaddress.IPv4Address("1.2.3.4")


def test_parse_network_masks_host_bits() -> None:
    assert parse_network(" 10.1.2.3/8 ") == ipaddress.IPv4Network("10.0.0.0/8")
    assert parse_network("2001:db8::1/32") == ipaddress.IPv6Network("2001:db8::/32")
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        parse_network("10.0.0.0/33")


def test_network_map_most_specific() -> None:
    m: NetworkMap[str] = NetworkMap()
    m.add(parse_network("10.0.0.0/8"), "wide")
    m.add(parse_network("10.1.0.0/16"), "narrow")
    m.add(parse_network("10.1.2.3/32"), "host")
    m.add(parse_network("2001:db8::/32"), "v6")
    assert len(m) == 4
    assert m.get(ipaddress.ip_address("10.9.9.9")) == "wide"
    assert m.get(ipaddress.ip_address("10.1.9.9")) == "narrow"
    assert m.get(ipaddress.ip_address("10.1.2.3")) == "host"
    assert m.get(ipaddress.ip_address("::ffff:10.1.2.3")) == "host"
    assert m.get(ipaddress.ip_address("2001:db8:1::1")) == "v6"
    assert m.get(ipaddress.ip_address("11.0.0.1")) is None
    assert m.get(ipaddress.ip_address("2001:db9::1")) is None
    m.add(parse_network("10.1.0.0/16"), "replaced")
    assert m.get(ipaddress.ip_address("10.1.9.9")) == "replaced"


def test_network_map_zero_prefix() -> None:
    m: NetworkMap[int] = NetworkMap()
    m.add(parse_network("0.0.0.0/0"), 1)
    assert m.get(ipaddress.ip_address("203.0.113.9")) == 1
    assert m.get(ipaddress.ip_address("2001:db8::1")) is None


# The membership semantics every former copy had: the address is folded, the networks are compared by version.
def _reference(nets: list[str], host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    parsed = [ipaddress.ip_network(n, strict=False) for n in nets]
    return any(addr.version == n.version and addr in n for n in parsed)


NETS = ["127.0.0.0/8", "10.20.0.0/16", "192.0.2.7/32", "::1/128", "2001:db8:42::/48", "::ffff:198.51.100.0/120"]
HOSTS = [
    "127.0.0.1",
    "127.255.1.2",
    "10.20.3.4",
    "10.21.0.1",
    "192.0.2.7",
    "192.0.2.8",
    "::1",
    "::2",
    "::ffff:127.0.0.1",
    "::ffff:10.20.0.9",
    "2001:db8:42:ffff::1",
    "2001:db8:43::1",
    "fe80::1%lo",
    "::ffff:198.51.100.7",  # folded to IPv4: the IPv6 spelling of the network does not hold it (as before)
    "198.51.100.7",
    "not-an-address",
    "",
]


@pytest.mark.parametrize("host", HOSTS)
def test_network_set_matches_the_former_acl(host: str) -> None:
    s = NetworkSet(NETS)
    assert s.contains_host(host) is _reference(NETS, host)
    assert s.contains_host(host) is _reference(NETS, host)  # the memoised answer is the same
    addr = peer_address(host)
    if addr is not None:
        assert (addr in s) is _reference(NETS, host)


def test_network_set_empty_and_parsed() -> None:
    assert not NetworkSet([])
    assert not NetworkSet([]).contains_host("127.0.0.1")
    s = NetworkSet([ipaddress.ip_network("10.0.0.0/8"), "::1/128"])
    assert s
    assert s.nets == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_network_set_memo_is_bounded() -> None:
    s = NetworkSet(["10.0.0.0/8"])
    for i in range(MEMO_MAX + 10):
        s.contains_host(str(ipaddress.IPv4Address(0x0A000000 + i)))
    assert len(s._memo) <= MEMO_MAX
    assert s.contains_host("10.0.0.1") and not s.contains_host("11.0.0.1")


def test_network_set_memo_lookup_is_cheap() -> None:
    """The resolver's --allow check runs on every query: a repeated client costs one dict probe."""
    s = NetworkSet(NETS)
    s.contains_host("10.20.3.4")
    n = 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        s.contains_host("10.20.3.4")
    per = (time.perf_counter() - t0) / n
    assert per < 5e-6, f"{per * 1e9:.0f} ns per memoised lookup"


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("127.0.0.1:53", None, ("127.0.0.1", 53)),
        ("[::1]:5353", None, ("::1", 5353)),
        ("localhost:0", None, ("localhost", 0)),
        ("10.0.0.1", 53, ("10.0.0.1", 53)),
        ("[::1]", 53, ("::1", 53)),
        ("::1", 53, ("::1", 53)),
        (" 1.1.1.1:853 ", None, ("1.1.1.1", 853)),
        # moved from tests/test_metrics.py with split_host_port
        ("127.0.0.1:9153", None, ("127.0.0.1", 9153)),
        ("[::1]:53", None, ("::1", 53)),
        ("[::1]", 5353, ("::1", 5353)),
        ("localhost", 80, ("localhost", 80)),
    ],
)
def test_split_host_port(value: str, default: int | None, expected: tuple[str, int]) -> None:
    assert split_host_port(value, default) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("127.0.0.1", "expected HOST:PORT"),
        ("::1", "expected HOST:PORT"),
        ("[::1", "missing ']'"),
        ("[::1]x", "expected ':PORT' after ']'"),
        (":53", "missing host"),
        ("h:99999", "invalid port '99999'"),
        ("127.0.0.1:99999", "invalid port '99999'"),
        ("h:-1", "invalid port '-1'"),
        ("h:x", "invalid port 'x'"),
        ("host:port", "invalid port 'port'"),
    ],
)
def test_split_host_port_errors(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        split_host_port(value)


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("127.0.0.1", 53, "127.0.0.1:53"), ("::1", 5353, "[::1]:5353"), ("localhost", 80, "localhost:80")],
)
def test_format_host_port_round_trips(host: str, port: int, text: str) -> None:
    assert format_host_port(host, port) == text
    assert split_host_port(text) == (host, port)
