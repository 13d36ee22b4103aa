"""Helpers for the encrypted-DNS tests: a resolver process with DoT/DoH/DoQ listeners, certificates, raw clients.

- ``EncResolver(tmp, upstream, *flags)``: ``enforcer dns`` (tests/dns/dnshelpers.py ``DnsProcess``) with ``--dot``,
  ``--doh`` and ``--doq`` on free loopback ports, ``--server-name dns.test`` and the given certificate (made by
  ``make_cert``) unless ``--tls-cert`` is among the flags.
- ``make_cert(folder, tag)``: a self-signed CA certificate for ``dns.test``, ``*.dns.test`` and 127.0.0.1, so
  that a client can verify the server (and tell two certificates apart) with it as its only CA.
- ``tls_connect(port, sni, cafile)``: a verified TLS socket (ALPN dot); ``dot_send``/``dot_recv``: RFC 7858 frames.
- ``doq_query(port, message, sni, cafile)``: one DNS-over-QUIC exchange with aioquic's client (RFC 9250).
- ``slow_reply(delay)``: a FakeUpstream ``raw`` answer that arrives ``delay`` seconds late.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import dns.message
import dnslib
from dnshelpers import DnsProcess

from tests.certs import self_signed
from tests.conftest import free_port

SERVER_NAME = "dns.test"


def make_cert(folder: Path, tag: str) -> tuple[Path, Path]:
    """A certificate for the resolver's name, its ClientID subdomains and 127.0.0.1; ``tag`` tells two apart (the
    swap-on-disk tests)."""
    return self_signed(
        folder,
        SERVER_NAME,
        prefix=tag,
        days=2,
        also=(f"*.{SERVER_NAME}", "127.0.0.1"),
        common_name=f"{SERVER_NAME} {tag}",
    )


class EncResolver(DnsProcess):
    def __init__(self, tmp: Path, upstream: str, *flags: str, cert: tuple[Path, Path] | None = None) -> None:
        self.dot_port = free_port()
        self.doh_port = free_port()
        self.doq_port = free_port(socket.SOCK_DGRAM)
        self.cert = cert or make_cert(tmp, "first")
        tls = [] if "--tls-cert" in flags or "--tls-dir" in flags else [
            "--tls-cert", str(self.cert[0]), "--tls-key", str(self.cert[1])]  # fmt: skip
        super().__init__(
            tmp, "--upstream", upstream, "--dot", f"127.0.0.1:{self.dot_port}", "--doh", f"127.0.0.1:{self.doh_port}",
            "--doq", f"127.0.0.1:{self.doq_port}", "--server-name", SERVER_NAME, *tls, *flags,
        )  # fmt: skip

    @property
    def doh_url(self) -> str:
        return f"https://127.0.0.1:{self.doh_port}/dns-query"


def tls_connect(port: int, sni: str | None, cafile: Path | str | None, timeout: float = 5.0) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["dot"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni or SERVER_NAME)
    except BaseException:
        raw.close()
        raise


def dot_send(sock: ssl.SSLSocket, message: dns.message.Message) -> None:
    wire = message.to_wire()
    sock.sendall(struct.pack("!H", len(wire)) + wire)


def _recv_exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def dot_recv(sock: ssl.SSLSocket) -> dns.message.Message:
    (length,) = struct.unpack("!H", _recv_exactly(sock, 2))
    return dns.message.from_wire(_recv_exactly(sock, length))


def dot_query(port: int, name: str, sni: str | None = None, cafile: Path | None = None) -> dns.message.Message:
    with tls_connect(port, sni, cafile) as sock:
        dot_send(sock, dns.message.make_query(name, "A"))
        return dot_recv(sock)


async def _doq(port: int, message: dns.message.Message, sni: str, cafile: Path | None) -> dns.message.Message:
    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=True, alpn_protocols=["doq"], server_name=sni)
    if cafile is not None:
        config.load_verify_locations(str(cafile))
    else:
        config.verify_mode = ssl.CERT_NONE
    async with connect("127.0.0.1", port, configuration=config) as client:
        reader, writer = await client.create_stream()
        message.id = 0  # RFC 9250 4.2.1
        wire = message.to_wire()
        writer.write(struct.pack("!H", len(wire)) + wire)
        writer.write_eof()
        data = await reader.read()
        return dns.message.from_wire(data[2:])


def doq_query(
    port: int, name: str, sni: str = SERVER_NAME, cafile: Path | None = None, timeout: float = 5.0
) -> dns.message.Message:
    return asyncio.run(asyncio.wait_for(_doq(port, dns.message.make_query(name, "A"), sni, cafile), timeout))


def slow_reply(delay: float, address: str = "192.0.2.77") -> Any:
    def build(query: bytes) -> bytes:
        time.sleep(delay)
        q = dnslib.DNSRecord.parse(query)
        reply = q.reply()
        reply.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, rdata=dnslib.A(address), ttl=60))
        return bytes(reply.pack())

    return build
