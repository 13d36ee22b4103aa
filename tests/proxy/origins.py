"""Local stand-ins for "the internet" behind mitmdump, on 127.0.0.1 only, each recording what reached it.

- ``CatchAllProxy``: an HTTP/1.1 forward proxy used as mitmdump's upstream (``--mode upstream:http://...``). It
  answers every absolute-form request itself and tunnels every CONNECT, whatever host it names, to the local
  ``TlsOrigin``. So nothing mitmdump forwards can leave the machine, and "reached the origin" means "recorded here".
- ``TlsOrigin``: a TLS server with a self-signed certificate; counts raw TCP connections (before the handshake),
  records the SNI of each handshake and every HTTP/1.1 request.
- ``PlainOrigin``: a plain HTTP/1.1 server (regular-mode tests and the benchmark), counting connections.
- ``OriginThread``: runs them on an event loop in a daemon thread so synchronous clients (httpx, sockets, curl) can
  talk to them from the test thread.

Every response carries a fixed random payload; ``X-Request-Sha256`` echoes the hash of the request body received,
so a test can prove that allowed traffic passes byte-identical in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.certs import self_signed

PAYLOAD = os.urandom(64 * 1024 + 17)
MAX_HEAD = 1024 * 1024


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    sni: str | None = None


@dataclass
class Recorder:
    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)
    snis: list[str | None] = field(default_factory=list)

    def targets(self) -> list[str]:
        return [s.target for s in self.requests] + self.connects


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 'origin.test' (mitmdump runs with ssl_insecure: it never checks it)."""
    return self_signed(folder, "origin.test")


async def read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(c[:-2] for c in chunks)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return Seen(parts[0], parts[1], headers, body)


def response_for(seen: Seen) -> bytes:
    digest = hashlib.sha256(seen.body).hexdigest()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(PAYLOAD)}\r\nContent-Type: application/octet-stream\r\n"
        f"X-Origin: local\r\nX-Request-Sha256: {digest}\r\n\r\n"
    )
    return head.encode() + PAYLOAD


async def serve_http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rec: Recorder, sni: str | None
) -> None:
    while True:
        seen = await read_request(reader)
        if seen is None:
            return
        seen.sni = sni
        rec.requests.append(seen)
        writer.write(response_for(seen))
        await writer.drain()


async def splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


class TlsOrigin:
    def __init__(self, cert: Path, key: Path) -> None:
        self.rec = Recorder()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.ctx.sni_callback = self._on_sni
        self._last_sni: str | None = None
        self.port = 0

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.rec.snis.append(name)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.rec.connections += 1
        try:
            await writer.start_tls(self.ctx)
            sni = self.rec.snis[-1] if self.rec.snis else None
            await serve_http(reader, writer, self.rec, sni)
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class PlainOrigin:
    def __init__(self) -> None:
        self.rec = Recorder()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.rec.connections += 1
        try:
            await serve_http(reader, writer, self.rec, None)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class CatchAllProxy:
    def __init__(self, tls_origin: TlsOrigin) -> None:
        self.rec = Recorder()
        self.tls_origin = tls_origin
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.rec.connections += 1
        try:
            while True:
                seen = await read_request(reader)
                if seen is None:
                    return
                if seen.method == "CONNECT":
                    self.rec.connects.append(seen.target)
                    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.tls_origin.port)
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await asyncio.gather(splice(reader, up_writer), splice(up_reader, writer))
                    return
                self.rec.requests.append(seen)
                writer.write(response_for(seen))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


class OriginThread:
    """An event loop in a daemon thread hosting the servers; ``start(handler)`` returns the bound port."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-origins", daemon=True)
        self._thread.start()

    def start(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> int:
        async def go() -> int:
            server = await asyncio.start_server(handler, "127.0.0.1", 0, limit=MAX_HEAD)
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)

    def stop(self) -> None:
        async def go() -> None:
            for s in self._servers:
                s.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()
