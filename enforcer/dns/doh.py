"""DNS over HTTPS (RFC 8484) on one TLS port, HTTP/2 and HTTP/1.1 chosen by ALPN.

- ``DohServer.serve``: one accepted connection (enforcer/dns/encrypted.py ``accept_loop``): ``Gate.admit``
  (source address, caps) -> TLS with ALPN ``h2``/``http/1.1`` -> ``_serve_h2`` (the ``h2`` library,
  ``SETTINGS_MAX_CONCURRENT_STREAMS`` = ``--doh-max-streams``; each stream answered from its own task, so a slow
  upstream answer holds back no other stream) or ``_serve_h1`` (``h11``, one request after another, keep-alive).
- ``dns_request(method, target, headers, body)``: the DNS message of a request, or an HTTP status: GET
  ``/dns-query[/<id>]?dns=<base64url, no padding>``, POST with ``content-type: application/dns-message``; 404 for
  another path, 405 for another method, 415 for another content type, 400 for a bad or oversized message.
  The ClientID is the path's (``/dns-query/<id>``), else the TLS server name's (``<id>.<--server-name>``).
- A refused ClientID (invalid; missing or unknown under ``--require-client-id``) gets HTTP 403 before the message
  is read as DNS. The answer is ``200 application/dns-message`` with ``cache-control: max-age`` = the smallest TTL.

Why h2 and h11 rather than aiohttp: both are sans-I/O (already installed with mitmproxy) and share this module's
one asyncio TLS server, so one port serves both protocols after one admission check and one handshake.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

# h2 ships no type information (no py.typed); its use here is checked by tests/dns/test_encrypted_doh.py.
import h2.config  # type: ignore[import-untyped]
import h2.connection  # type: ignore[import-untyped]
import h2.errors  # type: ignore[import-untyped]
import h2.events  # type: ignore[import-untyped]
import h2.exceptions  # type: ignore[import-untyped]
import h2.settings  # type: ignore[import-untyped]
import h11

from .chain import Handler, Via
from .clientid import DOH_PATH, client_id_from_path
from .encrypted import READ_TIMEOUT, Gate, accept_tls
from .h2fast import install as install_hpack_memo
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
    parts = urlsplit(target)
    path = parts.path
    if path != DOH_PATH and not path.startswith(DOH_PATH + "/"):
        return None, None, 404
    cid = client_id_from_path(path)
    if method == "GET":
        values = parse_qs(parts.query).get("dns")
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


def min_ttl(reply: bytes) -> int:
    """The smallest TTL in the answer and authority sections (0 when there is none or the reply is unreadable):
    the ``cache-control: max-age`` RFC 8484 section 5.1 asks for. A walk over the wire (no message parse)."""
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


_WANTED = {b":method": ":method", b":path": ":path", b"content-type": "content-type"}


def _request_headers(headers: Any) -> dict[str, str]:
    """The headers ``dns_request`` reads, decoded from h2's bytes; the others are not decoded at all."""
    out = {}
    for name, value in headers or ():
        key = _WANTED.get(name)
        if key is not None:
            out[key] = value.decode("latin-1")
    return out


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += n + 1


class _H2Answers:
    """The answers of one HTTP/2 connection: a stream answered at once is queued, a forwarded one waits in its own
    task; the answers ready in one loop turn leave together from the next turn (``flush``), never from inside the
    frame loop (dnsperf's HTTP/2 client stalled when answers were sent from there)."""

    def __init__(self, server: DohServer, conn: Any, writer: asyncio.StreamWriter, sni_cid: str | None, peer: Any):
        self.server = server
        self.conn = conn
        self.writer = writer
        self.sni_cid = sni_cid
        self.peer = peer
        self.tasks: set[asyncio.Task[None]] = set()
        self.ready: list[tuple[int, int, bytes]] = []
        self.loop = asyncio.get_running_loop()

    def respond(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        result = self.server.answer(
            headers.get(":method", ""), headers.get(":path", ""), headers, body, self.sni_cid, self.peer
        )
        if type(result) is tuple:
            self.queue(stream_id, *result)  # answered now, whatever other streams wait for
        else:
            task = asyncio.ensure_future(self.later(stream_id, result))  # type: ignore[arg-type]
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def later(self, stream_id: int, result: Awaitable[tuple[int, bytes]]) -> None:
        self.queue(stream_id, *(await result))

    def queue(self, stream_id: int, status: int, payload: bytes) -> None:
        if not self.ready:
            self.loop.call_soon(self.flush)
        self.ready.append((stream_id, status, payload))

    def flush(self) -> None:
        conn = self.conn
        records = []
        for stream_id, status, payload in self.ready:
            out = [(":status", str(status)), ("content-length", str(len(payload)))]
            if status == 200:
                out += [("content-type", CONTENT_TYPE), ("cache-control", f"max-age={min_ttl(payload)}")]
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):  # the client reset the stream
                conn.send_headers(stream_id, out, end_stream=not payload)
                if payload:
                    conn.send_data(stream_id, payload, end_stream=True)
            data = conn.data_to_send()
            if data:
                records.append(data)
        self.ready.clear()
        # One TLS record per answer (writelines: one SSL write per item), all sent in one syscall: dnsperf's DoH
        # client handles one answer per record and stalled when a record carried several (600 of 604 queries
        # lost), while a send per answer cost about a fifth of the CPU per query.
        if records and not self.writer.transport.is_closing():
            self.writer.writelines(records)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()


