"""Device inventory: a CSV with a header row that maps client addresses, MACs, hostnames and ClientIDs to devices.

- ``Device``: one inventory row (device, owner, unit, and what identifies it: ``cidr``, ``mac``, ``hostname``,
  ``client_id``; ``""`` for a column the file does not have or the row leaves empty).
- ``Inventory.load(path)``: parse and validate the CSV. The header names ``device,owner,unit`` and at least one of
  ``cidr``, ``mac``, ``hostname``, ``client_id``, in any order (``COLUMNS``). A file without a header whose first
  field is a CIDR is read as today's positional ``cidr,device,owner,unit``. A bad row raises ``ConfigError`` with
  ``PATH:LINE: message``; a header problem names the expected header; a file that is not UTF-8 (a spreadsheet's
  legacy code page, UTF-16) names the line of its first undecodable byte (``config.read_utf8``).
- ``Inventory.lookup(ip)``: longest-prefix match over the ``cidr`` rows (the most specific CIDR wins; nested ranges
  are fine), IPv4 and IPv6; an IPv4-mapped IPv6 client (``::ffff:10.1.2.3``) matches IPv4 rows. Results are
  memoised in a bounded cache.
- ``Inventory.by_mac(mac)`` / ``by_hostname(name)`` / ``by_client_id(cid)``: exact lookups (MAC in any common
  spelling, hostname case-insensitive with or without its domain); ``Inventory.client_ids``: the known ClientIDs
  (``frozenset``), which the resolver's ``--require-client-id`` accepts.
- ``normal_mac(text)``: a hardware address as lower-case colon-separated hex octets, or None (shared with the lease
  readers, enforcer/analyst/leases.py, so both sides spell a MAC the same way).

The match is ``enforcer.net.NetworkMap`` (a dict probe per distinct prefix length present, not a scan of the rows)
and the address reading is ``enforcer.net.peer_address`` (``%zone`` stripped, IPv4-mapped folded).
"""

from __future__ import annotations

import csv
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, read_utf8
from ..net import NetworkMap, peer_address

_CACHE_MAX = 100_000
# An inventory file is read whole (a million devices is ~60 MB): a larger file, a FIFO or a device named as the
# inventory gets one line saying so instead of a hang or an unbounded read.
MAX_BYTES = 256 * 1024 * 1024
_HEADER = "cidr,device,owner,unit"
REQUIRED = ("device", "owner", "unit")
IDENTIFIERS = ("cidr", "mac", "hostname", "client_id")
COLUMNS = REQUIRED + IDENTIFIERS
_EXPECTED = f"the header names {','.join(REQUIRED)} and at least one of {','.join(IDENTIFIERS)} (e.g. {_HEADER})"
# aa:bb:cc:dd:ee:ff, aa-bb-..., aabb.ccdd.eeff (Cisco), aabbccddeeff; 1..20 octets (Kea keeps any hardware type).
_MAC_SEP = re.compile(r"[:\-.]")
_HEX = re.compile(r"[0-9a-f]+")
_MAX_MAC_OCTETS = 20
_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){0,19}")  # 1.._MAX_MAC_OCTETS octets


def normal_mac(text: str) -> str | None:
    """``AA-BB-CC-DD-EE-FF`` / ``aabb.ccdd.eeff`` / ``aa:bb:...`` -> ``aa:bb:cc:dd:ee:ff``; None for no MAC."""
    t = text.strip().lower()
    if _CANONICAL_MAC.fullmatch(t):
        return t  # already the form returned (most lease and inventory files): one match instead of the checks below
    if not t:
        return None
    parts = _MAC_SEP.split(t)
    if len(parts) == 1 or all(len(p) == 4 for p in parts):
        joined = "".join(parts)  # no separators, or Cisco's groups of four digits
        if len(joined) % 2:
            return None
        parts = [joined[i : i + 2] for i in range(0, len(joined), 2)]
    if not 1 <= len(parts) <= _MAX_MAC_OCTETS:
        return None
    if not all(1 <= len(p) <= 2 and _HEX.fullmatch(p) for p in parts):
        return None
    return ":".join(p.zfill(2) for p in parts)


