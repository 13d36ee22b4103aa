"""A fake upstream resolver on 127.0.0.1 for the RPZ interop tests: A queries get 192.0.2.10 (TEST-NET-1), AAAA get
2001:db8::10, anything else NODATA; TTL 0 so the engines under test cache nothing. Records every name asked."""

from __future__ import annotations

import asyncio

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from tests.conftest import free_port


class FakeUpstream(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        port = free_port()
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", port))
        return port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            q = dns.message.from_wire(data)
        except Exception:
            return
        r = dns.message.make_response(q)
        if q.question:
            question = q.question[0]
            self.seen.append(question.name.to_text())
            if question.rdtype == dns.rdatatype.A:
                r.answer.append(dns.rrset.from_text(question.name, 0, "IN", "A", "192.0.2.10"))
            elif question.rdtype == dns.rdatatype.AAAA:
                r.answer.append(dns.rrset.from_text(question.name, 0, "IN", "AAAA", "2001:db8::10"))
        r.set_rcode(dns.rcode.NOERROR)
        assert self.transport is not None
        self.transport.sendto(r.to_wire(), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
