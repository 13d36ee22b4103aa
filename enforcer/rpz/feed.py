"""The RPZ feed: serve the policy as a zone by AXFR/IXFR, bump the serial on every change, NOTIFY the secondaries.

- ``RpzFeed.update(policy)``: rebuild the records; when they changed, bump the SOA serial, remember the difference
  (for IXFR, RFC 1995) and return True so the caller sends NOTIFY.
- ``RpzFeed.answer(wire, client, tcp)``: the response message(s) for a query inside the zone: SOA/NS/any record,
  AXFR (TCP only), IXFR (incremental when the client's serial is in the history, else a full transfer), each signed
  with TSIG (HMAC-SHA256) when a key is configured. Clients outside ``--transfer-allow`` (a ``NetworkSet`` from
  enforcer/net.py, which the resolver's TCP admission shares) get REFUSED, decided before the packet is parsed. A
  packet the feed does not answer (a response, an opcode other than QUERY, no question) gives ``[]``: the caller
  drops and counts it. Every log line a client can trigger goes through a ``RateLimitedLog`` (at most one a minute
  per kind), so a flood of bad packets cannot fill the log.
- ``RpzFeed.notify_all()``: NOTIFY (RFC 1996) every ``--notify`` target over UDP, retried until acknowledged.

Message handling uses dnspython: zone transfers need multi-message TSIG and exact IXFR framing, which dnspython
implements and tests; the resolver's hot path does not come through here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring

from ..dns.observe import RateLimitedLog
from ..net import IPNetwork, NetworkSet
from ..policy.enforcement import to_us
from ..policy.matcher import Policy
from .zone import RpzRecord, policy_records, rpz_mode

log = logging.getLogger("enforcer.rpz")
ratelog = RateLimitedLog(log)

RECORD_TTL = 60
SOA_TIMERS = (60, 30, 604800, 30)  # refresh, retry, expire, minimum: secondaries re-check every minute
RECORDS_PER_MESSAGE = 400
HISTORY = 32
NOTIFY_TRIES = 5


Step = tuple[int, int, frozenset[RpzRecord], frozenset[RpzRecord]]  # (from serial, to serial, deleted, added)


@dataclass(frozen=True, slots=True)
class _Zone:
    serial: int
    records: frozenset[RpzRecord]
    by_owner: dict[str, list[RpzRecord]]
    history: tuple[Step, ...]  # oldest first, at most HISTORY steps


@dataclass(frozen=True, slots=True)
class TsigKey:
    name: str
    secret: str  # base64
    algorithm: str = "hmac-sha256"

    @classmethod
    def parse(cls, spec: str) -> TsigKey:
        """``NAME:BASE64SECRET`` or ``hmac-sha256:NAME:BASE64SECRET``."""
        parts = spec.split(":")
        if len(parts) == 3:
            alg, name, secret = parts
        elif len(parts) == 2:
            alg, (name, secret) = "hmac-sha256", parts
        else:
            raise ValueError("TSIG key must be NAME:BASE64SECRET or hmac-sha256:NAME:BASE64SECRET")
        if alg.lower() != "hmac-sha256":
            raise ValueError(f"unsupported TSIG algorithm {alg!r} (hmac-sha256 only)")
        key = cls(name.rstrip(".") + ".", secret, "hmac-sha256")
        key.keyring()  # validates the base64 secret
        return key

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        try:
            return dns.tsigkeyring.from_text({self.name: (self.algorithm, self.secret)})
        except Exception as exc:
            raise ValueError(f"invalid TSIG secret for {self.name}: {exc}") from None


class RpzFeed:
    def __init__(
        self,
        zone: str,
        *,
        mode: str = "nxdomain",
        transfer_allow: Sequence[IPNetwork | str] = ("127.0.0.0/8", "::1/128"),
        notify: Sequence[tuple[str, int]] = (),
        tsig: TsigKey | None = None,
    ) -> None:
        self.origin = dns.name.from_text(zone if zone.endswith(".") else zone + ".")
        # What the chain searches a packet for, to tell one aimed at the zone without parsing it.
        self.origin_wire = bytes(self.origin.to_wire() or b"").lower()
        rpz_mode(mode)  # ValueError now rather than at the first update
        self.mode = mode
        self.transfer_allow = NetworkSet(transfer_allow)
        self.notify_targets = tuple(notify)
        self.tsig = tsig
        self.keyring = tsig.keyring() if tsig else None
        # The zone is one immutable snapshot swapped by a single assignment: ``update`` may run in the policy
        # reload thread while the event loop answers transfers from the previous snapshot.
        self.zone = _Zone(0, frozenset(), {}, ())
        self._notify_tasks: set[asyncio.Task[None]] = set()
        self.records_per_message = RECORDS_PER_MESSAGE

    @property
    def serial(self) -> int:
        return self.zone.serial

    @property
    def records(self) -> frozenset[RpzRecord]:
        return self.zone.records

    # -- content ----------------------------------------------------------------------------------------------------
    def update(self, policy: Policy, at: datetime | None = None, changed_at: float | None = None) -> bool:
        """Load the policy's records as of ``at`` (default now); True when the zone changed (serial bumped).

        Call it again periodically: an app whose effective date passes changes from passthru to blocking.
        ``changed_at`` (unix time of the latest blocklist change) makes the serial the same in every worker process
        that loads the same files; without it the current time is used.
        """
        now = at or datetime.now(UTC)
        new = frozenset(policy_records(policy, self.mode, now, self.origin.to_text()))
        old = self.zone
        if old.serial and new == old.records:
            return False
        # Serial: the time of the change that produced this content (the latest file change or effective date
        # passed), so that workers agree; at least old + 1. RFC 1982 arithmetic is fine for decades at this rate.
        enforcement = policy.enforcement
        monitor = enforcement.monitor_apps(to_us(now))
        passed = [enforcement.cutover(name).at for name in policy.apps if name not in monitor]
        base = int(max([changed_at if changed_at is not None else time.time(), *passed]))
        new_serial = max(old.serial + 1, base) & 0xFFFFFFFF
        history = old.history
        if old.serial:
            history = (*history, (old.serial, new_serial, old.records - new, new - old.records))[-HISTORY:]
        by_owner: dict[str, list[RpzRecord]] = {}
        for r in new:
            by_owner.setdefault(r.owner, []).append(r)
        self.zone = _Zone(new_serial, new, by_owner, history)
        log.info("RPZ zone %s serial %d: %d records", self.origin, new_serial, len(new))
        return True

    def in_zone(self, qname: str) -> bool:
        try:
            return dns.name.from_text(qname).is_subdomain(self.origin)
        except dns.exception.DNSException:
            return False

    def _soa(self, serial: int) -> dns.rrset.RRset:
        refresh, retry, expire, minimum = SOA_TIMERS
        text = f"localhost. hostmaster.localhost. {serial} {refresh} {retry} {expire} {minimum}"
        return dns.rrset.from_text(self.origin, RECORD_TTL, "IN", "SOA", text)

    def _ns(self) -> dns.rrset.RRset:
        return dns.rrset.from_text(self.origin, RECORD_TTL, "IN", "NS", "localhost.")

    def _rrsets(self, records: frozenset[RpzRecord] | list[RpzRecord]) -> list[dns.rrset.RRset]:
        out = []
        for r in sorted(records):
            owner = dns.name.from_text(r.owner, self.origin)
            out.append(dns.rrset.from_text(owner, RECORD_TTL, "IN", r.rtype, r.rdata))
        return out

    # -- queries ----------------------------------------------------------------------------------------------------
    def allowed(self, client: str) -> bool:
        """Whether the peer address ``client`` (``%zone`` and IPv4-mapped forms included) may transfer the zone."""
        return self.transfer_allow.contains_host(client)

    def answer(self, wire: bytes, client: str, tcp: bool) -> list[bytes] | None:
        """Response messages for a query inside the zone, None when the packet is not for this zone (the resolver
        handles it), ``[]`` for a packet aimed at the zone that gets no answer (dropped; the caller counts it)."""
        if len(wire) < 12 or wire[2] & 0x80:
            return []  # a response (QR=1) is never answered: no reflection loops, no parse
        if (wire[2] >> 3) & 0x0F != dns.opcode.QUERY:
            return []  # NOTIFY, UPDATE, ...: this feed is a primary that takes no updates
        if not self.allowed(client):
            # Only the question is read (no TSIG processing): such a client learns nothing about keys or the zone.
            try:
                name = dns.message.from_wire(wire, question_only=True).question[0].name
            except (dns.exception.DNSException, IndexError):
                return None  # not a readable query: the resolver's parser answers it (FORMERR)
            if not name.is_subdomain(self.origin):
                return None
            ratelog("refused", logging.WARNING, "RPZ: refused %s from %s (not in --transfer-allow)", name, client)
            refused = bytearray(wire[:12])
            refused[2] = 0x80 | (wire[2] & 0x79)
            refused[3] = dns.rcode.REFUSED
            refused[4:12] = bytes(8)
            return [bytes(refused)]
        try:
            query = dns.message.from_wire(wire, keyring=self.keyring, question_only=False)
        except dns.message.UnknownTSIGKey:
            return [self._error(wire, dns.rcode.NOTAUTH)]
        except (dns.tsig.BadSignature, dns.tsig.BadTime, dns.tsig.PeerError):
            return [self._error(wire, dns.rcode.NOTAUTH)]
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        q = query.question[0]
        if not q.name.is_subdomain(self.origin):
            return None
        if self.keyring is not None and not query.had_tsig and q.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            ratelog("unsigned", logging.WARNING, "RPZ: refused unsigned %s from %s (TSIG required)",
                    dns.rdatatype.to_text(q.rdtype), client)  # fmt: skip
            return [self._rcode(query, dns.rcode.REFUSED)]
        zone = self.zone
        if q.rdtype == dns.rdatatype.AXFR:
            return self._axfr(query, zone) if tcp else [self._rcode(query, dns.rcode.REFUSED)]
        if q.rdtype == dns.rdatatype.IXFR:
            return self._ixfr(query, zone, tcp)
        return [self._lookup(query, zone)]

    def _response(self, query: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(query)
        r.flags |= dns.flags.AA
        return r

    def _rcode(self, query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
        r = dns.message.make_response(query)
        r.set_rcode(rcode)
        return r.to_wire()

    def _error(self, wire: bytes, rcode: dns.rcode.Rcode) -> bytes:
        # A query whose TSIG failed: answer unsigned, with the header and question only.
        try:
            query = dns.message.from_wire(wire, question_only=True)
        except dns.exception.DNSException:
            return b""
        r = dns.message.make_response(query)
        r.set_rcode(rcode)
        return r.to_wire()

    def _lookup(self, query: dns.message.Message, zone: _Zone) -> bytes:
        q = query.question[0]
        r = self._response(query)
        if q.name == self.origin and q.rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            r.answer.append(self._soa(zone.serial))
        elif q.name == self.origin and q.rdtype == dns.rdatatype.NS:
            r.answer.append(self._ns())
        else:
            rel = q.name.relativize(self.origin).to_text()
            matches = zone.by_owner.get(rel, [])
            wanted = [x for x in matches if q.rdtype in (dns.rdatatype.ANY, dns.rdatatype.from_text(x.rtype))]
            r.answer.extend(self._rrsets(wanted))
            if not matches and q.name != self.origin:
                r.set_rcode(dns.rcode.NXDOMAIN)
            if not wanted:
                r.authority.append(self._soa(zone.serial))
        return r.to_wire()

    def _messages(self, query: dns.message.Message, rrsets: list[dns.rrset.RRset]) -> list[bytes]:
        """Split a transfer into messages; with TSIG, every message is signed in one chained context."""
        out: list[bytes] = []
        ctx = None
        step = self.records_per_message
        for start in range(0, max(len(rrsets), 1), step):
            r = self._response(query)
            r.answer.extend(rrsets[start : start + step])
            # make_response copied the query's TSIG key; the first message signs over the query's MAC, the
            # following ones continue the chain through ctx (RFC 8945 5.3.1).
            out.append(r.to_wire(multi=True, tsig_ctx=ctx) if query.had_tsig else r.to_wire())
            ctx = getattr(r, "tsig_ctx", None)
        return out

    def _axfr(self, query: dns.message.Message, zone: _Zone) -> list[bytes]:
        soa = self._soa(zone.serial)
        return self._messages(query, [soa, self._ns(), *self._rrsets(zone.records), soa])

    def _ixfr(self, query: dns.message.Message, zone: _Zone, tcp: bool) -> list[bytes]:
        client_serial = None
        for rrset in query.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                client_serial = rrset[0].serial
        if client_serial == zone.serial:
            return self._messages(query, [self._soa(zone.serial)])
        steps: tuple[Step, ...] = ()
        if client_serial is not None:
            for i, (frm, _to, _d, _a) in enumerate(zone.history):
                if frm == client_serial:
                    steps = zone.history[i:]
                    break
        if not steps:
            if not tcp:  # RFC 1995: a UDP IXFR that cannot be answered incrementally gets the SOA only
                return self._messages(query, [self._soa(zone.serial)])
            return self._axfr(query, zone)
        if not tcp:
            return self._messages(query, [self._soa(zone.serial)])
        rrsets = [self._soa(zone.serial)]
        for frm, to, deleted, added in steps:
            rrsets.append(self._soa(frm))
            rrsets.extend(self._rrsets(deleted))
            rrsets.append(self._soa(to))
            rrsets.extend(self._rrsets(added))
        rrsets.append(self._soa(zone.serial))
        return self._messages(query, rrsets)

    # -- NOTIFY -----------------------------------------------------------------------------------------------------
    def schedule_notify(self) -> None:
        """Send NOTIFY to every target in the background (call on the event loop after ``update`` returned True)."""
        for host, port in self.notify_targets:
            task = asyncio.get_running_loop().create_task(self._notify(host, port, self.serial))
            self._notify_tasks.add(task)
            task.add_done_callback(self._notify_tasks.discard)

    async def notify_all(self) -> None:
        await asyncio.gather(*(self._notify(h, p, self.serial) for h, p in self.notify_targets))

    async def _notify(self, host: str, port: int, serial: int) -> None:
        msg = dns.message.make_query(self.origin, dns.rdatatype.SOA)
        msg.flags = dns.flags.AA  # before set_opcode: the opcode lives in the flags word
        msg.set_opcode(dns.opcode.NOTIFY)
        msg.answer.append(self._soa(serial))
        if self.keyring is not None and self.tsig is not None:
            msg.use_tsig(self.keyring, keyname=self.tsig.name)
        wire = msg.to_wire()
        loop = asyncio.get_running_loop()
        for attempt in range(NOTIFY_TRIES):
            # A datagram endpoint rather than loop.sock_*: uvloop (used by enforcer dns) does not implement those.
            reply: asyncio.Future[bytes] = loop.create_future()
            transport = None
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda fut=reply: _Reply(fut),  # type: ignore[misc]
                    remote_addr=(host, port),
                )
                transport.sendto(wire)
                data = await asyncio.wait_for(reply, 2.0)
                if data[:2] == wire[:2]:
                    log.info("RPZ: NOTIFY serial %d acknowledged by %s:%d", serial, host, port)
                    return
            except (TimeoutError, OSError) as exc:
                log.debug("RPZ: NOTIFY to %s:%d attempt %d: %r", host, port, attempt + 1, exc)
            finally:
                if transport is not None:
                    transport.close()
            await asyncio.sleep(min(2**attempt, 10))
        log.warning("RPZ: NOTIFY serial %d to %s:%d not acknowledged after %d tries", serial, host, port, NOTIFY_TRIES)


class _Reply(asyncio.DatagramProtocol):
    """Resolves ``future`` with the first datagram received (the NOTIFY acknowledgement)."""

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: the secondary is not there (yet)
        if not self.future.done():
            self.future.set_exception(exc)
