"""DNS over QUIC (RFC 9250) with aioquic: one query per client-initiated bidirectional stream, 2-byte length prefix.

- ``DoqServer(handler, gate, certs, outcome)``: ``start(host, port)`` binds the UDP socket (aioquic's ``serve``),
  ``close()`` ends every connection. The QUIC configuration offers ALPN ``doq``, TLS 1.3 (QUIC's own), the idle
  timeout of the encrypted listeners; a new certificate (``CertSource.on_reload``) is copied into it on the event
  loop, so the next handshake uses it.
- ``DoqProtocol``: one connection. Its first datagram goes through ``Gate.admit`` (``--allow`` unless
  ``--require-client-id``, per-source and global caps) before aioquic reads it: a refused source is forgotten without
  a reply (like a refused UDP query, and no handshake work). A connection that has not finished its handshake within
  the handshake timeout is closed. Each stream is answered on its own (a forwarded query from a task), so one slow
  upstream answer holds back no other stream. The ClientID is the TLS server name's (``<id>.<--server-name>``).

aioquic keeps the server name a client sent to itself; ``_capture_sni`` reads it from the ClientHello as aioquic
parses it (``tls.pull_client_hello`` on the same bytes), by wrapping the connection's ``_initialize``. That is
aioquic 1.2 internals (the same version in both lock files); tests/dns/test_encrypted_doq.py fails if it changes.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic import tls as quic_tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)

from .chain import Handler, Via
from .encrypted import MAX_FRAME, Gate
from .observe import RateLimitedLog
from .tls import CertSource

log = logging.getLogger("enforcer.dns.doq")
ratelog = RateLimitedLog(log)

DOQ_NO_ERROR = 0x0
DOQ_PROTOCOL_ERROR = 0x2
DOQ_INTERNAL_ERROR = 0x1
# Queries a connection may have unfinished (streams opened, no FIN yet): a client resetting each after 16 KB left
# every buffer behind (16 KB a stream, for as long as it kept the connection).
MAX_OPEN_STREAMS = 100


def _capture_sni(quic: QuicConnection, store: Callable[[str | None], None]) -> None:
    initialize = quic._initialize

    def wrapped_initialize(peer_cid: bytes) -> None:
        initialize(peer_cid)
        handle_hello = quic.tls._server_handle_hello

        def wrapped_hello(input_buf: Any, *rest: Any) -> None:
            start = input_buf.tell()
            try:
                store(quic_tls.pull_client_hello(input_buf).server_name)
            except Exception:  # aioquic's own parse below reports a bad hello
                store(None)
            input_buf.seek(start)
            handle_hello(input_buf, *rest)

        quic.tls._server_handle_hello = wrapped_hello  # type: ignore[method-assign,assignment]

    quic._initialize = wrapped_initialize  # type: ignore[method-assign]


class DoqProtocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, server: DoqServer, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.server = server
        self.host: str | None = None  # set once admitted
        self.admitted: bool | None = None
        self.sni: str | None = None
        self.via: Via | None = None
        self.cid_ok = False
        self.buffers: dict[int, bytearray] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.peer: Any = None
        self.timer: asyncio.TimerHandle | None = None
        _capture_sni(quic, self._store_sni)

    def _store_sni(self, sni: str | None) -> None:
        self.sni = sni

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.admitted is None:
            host = addr[0] if addr else ""
            self.admitted = self.server.gate.admit("doq", host)
            if not self.admitted:
                self._forget()
                return
            self.host, self.peer = host, addr
            self.server.protocols.add(self)
            timeout = self.server.gate.limits.handshake_timeout
            self.timer = asyncio.get_running_loop().call_later(timeout, self._handshake_deadline)
        if not self.admitted:
            return
        super().datagram_received(data, addr)

    def _forget(self) -> None:
        # Refused before aioquic read a byte: the server drops its entry; the client hears nothing.
        terminated = getattr(self, "_connection_terminated_handler", None)
        if terminated is not None:
            terminated()

    def _handshake_deadline(self) -> None:
        if self.via is None:
            self.server.gate.count("doq", "handshake_timeout")
            self._quic.close(error_code=DOQ_NO_ERROR, reason_phrase="handshake timeout")
            self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        gate = self.server.gate
        if isinstance(event, HandshakeCompleted):
            if self.timer is not None:
                self.timer.cancel()
            gate.count("doq", "accepted")
            cid = gate.sni_client_id_from_name(self.sni)
            self.via = Via("doq", cid)
        elif isinstance(event, StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, StreamReset):
            self.buffers.pop(event.stream_id, None)  # the client gave up the query: its bytes go with it
        elif isinstance(event, ConnectionTerminated):
            self._terminated(event)

    def _stream_data(self, event: StreamDataReceived) -> None:
        gate = self.server.gate
        buf = self.buffers.get(event.stream_id)
        if buf is None:
            if len(self.buffers) >= MAX_OPEN_STREAMS:
                gate.count("doq", "bad_request")
                self._quic.close(error_code=DOQ_PROTOCOL_ERROR, reason_phrase="too many unfinished queries")
                self.transmit()
                return
            buf = self.buffers[event.stream_id] = bytearray()
        buf.extend(event.data)
        if len(buf) > MAX_FRAME + 2:
            self.buffers.pop(event.stream_id, None)
            gate.count("doq", "bad_request")
            self._quic.close(error_code=DOQ_PROTOCOL_ERROR, reason_phrase="message too long")
            self.transmit()
            return
        if not event.end_stream:
            return
        self.buffers.pop(event.stream_id, None)
        if len(buf) < 2 or struct.unpack("!H", buf[:2])[0] != len(buf) - 2 or self.via is None:
            gate.count("doq", "bad_request")
            self._quic.close(error_code=DOQ_PROTOCOL_ERROR, reason_phrase="bad message")
            self.transmit()
            return
        data = bytes(buf[2:])
        gate.query("doq")
        via = self.via
        if not gate.client_ok("doq", via.client_id):
            self.server.outcome("refused")
            self._send(event.stream_id, self.server.refusal(data))
            return
        try:
            reply: Any = self.server.handler(data, self.peer, True, via)
        except Exception:
            ratelog("doq", logging.ERROR, "error handling a DoQ query from %s", self.host, exc_info=True)
            self.server.outcome("dropped")
            return
        if reply is None or type(reply) is bytes:
            self._send(event.stream_id, reply)
        elif type(reply) is not list:
            task = asyncio.ensure_future(self._later(event.stream_id, reply))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _later(self, stream_id: int, pending: Any) -> None:
        try:
            reply = await pending
        except Exception as exc:
            ratelog("doq-forward", logging.ERROR, "error forwarding a DoQ query from %s: %r", self.host, exc)
            self.server.outcome("dropped")
            reply = None
        self._send(stream_id, reply)

    def _send(self, stream_id: int, reply: bytes | None) -> None:
        try:
            if reply is None:
                self._quic.reset_stream(stream_id, DOQ_INTERNAL_ERROR)
            else:
                self._quic.send_stream_data(stream_id, struct.pack("!H", len(reply)) + reply, end_stream=True)
            self.transmit()
        except Exception:  # the stream or connection went away meanwhile
            pass

    def _terminated(self, event: ConnectionTerminated) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        if self.admitted and self.host is not None:
            if "idle" in (event.reason_phrase or "").lower():
                self.server.gate.count("doq", "idle_timeout")
            self.server.gate.release("doq", self.host)
            self.server.protocols.discard(self)
            self.host = None


class DoqServer:
    transport = "doq"

    def __init__(self, handler: Handler, gate: Gate, certs: CertSource, outcome: Callable[[str], None]) -> None:
        from . import wire

        self.handler = handler
        self.gate = gate
        self.certs = certs
        self.outcome = outcome
        self.refusal = wire.refusal
        self.protocols: set[DoqProtocol] = set()
        self.server: QuicServer | None = None
        self.configuration = self._configuration()
        certs.on_reload.append(self._reloaded)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _configuration(self) -> QuicConfiguration:
        config = QuicConfiguration(is_client=False, alpn_protocols=["doq"], idle_timeout=self.gate.limits.idle_timeout)
        config.load_cert_chain(Path(self.certs.cert), Path(self.certs.key))
        return config

    def _reloaded(self) -> None:  # in the reload thread: build aside, copy in on the loop
        fresh = self._configuration()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._install, fresh)

    def _install(self, fresh: QuicConfiguration) -> None:
        config = self.configuration  # the object the running server hands to every new connection
        config.certificate = fresh.certificate
        config.certificate_chain = fresh.certificate_chain
        config.private_key = fresh.private_key

    async def start(self, host: str, port: int) -> int:
        self.loop = asyncio.get_running_loop()
        # What aioquic's serve() does, keeping the transport to learn the port bound.
        transport, server = await self.loop.create_datagram_endpoint(
            lambda: QuicServer(configuration=self.configuration, create_protocol=self._protocol),
            local_addr=(host, port),
        )
        self.server = server
        return int(transport.get_extra_info("sockname")[1])

    def _protocol(self, quic: QuicConnection, **kwargs: Any) -> DoqProtocol:
        return DoqProtocol(quic, self, **kwargs)

    def close(self) -> None:
        for protocol in list(self.protocols):
            protocol.close()
        if self.server is not None:
            self.server.close()  # type: ignore[no-untyped-call]
