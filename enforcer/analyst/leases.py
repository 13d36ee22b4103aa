"""DHCP leases, time-aware: which device held an address at a given time.

- ``Lease``: one holder of one address over a time span (``start_us`` inclusive, ``end_us`` exclusive, microseconds
  since the epoch), with what identifies the holder: ``mac`` (``inventory.normal_mac``), ``hostname``,
  ``client_id`` (the DHCP client identifier or DUID, lower-case hex octets), and ``where`` (``PATH:LINE`` it came
  from).
- ``read_leases(path, text, seen_at_us)``: one lease file's text -> (leases, problems); the format is detected from
  the content (``detect``): ISC Kea memfile CSV v4 and v6 (``address,hwaddr,...`` / ``address,duid,...``, columns
  found by the header's names), ISC dhcpd ``dhcpd.leases`` (``lease A { starts ...; ends ...; ... }``), dnsmasq
  ``dnsmasq.leases`` (``expiry mac ip hostname clientid``, no start time: a lease counts from ``seen_at_us``, the
  time it was first seen). A malformed line is skipped and reported as ``PATH:LINE: message``, never an abort.
- ``LeaseBook``: every lease learned, per address, at most ``max_leases`` spans (the spans that ended first are
  dropped beyond it, counted in ``dropped``). Renewals of one holder merge into one span. ``at(address, ts_us)``:
  the lease that held the address at that time (the latest span started at or before it, if it has not ended);
  ``span(address, ts_us)``: the same lease with the time interval over which that answer holds (``version`` counts
  the book's changes, after which a kept interval is stale).
- ``LeaseFiles(paths)``: the ``--leases`` files followed as they change: ``refresh()`` (blocking: run it off the
  event loop) re-reads a file whose size, time or inode changed, from where it stopped when it only grew (Kea
  appends) and wholly when it was rewritten (Kea's lease-file cleanup, dhcpd's periodic rewrite, dnsmasq). What was
  learned is kept across rewrites: these rewrites drop past leases, the attribution of past events needs them.
  ``load(paths)`` is one refresh that raises ``ConfigError`` for a file that cannot be read (``enforcer report``).

Why the book keeps the latest start rather than trusting each span's end: Kea writes a released lease again with a
valid lifetime of 0 (its end becomes its last renewal time, not the release time), and dhcpd marks leases ``free``
late; the next holder's start is the one exact bound, so a span ends at its expiry or where the next holder's begins.
"""

from __future__ import annotations

import bisect
import csv
import ipaddress
import itertools
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from ..config import ConfigError
from .inventory import normal_hostname, normal_mac
from .records import MAX_US

US = 1_000_000
DEFAULT_MAX_LEASES = 1_000_000  # spans kept over all files; 20,000 devices renewing for months stay far below
MAX_FILE_BYTES = 512 * 1024 * 1024  # a lease file larger than this is refused (Kea's LFC keeps files small)
_MAX_ID_CHARS = 512  # a DUID is at most 130 octets
MAX_PROBLEMS = 100  # per read: the first ones are kept, the rest only counted
_DETECT_LINES = 100
# str.isdigit() also takes "²" and other digits int() refuses; 19 digits hold any time, and int() of a long run
# raises (over 4,300 digits) where one bad line must only be skipped.
_DIGITS = re.compile(r"[0-9]{1,19}")
_OCTAL = re.compile(r"[0-7]{3}")
NOT_LEASES = "not a lease file (Kea memfile CSV, dhcpd.leases or dnsmasq.leases)"
KEA, DHCPD, DNSMASQ = "kea", "dhcpd", "dnsmasq"
SPAN_EDGE = 1 << 62  # beyond any time in microseconds: the open ends of ``LeaseBook.span``


@dataclass(frozen=True, slots=True)
class Lease:
    address: str
    start_us: int
    end_us: int
    mac: str = ""
    hostname: str = ""
    client_id: str = ""
    where: str = ""

    @property
    def holder(self) -> tuple[str, str, str]:
        return (self.mac, self.client_id, self.hostname)

    def __reduce__(self) -> tuple[type[Lease], tuple[str, int, int, str, str, str, str]]:
        # The dataclass's own pickling calls fields() per object: 1 s for the 40,000 leases ``enforcer report``
        # sends each worker.
        return (Lease, (self.address, self.start_us, self.end_us, self.mac, self.hostname, self.client_id, self.where))


