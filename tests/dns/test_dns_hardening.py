"""The resolver against a hostile client and a hostile upstream (issue 10, items 5, 6, 8, 9, 10).

- access control before parsing: a source outside --allow gets a 12-byte REFUSED or silence, whatever it sent, and
  over TCP is closed at accept;
- one source cannot starve TCP: per-source cap, short first-query timeout; another source and the RPZ transfer
  still work during a flood;
- response policy fails closed on names it cannot read (pointer chains, loops, forward pointers) and judges AAAA
  answers and SVCB hints that embed a banned IPv4 address (NAT64, 6to4, IPv4-mapped, a site NAT64 prefix);
- every upstream transport (UDP, TCP, the TCP retry after truncation, DoH) refuses an answer to another question;
- cache hygiene: a TTL with the top bit set is 0, --max-cache-ttl / --min-cache-ttl, ECS never forwarded and
  ECS-scoped answers never cached.

Tests naming banned addresses run in a loopback-only network namespace (``loopback_netns``), with their own fake
upstream created inside it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest
from dnshelpers import BLOCKLISTS, DnsProcess, addresses, rcode
from fakeupstream import FakeUpstream

from enforcer.dns.server import source_key
from tests.conftest import eventually, run_cli


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x06weixin\x02qq\x03com\x00\x00\x01\x00\x01"


def udp_from(source: str, port: int, data: bytes, timeout: float = 0.7) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def closed_without_reply(sock: socket.socket, seconds: float) -> bool:
    """True when the server closed the connection without sending a byte."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# -- 5. access control before parsing -------------------------------------------------------------------------------
BAD_PACKETS = {
    "well-formed query": header() + QUESTION,
    "label past the end": header() + b"\x3fabc",
    "pointer loop in the question": header() + b"\xc0\x0c\x00\x01\x00\x01",
    "two questions": header(qd=2) + QUESTION + QUESTION,
    "no question": header(qd=0),
    "opcode UPDATE": header(flags=0x2800) + QUESTION,
    "opcode 15": header(flags=0x7800) + QUESTION,
    "EDNS version 1": header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00",
    "zone transfer": header() + b"\x03rpz\x08enforcer\x00\x00\xfc\x00\x01",
}


@pytest.fixture(scope="module")
def only_one(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsProcess]:
    """--allow names 127.0.0.1 alone: 127.0.0.2 is an outsider on the same loopback."""
    proc = DnsProcess(
        tmp_path_factory.mktemp("acl"), "--upstream", upstream.address, "--blocklist", str(BLOCKLISTS),
        "--allow", "127.0.0.1/32",
    )  # fmt: skip
    yield proc
    assert proc.stop() == 0, proc.stderr_text()


@pytest.mark.parametrize("kind", sorted(BAD_PACKETS))
def test_outsider_gets_header_only_refused_whatever_it_sends(only_one: DnsProcess, kind: str) -> None:
    packet = BAD_PACKETS[kind]
    reply = udp_from("127.0.0.2", only_one.port, packet)
    # Exactly 12 bytes: the id, QR, REFUSED and empty sections. No FORMERR/NOTIMP/BADVERS: nothing about the packet.
    assert reply is not None and len(reply) == 12, reply
    assert reply[:2] == packet[:2] and reply[2] & 0x80 and reply[3] & 0x0F == dns.rcode.REFUSED
    assert reply[4:] == bytes(8)
    assert only_one.metric("enforcer_dns_queries_total", outcome="formerr") == 0
    assert only_one.metric("enforcer_dns_queries_total", outcome="notimp") == 0


def test_allowed_client_still_gets_the_diagnosis(only_one: DnsProcess) -> None:
    for kind, code in (("label past the end", dns.rcode.FORMERR), ("opcode UPDATE", dns.rcode.NOTIMP)):
        inside = udp_from("127.0.0.1", only_one.port, BAD_PACKETS[kind])
        assert inside is not None and inside[3] & 0x0F == code, kind


