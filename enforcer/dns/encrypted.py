"""Encrypted DNS listeners: what DoT, DoH and DoQ share (``Gate``) and DNS over TLS itself (``DotServer``).

- ``EncryptedLimits``: handshake timeout, idle timeout, global and per-source connection caps, HTTP/2 streams.
- ``Gate``: one per resolver, shared by every encrypted listener. ``admit(transport, host)`` decides from the source
  address alone, before any TLS or DNS byte is read: a source outside ``--allow`` is closed (unless
  ``--require-client-id``, where the ClientID is the access control and any source may try), a source holding
  ``max_per_source`` connections (IPv6: per /64, server.source_key) is closed, and beyond ``max_connections`` new
  ones are closed. ``release(host)`` gives the slot back. ``client_ok(transport, cid)``: an invalid ClientID is
  refused; under ``--require-client-id`` so is a missing or unknown one. Everything is counted in
  ``enforcer_dns_encrypted_connections_total{transport,outcome}`` and queries in
  ``enforcer_dns_encrypted_queries_total{transport}`` (their outcomes, as for UDP, in
  ``enforcer_dns_queries_total``).
- ``accept_loop(sock, serve)``: accepts on a listening socket; ``handshake(conn, gate, transport, ctx, factory)``:
  the TLS handshake of an admitted connection by the event loop's own TLS (``connect_accepted_socket``), bounded
  and counted (DoH).
- ``TlsProtocol`` / ``TlsListener``: TLS done in the protocol (``ssl.SSLObject`` over the plain TCP transport),
  handshake and idle timeouts by one sweep per listener, counted like ``handshake`` (DoT).
- ``DotServer`` / ``DotProtocol``: RFC 7858. Accept -> ``Gate.admit`` -> TLS in the protocol itself (an
  ``ssl.SSLObject`` over the plain TCP transport) -> 2-byte framed queries, parsed from each read as they come.
  Each query is answered as soon as its answer exists: a blocked or cached one at once (the answers of one read in
  one write), a forwarded one from its own task, so a slow upstream answer never holds back a later query on the
  same connection (RFC 7766 6.2.1.1, out-of-order answers; the message ID pairs them). At most ``MAX_INFLIGHT``
  forwarded queries per connection, and reading pauses while the client does not read its answers. An idle
  connection is a protocol object with slots and OpenSSL's state (no task, no timer, no event-loop TLS buffer;
  one sweep per listener ends idle connections and slow handshakes): the idle benchmark
  (bench/dns_encrypted_bench.sh) holds 10,000 of them.

DoH is enforcer/dns/doh.py and DoQ enforcer/dns/doq.py; the chain they all feed is enforcer/dns/chain.py
(``handle(data, addr, tcp, via)``: ``via`` carries the transport and the ClientID into the hit event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry

from ..metrics import (
    DNS_ENCRYPTED_CONNECTIONS,
    DNS_ENCRYPTED_CONNECTIONS_TOTAL,
    DNS_ENCRYPTED_QUERIES_TOTAL,
    LocalCounter,
    Metrics,
)
from . import wire
from .chain import Handler, Via
from .clientid import INVALID, KnownIds, client_id_from_sni
from .observe import RateLimitedLog
from .server import source_key
from .tls import CertSource, sni_of

log = logging.getLogger("enforcer.dns.encrypted")
ratelog = RateLimitedLog(log)

TRANSPORTS = ("dot", "doh", "doq")
CONNECTION_OUTCOMES = (
    "accepted",  # handshake done, serving
    "refused",  # source outside --allow (without --require-client-id): closed at accept
    "source_limit",  # the source already holds max_per_source connections
    "rejected",  # max_connections reached
    "handshake_timeout",
    "handshake_failed",  # not TLS, no shared version/cipher/ALPN, client rejected our certificate
    "idle_timeout",
    "client_id_refused",  # per query: invalid ClientID, or missing/unknown under --require-client-id
    "stream_limit",  # DoH/HTTP2: a stream beyond the concurrent-stream cap was refused
    "bad_request",  # a bad frame, HTTP request or DoQ stream
    "protocol_error",  # DoH/HTTP2: a connection error (enforcer/dns/h2wire.py), answered with GOAWAY and closed
)
MAX_FRAME = 16_384
READ_TIMEOUT = 3.0  # to finish an HTTP request once it began, or to take an answer (DoH)
MAX_INFLIGHT = 64  # forwarded queries per connection
WRITE_BUFFER = 64 * 1024  # unsent answers per connection before reading waits for the client to read
SWEEP = 1.0  # seconds between two looks for idle DoT connections and expired handshakes (at most)


@dataclass(frozen=True, slots=True)
class EncryptedLimits:
    max_connections: int = 10_000
    max_per_source: int = 32
    handshake_timeout: float = 5.0
    idle_timeout: float = 30.0
    h2_max_streams: int = 100


class Gate:
    """Admission, ClientID checks and the counters of every encrypted listener of one resolver."""

    def __init__(
        self,
        allowed: Callable[[str], bool],
        limits: EncryptedLimits,
        *,
        server_name: str | None = None,
        known: KnownIds | None = None,
        require_client_id: bool = False,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.allowed = allowed
        self.limits = limits
        self.server_name = server_name
        self.known = known
        self.require = require_client_id
        self.connections = 0
        self.open = dict.fromkeys(TRANSPORTS, 0)
        self.per_source: dict[str, int] = {}  # only sources with an open connection: bounded by max_connections
        self.queries = LocalCounter(DNS_ENCRYPTED_QUERIES_TOTAL, registry)
        self.events = LocalCounter(DNS_ENCRYPTED_CONNECTIONS_TOTAL, registry)
        for t in TRANSPORTS:  # present from the first scrape, so rate() works from zero
            self.queries.values[(t,)] = 0
            for o in CONNECTION_OUTCOMES:
                self.events.values[(t, o)] = 0
        if registry is not None:
            gauge = Metrics(registry, (DNS_ENCRYPTED_CONNECTIONS,))[DNS_ENCRYPTED_CONNECTIONS]
            for t in TRANSPORTS:
                gauge.labels(t).set_function(lambda t=t: float(self.open[t]))

    def count(self, transport: str, outcome: str) -> None:
        self.events.inc((transport, outcome))

    def query(self, transport: str) -> None:
        self.queries.inc((transport,))

    def admit(self, transport: str, host: str) -> bool:
        """Take a connection slot for ``host``, or count why not (False: close it without reading)."""
        if not self.require and not self.allowed(host):
            self.count(transport, "refused")
            return False
        key = source_key(host)
        if self.per_source.get(key, 0) >= self.limits.max_per_source:
            self.count(transport, "source_limit")
            return False
        if self.connections >= self.limits.max_connections:
            self.count(transport, "rejected")
            return False
        self.per_source[key] = self.per_source.get(key, 0) + 1
        self.connections += 1
        self.open[transport] += 1
        return True

    def release(self, transport: str, host: str) -> None:
        key = source_key(host)
        left = self.per_source.get(key, 1) - 1
        if left > 0:
            self.per_source[key] = left
        else:
            self.per_source.pop(key, None)
        self.connections -= 1
        self.open[transport] -= 1

    def client_ok(self, transport: str, cid: str | None) -> bool:
        """May a query with this ClientID be answered? (invalid: never; under --require-client-id: known only)."""
        if cid == INVALID or (self.require and (cid is None or self.known is None or cid not in self.known)):
            self.count(transport, "client_id_refused")
            return False
        return True

    def sni_client_id(self, ssl_object: Any) -> str | None:
        return client_id_from_sni(sni_of(ssl_object), self.server_name)

    def sni_client_id_from_name(self, sni: str | None) -> str | None:
        return client_id_from_sni(sni, self.server_name)


async def handshake(
    conn: socket.socket, gate: Gate, transport: str, ctx: ssl.SSLContext, factory: Callable[[], asyncio.Protocol]
) -> tuple[asyncio.BaseTransport, asyncio.Protocol] | None:
    """The TLS handshake on an admitted connection, by the event loop's own TLS (uvloop's or asyncio's), bounded by
    the handshake timeout and counted either way; None when it failed (the socket is closed)."""
    loop = asyncio.get_running_loop()
    timeout = gate.limits.handshake_timeout
    try:
        return await asyncio.wait_for(
            loop.connect_accepted_socket(factory, conn, ssl=ctx, ssl_handshake_timeout=timeout), timeout + 1
        )
    except TimeoutError:
        gate.count(transport, "handshake_timeout")
    except (ssl.SSLError, ConnectionError, OSError, EOFError) as exc:
        timed_out = "timed out" in str(exc) or "taking longer" in str(exc)
        gate.count(transport, "handshake_timeout" if timed_out else "handshake_failed")
    conn.close()
    return None


async def accept_loop(listening: socket.socket, serve: Callable[[socket.socket, Any], Awaitable[None]]) -> None:
    """Accept connections on ``listening`` for ever, each served by its own task (kept until done).

    Why not ``asyncio.start_server(ssl=...)``: its handshake starts before the application sees the peer, and
    ``StreamWriter.start_tls`` under uvloop loses a ClientHello that arrived with the connection. Accepting here
    lets ``Gate.admit`` refuse a source before its first byte is read."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    try:
        while True:
            try:
                conn, addr = await loop.sock_accept(listening)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                ratelog("accept", logging.WARNING, "encrypted DNS: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            # Answers are small and must leave at once: without this, Nagle holds a TLS record back until the
            # client's delayed ACK (measured: 12 DoH queries/s at one query in flight instead of hundreds).
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(serve(conn, addr))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()


class TlsProtocol(asyncio.Protocol):
    """TLS done in the protocol over the plain TCP transport (``ssl.SSLObject`` on two memory BIOs), for DoT.
    (DoH keeps the event loop's TLS: moved onto this, it measured the same CPU per query and a lower qps under
    dnsperf, docs/performance.md, "Encrypted DNS, measured".) Subclasses give ``server`` (with ``gate`` and
    ``kind``) and implement ``handshake_done()`` and ``tls_data(data)``; ``write(data)`` sends one TLS record,
    ``write_records(items)`` one record per item in one transport write; ``expired(...)`` is the listener's sweep
    (``TlsListener``).

    Why TLS here rather than the event loop's: uvloop's TLS protocol gives every connection a 256 KiB read buffer
    whose first pages the handshake touches, plus its own protocol and transport objects; here an idle connection
    is the protocol object (slots, no dict), OpenSSL's state and its two BIOs (bench/dns_encrypted_bench.sh, "idle
    DoT"), and a read costs fewer layers. No task per connection and no timer: the listener's one sweep closes idle
    connections and expired handshakes."""

    __slots__ = ("incoming", "last", "outgoing", "shaking", "tls", "transport")
    server: Any  # DotServer / DohServer: .gate, .kind, .certs, .alpn, .added(), .protocols

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.transport: asyncio.Transport | None = None
        self.last = 0.0
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.shaking = True  # the TLS handshake is not done yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_BUFFER)  # type: ignore[attr-defined]
        self.last = asyncio.get_running_loop().time()
        self.server.added(self)

    def busy(self) -> bool:
        """True while the connection waits for answers of ours (not idle, whatever the time since the last read)."""
        return False

    def expired(self, now: float, idle: float, handshake: float) -> bool:
        """The listener's sweep: close a handshake that took too long or a connection idle too long."""
        if self.transport is None:
            return False
        gate, kind = self.server.gate, self.server.kind
        if self.shaking:
            if now - self.last < handshake:
                return False
            gate.count(kind, "handshake_timeout")
            self.transport.abort()
            return True
        if now - self.last < idle or self.busy():
            return False
        gate.count(kind, "idle_timeout")
        if self.transport.get_write_buffer_size():
            # close() would wait for the client to read what is queued, for ever: the connection, its slot under
            # the per-source cap and its buffer were never given back.
            self.transport.abort()
        else:
            self.transport.close()
        return True

    def _send(self) -> None:
        data = self.outgoing.read()
        if data and self.transport is not None:
            self.transport.write(data)

    def handshake_done(self) -> None:
        raise NotImplementedError

    def tls_data(self, data: bytes) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        tls = self.tls
        if self.shaking:  # ``last`` stays at the connection's start: the handshake timeout is absolute
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._send()
                return
            except (ssl.SSLError, ValueError, OSError):
                self.server.gate.count(self.server.kind, "handshake_failed")
                self._send()  # the alert, if any
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.shaking = False
            self.server.gate.count(self.server.kind, "accepted")
            self.handshake_done()
            self._send()
        self.last = asyncio.get_running_loop().time()
        chunks = []
        try:
            while True:
                chunk = tls.read(65_536)
                if not chunk:  # the client's close_notify (b"" or SSLZeroReturnError): ours back, then close
                    raise ssl.SSLZeroReturnError
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            if chunks:  # requests sent just before the close_notify still get their answers
                self.tls_data(b"".join(chunks))
            if self.transport is not None:
                with contextlib.suppress(ssl.SSLError):
                    tls.unwrap()
                self._send()
                self.transport.close()
            return
        except ssl.SSLError:
            self.server.gate.count(self.server.kind, "bad_request")
            self.transport.abort()  # type: ignore[union-attr]
            return
        if chunks:
            self.tls_data(b"".join(chunks) if len(chunks) > 1 else chunks[0])

    def write(self, data: bytes) -> None:
        self.write_records((data,))

    def write_records(self, records: Iterable[bytes]) -> None:
        """One TLS record per item (a DoH client may need one answer per record), one transport write for all."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            for data in records:
                self.tls.write(data)
        except ssl.SSLError:
            self.transport.abort()
            return
        self._send()


class TlsListener:
    """What a DoT or DoH listener keeps of its connections: ``protocols`` and the one sweep (every ``SWEEP``
    seconds, or a quarter of the idle or handshake timeout when shorter, while connections are open) that ends the
    handshakes over the handshake timeout and the connections idle longer than the idle timeout: no timer per
    connection. ``accept(conn, peer, factory)``: a connection admitted by the gate, handed to its protocol."""

    kind = ""
    gate: Gate

    def __init__(self) -> None:
        self.protocols: set[Any] = set()
        self.sweeper: asyncio.TimerHandle | None = None

    def added(self, protocol: TlsProtocol) -> None:
        self.protocols.add(protocol)
        if self.sweeper is None:
            self.sweeper = asyncio.get_running_loop().call_later(self._interval(), self._sweep)

    def _interval(self) -> float:
        limits = self.gate.limits
        return max(0.05, min(SWEEP, limits.idle_timeout / 4, limits.handshake_timeout / 4))

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        limits = self.gate.limits
        for protocol in [p for p in self.protocols if p.expired(now, limits.idle_timeout, limits.handshake_timeout)]:
            self.protocols.discard(protocol)
        self.sweeper = loop.call_later(self._interval(), self._sweep) if self.protocols else None

    async def accept(self, conn: socket.socket, peer: Any, factory: Callable[[str], TlsProtocol]) -> None:
        host = peer[0] if peer else ""
        gate = self.gate
        if not gate.admit(self.kind, host):
            conn.close()
            return
        loop = asyncio.get_running_loop()
        try:
            protocol = factory(host)
            await loop.connect_accepted_socket(lambda: protocol, conn)
        except (OSError, ssl.SSLError, ValueError):
            gate.count(self.kind, "handshake_failed")
            gate.release(self.kind, host)  # no connection_made, so no connection_lost: the slot is given back here
            conn.close()
        except BaseException:
            gate.release(self.kind, host)
            conn.close()
            raise

    def close_all(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.abort()


class DotProtocol(TlsProtocol):
    """One DoT connection (TLS by ``TlsProtocol``): frames parsed from the bytes as they come (several per read
    when a client pipelines), each query answered as soon as its answer exists; the answers of one read go out in
    one write (one TLS record)."""

    __slots__ = ("buf", "host", "peer", "pending", "reading", "server", "via", "writable")

    def __init__(self, server: DotServer, peer: Any, host: str) -> None:
        super().__init__(server.certs.context(server.alpn))
        self.server = server
        self.peer = peer
        self.host = host
        self.buf = b""  # an unfinished frame (rare: most reads end on a frame boundary)
        self.via = Via("dot", None)
        self.pending: set[asyncio.Future[Any]] | None = None  # forwarded queries in flight (made on first use)
        self.reading = True
        self.writable = True

    def busy(self) -> bool:
        return bool(self.pending)

    def handshake_done(self) -> None:
        self.via = Via("dot", self.server.gate.sni_client_id(self.tls))

    def tls_data(self, data: bytes) -> None:
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        queued = 0
        held = False
        pos, size = 0, len(buf)
        while size - pos >= 2:
            # Stop at the limits, not only before the next read: one read of pipelined queries for a large cached
            # answer queued 300 times its size (500 MB from one address, never read by the client), and one write
            # started thousands of upstream queries. The rest waits in ``buf`` until ``_resume``.
            if queued >= WRITE_BUFFER or not self.writable or (self.pending and len(self.pending) >= MAX_INFLIGHT):
                self._pause()
                held = True
                break
            length = buf[pos] << 8 | buf[pos + 1]
            if length < 12 or length > MAX_FRAME:
                self.server.gate.count("dot", "bad_request")
                self.transport.abort()  # type: ignore[union-attr]
                return
            if size - pos - 2 < length:
                break
            reply = self._query(buf[pos + 2 : pos + 2 + length])
            pos += 2 + length
            if reply is not None:
                out.append(struct.pack("!H", len(reply)) + reply)
                queued += len(reply) + 2
        self.buf = buf[pos:] if pos < size else b""
        if out:
            self.write(b"".join(out))
        if held and self.writable and self.transport is not None:
            # Held back by the bytes queued in this turn only, and the transport took them without pausing (no
            # resume_writing will come): go on from the next turn, after this write has had its chance to leave.
            asyncio.get_running_loop().call_soon(self._resume)

    def _query(self, data: bytes) -> bytes | None:
        server = self.server
        gate = server.gate
        gate.query("dot")
        if not gate.client_ok("dot", self.via.client_id):
            server.outcome("refused")
            return wire.refusal(data)
        try:
            reply: Any = server.handler(data, self.peer, True, self.via)
        except Exception:
            ratelog("dot", logging.ERROR, "error handling a DoT query from %s", self.host, exc_info=True)
            server.outcome("dropped")
            return None
        if reply is None or type(reply) is bytes:
            return reply
        if type(reply) is list:  # a zone transfer: not served over DoT
            return None
        task = asyncio.ensure_future(reply)
        if self.pending is None:
            self.pending = set()
        self.pending.add(task)
        task.add_done_callback(self._answered)
        if len(self.pending) >= MAX_INFLIGHT:
            self._pause()
        return None

    def _answered(self, task: asyncio.Future[Any]) -> None:
        if self.pending is not None:
            self.pending.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            ratelog("dot-forward", logging.ERROR, "error forwarding a DoT query from %s: %r", self.host, exc)
            self.server.outcome("dropped")
        else:
            reply = task.result()
            if reply is not None:
                self.write(struct.pack("!H", len(reply)) + reply)
        self._resume()

    def _pause(self) -> None:
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def _resume(self) -> None:
        inflight = len(self.pending) if self.pending else 0
        if not self.reading and self.writable and inflight < MAX_INFLIGHT and self.transport is not None:
            self.reading = True
            self.transport.resume_reading()
            if len(self.buf) >= 2:
                self._frames(b"")  # the queries held back when the limits stopped the parse

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its queries
        self.writable = False
        self._pause()

    def resume_writing(self) -> None:
        self.writable = True
        self._resume()

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: close ours

    def connection_lost(self, exc: Exception | None) -> None:
        for task in list(self.pending or ()):
            task.cancel()
        self.server.gate.release("dot", self.host)
        self.server.protocols.discard(self)
        self.transport = None


class DotServer(TlsListener):
    """DNS over TLS (RFC 7858) on one address; ``serve`` takes one accepted connection (``accept_loop``)."""

    transport = "dot"
    kind = "dot"
    alpn: ClassVar[list[str]] = ["dot"]

    def __init__(self, handler: Handler, gate: Gate, certs: CertSource, outcome: Callable[[str], None]) -> None:
        super().__init__()
        self.handler = handler
        self.gate = gate
        self.certs = certs
        self.outcome = outcome

    async def serve(self, conn: socket.socket, peer: Any) -> None:
        await self.accept(conn, peer, lambda host: DotProtocol(self, peer, host))
