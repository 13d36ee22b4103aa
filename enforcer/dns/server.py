"""asyncio transports: UDP and TCP listeners that move bytes between clients and a ``Handler``; no policy here.

- ``UdpServer``: a ``DatagramProtocol``; synchronous replies are sent from ``datagram_received`` directly, forwarded
  ones from a task (kept in a set until done). The selector transport's read size is cut from 256 KiB to 64 KiB:
  a 256 KiB buffer per datagram can cost an mmap/munmap each.
- ``TcpServer``: RFC 7766 framing (2-byte length), several queries per connection answered in order. At accept,
  from the source address alone: a source outside ``--allow`` is closed at once (``admit``), a source already
  holding ``--tcp-max-per-source`` connections (IPv6: per /64, what one host can own) is closed, and beyond the
  global ``--tcp-max-connections`` new connections are closed. Then a short timeout for the first query's length
  (``--tcp-initial-timeout``: a connect-and-wait client gives its slot back quickly), an idle timeout between
  queries (``--tcp-idle-timeout``), a read timeout inside a frame (slow or lying clients) and a frame-size cap.
  Each of these is counted as an outcome.
- ``source_key(host)``: what the per-source cap counts by.
- ``bind_sockets(host, port, reuse_port)``: the listening sockets, created here so that several worker processes
  can later share one address with SO_REUSEPORT.
- ``Listener``: UDP + TCP on one address; ``start()``/``close()``. UDP is read and answered in batches
  (udpbatch.py: ``recvmmsg``/``sendmmsg``, one reader callback per batch) where the platform has them (Linux), else
  by ``UdpServer``; ``batched=False`` forces ``UdpServer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..net import peer_address
from .chain import Handler
from .observe import RateLimitedLog
from .udpbatch import BatchedUdpServer, available, forwarded_reply

log = logging.getLogger("enforcer.dns.server")
# A packet that trips a bug is logged with its traceback at most once a minute (a sender can repeat it at will).
ratelog = RateLimitedLog(log)

TCP_IDLE_TIMEOUT = 10.0  # between queries on a connection (RFC 7766 suggests seconds, not minutes)
TCP_INITIAL_TIMEOUT = 2.0  # for the first query's length: a real client writes its query right after connecting
TCP_READ_TIMEOUT = 3.0  # to finish a frame once its length arrived
TCP_MAX_FRAME = 16_384  # a query is small; a bigger frame is a hostile or broken client
TCP_MAX_CONNECTIONS = 512
# Per source: enough for a NAT gateway's truncation retries and a few zone transfers, a small share of the total.
TCP_MAX_PER_SOURCE = 32
UDP_READ_SIZE = 65_535


def source_key(host: str) -> str:
    """The per-source TCP cap's key: the IPv4 address, or the IPv6 /64 (one host commonly holds a whole /64)."""
    if ":" not in host:
        return host
    addr = peer_address(host)  # %zone stripped, IPv4-mapped folded
    if addr is None:
        return host
    if addr.version == 4:
        return str(addr)
    return str(ipaddress.IPv6Network((addr, 64), strict=False))


