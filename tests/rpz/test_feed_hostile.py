"""The RPZ feed against bad packets (issue 10, item 7): never a traceback per packet, every bad packet counted, at most
one log line per kind and minute, and the feed keeps answering; plus the rate-limited log helper itself."""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.zone
import pytest

from enforcer.dns.observe import RateLimitedLog
from tests.conftest import eventually
from tests.dns.dnshelpers import DnsProcess

ZONE_WIRE = b"\x03rpz\x08enforcer\x00"
SOA_Q = ZONE_WIRE + b"\x00\x06\x00\x01"
AXFR_Q = ZONE_WIRE + b"\x00\xfc\x00\x01"


def header(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


BAD = {
    "response (QR=1) to an SOA query": lambda i: header(i, 0x8400) + SOA_Q,
    "response carrying an answer": lambda i: header(i, 0x8400, an=1) + SOA_Q + b"\xc0\x0c\x00\x06\x00\x01" + bytes(6),
    "NOTIFY": lambda i: header(i, 0x2400) + SOA_Q,
    "UPDATE": lambda i: header(i, 0x2800) + SOA_Q,
    "opcode 15": lambda i: header(i, 0x7800) + AXFR_Q,
}


def test_bad_packets_at_the_feed_are_counted_not_logged_per_packet(tmp_path: Path) -> None:
    proc = DnsProcess(tmp_path, "--upstream", "127.0.0.1:9", "--rpz-zone")
    try:
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(2000):
                make = list(BAD.values())[i % len(BAD)]
                s.sendto(make(i), ("127.0.0.1", proc.port))
                sent += 1
                if i % 200 == 0:
                    time.sleep(0.01)  # let the resolver keep up: loopback UDP drops what overflows the buffer
        with socket.create_connection(("127.0.0.1", proc.port)) as t:  # and over TCP, on one connection
            for i, make in enumerate(BAD.values()):
                frame = make(5000 + i)
                t.sendall(struct.pack("!H", len(frame)) + frame)
                sent += 1
        eventually(lambda: proc.metric("enforcer_dns_queries_total", outcome="zone_bad") >= sent * 0.95, 10, 0.2)
        bad = proc.metric("enforcer_dns_queries_total", outcome="zone_bad")
        assert bad >= sent * 0.95, (bad, sent)
        # The feed still answers (UDP SOA, TCP AXFR).
        soa = dns.query.udp(dns.message.make_query("rpz.enforcer.", "SOA"), "127.0.0.1", port=proc.port, timeout=5)
        assert soa.rcode() == dns.rcode.NOERROR and soa.answer[0][0].serial > 0
        zone = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", "rpz.enforcer.", port=proc.port, lifetime=10))
        assert len(list(zone.iterate_rdatas())) > 50
    finally:
        assert proc.stop() == 0
    log = proc.stderr_text()
    assert "Traceback" not in log
    assert log.count("RPZ feed: dropped") == 1, log[-2000:]
    assert len(log) < 4096, len(log)


def test_rate_limited_log_holds_back_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("enforcer.test.ratelog")
    now = [100.0]
    ratelog = RateLimitedLog(logger, interval=0.3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="enforcer.test.ratelog"):
        results = [ratelog("a", logging.WARNING, "bad packet from %s", f"192.0.2.{i}") for i in range(1000)]
        assert results.count(True) == 1 and results[0]
        assert ratelog("b", logging.WARNING, "another kind")  # keys are limited independently
        now[0] += 0.35  # the clock is stepped, not slept through
        assert ratelog("a", logging.WARNING, "bad packet from %s", "192.0.2.200")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad packet from 192.0.2.0",
        "another kind",
        "bad packet from 192.0.2.200 (999 similar line(s) held back in the last 0.3 s)",
    ]
