"""A minimal asyncio DNS listener for the RPZ feed alone (UDP for SOA/NOTIFY replies, TCP for AXFR/IXFR).

``enforcer dns --rpz-zone`` hands zone queries to ``RpzFeed.answer`` from its own transports; this listener serves
the feed on a separate address when no resolver runs there (``--rpz-listen``) and in the feed's tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

from .feed import RpzFeed

log = logging.getLogger("enforcer.rpz")
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 30.0


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, feed: RpzFeed) -> None:
        self.feed = feed
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            replies = self.feed.answer(data, addr[0], tcp=False)
        except Exception:
            log.exception("RPZ feed: error answering a UDP query")
            return
        if replies and self.transport is not None:
            self.transport.sendto(replies[0], addr)


class FeedServer:
    def __init__(self, feed: RpzFeed) -> None:
        self.feed = feed
        self.connections = 0
        self._servers: list[asyncio.base_events.Server] = []
        self._transports: list[asyncio.DatagramTransport] = []

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.feed), local_addr=(host, port))
        self._transports.append(transport)
        self._servers.append(await asyncio.start_server(self._tcp, host, port))

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self.connections += 1
        peer = writer.get_extra_info("peername")[0]
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), IDLE_TIMEOUT)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT)
                replies = self.feed.answer(data, peer, tcp=True) or []
                for msg in replies:
                    writer.write(struct.pack("!H", len(msg)) + msg)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        for t in self._transports:
            t.close()
        for s in self._servers:
            s.close()
            await s.wait_closed()
