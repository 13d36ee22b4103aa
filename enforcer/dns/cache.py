"""Bounded TTL cache of forwarded answers, kept as wire bytes with the TTL positions noted.

- ``Cache(max_entries, max_bytes, clock=time.monotonic)``: LRU (``OrderedDict``: eviction is O(1)) bounded by
  entries and by stored bytes. Every age and expiry (positive and negative answers alike) is read from ``clock``,
  so tests step a fake clock instead of sleeping through TTLs.
- ``cache_key(q, data)``: (name, type, class, EDNS/DO/CD flags): answers differ by DO (DNSSEC records) and by whether
  the client speaks EDNS (OPT record, size), so those are part of the key.
- ``Cache.clamp(reply)``: the reply with every TTL brought into [``min_ttl``, ``max_ttl``] (``--min-cache-ttl``,
  ``--max-cache-ttl``) after a TTL with the top bit set is read as 0 (RFC 2181 section 8); the chain serves and
  caches the clamped reply, so a client never sees a TTL the cache would not honour.
- ``Cache.store(key, reply, rule)``: keep an upstream reply for min(TTL) seconds; negative answers (NXDOMAIN and
  NODATA) for the SOA's min(TTL, MINIMUM) (RFC 2308), at most ``NEGATIVE_MAX_TTL`` and ``max_ttl``; SERVFAIL,
  truncated and SOA-less negative answers are not kept, nor answers carrying an EDNS Client Subnet option (scoped
  to one client's subnet: the key has no subnet, and the chain strips ECS from forwarded queries, wire.strip_ecs).
  ``rule`` is set when response policy blocked the answer: a hit then replays the blocked answer (and its event).
- ``Cache.lookup(key)`` + ``Cache.reply(entry, data, q)``: the reply for query ``data`` with its id and question case,
  TTLs counted down by the whole seconds elapsed; patched bytes are memoised per second so a hot entry costs one join.
- Hot answers: ``Cache.remember(data, key, entry, q)`` notes that the packet ``data`` (every byte after its id) was
  answered from ``entry``; the same bytes are then answered again with one dict look-up, before any parsing (the
  chain's step 0c; it decides which answers may be remembered): ``hot_get(packet)`` (``packet``: ``data[2:]``) is
  that look-up (the table's own ``get``: a packet that was never remembered, such as a blocked one, costs no
  method call) and ``hot_reply(h, packet, data)`` the answer from what it found. A remembered packet stops
  being answered when its entry leaves the cache (expired, evicted, replaced, cleared); the table holds at most
  ``HOT_MAX`` packets and is emptied when full.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..policy.model import Rule
from . import wire
from .wire import Question

MAX_TTL = 86_400  # --max-cache-ttl default: one day
HOT_MAX = 20_000  # remembered packets (hot answers); ~250 bytes each
NEGATIVE_MAX_TTL = 3_600  # RFC 2308 suggests at most 1-3 hours
_TTL = struct.Struct("!I")


def _ttl(raw: int, low: int, high: int) -> int:
    # RFC 2181 section 8: a TTL with the most significant bit set is to be treated as zero.
    return max(min(0 if raw & 0x8000_0000 else raw, high), low)


def _has_ecs(reply: bytes, rdata_at: int, rdlen: int) -> bool:
    i, end = rdata_at, rdata_at + rdlen
    while i + 4 <= end:
        code, length = struct.unpack_from("!HH", reply, i)
        if code == wire.ECS_OPTION:
            return True
        i += 4 + length
    return False


def cache_key(q: Question, data: bytes) -> tuple[str, int, int, int]:
    return (q.key, q.qtype, q.qclass, (2 if q.do else 1 if q.edns else 0) | (data[3] & 0x10))


class Entry:
    __slots__ = ("age", "dead", "expires", "offsets", "patched", "qend", "rule", "size", "start", "ttls", "wire")

    def __init__(
        self,
        wire_: bytes,
        qend: int,
        offsets: tuple[int, ...],
        ttls: tuple[int, ...],
        ttl: int,
        rule: Rule | None,
        now: float,
    ) -> None:
        self.wire = wire_
        self.qend = qend
        self.offsets = offsets
        self.ttls = ttls
        self.start = now
        self.expires = now + ttl
        self.rule = rule
        self.age = 0
        self.patched = wire_
        self.dead = False  # out of the cache: a remembered packet must not be answered from it any more
        # + the key, this object, its tuples and the LRU node: ~600 bytes measured with tracemalloc (CPython 3.11).
        self.size = len(wire_) + 600


class Cache:
    """LRU + TTL cache of reply wire bytes."""

    def __init__(
        self,
        max_entries: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        *,
        min_ttl: int = 0,
        max_ttl: int = MAX_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.bytes = 0
        self._d: OrderedDict[Any, Entry] = OrderedDict()
        # packet bytes after the id -> [entry, the patched bytes the tail was made from, reply after the id, key,
        # end of the packet's question]
        # (Never rebound, only cleared: ``hot_get`` is its bound ``get``.)
        self._hot: dict[bytes, list[Any]] = {}
        self.hot_get = self._hot.get

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        for entry in self._d.values():
            entry.dead = True
        self._d.clear()
        self._hot.clear()
        self.bytes = 0

    def remember(self, data: bytes, key: Any, entry: Entry, q: Question) -> None:
        """Answer the packet ``data`` (all but its id) from ``entry`` from now on (``hot_get``, ``hot_reply``)."""
        hot = self._hot
        if len(hot) >= HOT_MAX:
            hot.clear()
        p = entry.patched
        hot[data[2:]] = [entry, p, p[2:12] + data[12 : q.qend] + p[entry.qend :], key, q.qend]

    def hot_reply(self, h: list[Any], packet: bytes, data: bytes) -> bytes | None:
        """The reply to the remembered packet ``data`` (``packet``: its bytes after the id, the key; ``h``: what
        ``hot_get(packet)`` found) with its id and question bytes and the entry's TTLs now; None when it is no
        longer answered (its entry left the cache)."""
        entry = h[0]
        now = self.clock()
        if entry.dead or now >= entry.expires:
            del self._hot[packet]
            return None
        self._d.move_to_end(h[3])  # the LRU order the slow path would keep
        age = int(now - entry.start)
        if age != entry.age:
            entry.age = age
            entry.patched = self._patch(entry, age)
        p = entry.patched
        if h[1] is not p:  # the TTLs moved on: rebuild the tail once
            h[1], h[2] = p, p[2:12] + data[12 : h[4]] + p[entry.qend :]
        tail: bytes = h[2]
        return data[:2] + tail

    def lookup(self, key: Any) -> Entry | None:
        """The live entry for ``key`` (refreshing its LRU position), or None."""
        entry = self._d.get(key)
        if entry is None:
            return None
        now = self.clock()
        if now >= entry.expires:
            self._remove(key)
            return None
        self._d.move_to_end(key)
        age = int(now - entry.start)
        if age != entry.age:
            entry.age = age
            entry.patched = self._patch(entry, age)
        return entry

    @staticmethod
    def reply(entry: Entry, data: bytes, q: Question) -> bytes:
        """The cached reply for query ``data``: its id and question bytes (0x20 case), the entry's header and rest."""
        p = entry.patched
        return data[:2] + p[2:12] + data[12 : q.qend] + p[entry.qend :]

    @staticmethod
    def _patch(entry: Entry, age: int) -> bytes:
        buf = bytearray(entry.wire)
        for off, ttl in zip(entry.offsets, entry.ttls, strict=True):
            _TTL.pack_into(buf, off, max(ttl - age, 0))
        return bytes(buf)

    def clamp(self, reply: bytes) -> bytes:
        """``reply`` with every record's TTL in [min_ttl, max_ttl] (top bit set: 0 first); the same object when every
        TTL already is, so the common answer costs one walk and no copy. A malformed reply is returned as is."""
        try:
            resp = wire.walk_records(reply)
        except wire.WireError:
            return reply
        low, high = self.min_ttl, self.max_ttl
        buf: bytearray | None = None
        for rec in resp.records:
            if rec.rtype == wire.QTYPE_OPT:
                continue  # its "TTL" field holds EDNS flags
            ttl = _ttl(rec.ttl, low, high)
            if ttl != rec.ttl:
                if buf is None:
                    buf = bytearray(reply)
                _TTL.pack_into(buf, rec.ttl_at, ttl)
        return reply if buf is None else bytes(buf)

    def _remove(self, key: Any) -> None:
        entry = self._d.pop(key, None)
        if entry is not None:
            entry.dead = True
            self.bytes -= entry.size

    def store(self, key: Any, reply: bytes, rule: Rule | None = None, *, ttl: int | None = None) -> bool:
        """Cache ``reply`` (an upstream answer for the query of ``key``). Returns whether it was kept."""
        if self.max_entries <= 0:
            return False
        try:
            resp = wire.walk_records(reply)
        except wire.WireError:
            return False
        if resp.tc or resp.rcode not in (wire.RCODE_NOERROR, wire.RCODE_NXDOMAIN):
            return False
        offsets: list[int] = []
        ttls: list[int] = []
        has_answer = False
        soa_ttl: int | None = None
        low, high = self.min_ttl, self.max_ttl
        for rec in resp.records:
            if rec.rtype == wire.QTYPE_OPT:
                if rec.rdlen and _has_ecs(reply, rec.rdata_at, rec.rdlen):
                    return False  # scoped to some client's subnet: never served to another client
                continue  # its "TTL" field holds EDNS flags
            offsets.append(rec.ttl_at)
            ttls.append(_ttl(rec.ttl, low, high))
            if rec.section == 0:
                has_answer = True
            elif rec.section == 1 and rec.rtype == wire.QTYPE_SOA and rec.rdlen >= 20:
                minimum = struct.unpack_from("!I", reply, rec.rdata_at + rec.rdlen - 4)[0]
                soa_ttl = min(_ttl(rec.ttl, 0, high), _ttl(minimum, 0, high))
        if ttl is None:
            if has_answer and resp.rcode == wire.RCODE_NOERROR:
                ttl = min(ttls, default=0)
            elif soa_ttl is not None:
                ttl = max(min(soa_ttl, NEGATIVE_MAX_TTL), low)
            else:
                return False  # a negative answer without SOA must not be cached (RFC 2308 section 5)
        if ttl <= 0:
            return False
        entry = Entry(reply, resp.qend, tuple(offsets), tuple(ttls), ttl, rule, self.clock())
        if entry.size > self.max_bytes:
            return False
        self._remove(key)
        d = self._d
        d[key] = entry
        self.bytes += entry.size
        while len(d) > self.max_entries or self.bytes > self.max_bytes:
            _, old = d.popitem(last=False)
            old.dead = True
            self.bytes -= old.size
        return True

    def expire(self, budget: int = 1000) -> int:
        """Drop up to ``budget`` expired entries from the LRU end (called periodically; keeps memory flat)."""
        now = self.clock()
        dropped = 0
        d = self._d
        for key in list(itertools.islice(d.keys(), budget)):
            entry = d.get(key)
            if entry is not None and entry.expires <= now:
                self._remove(key)
                dropped += 1
        return dropped
