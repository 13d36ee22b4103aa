"""Bad input never hurts: malformed datagrams, hostile TCP clients, random bursts; and --allow / IPv6 listening."""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import pytest
from dnshelpers import BLOCKLISTS, DnsProcess, addresses, rcode
from fakeupstream import FakeUpstream

from enforcer.dns.server import TCP_IDLE_TIMEOUT

MAX_TCP = 20


@pytest.fixture(scope="module")
def hostile(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsProcess]:
    proc = DnsProcess(
        tmp_path_factory.mktemp("hostile"), "--upstream", upstream.address, "--blocklist", str(BLOCKLISTS),
        "--tcp-max-connections", str(MAX_TCP),
    )  # fmt: skip
    yield proc
    assert proc.stop() == 0, proc.stderr_text()


def udp_exchange(proc: DnsProcess, data: bytes, timeout: float = 0.7) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", proc.port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def still_answers(proc: DnsProcess) -> None:
    assert proc.alive()
    assert addresses(proc.query("weixin.qq.com", "A")) == ["0.0.0.0"]
    assert addresses(proc.query("weixin.qq.com", "A", tcp=True)) == ["0.0.0.0"]


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x06weixin\x02qq\x03com\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    ("packet", "expect"),
    [
        (b"", None),
        (b"\x12\x34\x01", None),  # no full header: dropped
        (header(flags=0x8180) + QUESTION, None),  # a response (QR=1): never answered (no reflection loops)
        (header() + b"\x3fabc", "FORMERR"),  # label runs past the end
        (header() + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),  # compression pointer loop in the question
        (header(qd=2) + QUESTION + QUESTION, "FORMERR"),  # two questions
        (header(qd=0), "FORMERR"),  # no question
        (header(an=1) + QUESTION, "FORMERR"),  # answer count but no answer
        (header(flags=0x2800) + QUESTION, "NOTIMP"),  # opcode UPDATE
        (header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00", "BADVERS"),  # EDNS version 1
        (header() + QUESTION + b"trailing", "NOERROR"),  # lenient like dnslib: the question is fine, junk ignored
    ],
)
def test_malformed_datagrams(hostile: DnsProcess, packet: bytes, expect: str | None) -> None:
    reply = udp_exchange(hostile, packet)
    if expect is None:
        assert reply is None
    else:
        assert reply is not None and reply[:2] == packet[:2] and reply[2] & 0x80
        code = reply[3] & 0x0F
        if expect == "BADVERS":
            assert code == 0 and b"\x00\x00\x29" in reply and reply[-6] == 1  # extended rcode 1 << 4 = 16
        else:
            assert code == {"NOERROR": 0, "FORMERR": 1, "NOTIMP": 4}[expect]
    still_answers(hostile)


def test_forward_pointer_in_question_is_formerr(hostile: DnsProcess) -> None:
    # www + a pointer forward to offset 22 (after the question): dnslib rejects forward pointers, so FORMERR.
    packet = header() + b"\x03www" + b"\xc0\x16" + b"\x00\x01\x00\x01" + b"\x06weixin\x02qq\x03com\x00"
    reply = udp_exchange(hostile, packet)
    assert reply is not None and reply[:2] == packet[:2] and reply[3] & 0x0F == 1
    still_answers(hostile)


def test_malformed_counted(hostile: DnsProcess) -> None:
    udp_exchange(hostile, header() + b"\x3fabc")
    udp_exchange(hostile, b"\x00")
    assert hostile.metric("enforcer_dns_queries_total", outcome="formerr") >= 1
    assert hostile.metric("enforcer_dns_queries_total", outcome="dropped") >= 1


def test_random_datagram_burst(hostile: DnsProcess) -> None:
    rng = random.Random(1234)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3000):
            n = rng.choice([0, 1, 11, 12, 13, 17, 30, 64, 300, 1500])
            data = bytes(rng.getrandbits(8) for _ in range(n))
            if i % 3 == 0 and n >= 12:  # make many look like queries so they go deeper
                data = data[:2] + b"\x01\x00\x00\x01" + data[6:]
            s.sendto(data, ("127.0.0.1", hostile.port))
    time.sleep(0.5)
    still_answers(hostile)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            if not sock.recv(1024):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_lying_length_and_slow_clients_are_cut(hostile: DnsProcess) -> None:
    before = hostile.metric("enforcer_dns_queries_total", outcome="tcp_timeout")
    liar = socket.create_connection(("127.0.0.1", hostile.port))
    liar.sendall(struct.pack("!H", 500) + header() + QUESTION)  # promises 500 bytes, sends 29
    slow = socket.create_connection(("127.0.0.1", hostile.port))
    stop = threading.Event()

    def dribble() -> None:
        frame = header() + QUESTION
        slow.sendall(struct.pack("!H", len(frame)))
        for b in frame:
            if stop.wait(0.4):
                return
            try:
                slow.sendall(bytes([b]))
            except OSError:
                return

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        still_answers(hostile)  # others are served meanwhile
        assert _closed_within(liar, 8)
        assert _closed_within(slow, 8)
    finally:
        stop.set()
        liar.close()
        slow.close()
        t.join(2)
    assert hostile.metric("enforcer_dns_queries_total", outcome="tcp_timeout") >= before + 2