class DohServer:
    """DoH on one address; ``serve`` takes one accepted connection (enforcer/dns/encrypted.py ``accept_loop``)."""

    transport = "doh"
    alpn: ClassVar[list[str]] = ["h2", "http/1.1"]

    def __init__(self, handler: Handler, gate: Gate, certs: CertSource, outcome: Callable[[str], None]) -> None:
        self.handler = handler
        self.gate = gate
        self.certs = certs
        self.outcome = outcome
        self.writers: set[asyncio.StreamWriter] = set()

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
        streams = None
        try:
            streams = await accept_tls(conn, gate, "doh", self.certs.context(self.alpn))
            if streams is None:
                return
            reader, writer = streams
            self.writers.add(writer)
            ssl_object = writer.get_extra_info("ssl_object")
            sni_cid = gate.sni_client_id(ssl_object)
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                await self._serve_h2(reader, writer, sni_cid, peer)
            else:
                await self._serve_h1(reader, writer, sni_cid, peer)
        except (ConnectionError, TimeoutError, OSError, ssl.SSLError):
            pass
        finally:
            gate.release("doh", host)
            if streams is not None:
                self.writers.discard(streams[1])
                streams[1].transport.abort()

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        try:
            return await asyncio.wait_for(reader.read(65_536), self.gate.limits.idle_timeout)
        except TimeoutError:
            self.gate.count("doh", "idle_timeout")
            return b""

    async def _serve_h2(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sni_cid: str | None, peer: Any
    ) -> None:
        # h2's header checks and normalisation cost more per request than answering the query (a profile under
        # dnsperf: ~15 % of the CPU). Our own response headers are fixed and valid; of a request only :method,
        # :path and content-type are read, as bytes (header_encoding None: no str decode of every header), and a
        # request missing or mangling them gets its HTTP error (404/405/415) from ``dns_request``.
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        install_hpack_memo(conn)  # enforcer/dns/h2fast.py: repeated header blocks are not re-coded
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.gate.limits.h2_max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADERS,
            },
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        out = _H2Answers(self, conn, writer, sni_cid, peer)
        respond = out.respond
        try:
            while True:
                data = await self._read(reader)
                if not data:
                    return
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.TooManyStreamsError:
                    self.gate.count("doh", "stream_limit")
                    writer.write(conn.data_to_send())
                    return
                except h2.exceptions.ProtocolError:
                    self.gate.count("doh", "bad_request")
                    writer.write(conn.data_to_send())
                    return
                if not self._h2_events(conn, events, streams, respond):
                    return
                writer.write(conn.data_to_send())
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        finally:
            out.cancel()

    def _h2_events(
        self,
        conn: h2.connection.H2Connection,
        events: list[Any],
        streams: dict[int, tuple[dict[str, str], bytearray]],
        respond: Callable[[int, dict[str, str], bytes], None],
    ) -> bool:
        """Collect each stream's headers and body; a complete request is answered (``respond``). False: the client
        ended the connection."""
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                streams[event.stream_id] = (_request_headers(event.headers), bytearray())
            elif isinstance(event, h2.events.DataReceived):
                entry = streams.get(event.stream_id)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if entry is not None:
                    entry[1].extend(event.data or b"")
                    if len(entry[1]) > MAX_MESSAGE:
                        streams.pop(event.stream_id, None)
                        self.gate.count("doh", "bad_request")
                        conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            elif isinstance(event, h2.events.StreamEnded):
                entry = streams.pop(event.stream_id, None)
                if entry is not None:
                    respond(event.stream_id, entry[0], bytes(entry[1]))
            elif isinstance(event, h2.events.StreamReset):
                streams.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return False
        return True

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
        for w in list(self.writers):
            w.transport.abort()