def normal_hostname(text: str) -> str:
    """Lower case, no trailing dot: a lease's ``phone.example.org.`` and an inventory's ``Phone.example.org`` meet."""
    return text.strip().rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class Device:
    cidr: str
    device: str
    owner: str
    unit: str
    mac: str = ""
    hostname: str = ""
    client_id: str = ""

    def __reduce__(self) -> tuple[type[Device], tuple[str, ...]]:
        # The dataclass's own pickling calls fields() per object (``enforcer report`` sends each worker the rows).
        return (Device, (self.cidr, self.device, self.owner, self.unit, self.mac, self.hostname, self.client_id))


class Inventory:
    def __init__(self, rows: list[Device] | None = None) -> None:
        self._map: NetworkMap[Device] = NetworkMap()
        self._cache: dict[str, Device | None] = {}
        self._macs: dict[str, Device] = {}
        self._hosts: dict[str, Device] = {}
        self._short: dict[str, Device | None] = {}  # first label -> device (None: two devices share it)
        self._ids: dict[str, Device] = {}
        self.rows: list[Device] = []
        for row in rows or []:
            self.add(row)

    def add(self, row: Device) -> None:
        if row.cidr:
            self._map.add(ipaddress.ip_network(row.cidr, strict=False), row)
            self._cache.clear()
        if row.mac:
            self._macs[normal_mac(row.mac) or row.mac] = row
        if row.hostname:
            host = normal_hostname(row.hostname)
            self._hosts[host] = row
            short = host.partition(".")[0]
            self._short[short] = row if self._short.get(short, row) is row else None
        if row.client_id:
            self._ids[row.client_id] = row
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def client_ids(self) -> frozenset[str]:
        """The ClientIDs the inventory knows (as written in the file)."""
        return frozenset(self._ids)

    @classmethod
    def load(cls, path: str | Path | None) -> Inventory:
        inv = cls()
        if not path:
            return inv
        text = read_utf8(path, MAX_BYTES, "inventory")
        columns: tuple[str, ...] | None = None
        seen: dict[tuple[str, str], int] = {}
        owners: dict[str, tuple[str, str, int]] = {}  # device -> its owner, unit and first line
        for lineno, raw in _csv_rows(path, text):
            if not raw or not "".join(raw).strip() or raw[0].lstrip().startswith("#"):
                continue
            fields = [f.strip() for f in raw]
            if columns is None:
                columns = _columns(path, lineno, fields)
                if columns != _LEGACY or fields[0].lower() == "cidr":
                    continue  # the header row
            if len(fields) > len(columns):
                raise ConfigError(f"{path}:{lineno}: expected {','.join(columns)}, got {len(fields)} fields")
            row = dict(zip(columns, fields, strict=False))
            dev = _device(path, lineno, row, seen)
            # A device may have several rows (its MAC, its address range, ...), all with one owner and unit: cases
            # and the report are keyed by the device's name, so two owners under one name mixed two people's hits.
            first = owners.setdefault(dev.device, (dev.owner, dev.unit, lineno))
            if first[:2] != (dev.owner, dev.unit):
                raise ConfigError(
                    f"{path}:{lineno}: device {dev.device!r} has owner {dev.owner!r}, unit {dev.unit!r} here but"
                    f" {first[0]!r}, {first[1]!r} at line {first[2]} (one device, one owner and unit)"
                )
            inv.add(dev)
        return inv

    def lookup(self, client: str) -> Device | None:
        """The most specific ``cidr`` row containing ``client``; None for no match or a value that is not an
        address."""
        cache = self._cache
        if client in cache:
            return cache[client]
        addr = peer_address(client)
        found = None if addr is None else self._map.get(addr)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[client] = found
        return found

    def by_mac(self, mac: str) -> Device | None:
        norm = normal_mac(mac)
        return self._macs.get(norm) if norm else None

    def by_hostname(self, name: str) -> Device | None:
        """The row of ``name`` (case-insensitive); a bare name also matches a row's first label and the reverse, when
        only one row has that label."""
        host = normal_hostname(name)
        if not host:
            return None
        found = self._hosts.get(host)
        if found is None:
            short = host.partition(".")[0]
            found = self._hosts.get(short) or self._short.get(short)
        return found

    def by_client_id(self, client_id: str) -> Device | None:
        return self._ids.get(client_id.lower())


