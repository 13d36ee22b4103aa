"""Upstream failures are logged once a minute per upstream with the counts, and SERVFAIL says why (EDE 22/23).

A real UDP upstream address with nothing behind it (loopback answers ICMP port unreachable: a network error), a
step clock for the minute; the EDE option bytes are read back with dnspython."""

from __future__ import annotations

import asyncio
import logging
import re
import socket

import dns.edns
import dns.message
import pytest

from enforcer.dns.upstream import Forwarder, parse_upstream
from enforcer.dns.wire import EDE_OPTION
from tests.conftest import free_port


def _query() -> bytes:
    return dns.message.make_query("example.org", "A").to_wire()


def test_failures_are_counted_in_one_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    now = [1000.0]
    fwd = Forwarder([parse_upstream(dead)], timeout=2.0, clock=lambda: now[0])
    q = _query()
    caplog.set_level(logging.INFO, "enforcer.dns.upstream")

    async def go() -> None:
        try:
            for _ in range(17):
                assert await fwd.exchange(q, len(q)) is None
            now[0] += 60
            assert await fwd.exchange(q, len(q)) is None
        finally:
            await fwd.close()

    asyncio.run(go())
    lines = [r for r in caplog.records if r.getMessage().startswith(f"upstream {dead}:")]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING], [r.getMessage() for r in lines]
    assert "0 timeout(s), 1 network error(s) in the last 60 s" in lines[0].getMessage()
    # 16 held back + this one. Which kind each is depends on the kernel: loopback's ICMP port unreachable is
    # rate-limited, so a query whose ICMP was suppressed waits out the timeout.
    m = re.search(r"(\d+) timeout\(s\), (\d+) network error\(s\) in the last 60 s", lines[1].getMessage())
    assert m is not None and int(m.group(1)) + int(m.group(2)) == 17, lines[1].getMessage()
    assert "18 consecutive failure(s)" in lines[1].getMessage()
    # The SERVFAIL's EDE: 22 after a timeout, 23 after a network error, naming the upstream.
    expected = 22 if "(last: timeout)" in lines[1].getMessage() else 23
    code, length, info = int.from_bytes(fwd.last_failure[:2]), int.from_bytes(fwd.last_failure[2:4]), None
    assert code == EDE_OPTION and length == len(fwd.last_failure) - 4
    info = dns.edns.option_from_wire(code, fwd.last_failure, 4, length)
    assert isinstance(info, dns.edns.EDEOption) and info.code == expected and dead in (info.text or "")


def test_one_client_cannot_take_every_upstream_slot() -> None:
    """A client flooding names the upstream never answers took all of the forwarder's slots: every other client got
    SERVFAIL 'too many queries in flight'. One address now holds at most an eighth of them."""
    from fakeupstream import FakeUpstream

    silent = FakeUpstream(silent=True)
    fwd = Forwarder([parse_upstream(silent.address)], timeout=1.0, max_inflight=16)
    assert fwd.max_per_source == 2
    q = _query()

    async def go() -> None:
        try:
            flood = [asyncio.ensure_future(fwd.exchange(q, len(q), "10.0.0.66")) for _ in range(20)]
            await asyncio.sleep(0.05)
            assert fwd.inflight == 2 and fwd.by_source == {"10.0.0.66": 2}
            refused = [t for t in flood if t.done()]
            assert len(refused) == 18 and all(t.result() is None for t in refused)
            # The refusal says why, in the EDE of its SERVFAIL (read before any other await, as the chain does).
            assert await fwd.exchange(q, len(q), "10.0.0.66") is None
            assert b"too many queries in flight from this client" in fwd.last_failure
            other = asyncio.ensure_future(fwd.exchange(q, len(q), "10.0.0.7"))  # still gets a slot
            await asyncio.sleep(0.05)
            assert not other.done() and fwd.by_source == {"10.0.0.66": 2, "10.0.0.7": 1}
            await asyncio.gather(*flood, other)
            assert fwd.inflight == 0 and fwd.by_source == {}  # every slot given back
        finally:
            await fwd.close()

    try:
        asyncio.run(go())
    finally:
        silent.close()
