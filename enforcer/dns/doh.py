"""DNS over HTTPS (RFC 8484) on one TLS port, HTTP/2 and HTTP/1.1 chosen by ALPN.

- ``DohServer.serve``: one accepted connection (enforcer/dns/encrypted.py ``accept_loop``): ``Gate.admit``
  (source address, caps) -> TLS with ALPN ``h2``/``http/1.1`` -> ``_DohProtocol``: HTTP/2 by enforcer/dns/h2wire.py
  (``SETTINGS_MAX_CONCURRENT_STREAMS`` = ``--doh-max-streams``; each request answered as soon as its answer exists,
  so a slow upstream answer holds back no other stream; a protocol error gets GOAWAY and is counted as
  ``protocol_error``) or HTTP/1.1 (``h11``, one request after another, keep-alive).
- ``dns_request(method, target, headers, body)``: the DNS message of a request, or an HTTP status: GET
  ``/dns-query[/<id>]?dns=<base64url, no padding>``, POST with ``content-type: application/dns-message``; 404 for
  another path, 405 for another method, 415 for another content type, 400 for a bad or oversized message.
  The ClientID is the path's (``/dns-query/<id>``), else the TLS server name's (``<id>.<--server-name>``).
- A refused ClientID (invalid; missing or unknown under ``--require-client-id``) gets HTTP 403 before the message
  is read as DNS. The answer is ``200 application/dns-message`` with ``cache-control: max-age`` = the smallest TTL.

Why a hand-written HTTP/2 path and h11 rather than h2 or aiohttp: both are sans-I/O and share this module's one
asyncio TLS server, so one port serves both protocols after one admission check and one handshake; ``h2``'s general
state machine cost four times the query's own work per DoH request (enforcer/dns/h2wire.py says what it does
instead). ``h2`` stays the reference its tests drive it with.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import h11

from .chain import Handler, Via
from .clientid import DOH_PATH, client_id_from_path
from .encrypted import READ_TIMEOUT, WRITE_BUFFER, Gate, handshake
from .h2wire import H2Error, H2Server
from .observe import RateLimitedLog
from .tls import CertSource

log = logging.getLogger("enforcer.dns.doh")
ratelog = RateLimitedLog(log)

CONTENT_TYPE = "application/dns-message"
MAX_MESSAGE = 16_384  # a DNS query; larger bodies are refused (400)
MAX_HEADERS = 16_384


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def dns_request(method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[bytes | None, str | None, int]:
    """``(message, client_id, status)``: the DNS query of an HTTP request and its path's ClientID (status 200), or
    ``(None, None, status)`` with the HTTP error status."""
    path, _, query = target.partition("?")
    if "#" in path or "%" in path or "://" in path:  # a fragment, escapes or an absolute URL: the slow, exact way
        parts = urlsplit(target)
        path, query = parts.path, parts.query
    if path != DOH_PATH and not path.startswith(DOH_PATH + "/"):
        return None, None, 404
    cid = client_id_from_path(path) if path != DOH_PATH else None
    if method == "GET":
        values = parse_qs(query).get("dns")
        if not values or len(values[0]) > MAX_MESSAGE * 4 // 3 + 4:
            return None, cid, 400
        try:
            message = _b64url(values[0])
        except (binascii.Error, ValueError):
            return None, cid, 400
    elif method == "POST":
        if headers.get("content-type", "").split(";")[0].strip().lower() != CONTENT_TYPE:
            return None, cid, 415
        message = body
    else:
        return None, cid, 405
    if not 12 <= len(message) <= MAX_MESSAGE:
        return None, cid, 400
    return message, cid, 200


_TTLS: dict[bytes, int] = {}  # reply without its ID -> min_ttl: a sinkhole or cached answer repeats byte for byte
TTL_MEMO = 1024


def min_ttl(reply: bytes) -> int:
    """The smallest TTL in the answer and authority sections (0 when there is none or the reply is unreadable):
    the ``cache-control: max-age`` RFC 8484 section 5.1 asks for. A walk over the wire (no message parse), remembered
    for the same reply bytes after the ID (bounded, emptied when full)."""
    key = reply[2:]
    ttl = _TTLS.get(key)
    if ttl is None:
        if len(_TTLS) >= TTL_MEMO:
            _TTLS.clear()
        ttl = _TTLS[key] = _walk_ttl(reply)
    return ttl


def _walk_ttl(reply: bytes) -> int:
    try:
        qdcount, ancount, nscount = struct.unpack_from("!HHH", reply, 4)
        pos = 12
        for _ in range(qdcount):
            pos = _skip_name(reply, pos) + 4
        best = -1
        for _ in range(ancount + nscount):
            pos = _skip_name(reply, pos)
            ttl, rdlength = struct.unpack_from("!IH", reply, pos + 4)  # after type and class
            best = ttl if best < 0 else min(best, ttl)
            pos += 10 + rdlength
    except (struct.error, IndexError):
        return 0
    return min(best, 2**31 - 1) if best >= 0 else 0


def _result(reply: bytes | None) -> tuple[int, bytes]:
    return (400, b"") if reply is None else (200, reply)  # None: the chain dropped it (not a query)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += n + 1


class _DohProtocol(asyncio.Protocol):
    """One DoH connection after its handshake. HTTP/2 is served here, frames parsed as they arrive
    (enforcer/dns/h2wire.py); each request is answered as soon as its answer exists: a refused, blocked or cached
    one at once, a forwarded one from its own task, so a slow upstream answer holds back no other stream. The
    answers ready in one loop turn leave together from the next turn (one ``writelines``, one TLS record per
    answer). HTTP/1.1 (ALPN ``http/1.1`` or none) is handed to a ``StreamReaderProtocol`` and the h11 loop
    (``DohServer._serve_h1``). No task per idle HTTP/2 connection: this object, its buffers and one timer."""

    def __init__(self, server: DohServer, peer: Any, host: str) -> None:
        self.server = server
        self.peer = peer
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.h2: H2Server | None = None
        self.inner: asyncio.StreamReaderProtocol | None = None  # HTTP/1.1
        self.sni_cid: str | None = None
        self.ready: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.protocols.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        self.sni_cid = server.gate.sni_client_id(ssl_object)
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            reader = asyncio.StreamReader(limit=65_536)
            self.inner = inner = asyncio.StreamReaderProtocol(reader)
            inner.connection_made(transport)
            writer = asyncio.StreamWriter(transport, inner, reader, self.loop)  # type: ignore[arg-type]
            task = asyncio.ensure_future(server.serve_h1(reader, writer, self.sni_cid, self.peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        transport.set_write_buffer_limits(high=WRITE_BUFFER)  # type: ignore[attr-defined]
        self.h2 = H2Server(server.gate.limits.h2_max_streams)
        transport.write(self.h2.preface())  # type: ignore[attr-defined]
        self.last = self.loop.time()
        self.timer = self.loop.call_later(server.gate.limits.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        idle = self.server.gate.limits.idle_timeout
        quiet = self.loop.time() - self.last
        # Busy only while we owe an answer: a request left unfinished (HEADERS without END_STREAM) or an answer the
        # client's windows hold back kept the connection, and its slot in the gate, for ever.
        busy = self.h2 is not None and self.h2.waiting()
        if quiet >= idle and not busy:
            self.server.gate.count("doh", "idle_timeout")
            if self.transport is not None:
                self.transport.close()
            return
        self.timer = self.loop.call_later(idle if busy else max(idle - quiet, 0.05), self._idle_check)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        h2 = self.h2
        if h2 is None or self.transport is None:
            return
        self.last = self.loop.time()
        gate = self.server.gate
        refused, too_large = h2.stream_limit, h2.too_large
        try:
            requests = h2.receive(data)
        except H2Error as exc:
            gate.count("doh", "protocol_error")
            ratelog("doh-h2", logging.INFO, "DoH: HTTP/2 error from %s: %s", self.host, exc)
            self.transport.writelines([*self.ready, *h2.take(), h2.goaway(exc.code)])
            self.ready.clear()
            self.transport.close()
            return
        for _ in range(h2.stream_limit - refused):
            gate.count("doh", "stream_limit")
        for _ in range(h2.too_large - too_large):
            gate.count("doh", "bad_request")
        if h2.out:
            self._queue(b"".join(h2.take()))
        for stream_id, headers, body in requests:
            result = self.server.answer(
                headers.get(":method", ""), headers.get(":path", ""), headers, body, self.sni_cid, self.peer
            )
            if type(result) is tuple:
                self._answer(stream_id, *result)  # answered now, whatever other streams wait for
            else:
                task = asyncio.ensure_future(self._later(stream_id, result))  # type: ignore[arg-type]
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        if h2.goaway_received and not h2.streams:
            self.loop.call_soon(self._close_after_flush)

    async def _later(self, stream_id: int, result: Awaitable[tuple[int, bytes]]) -> None:
        try:
            answer = await result
        finally:
            if self.h2 is not None:
                self.h2.done(stream_id)  # answered below, or never: either way no longer in flight
        self._answer(stream_id, *answer)

    def _answer(self, stream_id: int, status: int, payload: bytes) -> None:
        h2 = self.h2
        if h2 is None:
            return
        data = h2.respond(stream_id, status, payload, min_ttl(payload) if status == 200 else None)
        if data:
            self._queue(data)

    def _queue(self, data: bytes) -> None:
        if not self.ready:
            self.loop.call_soon(self._flush)
        self.ready.append(data)

    def _flush(self) -> None:
        # One TLS record per answer (writelines: one SSL write per item), all sent in one syscall: dnsperf's DoH
        # client handles one answer per record and stalled when a record carried several (600 of 604 queries
        # lost), while a send per answer cost about a fifth of the CPU per query.
        if self.h2 is not None and self.h2.out:
            self.ready.append(b"".join(self.h2.take()))  # DATA a WINDOW_UPDATE let go
        if self.ready and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self.ready)
        self.ready.clear()

    def _close_after_flush(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its requests
        if self.inner is not None:
            self.inner.pause_writing()
        elif self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)
        if self.timer is not None:
            self.timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        self.server.gate.release("doh", self.host)
        self.server.protocols.discard(self)
        self.transport = None


class DohServer:
    """DoH on one address; ``serve`` takes one accepted connection (enforcer/dns/encrypted.py ``accept_loop``)."""

    transport = "doh"
    alpn: ClassVar[list[str]] = ["h2", "http/1.1"]

    def __init__(self, handler: Handler, gate: Gate, certs: CertSource, outcome: Callable[[str], None]) -> None:
        self.handler = handler
        self.gate = gate
        self.certs = certs
        self.outcome = outcome
        self.protocols: set[_DohProtocol] = set()

    def answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes, sni_cid: str | None, peer: Any
    ) -> tuple[int, bytes] | Awaitable[tuple[int, bytes]]:
        """``(status, body)`` for one HTTP request: at once for a refused, blocked or cached query, an awaitable
        when the query went upstream (so the caller spends a task only on those)."""
        gate = self.gate
        message, path_cid, status = dns_request(method, target, headers, body)
        cid = path_cid if path_cid is not None else sni_cid  # the path wins over the SNI
        if not gate.client_ok("doh", cid):
            gate.query("doh")
            self.outcome("refused")
            return 403, b""
        if message is None:
            gate.count("doh", "bad_request")
            return status, b""
        gate.query("doh")
        try:
            reply: Any = self.handler(message, peer, True, Via("doh", cid))
        except Exception:
            self._error(peer)
            return 500, b""
        if reply is None or type(reply) is bytes:
            return _result(reply)
        if type(reply) is list:  # a zone transfer: not served over DoH
            return 400, b""
        return self._later(reply, peer)

    async def _later(self, pending: Any, peer: Any) -> tuple[int, bytes]:
        try:
            return _result(await pending)
        except Exception:
            self._error(peer)
            return 500, b""

    def _error(self, peer: Any) -> None:
        ratelog("doh", logging.ERROR, "error handling a DoH query from %s", peer[0] if peer else "?", exc_info=True)
        self.outcome("dropped")

    async def serve(self, conn: socket.socket, peer: Any) -> None:
        host = peer[0] if peer else ""
        gate = self.gate
        if not gate.admit("doh", host):
            conn.close()
            return
        try:
            done = await handshake(
                conn, gate, "doh", self.certs.context(self.alpn), lambda: _DohProtocol(self, peer, host)
            )
        except BaseException:
            gate.release("doh", host)
            conn.close()
            raise
        if done is None:
            gate.release("doh", host)  # no connection_made, so no connection_lost: the slot is given back here
            return
        gate.count("doh", "accepted")

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        try:
            return await asyncio.wait_for(reader.read(65_536), self.gate.limits.idle_timeout)
        except TimeoutError:
            self.gate.count("doh", "idle_timeout")
            return b""

    async def serve_h1(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sni_cid: str | None, peer: Any
    ) -> None:
        """HTTP/1.1 on one connection (h11), one request after another, keep-alive; the connection is closed at
        the end."""
        try:
            await self._serve_h1(reader, writer, sni_cid, peer)
        except (ConnectionError, TimeoutError, OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    async def _serve_h1(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sni_cid: str | None, peer: Any
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        while True:
            request: h11.Request | None = None
            body = bytearray()
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    self.gate.count("doh", "bad_request")
                    return
                if event is h11.NEED_DATA:
                    data = await self._read(reader) if request is None else await self._read_more(reader)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body.extend(event.data)
                    if len(body) > MAX_MESSAGE:
                        self.gate.count("doh", "bad_request")
                        return
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
            assert request is not None
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
            result = self.answer(
                request.method.decode("ascii", "replace"), request.target.decode("latin-1"), headers, bytes(body),
                sni_cid, peer,
            )  # fmt: skip
            status, payload = result if type(result) is tuple else await result  # type: ignore[misc]
            out = [("content-length", str(len(payload)))]
            if status == 200:
                out += [("content-type", CONTENT_TYPE), ("cache-control", f"max-age={min_ttl(payload)}")]
            writer.write(conn.send(h11.Response(status_code=status, headers=out)) or b"")
            writer.write(conn.send(h11.Data(data=payload)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_more(self, reader: asyncio.StreamReader) -> bytes:
        try:
            return await asyncio.wait_for(reader.read(65_536), READ_TIMEOUT)
        except TimeoutError:
            self.gate.count("doh", "bad_request")  # a request begun and not finished in time
            return b""

    def close_all(self) -> None:
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.abort()