def bind_sockets(host: str, port: int, reuse_port: bool = False) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets bound to the same port (port 0: an ephemeral port free for both, retried)."""
    for attempt in range(20 if port == 0 else 1):
        try:
            return _bind_pair(host, port, reuse_port)
        except OSError as exc:
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == 19:
                # The address in the error (``filename``): "cannot listen" alone does not say which one.
                raise OSError(
                    exc.errno, exc.strerror, f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
                ) from exc
    raise AssertionError("unreachable")


def _bind_pair(host: str, port: int, reuse_port: bool) -> tuple[socket.socket, socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        for s in (udp, tcp):
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((host, port))
        tcp.bind((host, udp.getsockname()[1]))  # port 0: TCP takes the port UDP got
        tcp.listen(1024)
        for s in (udp, tcp):
            s.setblocking(False)
        with contextlib.suppress(OSError):  # a bigger receive buffer absorbs bursts; the kernel caps it
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    except Exception:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler, count: Callable[[str], None]) -> None:
        self.handler = handler
        self.count = count
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if hasattr(transport, "max_size"):
            transport.max_size = UDP_READ_SIZE

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = self.handler(data, addr, False)
        except Exception:  # a bug in one query's handling must not stop the listener
            ratelog("udp", logging.ERROR, "error handling a UDP query from %s", addr[0] if addr else "?",
                    exc_info=True)  # fmt: skip
            self.count("dropped")
            return
        if reply is None:
            return
        if type(reply) is bytes:
            self.transport.sendto(reply, addr)  # type: ignore[union-attr]
            return
        if type(reply) is list:  # the chain returns lists over TCP only; keep UDP to one datagram regardless
            if reply:
                self.transport.sendto(reply[0], addr)  # type: ignore[union-attr]
            return
        task = asyncio.ensure_future(reply)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, addr))

    def _done(self, task: asyncio.Task[Any], addr: Any) -> None:
        reply = forwarded_reply(task, addr, self.tasks, self.count)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (client went away): nothing to do, the listener keeps going.
        log.debug("UDP error: %s", exc)


@dataclass(frozen=True, slots=True)
class TcpLimits:
    max_connections: int = TCP_MAX_CONNECTIONS
    max_per_source: int = TCP_MAX_PER_SOURCE
    initial_timeout: float = TCP_INITIAL_TIMEOUT
    idle_timeout: float = TCP_IDLE_TIMEOUT


class TcpServer:
    def __init__(
        self,
        handler: Handler,
        count: Callable[[str], None],
        limits: TcpLimits | None = None,
        admit: Callable[[str], bool] | None = None,
    ) -> None:
        self.handler = handler
        self.count = count
        self.limits = limits or TcpLimits()
        self.max_connections = self.limits.max_connections
        self.admit = admit  # the source-address ACL; None admits everyone
        self.connections = 0
        self.per_source: dict[str, int] = {}  # only sources with an open connection: bounded by max_connections
        self.writers: set[asyncio.StreamWriter] = set()

    def refusal(self, host: str) -> str | None:
        """The outcome that refuses a new connection from ``host``, or None to admit it. All three are decided from
        the source address before reading a byte: a refused client holds no slot and no timer."""
        if self.admit is not None and not self.admit(host):
            return "tcp_refused"
        if self.per_source.get(source_key(host), 0) >= self.limits.max_per_source:
            return "tcp_source_limit"
        if self.connections >= self.max_connections:
            return "tcp_rejected"
        return None

    async def read_frame(self, reader: asyncio.StreamReader, first: bool) -> bytes | None:
        """The next query on a connection, or None to close it (counted when the client misbehaved)."""
        wait = self.limits.initial_timeout if first else self.limits.idle_timeout
        try:
            head = await asyncio.wait_for(reader.readexactly(2), wait)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                self.count("tcp_bad_frame")
            return None  # clean close between frames
        except TimeoutError:
            if first:
                self.count("tcp_timeout")  # connected and sent no query in time: a slot squatter
            return None  # idle: close, as RFC 7766 allows
        (length,) = struct.unpack("!H", head)
        if length < 12 or length > TCP_MAX_FRAME:
            self.count("tcp_bad_frame")
            return None
        try:
            return await asyncio.wait_for(reader.readexactly(length), TCP_READ_TIMEOUT)
        except asyncio.IncompleteReadError:
            self.count("tcp_bad_frame")  # the frame claimed more bytes than the client sent
        except TimeoutError:
            self.count("tcp_timeout")  # slow or lying client
        return None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if peer else ""
        refused = self.refusal(host)
        if refused is not None:
            self.count(refused)
            writer.transport.abort()
            return
        source = source_key(host)
        self.per_source[source] = self.per_source.get(source, 0) + 1
        self.connections += 1
        self.writers.add(writer)
        first = True
        try:
            while True:
                data = await self.read_frame(reader, first)
                if data is None:
                    return
                first = False
                try:
                    reply: Any = self.handler(data, peer, True)
                    if reply is not None and type(reply) is not bytes and type(reply) is not list:
                        reply = await reply
                except Exception:
                    ratelog("tcp", logging.ERROR, "error handling a TCP query from %s", host, exc_info=True)
                    self.count("dropped")
                    return
                if reply is None:
                    continue
                for message in reply if type(reply) is list else (reply,):  # a zone transfer is several messages
                    writer.write(struct.pack("!H", len(message)) + message)
                    await asyncio.wait_for(writer.drain(), TCP_READ_TIMEOUT)
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self.connections -= 1
            left = self.per_source.get(source, 1) - 1
            if left > 0:
                self.per_source[source] = left
            else:
                self.per_source.pop(source, None)
            self.writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def close_all(self) -> None:
        for w in list(self.writers):
            w.transport.abort()


class Listener:
    """UDP and TCP on one address."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        count: Callable[[str], None],
        reuse_port: bool = False,
        tcp_limits: TcpLimits | None = None,
        admit: Callable[[str], bool] | None = None,
        batched: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.count = count
        self.reuse_port = reuse_port
        self.batched = batched and available()
        self.udp: UdpServer | BatchedUdpServer | None = None
        self.udp_transport: asyncio.DatagramTransport | None = None
        self.tcp = TcpServer(handler, count, tcp_limits, admit)
        self.tcp_server: asyncio.AbstractServer | None = None

    @property
    def display(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        udp_sock, tcp_sock = bind_sockets(self.host, self.port, self.reuse_port)
        self.port = udp_sock.getsockname()[1]
        handler, count = self.handler, self.count
        if self.batched:
            batch = BatchedUdpServer(udp_sock, handler, count)
            batch.start()
            self.udp = batch
        else:
            transport, proto = await loop.create_datagram_endpoint(lambda: UdpServer(handler, count), sock=udp_sock)
            self.udp_transport, self.udp = transport, proto
        self.tcp_server = await asyncio.start_server(self.tcp.serve, sock=tcp_sock)

    async def close(self) -> None:
        if self.udp_transport is not None:
            self.udp_transport.close()
        if isinstance(self.udp, BatchedUdpServer):
            self.udp.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        self.tcp.close_all()
        if self.tcp_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.tcp_server.wait_closed(), 2.0)
        if self.udp is not None:
            for t in list(self.udp.tasks):
                t.cancel()

    @property
    def pending(self) -> int:
        return len(self.udp.tasks) if self.udp else 0