@pytest.mark.parametrize("packet", [b"", b"\x12", header()[:11], header(flags=0x8180) + QUESTION])
def test_outsider_responses_and_stubs_get_silence(only_one: DnsProcess, packet: bytes) -> None:
    assert udp_from("127.0.0.2", only_one.port, packet, timeout=0.5) is None


@pytest.mark.parametrize("frame", [b"", b"\x00", b"\x00\x03abc", BAD_PACKETS["well-formed query"],
                                   BAD_PACKETS["opcode UPDATE"], BAD_PACKETS["label past the end"]])  # fmt: skip
def test_outsider_tcp_is_closed_at_accept(only_one: DnsProcess, frame: bytes) -> None:
    before = only_one.metric("enforcer_dns_queries_total", outcome="tcp_refused")
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", only_one.port))
        if frame:
            framed = frame if len(frame) < 12 else struct.pack("!H", len(frame)) + frame
            with contextlib.suppress(OSError):  # already closed by the server: that is the point
                s.sendall(framed)
        # Closed at once: well before the initial timeout (2 s) could have closed it.
        assert closed_without_reply(s, 1.5)
    assert only_one.metric("enforcer_dns_queries_total", outcome="tcp_refused") >= before + 1
    # The allowed client is served over TCP meanwhile.
    q = dns.message.make_query("weixin.qq.com", "A")
    assert addresses(dns.query.tcp(q, "127.0.0.1", port=only_one.port, timeout=3)) == ["0.0.0.0"]


def test_outsider_costs_no_upstream_query_and_no_event(only_one: DnsProcess, upstream: FakeUpstream) -> None:
    q = dns.message.make_query("outsider-probe.example", "A")
    reply = dns.query.udp(q, "127.0.0.1", port=only_one.port, timeout=3, source="127.0.0.2")
    assert rcode(reply) == "REFUSED" and not reply.answer and not reply.question
    assert "outsider-probe.example" not in upstream.names()
    assert not [e for e in only_one.read_events() if e.get("source", {}).get("ip") == "127.0.0.2"]


# -- 6. TCP cannot be starved by one client -------------------------------------------------------------------------
def _axfr_records(port: int, source: str) -> int:
    xfr = dns.query.xfr("127.0.0.1", "rpz.enforcer.", port=port, lifetime=10, source=source)
    return len(list(dns.zone.from_xfr(xfr).iterate_rdatas()))


def test_flood_from_one_source_leaves_tcp_and_rpz_transfer_working(upstream: FakeUpstream, tmp_path: Path) -> None:
    # Defaults: 512 connections in all, 32 per source, 2 s for the first query.
    proc = DnsProcess(tmp_path, "--upstream", upstream.address, "--blocklist", str(BLOCKLISTS), "--rpz-zone")
    flood: list[socket.socket] = []
    try:
        for _ in range(600):  # one byte each: a length prefix that is never finished
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", proc.port))
            flood.append(s)
            if len(flood) % 50 == 0:
                time.sleep(0.02)  # let the server accept: SYNs beyond the kernel's queue are retried a second later

        # Wait until the server has seen the whole flood (SYNs beyond the kernel's accept queue are retried a second
        # later): held, refused at the per-source cap, refused at the global cap, or already timed out.
        def flood_seen() -> float:
            m = proc.metrics()
            return m.get(("enforcer_dns_tcp_connections", ()), 0) + sum(
                m.get(("enforcer_dns_queries_total", (("outcome", o),)), 0)
                for o in ("tcp_source_limit", "tcp_rejected", "tcp_timeout")
            )

        # A few SYNs may still be in their kernel's retry backoff; far more than the old 512 slots have arrived.
        seen = eventually(lambda: (n := flood_seen()) >= 560 and n, 10, 0.2, "the server saw fewer than 560 SYNs")
        assert seen >= 560, seen
        for s in flood:
            with contextlib.suppress(OSError):  # closed by the server already
                s.send(b"\x00")
        q = dns.message.make_query("weixin.qq.com", "A")
        for _ in range(5):  # another source is served over TCP while the flood holds its connections
            assert addresses(dns.query.tcp(q, "127.0.0.1", port=proc.port, timeout=3, source="127.0.0.3")) == [
                "0.0.0.0"
            ]
        assert _axfr_records(proc.port, "127.0.0.3") > 50
        assert proc.metric("enforcer_dns_tcp_connections") <= 32 + 2
        # Every connection beyond the source's 32 was closed at accept.
        assert proc.metric("enforcer_dns_queries_total", outcome="tcp_source_limit") >= seen - 32
        # The flood's own connections that got a slot are cut by the initial timeout, and counted.
        eventually(lambda: proc.metric("enforcer_dns_queries_total", outcome="tcp_timeout") >= 32, 8, 0.2)
        assert proc.metric("enforcer_dns_queries_total", outcome="tcp_timeout") >= 32
    finally:
        for s in flood:
            s.close()
        assert proc.stop() == 0, proc.stderr_text()