_LEGACY = ("cidr", "device", "owner", "unit")


def _csv_rows(path: str | Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each row; a line the csv module refuses (an unclosed quote, a field over its
    limit) is a ``PATH:LINE`` ConfigError, not a traceback."""
    reader = csv.reader(text.splitlines())
    lineno = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ConfigError(f"{path}:{reader.line_num}: not a CSV line: {exc}") from None
        lineno += 1
        yield lineno, row


def _columns(path: str | Path, lineno: int, fields: list[str]) -> tuple[str, ...]:
    """The first row -> the column names (a header), or today's positional columns for a headerless file that starts
    with a CIDR. ConfigError naming the expected header for anything else."""
    names = [f.lower() for f in fields]
    if "device" not in names:
        try:
            ipaddress.ip_network(fields[0], strict=False)
        except ValueError:
            # A first row that is not an address is almost always a header with other column names.
            raise ConfigError(
                f"{path}:{lineno}: invalid CIDR {fields[0]!r}: not a header either; {_EXPECTED}"
            ) from None
        return _LEGACY
    for name in names:
        if name not in COLUMNS:
            raise ConfigError(f"{path}:{lineno}: unknown column {name!r}; {_EXPECTED}")
        if names.count(name) > 1:
            raise ConfigError(f"{path}:{lineno}: column {name!r} appears twice; {_EXPECTED}")
    missing = [c for c in REQUIRED if c not in names]
    if missing or not any(c in names for c in IDENTIFIERS):
        what = ",".join(missing) if missing else f"one of {','.join(IDENTIFIERS)}"
        raise ConfigError(f"{path}:{lineno}: header lacks {what}; {_EXPECTED}")
    return tuple(names)


def _device(path: str | Path, lineno: int, row: dict[str, str], seen: dict[tuple[str, str], int]) -> Device:
    """One data row -> Device; ConfigError for a bad value, a row that identifies nothing, or an identifier that an
    earlier row already maps (which device an attempt belongs to would depend on row order)."""
    cidr, mac = row.get("cidr", ""), row.get("mac", "")
    if cidr:
        try:
            cidr = str(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise ConfigError(f"{path}:{lineno}: invalid CIDR {cidr!r}") from None
    if mac:
        norm = normal_mac(mac)
        if norm is None:
            raise ConfigError(f"{path}:{lineno}: invalid MAC {mac!r} (expected hex octets like aa:bb:cc:dd:ee:ff)")
        mac = norm
    dev = Device(
        cidr=cidr,
        device=row.get("device", ""),
        owner=row.get("owner", ""),
        unit=row.get("unit", ""),
        mac=mac,
        hostname=row.get("hostname", ""),
        # A ClientID is a DNS label: case-insensitive, and the resolver folds it to lower case (Phone-17 named no
        # device, and beside phone-17 was a second row for the same ClientID).
        client_id=row.get("client_id", "").lower(),
    )
    ids = {"cidr": dev.cidr, "mac": dev.mac, "hostname": normal_hostname(dev.hostname), "client_id": dev.client_id}
    if not any(ids.values()):
        raise ConfigError(f"{path}:{lineno}: row for {dev.device or '?'!r} has no {', '.join(IDENTIFIERS)}")
    if not dev.device:
        shown = next(v for v in ids.values() if v)
        raise ConfigError(f"{path}:{lineno}: missing device name for {shown}")
    for kind, value in ids.items():
        if not value:
            continue
        if (kind, value) in seen:
            label = "" if kind == "cidr" else f"{kind} "
            raise ConfigError(f"{path}:{lineno}: {label}{value} is already mapped at line {seen[(kind, value)]}")
        seen[(kind, value)] = lineno
    return dev
