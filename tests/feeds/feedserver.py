"""A local HTTP(S) feed server for the feed tests: aiohttp on 127.0.0.1 in its own thread and event loop.

``FeedServer(cert=None, key=None)`` as a context manager; ``.url(path)``; ``.set(path, body, etag=None)`` serves
``body`` at ``path`` with an ETag (answering 304 to a matching If-None-Match); ``.truncate(path)`` makes the next
answers declare twice the length and close after the first half; ``.redirects[path] = url`` answers 302 there,
``.not_modified`` paths always 304; ``.requests`` records (path, If-None-Match).
``NAMES``, ``feed(names)`` and ``blocklist(folder, url)``: the test feed and a blocklist that follows it.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ssl
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

NAMES = [f"h{i:02d}.feedtest.example" for i in range(20)]


def feed(names: list[str]) -> bytes:
    return ("# test feed\n" + "\n".join(names) + "\n").encode()


def blocklist(folder: Path, url: str, extra: str = "") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "test.yaml").write_text(
        "app: feedtest\npolicy: {effective: 2023-10-30}\nblock:\n"
        f'  - include: {{url: "{url}", refresh: 6h, max_change: 10%}}\n    category: web\n'
        "  - domain: banned.feedtest.example\n    category: web\n" + extra
    )
    (folder / "must-pass.txt").write_text("# safety names\nqq.com\ngoogle.com\n")
    return folder


class FeedServer:
    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        self.cert, self.key = cert, key
        self.bodies: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.gzipped: set[str] = set()  # served with Content-Encoding: gzip
        self.redirects: dict[str, str] = {}  # path -> the Location of a 302
        self.not_modified: set[str] = set()  # always answered 304, whatever was asked
        self.busy: dict[str, tuple[int, str]] = {}  # path -> (status, Retry-After) answered instead of the body
        self.requests: list[tuple[str, str | None]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="feed-server", daemon=True)

    def url(self, path: str) -> str:
        scheme = "https" if self.cert else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def set(self, path: str, body: bytes) -> None:
        self.bodies[path] = body

    def truncate(self, path: str) -> None:
        self.truncated.add(path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append((path, request.headers.get("If-None-Match")))
        if path in self.redirects:
            return web.Response(status=302, headers={"Location": self.redirects[path]})
        if path in self.not_modified:
            return web.Response(status=304)
        if path in self.busy:
            status, wait = self.busy[path]
            return web.Response(status=status, headers={"Retry-After": wait})
        body = self.bodies.get(path)
        if body is None:
            return web.Response(status=404)
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        if path in self.truncated:
            resp = web.StreamResponse(headers={"ETag": etag})
            resp.content_length = len(body) * 2
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return resp
        if path in self.gzipped:
            headers = {"ETag": etag, "Content-Type": "text/plain", "Content-Encoding": "gzip"}
            return web.Response(body=gzip.compress(body), headers=headers)
        return web.Response(body=body, headers={"ETag": etag, "Content-Type": "text/plain"})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        ctx: Any = None
        if self.cert and self.key:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cert, self.key)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def __enter__(self) -> FeedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