def test_silent_connection_is_closed_by_the_initial_timeout(upstream: FakeUpstream, tmp_path: Path) -> None:
    proc = DnsProcess(tmp_path, "--upstream", upstream.address, "--blocklist", str(BLOCKLISTS),
                      "--tcp-initial-timeout", "0.5", "--tcp-idle-timeout", "30")  # fmt: skip
    try:
        silent = socket.create_connection(("127.0.0.1", proc.port))
        one_byte = socket.create_connection(("127.0.0.1", proc.port))
        one_byte.sendall(b"\x00")
        t0 = time.monotonic()
        assert closed_without_reply(silent, 5) and closed_without_reply(one_byte, 5)
        assert time.monotonic() - t0 < 3  # the 30 s idle timeout did not apply to the first query
        silent.close()
        one_byte.close()
        # After a first query, the (long) idle timeout applies: the connection stays open past the initial one.
        with socket.create_connection(("127.0.0.1", proc.port)) as s:
            q = dns.message.make_query("weixin.qq.com", "A").to_wire()
            s.sendall(struct.pack("!H", len(q)) + q)
            s.settimeout(3)
            assert len(s.recv(2)) == 2
            s.recv(65535)
            time.sleep(1.2)
            s.sendall(struct.pack("!H", len(q)) + q)
            assert len(s.recv(2)) == 2
        assert proc.metric("enforcer_dns_queries_total", outcome="tcp_timeout") >= 2
    finally:
        assert proc.stop() == 0, proc.stderr_text()


def test_per_source_cap_counts_ipv6_by_slash64() -> None:
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_key("fe80::1%eth0") == "fe80::/64"


# -- 8. response policy fails closed and sees every embedding -------------------------------------------------------
def _question(query: bytes) -> tuple[bytes, int]:
    i = 12
    while query[i]:
        i += query[i] + 1
    return query[12 : i + 5], i + 5