def test_tiny_frame_closed(hostile: DnsProcess) -> None:
    with socket.create_connection(("127.0.0.1", hostile.port)) as s:
        s.sendall(b"\x00\x03abc")
        assert _closed_within(s, 3)
    assert hostile.metric("enforcer_dns_queries_total", outcome="tcp_bad_frame") >= 1


def _count_closed(conns: list[socket.socket], want: int, deadline: float) -> int:
    """Poll the (silent) connections until ``want`` of them were closed by the server or ``deadline`` passes.

    The clients never send a byte, so a connection becomes readable only by an EOF or a reset from the server.
    """
    open_ = list(conns)
    closed = 0
    while closed < want and open_:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select(open_, [], [], min(remaining, 0.2))
        for c in readable:
            open_.remove(c)
            if _closed_within(c, 0.5):
                closed += 1
    return closed


def _answers_tcp_again(proc: DnsProcess, deadline: float) -> None:
    """Retry a TCP query until the server has noticed the flood's connections went away (bounded by ``deadline``)."""
    while True:
        try:
            assert addresses(proc.query("weixin.qq.com", "A", tcp=True)) == ["0.0.0.0"]
            return
        except (OSError, EOFError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_connection_flood_is_capped(hostile: DnsProcess) -> None:
    conns = []
    start = time.monotonic()
    try:
        for _ in range(MAX_TCP * 2):
            conns.append(socket.create_connection(("127.0.0.1", hostile.port)))
        # Generous for a loaded machine, but well before the server's idle timeout could close the connections
        # within the cap (their idle timer starts at accept, after `start`): only the cap can close them in time.
        closed = _count_closed(conns, MAX_TCP - 2, start + TCP_IDLE_TIMEOUT * 0.7)
        assert closed >= MAX_TCP - 2, closed  # beyond the cap, connections are closed by the server
        assert hostile.metric("enforcer_dns_queries_total", outcome="tcp_rejected") >= MAX_TCP - 2
        assert addresses(hostile.query("weixin.qq.com", "A")) == ["0.0.0.0"]  # UDP unaffected
    finally:
        for c in conns:
            c.close()
    _answers_tcp_again(hostile, time.monotonic() + 10)  # TCP again once the flood is gone
    still_answers(hostile)


def test_allow_refuses_other_clients(upstream: FakeUpstream, tmp_path: Path) -> None:
    proc = DnsProcess(tmp_path, "--upstream", upstream.address, "--blocklist", str(BLOCKLISTS), "--allow", "10.0.0.0/8")
    try:
        for name in ("refused.example", "weixin.qq.com"):
            msg = proc.query(name, "A")
            assert rcode(msg) == "REFUSED" and not msg.answer
        with pytest.raises((EOFError, ConnectionError)):  # over TCP: closed at accept, before any byte is read
            proc.query("refused2.example", "A", tcp=True)
        assert "refused.example" not in upstream.names() and "refused2.example" not in upstream.names()
        assert proc.metric("enforcer_dns_queries_total", outcome="refused") == 2
        assert proc.metric("enforcer_dns_queries_total", outcome="tcp_refused") == 1
        assert proc.read_events() == []
    finally:
        assert proc.stop() == 0


def test_ipv6_listen(upstream: FakeUpstream, tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    proc = DnsProcess(tmp_path, "--upstream", upstream.address, "--blocklist", str(BLOCKLISTS), listen_host="::1")
    try:
        assert "[::1]" in proc.lines[0]
        assert addresses(proc.query("weixin.qq.com", "AAAA")) == ["::"]
        assert addresses(proc.query("v6client.example", "A", tcp=True)) == ["192.0.2.53"]
    finally:
        assert proc.stop() == 0
