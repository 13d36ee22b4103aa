"""A fake upstream DNS server on 127.0.0.1 (UDP + TCP, threads) that records every question it is asked.

Answers (dnslib): names in ``records`` get those zone-format records; names in ``nxdomain`` get NXDOMAIN; any other
A/AAAA query gets 192.0.2.53 / 2001:db8::53 (TTL ``ttl``); other types get NODATA; negative answers carry an SOA.
``truncate_udp`` sets TC on UDP replies (with no records), ``silent`` drops every query, ``delay`` waits first,
``trailing`` names get a reply with a junk byte after the message (lenient parsers still read it).

Hostile upstreams: ``mismatch`` maps a name to how its reply is made to answer another question (``name``, ``type``,
``class``, ``id``, ``qr``, ``opcode``); ``raw`` maps a name to a function building the whole reply from the query
bytes (compression-pointer tricks, TTLs with the top bit set); ``ecs_scope`` echoes an EDNS Client Subnet option
with that scope in every reply (as a subnet-scoping CDN resolver would, even when the query carried none). Each
``Asked`` records whether the query carried an ECS option.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dnslib


@dataclass
class Asked:
    proto: str
    name: str  # lower-case, no trailing dot
    qtype: str
    ecs: bool = False  # the query carried an EDNS Client Subnet option


@dataclass
class FakeUpstream:
    host: str = "127.0.0.1"
    records: dict[str, list[str]] = field(default_factory=dict)
    nxdomain: set[str] = field(default_factory=set)
    ttl: int = 300
    negative_ttl: int = 30
    truncate_udp: bool = False
    silent: bool = False
    delay: float = 0.0
    trailing: set[str] = field(default_factory=set)  # names whose reply carries a junk byte after the message
    mismatch: dict[str, str] = field(default_factory=dict)  # name -> name | type | class | id | qr | opcode
    raw: dict[str, Callable[[bytes], bytes]] = field(default_factory=dict)  # name -> reply built from the query
    ecs_scope: int | None = None
    asked: list[Asked] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock = self.request
                sock.settimeout(5)
                with contextlib.suppress(OSError, struct.error):
                    while True:
                        head = _recv(sock, 2)
                        if not head:
                            return
                        data = _recv(sock, struct.unpack("!H", head)[0])
                        reply = owner.answer(data, "tcp")
                        if reply is not None:
                            sock.sendall(struct.pack("!H", len(reply)) + reply)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            address_family = family

        # UDP and TCP on the same port: the port UDP got may be taken for TCP (other tests share the host): retry.
        for _ in range(50):
            self.udp = socket.socket(family, socket.SOCK_DGRAM)
            self.udp.bind((self.host, 0))
            self.port = self.udp.getsockname()[1]
            try:
                self.tcp = Server((self.host, self.port), Handler)
                break
            except OSError:
                self.udp.close()
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self._threads = [
            threading.Thread(target=self._udp_loop, daemon=True),
            threading.Thread(target=self.tcp.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def names(self) -> list[str]:
        with self._lock:
            return [a.name for a in self.asked]

    def clear(self) -> None:
        with self._lock:
            self.asked.clear()

    def close(self) -> None:
        self.tcp.shutdown()
        self.tcp.server_close()
        self.udp.close()

    def _udp_loop(self) -> None:
        while True:
            try:
                data, addr = self.udp.recvfrom(65535)
            except OSError:
                return
            reply = self.answer(data, "udp")
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(reply, addr)

    def answer(self, data: bytes, proto: str) -> bytes | None:
        try:
            return self._answer(data, proto)
        except Exception:  # a name dnslib cannot rebuild (fuzzing): answer like a server that gave up
            return _formerr(data)

    def _answer(self, data: bytes, proto: str) -> bytes | None:
        try:
            query = dnslib.DNSRecord.parse(data)
        except Exception:
            return _formerr(data)
        q = query.q
        name = str(q.qname).rstrip(".").lower()
        opt = [r for r in query.ar if r.rtype == dnslib.QTYPE.OPT]
        ecs = any(o.code == 8 for r in opt for o in (r.rdata or []))
        with self._lock:
            self.asked.append(Asked(proto, name, dnslib.QTYPE.get(q.qtype), ecs))
        if self.silent:
            return None
        if self.delay:
            time.sleep(self.delay)
        if name in self.raw:
            return self.raw[name](data)
        reply = query.reply()
        if self.ecs_scope is not None:
            # family 1, source /24, scope as configured, 198.51.100.0 (RFC 7871 section 6)
            option = dnslib.EDNSOption(8, struct.pack("!HBB", 1, 24, self.ecs_scope) + bytes([198, 51, 100]))
            reply.add_ar(dnslib.EDNS0(udp_len=1232, opts=[option]))
        if proto == "udp" and self.truncate_udp:
            reply.header.tc = 1
            return reply.pack()
        soa = dnslib.RR(
            name.split(".", 1)[-1] + ".",
            dnslib.QTYPE.SOA,
            ttl=self.negative_ttl,
            rdata=dnslib.SOA("ns.example.", "host.example.", (1, 3600, 600, 86400, self.negative_ttl)),
        )
        if name in self.nxdomain:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
            reply.add_auth(soa)
        elif name in self.records:
            for text in self.records[name]:
                for rr in dnslib.RR.fromZone(text):
                    reply.add_answer(rr)
        elif q.qtype == dnslib.QTYPE.A:
            reply.add_answer(dnslib.RR(q.qname, dnslib.QTYPE.A, ttl=self.ttl, rdata=dnslib.A("192.0.2.53")))
        elif q.qtype == dnslib.QTYPE.AAAA:
            reply.add_answer(dnslib.RR(q.qname, dnslib.QTYPE.AAAA, ttl=self.ttl, rdata=dnslib.AAAA("2001:db8::53")))
        else:
            reply.add_auth(soa)
        packed = reply.pack()
        if name in self.mismatch:
            packed = _mismatch(packed, self.mismatch[name])
        return packed + (b"\x00" if name in self.trailing else b"")


def _mismatch(reply: bytes, kind: str) -> bytes:
    """The reply altered to answer another question (or to not be an answer): what a hostile upstream sends."""
    out = bytearray(reply)
    qend = 12
    while out[qend]:
        qend += out[qend] + 1
    qend += 1
    if kind == "name":  # same length, another name: the first label's first byte changed
        out[13] = ord("z") if out[13] != ord("z") else ord("y")
    elif kind == "type":
        out[qend : qend + 2] = struct.pack("!H", 16 if struct.unpack_from("!H", out, qend)[0] != 16 else 1)
    elif kind == "class":
        out[qend + 2 : qend + 4] = struct.pack("!H", 3)
    elif kind == "id":
        out[0] ^= 0x5A
    elif kind == "qr":
        out[2] &= 0x7F
    elif kind == "opcode":
        out[2] = (out[2] & 0x87) | (2 << 3)  # STATUS
    else:
        raise ValueError(kind)
    return bytes(out)


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def _formerr(data: bytes) -> bytes | None:
    """What a real server sends for a query it cannot parse: FORMERR, echoing the question when it can find it."""
    if len(data) < 12:
        return None
    i = 12
    while i < len(data) and data[i] != 0 and data[i] < 64:
        i += data[i] + 1
    question = data[12 : i + 5] if i + 5 <= len(data) and i < len(data) and data[i] == 0 else b""
    counts = b"\x00\x01\x00\x00\x00\x00\x00\x00" if question else bytes(8)
    return data[:2] + bytes((0x80 | (data[2] & 0x01), 0x81)) + counts + question