def _wire_name(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00"


def _rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 300) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def pointer_reply(target: str, hops: int, *, layout: str = "chain") -> Callable[[bytes], bytes]:
    """An answer whose CNAME target is reached through ``hops`` compression pointers (``layout`` chain), a pointer
    loop (``loop``), a forward pointer (``forward``), or whose owner name loops (``owner-loop``)."""

    def build(query: bytes) -> bytes:
        question, qend = _question(query)
        owner = b"\xc0\x0c"
        if layout == "forward":
            # CNAME target = a pointer to a name placed after it, in the next record's rdata: the CNAME record
            # (owner 2 + fixed 10 + rdata 2) ends at qend + 14, the next record's rdata starts 12 bytes later.
            cname = _rr(owner, 5, struct.pack("!H", 0xC000 | (qend + 26)))
            pool = _rr(owner, 10, _wire_name(target))
            return query[:2] + b"\x81\x80" + b"\x00\x01\x00\x02\x00\x00\x00\x00" + question + cname + pool
        if layout == "owner-loop":
            # An A record whose owner name is a pointer to itself.
            record = struct.pack("!H", 0xC000 | qend) + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 0, 2, 7])
            return query[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00" + question + record
        # A pool record (type NULL) holding the target name then a chain of pointers, each to the one before.
        pool_rdata_at = qend + 2 + 10
        rdata = bytearray(_wire_name(target))
        last = pool_rdata_at
        for _ in range(hops - 1):
            here = pool_rdata_at + len(rdata)
            rdata += struct.pack("!H", 0xC000 | last)
            last = here
        if layout == "loop":
            here = pool_rdata_at + len(rdata)
            rdata += struct.pack("!H", 0xC000 | here)  # points at itself
            last = here
        pool = _rr(owner, 10, bytes(rdata))
        cname = _rr(owner, 5, struct.pack("!H", 0xC000 | last))
        return query[:2] + b"\x81\x80" + b"\x00\x01\x00\x02\x00\x00\x00\x00" + question + pool + cname

    return build


def test_unreadable_names_in_answers_are_servfail(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    cases = {
        "chain70.example": pointer_reply("long.weixin.qq.com", 70),  # glibc follows it; we must not serve it
        "chain70-clean.example": pointer_reply("cdn.clean.example", 70),  # unreadable is unreadable: fail closed
        "loop.example": pointer_reply("cdn.clean.example", 1, layout="loop"),
        "forward.example": pointer_reply("cdn.clean.example", 1, layout="forward"),
        "owner-loop.example": pointer_reply("cdn.clean.example", 1, layout="owner-loop"),
        "chain3.example": pointer_reply("long.weixin.qq.com", 3),  # readable: judged, and blocked
        "chain3-clean.example": pointer_reply("cdn.clean.example", 3),  # readable and clean: served
    }
    up = FakeUpstream(raw=cases)
    fakes.append(up)
    proc = DnsProcess(tmp_path, "--upstream", up.address, "--blocklist", str(BLOCKLISTS))
    try:
        for name in ("chain70.example", "chain70-clean.example", "loop.example", "forward.example",
                     "owner-loop.example"):  # fmt: skip
            msg = proc.query(name, "A")
            assert rcode(msg) == "SERVFAIL" and not msg.answer, name
        assert addresses(proc.query("chain3.example", "A")) == ["0.0.0.0"]
        clean = proc.query("chain3-clean.example", "A")
        assert rcode(clean) == "NOERROR" and clean.answer
        assert proc.metric("enforcer_dns_queries_total", outcome="servfail") >= 5
    finally:
        assert proc.stop() == 0, proc.stderr_text()


BANNED_V4 = "77.74.177.5"  # inside kaspersky:cidr:77.74.176.0/21
EMBEDDINGS = {  # 4d4a:b105 = 77.74.177.5
    "nat64-wkp.example": "64:ff9b::4d4a:b105",
    "mapped.example": "::ffff:4d4a:b105",
    "sixtofour.example": "2002:4d4a:b105::1",
    "site-nat64.example": "2001:db8:64::4d4a:b105",  # the --nat64-prefix below
    "site-nat64-48.example": "2001:db8:6400:4d4a:b1:500::",  # a /48 prefix: RFC 6052 layout skips bits 64-71
}


def test_aaaa_and_ipv6hint_embedding_banned_ipv4_are_blocked(
    loopback_netns: None, tmp_path: Path, fakes: list[FakeUpstream]
) -> None:
    records = {name: [f"{name}. 300 IN AAAA {addr}"] for name, addr in EMBEDDINGS.items()}
    records["hint6.example"] = ["hint6.example. 300 IN HTTPS 1 . alpn=h2 ipv6hint=64:ff9b::4d4a:b105"]
    records["clean6.example"] = ["clean6.example. 300 IN AAAA 2001:db8:99::1"]
    records["clean-nat64.example"] = ["clean-nat64.example. 300 IN AAAA 64:ff9b::c000:201"]
    up = FakeUpstream(records=records)
    fakes.append(up)
    proc = DnsProcess(tmp_path, "--upstream", up.address, "--blocklist", str(BLOCKLISTS),
                      "--nat64-prefix", "2001:db8:64::/96", "--nat64-prefix", "2001:db8:6400::/48")  # fmt: skip
    try:
        for name in EMBEDDINGS:
            assert addresses(proc.query(name, "AAAA")) == ["::"], name
        hint = proc.query("hint6.example", "HTTPS")
        assert rcode(hint) == "NOERROR" and not hint.answer  # null mode: NODATA for other types
        assert addresses(proc.query("clean6.example", "AAAA")) == ["2001:db8:99::1"]
        assert addresses(proc.query("clean-nat64.example", "AAAA")) == ["64:ff9b::c000:201"]
        events = proc.events_for("mapped.example")
        assert events and events[0]["event"]["action"] == "dns-response-block"
    finally:
        assert proc.stop() == 0, proc.stderr_text()


def test_bad_nat64_prefix_is_one_line_error() -> None:
    out = run_cli("dns", "--upstream", "127.0.0.1:9", "--nat64-prefix", "2001:db8::/50")  # refused before serving
    assert out.returncode == 1 and re.search("--nat64-prefix", out.stderr), out


# -- 9. every upstream transport checks the answer against the question --------------------------------------------
MISMATCHES = ("name", "type", "class", "id", "qr", "opcode")


def assert_every_mismatch_is_servfail(proc: DnsProcess) -> None:
    for kind in MISMATCHES:
        msg = proc.query(f"{kind}.mm.example", "A", timeout=5)
        assert rcode(msg) == "SERVFAIL" and not msg.answer, kind


@pytest.mark.parametrize("transport", ["tcp", "udp-then-tcp"])
def test_tcp_upstream_answering_another_question_is_not_served(
    tmp_path: Path, fakes: list[FakeUpstream], transport: str
) -> None:
    up = FakeUpstream(mismatch={f"{k}.mm.example": k for k in MISMATCHES}, truncate_udp=transport == "udp-then-tcp")
    fakes.append(up)
    target = f"tcp://{up.address}" if transport == "tcp" else up.address
    proc = DnsProcess(tmp_path, "--upstream", target, "--blocklist", str(BLOCKLISTS), "--timeout", "2")
    try:
        assert_every_mismatch_is_servfail(proc)
        # Nothing was cached: the honest answer is served once the upstream gives it.
        up.mismatch.clear()
        assert addresses(proc.query("name.mm.example", "A", timeout=5)) == ["192.0.2.53"]
        assert proc.metric("enforcer_dns_upstream_errors_total", upstream=target) >= len(MISMATCHES)
    finally:
        assert proc.stop() == 0, proc.stderr_text()


def test_udp_upstream_answering_another_question_is_ignored(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    up = FakeUpstream(mismatch={f"{k}.mm.example": k for k in MISMATCHES})
    fakes.append(up)
    proc = DnsProcess(tmp_path, "--upstream", up.address, "--blocklist", str(BLOCKLISTS), "--timeout", "0.5")
    try:
        assert_every_mismatch_is_servfail(proc)
    finally:
        assert proc.stop() == 0, proc.stderr_text()


def test_doh_upstream_answering_another_question_is_not_served(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    from test_dns_upstream import DohServer, _self_signed

    fake = FakeUpstream(mismatch={f"{k}.mm.example": k for k in MISMATCHES})
    fakes.append(fake)
    cert, key = _self_signed(tmp_path)
    server = DohServer(fake, cert, key)
    url = f"https://127.0.0.1:{server.port}/dns-query"
    proc = DnsProcess(tmp_path, "--upstream", url, "--blocklist", str(BLOCKLISTS), env={"SSL_CERT_FILE": str(cert)})
    try:
        assert_every_mismatch_is_servfail(proc)
        fake.mismatch.clear()
        assert addresses(proc.query("type.mm.example", "A", timeout=5)) == ["192.0.2.53"]
    finally:
        assert proc.stop() == 0, proc.stderr_text()
        server.close()


# -- 10. cache hygiene ----------------------------------------------------------------------------------------------
def a_reply(ttl: int, *, ecs_scope: int | None = None) -> Callable[[bytes], bytes]:
    """An A answer 192.0.2.44 with the given raw TTL (the fake upstream's dnslib would refuse a TTL >= 2**31)."""

    def build(query: bytes) -> bytes:
        question, _ = _question(query)
        answer = _rr(b"\xc0\x0c", 1, bytes([192, 0, 2, 44]), ttl)
        return query[:2] + b"\x81\x80" + b"\x00\x01\x00\x01\x00\x00\x00\x00" + question + answer

    return build


def _asked(up: FakeUpstream, name: str) -> int:
    return up.names().count(name)


def _ttl(msg: dns.message.Message) -> int:
    return int(msg.answer[0].ttl)


def test_ttl_with_top_bit_is_zero_and_bounds_apply(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    up = FakeUpstream(raw={
        "topbit.example": a_reply(0x8000_0010),
        "topbit-max.example": a_reply(0xFFFF_FFFF),
        "huge.example": a_reply(30 * 86_400),
        "zero.example": a_reply(0),
    })  # fmt: skip
    fakes.append(up)
    proc = DnsProcess(tmp_path, "--upstream", up.address, "--blocklist", str(BLOCKLISTS))
    try:
        for name in ("topbit.example", "topbit-max.example"):
            first, second = proc.query(name, "A"), proc.query(name, "A")
            assert _ttl(first) == 0 and _ttl(second) == 0, name
            assert _asked(up, name) == 2, name  # TTL 0: not cached
        huge = proc.query("huge.example", "A")
        assert _ttl(huge) == 86_400  # --max-cache-ttl default, also what the client is told
        assert 86_390 <= _ttl(proc.query("huge.example", "A")) <= 86_400 and _asked(up, "huge.example") == 1
    finally:
        assert proc.stop() == 0, proc.stderr_text()


def test_bad_cache_ttl_flags_are_one_line_errors() -> None:
    for args in (["--min-cache-ttl", "20", "--max-cache-ttl", "10"], ["--max-cache-ttl", "-1"]):
        out = run_cli("dns", "--upstream", "127.0.0.1:9", *args)  # refused before serving: the CLI in-process
        assert out.returncode == 1 and re.search("cache-ttl", out.stderr), out


def _ecs_query(name: str, subnet: str) -> dns.message.Message:
    option = dns.edns.ECSOption.from_text(subnet)
    return dns.message.make_query(name, "A", use_edns=0, options=[option])


def test_ecs_is_not_forwarded_and_scoped_answers_are_not_cached(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    up = FakeUpstream()
    fakes.append(up)
    proc = DnsProcess(tmp_path, "--upstream", up.address, "--blocklist", str(BLOCKLISTS))
    try:
        for i, subnet in enumerate(("198.51.100.0/24", "2001:db8:7::/48")):
            q = _ecs_query(f"ecs{i}.example", subnet)
            q.use_edns(0, options=[*q.options, dns.edns.GenericOption(10, b"\x01" * 8)])  # a cookie beside it
            assert addresses(dns.query.udp(q, "127.0.0.1", port=proc.port, timeout=3)) == ["192.0.2.53"]
        assert [a.ecs for a in up.asked] == [False, False] and len(up.asked) == 2
        # An upstream that scopes its answers anyway (as if it had seen a subnet): never cached for others.
        up.ecs_scope = 24
        for _ in range(2):
            assert addresses(proc.query("scoped.example", "A", edns=0)) == ["192.0.2.53"]
        assert _asked(up, "scoped.example") == 2
        up.ecs_scope = None
        for _ in range(2):
            assert addresses(proc.query("unscoped.example", "A", edns=0)) == ["192.0.2.53"]
        assert _asked(up, "unscoped.example") == 1
    finally:
        assert proc.stop() == 0, proc.stderr_text()


def test_ipaddress_example_is_in_the_banned_range() -> None:
    # Guards the tests above: the address they embed is really inside a shipped cidr rule.
    from enforcer.policy import load_policy

    policy = load_policy([BLOCKLISTS])
    m = policy.match_ip(ipaddress.ip_address(BANNED_V4))
    assert m is not None and m.rule.action == "block"


def test_a_taken_metrics_port_is_named_as_the_metrics_listener(upstream: FakeUpstream, tmp_path: Path) -> None:
    """'cannot listen: Address already in use' read as the DNS port while the metrics port was the taken one."""
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "enforcer", "dns", "--listen", "127.0.0.1:0", "--upstream", upstream.address,
             "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"enforcer dns: cannot listen on 127.0.0.1:{port}: Address already in use (--metrics)"
    )
