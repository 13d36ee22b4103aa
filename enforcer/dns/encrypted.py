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
- ``resolve(handler, data, peer, via)``: one query through the chain, awaited when it went upstream.
- ``accept_loop(sock, serve)``: accepts on a listening socket; ``accept_tls(conn, gate, transport, ctx)``: the TLS
  handshake of an admitted connection (the loop's ``connect_accepted_socket``), bounded and counted.
- ``DotServer``: RFC 7858. Plain TCP accept -> ``Gate.admit`` -> ``accept_tls`` (handshake timeout) ->
  2-byte framed queries. Each query is answered as soon as its answer exists: a blocked or cached one at once,
  a forwarded one from its own task, so a slow upstream answer never holds back a later query on the same
  connection (RFC 7766 6.2.1.1, out-of-order answers; the message ID pairs them). At most ``MAX_INFLIGHT``
  forwarded queries per connection: reading pauses until one finishes.

DoH is enforcer/dns/doh.py and DoQ enforcer/dns/doq.py; the chain they all feed is enforcer/dns/chain.py
(``handle(data, addr, tcp, via)``: ``via`` carries the transport and the ClientID into the hit event).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
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
)
MAX_FRAME = 16_384
READ_TIMEOUT = 3.0  # to finish a frame (or HTTP request) once it began
MAX_INFLIGHT = 64  # forwarded queries per connection
WRITE_BUFFER = 64 * 1024  # unsent answers per connection before reading waits for the client to read


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


async def resolve(handler: Handler, data: bytes, peer: Any, via: Via) -> bytes | None:
    """One query through the chain (as over TCP: no truncation), awaited when it was forwarded upstream."""
    reply: Any = handler(data, peer, True, via)
    if reply is None or type(reply) is bytes:
        return reply
    if type(reply) is list:  # a zone transfer: not offered over encrypted transports
        return reply[0] if reply else None
    result: bytes | None = await reply
    return result


async def accept_tls(
    conn: socket.socket, gate: Gate, transport: str, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The TLS handshake on an admitted connection, bounded by the handshake timeout and counted either way; the
    connection as streams, or None (closed). The event loop's own TLS (uvloop's or asyncio's) does the work."""
    loop = asyncio.get_running_loop()
    timeout = gate.limits.handshake_timeout
    reader = asyncio.StreamReader(limit=65_536)
    protocol = asyncio.StreamReaderProtocol(reader)
    try:
        tls_transport, _ = await asyncio.wait_for(
            loop.connect_accepted_socket(lambda: protocol, conn, ssl=ctx, ssl_handshake_timeout=timeout), timeout + 1
        )
    except TimeoutError:
        gate.count(transport, "handshake_timeout")
        conn.close()
        return None
    except (ssl.SSLError, ConnectionError, OSError, EOFError) as exc:
        timed_out = "timed out" in str(exc) or "taking longer" in str(exc)
        gate.count(transport, "handshake_timeout" if timed_out else "handshake_failed")
        conn.close()
        return None
    gate.count(transport, "accepted")
    return reader, asyncio.StreamWriter(tls_transport, protocol, reader, loop)


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
            task = asyncio.ensure_future(serve(conn, addr))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()


class DotServer:
    """DNS over TLS (RFC 7858) on one address; ``serve`` is the ``asyncio.start_server`` callback."""

    transport = "dot"
    alpn: ClassVar[list[str]] = ["dot"]

    def __init__(self, handler: Handler, gate: Gate, certs: CertSource, outcome: Callable[[str], None]) -> None:
        self.handler = handler
        self.gate = gate
        self.certs = certs
        self.outcome = outcome
        self.writers: set[asyncio.StreamWriter] = set()

    async def _frame(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await asyncio.wait_for(reader.readexactly(2), self.gate.limits.idle_timeout)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self.gate.count("dot", "bad_request")
            return None
        except TimeoutError:
            self.gate.count("dot", "idle_timeout")
            return None
        (length,) = struct.unpack("!H", head)
        if length < 12 or length > MAX_FRAME:
            self.gate.count("dot", "bad_request")
            return None
        try:
            return await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
        except (asyncio.IncompleteReadError, TimeoutError):
            self.gate.count("dot", "bad_request")
            return None

    async def serve(self, conn: socket.socket, peer: Any) -> None:
        host = peer[0] if peer else ""
        gate = self.gate
        if not gate.admit("dot", host):
            conn.close()
            return
        pending: set[asyncio.Task[None]] = set()
        streams = None
        try:
            streams = await accept_tls(conn, gate, "dot", self.certs.context(self.alpn))
            if streams is None:
                return
            reader, writer = streams
            self.writers.add(writer)
            cid = gate.sni_client_id(writer.get_extra_info("ssl_object"))
            via = Via("dot", cid)
            while True:
                data = await self._frame(reader)
                if data is None:
                    return
                gate.query("dot")
                if not gate.client_ok("dot", cid):
                    self.outcome("refused")
                    reply: Any = wire.refusal(data)
                else:
                    try:
                        reply = self.handler(data, peer, True, via)
                    except Exception:
                        ratelog("dot", logging.ERROR, "error handling a DoT query from %s", host, exc_info=True)
                        self.outcome("dropped")
                        return
                if reply is None:
                    continue
                if type(reply) is bytes:
                    writer.write(struct.pack("!H", len(reply)) + reply)  # answered now, whatever is pending
                    if writer.transport.get_write_buffer_size() > WRITE_BUFFER:  # a client that does not read
                        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
                    continue
                if type(reply) is list:  # a zone transfer: not served over DoT
                    continue
                while len(pending) >= MAX_INFLIGHT:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.ensure_future(self._later(reply, writer, host))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except (ConnectionError, TimeoutError, OSError, ssl.SSLError):
            pass
        finally:
            for task in list(pending):
                task.cancel()
            gate.release("dot", host)
            if streams is not None:
                self.writers.discard(writer)
                writer.transport.abort()

    async def _later(self, pending_reply: Any, writer: asyncio.StreamWriter, host: str) -> None:
        try:
            reply = await pending_reply
        except Exception as exc:
            ratelog("dot-forward", logging.ERROR, "error forwarding a DoT query from %s: %r", host, exc)
            self.outcome("dropped")
            return
        if reply is not None and not writer.transport.is_closing():
            writer.write(struct.pack("!H", len(reply)) + reply)

    def close_all(self) -> None:
        for w in list(self.writers):
            w.transport.abort()
