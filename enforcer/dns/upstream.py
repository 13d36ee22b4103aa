"""Forwarding to upstream resolvers: UDP (TCP retry on TC), DNS over TCP, DNS over HTTPS; failover; timeouts.

- ``parse_upstream(text)`` -> ``UpstreamSpec``: ``IP[:PORT]`` / ``[IPv6]:PORT`` (UDP), ``tcp://IP[:PORT]``,
  ``https://HOST[:PORT]/dns-query`` (RFC 8484; ``http://`` accepted for a local DoH sidecar or tests).
- Every transport checks a reply with the same ``wire.answer_mismatch(sent, reply, qend)``: id, QR, opcode, question
  name (case-insensitive), type and class must be the query's. An answer to another question is never served or
  cached. ``qend`` (where the question ends) comes from the chain's parse (``Question.qend``): the question section
  is walked once per query, in wire.py, not again here.
- ``UdpUpstream``: a small pool of connected UDP sockets shared by all queries; each query gets a random id on a
  random socket; a datagram that does not answer it is ignored (spoofed, stray or late) and the query keeps
  waiting. A reply with TC set is retried over TCP to the same server.
- ``TcpUpstream``: one connection per exchange (2-byte framing); ``DohUpstream``: POST application/dns-message over
  one reused ``aiohttp.ClientSession`` (id 0, as RFC 8484 recommends for caching). On these a mismatching reply is
  an upstream failure (counted, failover): the server itself sent it.
- ``Forwarder``: tries the upstreams in order, healthy ones first; a failure marks an upstream down for a backoff
  (1 s doubling to 60 s) so the next queries go to the others at once. The whole exchange is bounded by ``timeout``:
  when it runs out the caller answers SERVFAIL. Failures are counted per upstream (label = the configured text).
  Health and deadlines read ``clock`` (``time.monotonic`` by default; tests step a fake one).
- ``exchange(query, qend)`` returns the reply with the client's id and question bytes restored, or None; after None,
  ``last_failure`` is the EDNS Extended DNS Error option (RFC 8914) saying why, for the SERVFAIL: 22 (No Reachable
  Authority) when an upstream timed out (or the deadline ran out: nobody answered in time), 23 (Network Error) when
  every attempt failed at once on the network (connection refused, ICMP unreachable, reset, a broken reply), 0
  (Other) when too many queries were already in flight. The chain reads it right after the ``await`` returns, with no
  suspension in between, so it is this query's.
- Upstream failures are logged at WARNING at most once a minute per upstream, with the count since the last line
  (``upstream 10.0.0.1: 17 timeout(s), 0 network error(s) in the last 60 s (last: timeout)``); the first failure is
  logged at once, and ``answers again`` (INFO) when it recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..net import split_host_port, strip_zone
from .wire import EDE_NETWORK_ERROR, EDE_NO_REACHABLE_AUTHORITY, EDE_OTHER, answer_mismatch, ede_option

log = logging.getLogger("enforcer.dns.upstream")

UDP_SOCKETS = 4  # per upstream; ids are random across 4 x 65536 slots
REPORT_INTERVAL = 60.0  # seconds between two failure lines for one upstream
MAX_RESPONSE = 65535


class UpstreamError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    text: str  # as configured; the metric label
    kind: str  # udp | tcp | doh
    host: str
    port: int
    url: str = ""


def parse_upstream(text: str) -> UpstreamSpec:
    """``--upstream`` value -> spec; ValueError with the reason."""
    t = text.strip()
    if t.startswith(("https://", "http://")):
        parts = urlsplit(t)
        if not parts.hostname:
            raise ValueError(f"invalid upstream {text!r}: missing host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return UpstreamSpec(t, "doh", parts.hostname, port, t)
    kind = "udp"
    if t.startswith("tcp://"):
        kind, t = "tcp", t[len("tcp://") :]
    elif t.startswith("udp://"):
        t = t[len("udp://") :]
    try:
        host, port = split_host_port(t, 53)
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(
            f"invalid upstream {text!r}: {exc}; expected IP[:PORT], tcp://IP[:PORT] or https://…"
        ) from None
    if not 0 < port <= 65535:
        raise ValueError(f"invalid upstream {text!r}: port out of range")
    return UpstreamSpec(text.strip(), kind, host, port)


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    out: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    addr = strip_zone(parts[1])
                    try:
                        ip = ipaddress.ip_address(addr)
                    except ValueError:
                        continue
                    out.append(f"[{ip}]:53" if ip.version == 6 else f"{ip}:53")
    except OSError:
        pass
    return out


class _UdpSocket(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpUpstream) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes, int]] = {}  # id -> (future, sent, qend)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            return
        qid = (data[0] << 8) | data[1]
        waiting = self.pending.get(qid)
        if waiting is None:
            return
        fut, sent, qend = waiting
        if answer_mismatch(sent, data, qend) is not None:
            return  # not the answer to our question: ignore (spoofing, or a late reply to a reused id)
        del self.pending[qid]
        if not fut.done():
            fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable etc.: the connected socket cannot tell which query; fail them all now (fast failover).
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(UpstreamError(f"udp: {exc}"))
        self.pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error_received(exc or ConnectionError("closed"))
        self.owner._lost(self)


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class UdpUpstream:
    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self._socks: list[_UdpSocket] = []
        self._opening: asyncio.Lock | None = None

    async def _sockets(self) -> list[_UdpSocket]:
        if len(self._socks) >= UDP_SOCKETS:
            return self._socks
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            loop = asyncio.get_running_loop()
            while len(self._socks) < UDP_SOCKETS:
                _, proto = await loop.create_datagram_endpoint(
                    self._make_socket, remote_addr=(self.spec.host, self.spec.port)
                )
                self._socks.append(proto)
        return self._socks

    def _make_socket(self) -> _UdpSocket:
        return _UdpSocket(self)

    def _lost(self, sock: _UdpSocket) -> None:
        with contextlib.suppress(ValueError):
            self._socks.remove(sock)

    async def exchange(self, query: bytes, qend: int, timeout: float) -> bytes:
        socks = self._socks if len(self._socks) >= UDP_SOCKETS else await self._sockets()
        sock = random.choice(socks)
        for _ in range(8):
            qid = random.getrandbits(16)
            if qid not in sock.pending:
                break
        else:
            raise UpstreamError("udp: no free query id")
        if sock.transport is None:
            raise UpstreamError("udp: socket closed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        fut: asyncio.Future[bytes] = loop.create_future()
        sent = struct.pack("!H", qid) + query[2:]
        sock.pending[qid] = (fut, sent, qend)
        # A timer on the future itself, not asyncio.wait_for: the same TimeoutError, without wait_for's second future
        # and callbacks on every forwarded query (the cache-miss path, docs/performance.md).
        timer = loop.call_later(timeout, _expire, fut)
        try:
            sock.transport.sendto(sent)
            reply = await fut
        finally:
            timer.cancel()
            sock.pending.pop(qid, None)
        if reply[2] & 0x02:  # TC: the full answer needs TCP (RFC 7766), within what is left of the same timeout
            left = timeout - (loop.time() - started)
            if left <= 0:
                raise TimeoutError
            return await tcp_exchange(self.spec.host, self.spec.port, query, qend, left)
        return reply

    async def close(self) -> None:
        for sock in list(self._socks):
            if sock.transport is not None:
                sock.transport.close()
        self._socks.clear()


async def tcp_exchange(host: str, port: int, query: bytes, qend: int, timeout: float) -> bytes:
    async def go() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            sent = struct.pack("!H", random.getrandbits(16)) + query[2:]
            writer.write(struct.pack("!H", len(sent)) + sent)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = await reader.readexactly(length)
            # One query per connection: whatever comes back must be its answer (the server chose to send it).
            why = answer_mismatch(sent, reply, qend)
            if why is not None:
                raise UpstreamError(f"tcp: {why}")
            return reply
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(go(), timeout)
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise UpstreamError(f"tcp: {exc}") from None


class TcpUpstream:
    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec

    async def exchange(self, query: bytes, qend: int, timeout: float) -> bytes:
        return await tcp_exchange(self.spec.host, self.spec.port, query, qend, timeout)

    async def close(self) -> None:
        return None


class DohUpstream:
    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self._session: Any = None

    def _get_session(self) -> Any:
        if self._session is None:
            import aiohttp  # only DoH users pay for the import

            self._session = aiohttp.ClientSession(
                headers={"accept": "application/dns-message"},
                connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=300),
            )
        return self._session

    async def exchange(self, query: bytes, qend: int, timeout: float) -> bytes:
        import aiohttp

        session = self._get_session()
        body = b"\x00\x00" + query[2:]  # id 0 (RFC 8484 section 4.1)
        try:
            async with session.post(
                self.spec.url,
                data=body,
                headers={"content-type": "application/dns-message"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"doh: HTTP {resp.status}")
                reply: bytes = await resp.content.read(MAX_RESPONSE + 1)
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"doh: {exc}") from None
        if len(reply) < 12 or len(reply) > MAX_RESPONSE:
            raise UpstreamError("doh: bad reply size")
        why = answer_mismatch(body, reply, qend)
        if why is not None:
            raise UpstreamError(f"doh: {why}")
        return reply

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


Upstream = UdpUpstream | TcpUpstream | DohUpstream


def make_upstream(spec: UpstreamSpec) -> Upstream:
    if spec.kind == "udp":
        return UdpUpstream(spec)
    if spec.kind == "tcp":
        return TcpUpstream(spec)
    return DohUpstream(spec)


_OVERLOADED = ede_option(EDE_OTHER, "too many queries in flight to the upstreams")
_SOURCE_OVERLOADED = ede_option(EDE_OTHER, "too many queries in flight from this client")
SOURCE_SHARE = 8  # one client address may hold at most 1/SOURCE_SHARE of max_inflight


class _Health:
    __slots__ = ("backoff", "down_until", "errors", "failures", "reported", "timeouts")

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.backoff = 0.0
        self.reported = -REPORT_INTERVAL * 2  # when the last failure line was written (clock)
        self.timeouts = 0  # failures since that line, by kind
        self.errors = 0


class Forwarder:
    """Failover over several upstreams with health tracking; the overall exchange is bounded by ``timeout``."""

    def __init__(
        self,
        specs: list[UpstreamSpec],
        timeout: float = 2.0,
        on_error: Callable[[str], None] | None = None,
        max_inflight: int = 2048,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not specs:
            raise ValueError("no upstream configured")
        self.specs = specs
        self.upstreams = [make_upstream(s) for s in specs]
        self.health = [_Health() for _ in specs]
        self.timeout = timeout
        self.on_error = on_error
        self.max_inflight = max_inflight
        self.inflight = 0
        # Per client address: one client flooding names the upstream never answers ("water torture") took every
        # slot, and every other client got SERVFAIL. Bounded: an address is here only while it has queries out.
        self.max_per_source = max(1, max_inflight // SOURCE_SHARE)
        self.by_source: dict[str, int] = {}
        self.clock = clock
        self.last_failure = b""  # EDE option of the last exchange that returned None

    def healthy(self, i: int) -> bool:
        return self.health[i].down_until <= self.clock()

    def _order(self) -> list[int]:
        now = self.clock()
        up = [i for i, h in enumerate(self.health) if h.down_until <= now]
        down = sorted(
            (i for i, h in enumerate(self.health) if h.down_until > now), key=lambda i: self.health[i].down_until
        )
        return up + down

    def _failed(self, i: int, why: str, timeout: bool = False) -> None:
        h = self.health[i]
        h.failures += 1
        h.backoff = min(max(h.backoff * 2, 1.0), 60.0)
        now = self.clock()
        h.down_until = now + h.backoff
        if timeout:
            h.timeouts += 1
        else:
            h.errors += 1
        if now - h.reported >= REPORT_INTERVAL:  # one line a minute per upstream, whatever the query rate
            log.warning(
                "upstream %s: %d timeout(s), %d network error(s) in the last %.0f s (last: %s); "
                "%d consecutive failure(s)",
                self.specs[i].text, h.timeouts, h.errors, REPORT_INTERVAL, why, h.failures,
            )  # fmt: skip
            h.reported, h.timeouts, h.errors = now, 0, 0
        if self.on_error is not None:
            self.on_error(self.specs[i].text)

    def _ok(self, i: int) -> None:
        h = self.health[i]
        if h.failures:
            log.info(
                "upstream %s answers again (after %d consecutive failure(s); %d not in a failure line yet)",
                self.specs[i].text, h.failures, h.timeouts + h.errors,
            )  # fmt: skip
            h.timeouts = h.errors = 0
        h.failures = 0
        h.backoff = 0.0
        h.down_until = 0.0

    async def exchange(self, query: bytes, qend: int, source: str = "") -> bytes | None:
        """The upstream reply (client id and question restored), or None when every upstream failed in time, or
        when the queries in flight are at ``max_inflight`` overall or at ``max_per_source`` for ``source``.

        ``qend``: where the query's question ends (``Question.qend``, from the chain's parse); ``source``: the
        client address ("" for none: only the overall limit applies)."""
        if self.inflight >= self.max_inflight:
            self.last_failure = _OVERLOADED
            return None
        by_source = self.by_source
        held = by_source.get(source, 0)
        if source and held >= self.max_per_source:
            self.last_failure = _SOURCE_OVERLOADED
            return None
        self.inflight += 1
        if source:
            by_source[source] = held + 1
        try:
            return await self._exchange(query, qend)
        finally:
            self.inflight -= 1
            if source:
                left = by_source[source] - 1
                if left:
                    by_source[source] = left
                else:
                    del by_source[source]

    async def _exchange(self, query: bytes, qend: int) -> bytes | None:
        loop_time = self.clock
        deadline = loop_time() + self.timeout
        order = self._order()
        n = len(order)
        timed_out, last_why = False, ""
        for pos, i in enumerate(order):
            remaining = deadline - loop_time()
            if remaining <= 0.01:
                break
            # Leave time for the others: each attempt gets its share of what is left (the last gets all of it).
            attempt = remaining if pos == n - 1 else max(remaining / (n - pos), min(0.25, remaining))
            try:
                reply = await self.upstreams[i].exchange(query, qend, attempt)
            except TimeoutError:
                timed_out, last_why = True, f"{self.specs[i].text}: timeout"
                self._failed(i, "timeout", timeout=True)
                continue
            except (UpstreamError, OSError) as exc:
                last_why = f"{self.specs[i].text}: {exc}"
                self._failed(i, str(exc))
                continue
            self._ok(i)
            # Restore the client's id and its question bytes (upstreams may change the 0x20 case; DoH sent id 0).
            # answer_mismatch checked that the question is the query's, so it ends at the same offset.
            return query[:2] + reply[2:12] + query[12:qend] + reply[qend:]
        if timed_out or not last_why:  # an upstream said nothing in time, or no time was left to ask one
            self.last_failure = ede_option(EDE_NO_REACHABLE_AUTHORITY, last_why or "no upstream answered in time")
        else:
            self.last_failure = ede_option(EDE_NETWORK_ERROR, last_why)
        return None

    async def close(self) -> None:
        for u in self.upstreams:
            with contextlib.suppress(Exception):
                await u.close()
