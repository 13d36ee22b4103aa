"""Device inventory: a CSV ``cidr,device,owner,unit`` that maps client addresses to devices.

- ``Device``: one inventory row (the network it covers, device, owner, unit).
- ``Inventory.load(path)``: parse and validate the CSV (an optional header line ``cidr,...`` is skipped; a first row
  that is not a CIDR gets a message naming the expected header); a bad row raises ``ConfigError`` with
  ``PATH:LINE: message``.
- ``Inventory.lookup(ip)``: longest-prefix match (the most specific CIDR wins; nested ranges are fine), IPv4 and IPv6;
  an IPv4-mapped IPv6 client (``::ffff:10.1.2.3``) matches IPv4 rows. Results are memoised in a bounded cache.

The match is ``enforcer.net.NetworkMap`` (a dict probe per distinct prefix length present, not a scan of the rows)
and the address reading is ``enforcer.net.peer_address`` (``%zone`` stripped, IPv4-mapped folded).
"""

from __future__ import annotations

import csv
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..net import NetworkMap, peer_address

_CACHE_MAX = 100_000
_HEADER = "cidr,device,owner,unit"


@dataclass(frozen=True, slots=True)
class Device:
    cidr: str
    device: str
    owner: str
    unit: str


class Inventory:
    def __init__(self, rows: list[Device] | None = None) -> None:
        self._map: NetworkMap[Device] = NetworkMap()
        self._cache: dict[str, Device | None] = {}
        self.rows: list[Device] = []
        for row in rows or []:
            self.add(row)

    def add(self, row: Device) -> None:
        self._map.add(ipaddress.ip_network(row.cidr, strict=False), row)
        self.rows.append(row)
        self._cache.clear()

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def load(cls, path: str | Path | None) -> Inventory:
        inv = cls()
        if not path:
            return inv
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"{path}:1: cannot read inventory: {exc.strerror}") from None
        seen: dict[str, int] = {}
        for lineno, fields in enumerate(csv.reader(text.splitlines()), 1):
            if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
                continue
            cidr = fields[0].strip()
            if lineno == 1 and cidr.lower() == "cidr":
                continue  # header
            if len(fields) > 4:
                raise ConfigError(f"{path}:{lineno}: expected cidr,device,owner,unit, got {len(fields)} fields")
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                if lineno == 1:
                    # A first row that is not an address is almost always a header with other column names.
                    raise ConfigError(
                        f"{path}:1: invalid CIDR {cidr!r}: the header, if any, must be {_HEADER}"
                    ) from None
                raise ConfigError(f"{path}:{lineno}: invalid CIDR {cidr!r}") from None
            device, owner, unit = ([f.strip() for f in fields[1:]] + ["", "", ""])[:3]
            if not device:
                raise ConfigError(f"{path}:{lineno}: missing device name for {cidr}")
            if str(net) in seen:
                # Two devices for one range: which one an attempt belongs to would depend on row order.
                raise ConfigError(f"{path}:{lineno}: {net} is already mapped at line {seen[str(net)]}")
            seen[str(net)] = lineno
            inv.add(Device(str(net), device, owner, unit))
        return inv

    def lookup(self, client: str) -> Device | None:
        """The most specific row containing ``client``; None for no match or a value that is not an address."""
        cache = self._cache
        if client in cache:
            return cache[client]
        addr = peer_address(client)
        found = None if addr is None else self._map.get(addr)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[client] = found
        return found
