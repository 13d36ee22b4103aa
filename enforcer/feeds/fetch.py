"""One bounded HTTP(S) download of a feed.

``await fetch(url, etag=..., last_modified=..., timeout=30, max_bytes=64 MiB, cafile=None)`` -> ``Fetched``:
``status`` 200 with the body and the new validators, or 304 (not modified, no body). Raises ``FetchError`` with a
one-line reason for everything else: a status other than 200/304, a connection or TLS failure (certificates are
always verified; ``cafile`` adds a private CA), the total timeout, a body over ``max_bytes`` (the read stops there),
a download cut short (fewer bytes than Content-Length, a broken chunked or compressed body), or a redirect from
https to plain http: a partial or downgraded feed is never used. A 429 or 503 with ``Retry-After`` gives the wait in
``FetchError.retry_after`` (the scheduler does not ask again before it). The size cap applies to the decompressed body.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from dataclasses import dataclass
from datetime import UTC

import aiohttp

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
USER_AGENT = "enforcer-feeds/1"
MAX_REDIRECTS = 3


class FetchError(Exception):
    """A feed download that failed; the message is one line. ``retry_after``: the seconds a 429 or 503 answer asked
    the client to wait (its ``Retry-After``, at most ``MAX_RETRY_AFTER``), else None."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# A server's Retry-After is honoured up to a day: a longer one (or a hostile "wait ten years") would silence the
# feed for good; the feed's age alert (EnforcerFeedStale) still says when a feed is not confirmed for too long.
MAX_RETRY_AFTER = 86400.0


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` (RFC 9110, 10.2.3: delay-seconds or an HTTP-date) as seconds from now, at most
    ``MAX_RETRY_AFTER``; None when absent or not one of the two forms."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        return MAX_RETRY_AFTER if len(digits) > 12 else min(float(int(digits)), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        if value.endswith("-0000"):  # "zone unknown" (RFC 5322): not an HTTP-date
            return None
        when = when.replace(tzinfo=UTC)  # asctime's form, which RFC 9110 has recipients read as GMT
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, delay), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class Fetched:
    status: int  # 200 or 304
    body: bytes = b""
    etag: str | None = None
    last_modified: str | None = None


def ssl_context(cafile: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if cafile:
        ctx.load_verify_locations(cafile=cafile)
    return ctx


async def fetch(
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    cafile: str | None = None,
) -> Fetched:
    headers = {"User-Agent": USER_AGENT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        ctx = ssl_context(cafile)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"cannot load --cafile {cafile}: {exc}") from None
    limits = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
    try:
        async with (
            aiohttp.ClientSession(timeout=limits, trust_env=False) as session,
            session.get(url, headers=headers, ssl=ctx, allow_redirects=True, max_redirects=MAX_REDIRECTS) as resp,
        ):
            return await _answer(url, resp, max_bytes, etag, last_modified)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g} s") from None
    except aiohttp.TooManyRedirects:
        raise FetchError(f"more than {MAX_REDIRECTS} redirects: refused") from None
    except aiohttp.ClientPayloadError as exc:
        raise FetchError(f"download cut short: {_line(exc)}") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise FetchError(f"TLS certificate not trusted: {exc.certificate_error}") from None
    except (aiohttp.ClientError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        raise FetchError(f"{type(exc).__name__}: {_line(exc)}") from None


def _line(exc: BaseException) -> str:
    """An exception's message as one short line: some quote what the server sent (a body, a header)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:200] + "..."


async def _answer(
    url: str, resp: aiohttp.ClientResponse, max_bytes: int, etag: str | None, last_modified: str | None
) -> Fetched:
    if url.startswith("https://"):
        # Every hop, not only the last: https -> http -> https lets whoever controls the plain hop send the feed
        # anywhere with a valid certificate.
        for hop in (*resp.history, resp):
            if hop.url.scheme != "https":
                raise FetchError(f"redirected from https to {hop.url.scheme} ({hop.url.host}): refused")
    if resp.status == 304:
        return Fetched(304, b"", etag, last_modified)
    if resp.status != 200:
        status = f"HTTP {resp.status} {resp.reason or ''}".strip()
        wait = retry_after(resp.headers.get("Retry-After")) if resp.status in (429, 503) else None
        if wait is not None:
            raise FetchError(f"{status}; the server asks to retry after {wait:.0f} s", wait)
        raise FetchError(status)
    # With a Content-Encoding, Content-Length counts the compressed bytes while the body is read decompressed
    # (aiohttp): the cap then applies to what is read, and a cut compressed stream raises ClientPayloadError.
    declared = None if resp.headers.get("Content-Encoding") else resp.content_length
    if declared is not None and declared > max_bytes:
        raise FetchError(f"feed too large: {declared} bytes (the limit is {max_bytes})")
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > max_bytes:
            raise FetchError(f"feed too large: over {max_bytes} bytes")
        chunks.append(chunk)
    if declared is not None and total != declared:
        raise FetchError(f"download cut short: {total} of {declared} bytes")
    return Fetched(200, b"".join(chunks), resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
