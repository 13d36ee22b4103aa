"""Network helpers shared by the resolver, the RPZ feed, the proxy, the policy and the analyst: one home for each.

- ``IPAddress`` / ``IPNetwork``: the type aliases every module annotates with.
- ``strip_zone(host)``: ``fe80::1%eth0`` -> ``fe80::1``. A zone picks an interface, not a destination, so no
  decision (ACL, exemption, inventory) depends on it.
- ``fold_mapped(addr)``: ``::ffff:10.0.0.1`` -> ``10.0.0.1``. A dual-stack socket reports IPv4 clients in the mapped
  form; rules are written in the IPv4 one, so both must land on the same verdict.
- ``peer_address(host)``: the address a socket or an event names (zone stripped, mapped form folded), or None for
  text that is not an address. Peers and config values are canonical text, so this is the strict
  ``ipaddress`` reading; the lenient glibc spellings of *request targets* (``0x7f000001``, ``127.1``) are
  ``enforcer.policy.addresses.parse_ip_literal``'s job, the one literal parser. That module is not imported here:
  policy/ builds on this module, and importing the ``enforcer.policy`` package from here would be a cycle.
- ``parse_network(text)``: a config CIDR (host bits allowed, as ``--allow 10.1.2.3/8`` always was).
- ``NetworkMap``: networks to values, answering the most specific network holding an address in one hash probe per
  distinct prefix length (not one test per network). ``NetworkSet``: membership, plus ``contains_host(text)``
  memoised per peer text in a bounded memo, for the resolver's ``--allow`` check on every query.
- ``split_host_port(value, default_port)`` / ``format_host_port(host, port)``: ``HOST:PORT`` and ``[v6]:PORT``.

Pure and stdlib-only: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Generic, TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

T = TypeVar("T")

# The per-text memo of NetworkSet.contains_host: one entry per client seen; cleared when full (a flood of distinct
# sources costs one parse each, never unbounded memory).
MEMO_MAX = 65_536


def strip_zone(host: str) -> str:
    """``host`` without an IPv6 ``%zone`` suffix."""
    return host.split("%", 1)[0]


def fold_mapped(addr: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped IPv6 address stands for; any other address unchanged."""
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return mapped
    return addr


def peer_address(host: str) -> IPAddress | None:
    """The address ``host`` names (``%zone`` stripped, IPv4-mapped folded), or None when it is not an address."""
    try:
        return fold_mapped(ipaddress.ip_address(strip_zone(host)))
    except ValueError:
        return None


def parse_network(text: str) -> IPNetwork:
    """A CIDR from config: host bits are masked (``10.1.2.3/8`` is ``10.0.0.0/8``). Raises ValueError."""
    return ipaddress.ip_network(text.strip(), strict=False)


class NetworkMap(Generic[T]):
    """Networks mapped to values; ``get(addr)`` answers the value of the most specific network holding ``addr``.

    Each network is stored under (version, prefix length) keyed by its prefix bits, so a lookup costs one dict probe
    per distinct prefix length in use (longest first), whatever the number of networks.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[int, int], dict[int, T]] = {}
        self._lens: dict[int, list[int]] = {4: [], 6: []}

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    def add(self, net: IPNetwork, value: T) -> None:
        """Map ``net`` to ``value`` (a later value for the same network replaces the earlier one)."""
        key = (net.version, net.prefixlen)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = {}
            lens = self._lens[net.version]
            lens.append(net.prefixlen)
            lens.sort(reverse=True)
        table[int(net.network_address) >> (net.max_prefixlen - net.prefixlen)] = value

    def get(self, addr: IPAddress) -> T | None:
        """The value of the most specific network holding ``addr`` (mapped form folded first), else None."""
        addr = fold_mapped(addr)
        value, bits = int(addr), addr.max_prefixlen
        for plen in self._lens[addr.version]:
            hit = self._tables[(addr.version, plen)].get(value >> (bits - plen))
            if hit is not None:
                return hit
        return None


class NetworkSet:
    """A set of networks: ``addr in s`` for parsed addresses, ``s.contains_host(text)`` memoised for peers."""

    def __init__(self, nets: Iterable[IPNetwork | str]) -> None:
        self.nets: tuple[IPNetwork, ...] = tuple(parse_network(n) if isinstance(n, str) else n for n in nets)
        self._map: NetworkMap[bool] = NetworkMap()
        for net in self.nets:
            self._map.add(net, True)
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.nets)

    def __contains__(self, addr: IPAddress) -> bool:
        return self._map.get(addr) is not None

    def contains_host(self, host: str) -> bool:
        """Whether the address ``host`` names is in the set; text that is no address is not."""
        ok = self._memo.get(host)
        if ok is not None:
            return ok
        addr = peer_address(host)
        ok = addr is not None and self._map.get(addr) is not None
        if len(self._memo) >= MEMO_MAX:
            self._memo.clear()
        self._memo[host] = ok
        return ok


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or (with a default) a bare host. Raises ValueError with the reason."""
    v = value.strip()
    host, port_s = v, ""
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {value!r}")
        host, rest = v[1:end], v[end + 1 :]
        if rest.startswith(":"):
            port_s = rest[1:]
        elif rest:
            raise ValueError(f"expected ':PORT' after ']' in {value!r}")
    elif v.count(":") == 1:
        host, port_s = v.split(":")
    if not port_s:
        if default_port is None:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return host, default_port
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"invalid port {port_s!r} in {value!r}")
    if not host:
        raise ValueError(f"missing host in {value!r}")
    return host, int(port_s)


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets so ``split_host_port`` reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_bind(host: str, port: int, proto: str) -> None:
    """Bind (and for TCP listen on) ``host:port`` and let go at once: OSError when another process holds it. Shared
    by ``enforcer serve`` (every address of its children) and ``enforcer proxy`` (before mitmdump starts)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    family, kind, _, _, sockaddr = infos[0]
    with socket.socket(family, kind) as s:
        if proto == "tcp":
            # As the children's servers do: a TIME_WAIT left by a previous run is no conflict, a listener is.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(sockaddr)
        if proto == "tcp":
            s.listen(1)