@dataclass
class ReadResult:
    leases: list[Lease] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "PATH:LINE: message", the first MAX_PROBLEMS
    skipped: int = 0  # malformed lines, all of them
    kea_columns: dict[str, int] | None = None  # a Kea file's header in force at its end: later lines are appended

    def problem(self, path: str, lineno: int, message: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{path}:{lineno}: {message}")


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def _hex_id(text: str) -> str:
    """A client id / DUID as lower-case colon-separated hex when it is hex (``01:AA:..``, ``01aa..``), else as is."""
    value = text.strip()[:_MAX_ID_CHARS]
    return normal_mac(value) or value


def detect(text: str) -> str | None:
    """The lease file format from its first recognisable line among the first ``_DETECT_LINES`` (a malformed first
    line is one skipped line of its format, not a whole file unread); None when it is none of the three."""
    for line in itertools.islice(text.removeprefix("\ufeff").splitlines(), _DETECT_LINES):
        s = line.strip()
        if not s:
            continue
        if s.startswith("address,"):
            return KEA
        if s.startswith(("#", "lease ", "server-duid", "authoring-byte-order", "failover ", "ia-na ", "ia-pd ")):
            return DHCPD
        fields = s.split()
        if fields[0] == "duid" or (len(fields) == 5 and _DIGITS.fullmatch(fields[0])):
            return DNSMASQ
    return None


def read_leases(path: str, text: str, seen_at_us: int, first_line: int = 1) -> ReadResult:
    """One lease file (or, for Kea, the lines appended since the last read, numbered from ``first_line``)."""
    text = text.removeprefix("\ufeff")  # a BOM (a file saved by a spreadsheet)
    fmt = detect(text)
    if fmt == KEA:
        return _read_kea(path, text, first_line)
    if fmt == DHCPD:
        return _read_dhcpd(path, text)
    if fmt == DNSMASQ:
        return _read_dnsmasq(path, text, seen_at_us)
    out = ReadResult()
    if text.strip():
        out.problem(path, 1, NOT_LEASES)
    return out


# Kea memfile CSV. v4: address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,
# user_context[,pool_id]; v6: address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,
# fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context[,hwtype,hwaddr_source,pool_id]. Kea escapes a comma inside a
# value as "&#x2c".
_KEA_NEEDED = ("address", "valid_lifetime", "expire")


def _kea_columns(header: list[str]) -> dict[str, int] | None:
    cols = {name.strip(): i for i, name in enumerate(header)}
    if not all(c in cols for c in _KEA_NEEDED) or not ("hwaddr" in cols or "duid" in cols):
        return None
    return cols


def _read_kea(path: str, text: str, first_line: int, columns: dict[str, int] | None = None) -> ReadResult:
    out = ReadResult()
    cols = columns
    for lineno, line in enumerate(text.splitlines(), first_line):
        # One reader a line: Kea writes no multi-line field, and a line the csv module refuses (an unclosed quote,
        # a field over its limit) is one skipped line, not an exception out of the whole file.
        try:
            row = next(csv.reader((line,)), [])
        except csv.Error as exc:
            out.problem(path, lineno, f"not a CSV line: {exc}")
            continue
        if not row or not "".join(row).strip():
            continue
        if row[0].strip() == "address":
            cols = _kea_columns(row)
            if cols is None:
                out.problem(path, lineno, "Kea lease header lacks address, hwaddr or duid, valid_lifetime, expire")
            continue
        if cols is None:
            out.problem(path, lineno, "Kea lease line before the header (address,hwaddr,...)")
            continue
        lease = _kea_row(path, lineno, row, cols, out)
        if lease is not None:
            out.leases.append(lease)
    out.kea_columns = cols
    return out


def _kea_row(path: str, lineno: int, row: list[str], cols: dict[str, int], out: ReadResult) -> Lease | None:
    def col(name: str) -> str:
        i = cols.get(name)
        return row[i].replace("&#x2c", ",").strip() if i is not None and i < len(row) else ""

    if len(row) < max(cols[c] for c in _KEA_NEEDED) + 1:
        out.problem(path, lineno, f"expected {len(cols)} Kea lease fields, got {len(row)}")
        return None
    address = _address(col("address"))
    if address is None:
        out.problem(path, lineno, f"invalid address {col('address')[:60]!r}")
        return None
    try:
        valid, expire = int(col("valid_lifetime")), int(col("expire"))
    except ValueError:
        out.problem(path, lineno, "valid_lifetime and expire must be integers")
        return None
    # Kea's lifetimes are 32-bit: a larger one put the lease's start at 1970, naming every earlier event from it
    if not 0 <= valid <= 0xFFFFFFFF or not 0 <= expire <= MAX_US // US:
        out.problem(path, lineno, f"lifetime {valid} / expire {expire} out of range")
        return None
    # cltt (the last renewal) = expire - valid_lifetime; a lifetime of 0xffffffff is "infinite".
    end = MAX_US if valid == 0xFFFFFFFF else expire * US
    start = max(0, expire - valid) * US
    raw_mac = col("hwaddr")
    mac = normal_mac(raw_mac) or ""
    if raw_mac and not mac:
        out.problem(path, lineno, f"invalid hwaddr {raw_mac[:60]!r}")
        return None
    client_id = _hex_id(col("client_id") or col("duid"))
    return Lease(address, start, max(start, end), mac, normal_hostname(col("hostname")), client_id, f"{path}:{lineno}")


# dhcpd.leases: blocks "lease ADDRESS { statement; ... }"; times "W YYYY/MM/DD HH:MM:SS" (UTC), "epoch N" or "never".
_DHCPD_TIME = re.compile(r"(?:\d\s+)?(\d{4})/(\d{1,2})/(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})")
# Possessive: a tail with no terminator (a file cut short, spaces, NULs) fails once, not at every split of it.
_STATEMENT = re.compile(r'\s*+([^;{}"]*+(?:"(?:[^"\\]|\\.)*+"[^;{}"]*+)*+)([;{}])')


_COMMENT = re.compile(r"(?m)^[ \t\r\f\v]*#.*$")  # not \s, which also runs across newlines: quadratic in blank lines


def _dhcpd_time(value: str) -> int | None:
    v = value.strip()
    if v == "never":
        return MAX_US
    if v.startswith("epoch "):
        try:
            n = int(v.split()[1])
        except (ValueError, IndexError):
            return None
        return n * US if 0 <= n <= MAX_US // US else None
    m = _DHCPD_TIME.fullmatch(v)
    if m is None:
        return None
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        dt = datetime(y, mo, d, h, mi, sec, tzinfo=UTC)
    except ValueError:
        return None
    return int(dt.timestamp()) * US


def _unquote(value: str) -> str:
    v = value.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        v = v[1:-1]
    return v


def _dhcpd_uid(value: str) -> str:
    """``uid "\\001\\252..."`` (octal escapes) or ``uid 01:aa:...`` -> hex octets."""
    v = value.strip()
    if not v.startswith('"'):
        return _hex_id(v)
    raw = _unquote(v)
    data = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == "\\" and _OCTAL.fullmatch(raw, i + 1, i + 4):
            data.append(int(raw[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        elif raw[i] == "\\" and i + 1 < len(raw):
            data.append(ord(raw[i + 1]) & 0xFF)
            i += 2
        else:
            data.append(ord(raw[i]) & 0xFF)
            i += 1
    return ":".join(f"{b:02x}" for b in data)


def _read_dhcpd(path: str, text: str) -> ReadResult:
    out = ReadResult()
    lineno = 1
    depth = 0
    current: dict[str, str] | None = None
    block_line = 0
    pos = 0
    # Comments are whole lines in dhcpd.leases; strip them keeping the line count.
    body = _COMMENT.sub("", text)
    # Each statement matched where the last one ended: a search from every position (finditer) rescanned the whole
    # tail for each when it held no terminator (a file cut short, a crash's NUL bytes): minutes for 64 KB.
    while (m := _STATEMENT.match(body, pos)) is not None:
        lineno += body.count("\n", pos, m.end())
        pos = m.end()
        stmt, end = " ".join(m.group(1).split()), m.group(2)
        if end == "{":
            depth += 1
            if depth == 1 and stmt.startswith("lease "):
                current, block_line = {"address": stmt[6:].strip()}, lineno
            continue
        if end == "}":
            if depth == 1 and current is not None:
                lease = _dhcpd_lease(path, block_line, current, out)
                if lease is not None:
                    out.leases.append(lease)
                current = None
            depth = max(0, depth - 1)
            continue
        if current is None or depth != 1:
            continue
        for key in ("starts", "ends", "hardware", "uid", "client-hostname", "binding state"):
            if stmt.startswith(key + " "):
                current.setdefault(key, stmt[len(key) + 1 :])
    if depth or body[pos:].strip():
        out.problem(path, lineno, "unterminated lease block at the end of the file (a write in progress?)")
    return out


def _dhcpd_lease(path: str, lineno: int, block: dict[str, str], out: ReadResult) -> Lease | None:
    address = _address(block["address"])
    if address is None:
        out.problem(path, lineno, f"invalid lease address {block['address'][:60]!r}")
        return None
    start = _dhcpd_time(block.get("starts", ""))
    end = _dhcpd_time(block.get("ends", "never"))
    if start is None or end is None:
        out.problem(path, lineno, f"lease {address}: starts/ends must be 'W YYYY/MM/DD HH:MM:SS', 'epoch N' or never")
        return None
    mac = ""
    hw = block.get("hardware", "").split()
    if len(hw) == 2:
        mac = normal_mac(hw[1]) or ""
        if not mac:
            out.problem(path, lineno, f"lease {address}: invalid hardware address {hw[1][:60]!r}")
            return None
    if block.get("binding state", "active").split()[0] in ("free", "backup") and not mac:
        return None  # a free lease nobody held
    hostname = normal_hostname(_unquote(block.get("client-hostname", "")))
    client_id = _dhcpd_uid(block["uid"]) if "uid" in block else ""
    return Lease(address, start, max(start, end), mac, hostname, client_id, f"{path}:{lineno}")


def _read_dnsmasq(path: str, text: str, seen_at_us: int) -> ReadResult:
    out = ReadResult()
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "duid":
            continue
        if len(fields) != 5 or not _DIGITS.fullmatch(fields[0]):
            out.problem(path, lineno, "expected 'expiry mac address hostname clientid'")
            continue
        expiry = int(fields[0])
        address = _address(fields[2])
        if address is None:
            out.problem(path, lineno, f"invalid address {fields[2][:60]!r}")
            continue
        mac = ""
        if ":" in address:  # DHCPv6 lines: "expiry iaid address hostname duid"
            client_id = _hex_id(fields[4]) if fields[4] != "*" else ""
        else:
            mac = normal_mac(fields[1]) or ""
            if not mac:
                out.problem(path, lineno, f"invalid MAC {fields[1][:60]!r}")
                continue
            client_id = _hex_id(fields[4]) if fields[4] != "*" else ""
        end = MAX_US if expiry == 0 else min(MAX_US, expiry * US)
        hostname = normal_hostname(fields[3]) if fields[3] != "*" else ""
        start = min(seen_at_us, end)
        out.leases.append(Lease(address, start, end, mac, hostname, client_id, f"{path}:{lineno}"))
    return out


class LeaseBook:
    """Every lease learned, per address, sorted by start; renewals of one holder merged into one span."""

    def __init__(self, max_leases: int = DEFAULT_MAX_LEASES) -> None:
        self.max_leases = max_leases
        self._spans: dict[str, list[Lease]] = {}
        self._starts: dict[str, list[int]] = {}
        self.count = 0
        self.dropped = 0
        self.version = 0  # one more at each change: what ``span`` answered before may no longer hold

    def __len__(self) -> int:
        return self.count

    def add(self, lease: Lease) -> None:
        spans = self._spans.setdefault(lease.address, [])
        starts = self._starts.setdefault(lease.address, [])
        i = bisect.bisect_right(starts, lease.start_us)
        # The same holder's span that this one renews or repeats (it starts inside it): extend it.
        if i > 0 and spans[i - 1].holder == lease.holder and lease.start_us <= spans[i - 1].end_us:
            prev = spans[i - 1]
            if lease.end_us > prev.end_us:
                spans[i - 1] = replace(prev, end_us=lease.end_us)
                self.version += 1
            return
        # A span of the same holder that starts inside this one (a file read out of order): absorb it.
        while i < len(spans) and spans[i].holder == lease.holder and spans[i].start_us <= lease.end_us:
            lease = replace(lease, end_us=max(lease.end_us, spans[i].end_us))
            del spans[i], starts[i]
            self.count -= 1
        spans.insert(i, lease)
        starts.insert(i, lease.start_us)
        self.count += 1
        self.version += 1
        if self.count > self.max_leases:
            self._trim()

    def _trim(self) -> None:
        """Drop the spans that ended first until a tenth of the room is free again (amortised)."""
        self.version += 1
        keep = self.max_leases * 9 // 10
        ends = sorted(s.end_us for spans in self._spans.values() for s in spans)
        cut = ends[self.count - keep - 1]
        for address in list(self._spans):
            spans = self._spans[address]
            kept = [s for s in spans if s.end_us > cut]
            self.dropped += len(spans) - len(kept)
            self.count -= len(spans) - len(kept)
            if kept:
                self._spans[address], self._starts[address] = kept, [s.start_us for s in kept]
            else:
                del self._spans[address], self._starts[address]

    def copy(self) -> LeaseBook:
        """A book that can take new leases while this one keeps answering (the ``Lease`` objects are shared)."""
        other = LeaseBook(self.max_leases)
        other._spans = {a: list(spans) for a, spans in self._spans.items()}
        other._starts = {a: list(starts) for a, starts in self._starts.items()}
        other.count, other.dropped = self.count, self.dropped
        return other

    def at(self, address: str, ts_us: int) -> Lease | None:
        """The lease that held ``address`` (canonical spelling, as ``str(ip_address(...))``) at ``ts_us``."""
        return self.span(address, ts_us)[0]

    def span(self, address: str, ts_us: int) -> tuple[Lease | None, int, int]:
        """``(lease, lo, hi)``: the lease that held ``address`` at ``ts_us`` (the latest span started at or before
        it, if it has not ended; else None), and the interval ``[lo, hi)`` over which that answer is the same (the
        lease's own span up to the next holder's start, or the gap around ``ts_us``), so that a caller can keep it
        for the next events of that address instead of searching again. ``at`` is its first item."""
        starts = self._starts.get(address)
        if not starts:
            return None, -SPAN_EDGE, SPAN_EDGE
        i = bisect.bisect_right(starts, ts_us) - 1
        if i < 0:
            return None, -SPAN_EDGE, starts[0]
        nxt = starts[i + 1] if i + 1 < len(starts) else SPAN_EDGE
        lease = self._spans[address][i]
        if ts_us < lease.end_us:
            return lease, starts[i], min(lease.end_us, nxt)
        return None, max(starts[i], lease.end_us), nxt

    def addresses(self) -> int:
        return len(self._spans)


@dataclass
class _FileState:
    key: tuple[int, int, int, int] = (0, 0, 0, 0)  # (dev, ino, size, mtime_ns)
    offset: int = 0  # bytes read (Kea appends: the next read starts here)
    lines: int = 0  # lines read, to number appended lines
    head: bytes = b""  # the first bytes: a rewritten file with the same inode and a larger size is told apart
    kea_columns: dict[str, int] | None = None


_HEAD_BYTES = 64


@dataclass
class LeaseFiles:
    """The ``--leases`` files followed as they change, into one ``LeaseBook``."""

    paths: list[str]
    book: LeaseBook = field(default_factory=LeaseBook)
    skipped: int = 0  # malformed lines over all reads
    problems: list[str] = field(default_factory=list)  # the latest reads' problems (bounded)
    # Told each problem as it is found (the analyst logs them; ``enforcer report`` prints its own summary)
    on_problem: Callable[[str], None] | None = None
    _files: dict[str, _FileState] = field(default_factory=dict)

    def refresh(self) -> int:
        """Blocking: re-read the files that changed; returns the number of leases read. A file that cannot be read
        is a problem (kept, the last good leases stay). The new leases go into a copy of the book that replaces
        ``book`` when done, so a reader in another thread always sees a whole book."""
        changed = [p for p in self.paths if self._changed(p)]
        if not changed:
            return 0
        book = self.book.copy() if len(self.book) else LeaseBook(self.book.max_leases)
        read, ok = 0, False
        for path in changed:
            try:
                read += self._refresh_one(path, book)
                ok = True
            except OSError as exc:
                self._problem(f"{path}:1: cannot read lease file: {exc.strerror or exc}")
            except (ValueError, csv.Error) as exc:  # a parser's bug must not take the gauges and cases down with it
                self._problem(f"{path}:1: cannot parse lease file: {exc}")
        if ok:
            self.book = book
        return read

    def _changed(self, path: str) -> bool:
        state = self._files.get(path)
        if state is None:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return True  # reported by the read
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != state.key

    def _problem(self, message: str) -> None:
        self.problems.append(message)
        del self.problems[:-MAX_PROBLEMS]
        if self.on_problem is not None:
            self.on_problem(message)

    def _refresh_one(self, path: str, book: LeaseBook) -> int:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        state = self._files.setdefault(path, _FileState())
        if key == state.key:
            return 0
        if not stat.S_ISREG(st.st_mode):
            # A FIFO would block the open (and the thread) until something writes to it.
            self._problem(f"{path}:1: cannot read lease file: not a regular file")
            state.key = key
            return 0
        if st.st_size > MAX_FILE_BYTES:
            self._problem(f"{path}:1: lease file of {st.st_size} bytes is over {MAX_FILE_BYTES}: not read")
            state.key = key
            return 0
        # Non-blocking: a FIFO swapped in after the stat cannot block the open either (its read then finds nothing).
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
            head = fh.read(_HEAD_BYTES)
            grown = state.key[:2] == key[:2] and st.st_size >= state.offset and head[: len(state.head)] == state.head
            append = grown and state.kea_columns is not None
            start = state.offset if append else 0
            fh.seek(start)
            data = fh.read(st.st_size - start)
        if append or detect(data[:4096].decode("utf-8", "replace")) == KEA:
            # Kea appends: only whole lines (it may be writing the last one now); the rest is read next time.
            data = data[: data.rfind(b"\n") + 1]
        text = data.decode("utf-8", "replace")
        if append:
            result = _read_kea(path, text, state.lines + 1, state.kea_columns)
        else:
            result = read_leases(path, text, st.st_mtime_ns // 1000)
            state.offset = state.lines = 0
        # The header _read_kea found (after a BOM, a bad first line): the file's next lines are read as appended.
        state.kea_columns = result.kea_columns
        state.offset += len(data)
        state.lines += text.count("\n")
        state.key, state.head = key, head
        for lease in result.leases:
            book.add(lease)
        self.skipped += result.skipped
        for p in result.problems:
            self._problem(p)
        return len(result.leases)


def load(paths: Iterable[str], max_leases: int = DEFAULT_MAX_LEASES) -> LeaseFiles:
    """The lease files read once (``enforcer report``); ConfigError for a missing or unreadable one, or one that is
    no lease file at all (a wrong path would otherwise name every device by its bare address, silently)."""
    files = LeaseFiles([str(p) for p in paths], LeaseBook(max_leases))
    for path in files.paths:
        if not Path(path).exists():
            raise ConfigError(f"{path}:1: no such lease file")
        if not Path(path).is_file():
            raise ConfigError(f"{path}:1: cannot read lease file: not a regular file")
    files.refresh()
    unreadable = [
        p
        for p in files.problems
        if "cannot read lease file" in p or "cannot parse lease file" in p or p.endswith(NOT_LEASES)
    ]
    if unreadable:
        raise ConfigError(unreadable[0])
    return files
