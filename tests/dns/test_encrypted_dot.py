"""DNS over TLS (enforcer/dns/encrypted.py) against a real ``enforcer dns`` with real clients: kdig +tls, dig +tls,
dnspython's dns.query.tls and a raw TLS socket. Every name is answered by the local fake upstream or sinkholed, so
nothing leaves the machine; weixin.qq.com is never forwarded (it is blocked before the upstream)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from dnshelpers import addresses, rcode
from encryptedhelpers import (
    SERVER_NAME,
    EncResolver,
    dot_query,
    dot_recv,
    dot_send,
    make_cert,
    slow_reply,
    tls_connect,
)
from fakeupstream import FakeUpstream

from tests.conftest import eventually, require_tool, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BLOCKED = "weixin.qq.com"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream(raw={"slow.example": slow_reply(1.5)})
    yield up
    up.close()


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[EncResolver]:
    tmp = tmp_path_factory.mktemp("dot")
    (tmp / "ids.txt").write_text("# devices\nphone-1\nLaptop-2  # case folds\n")
    r = EncResolver(tmp, upstream.address, "--client-ids", str(tmp / "ids.txt"))
    yield r
    r.stop()


def _device_events(r: EncResolver, qname: str, device: str) -> list[dict]:  # type: ignore[type-arg]
    found: list[dict] = []  # type: ignore[type-arg]

    def seen() -> bool:
        found[:] = [e for e in r.events_for(qname, timeout=0) if e.get("device", {}).get("id") == device]
        return bool(found)

    eventually(seen, timeout=5, message=f"no event for {qname} with device.id {device}")
    return found


def test_kdig_tls_blocked_name_carries_client_id(resolver: EncResolver) -> None:
    kdig = require_tool("kdig")
    out = subprocess.run(
        [kdig, "@127.0.0.1", "-p", str(resolver.dot_port), "+tls", f"+tls-sni=phone-1.{SERVER_NAME}",
         "+tls-ca=" + str(resolver.cert[0]), f"+tls-hostname=phone-1.{SERVER_NAME}", BLOCKED, "A", "+short"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.stdout.split() == ["0.0.0.0"], out.stdout + out.stderr
    event = _device_events(resolver, BLOCKED, "phone-1")[-1]
    assert event["labels"]["dns_transport"] == "dot"
    assert event["event"]["action"] == "dns-block" and event["rule"]["ruleset"] == "wechat"


def test_dig_tls_and_dnspython_resolve_through_the_chain(resolver: EncResolver, upstream: FakeUpstream) -> None:
    dig = require_tool("dig")
    out = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(resolver.dot_port), "+tls", "allowed.example", "A", "+short", "+tries=1"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.stdout.split() == ["192.0.2.53"], out.stdout + out.stderr  # the fake upstream's answer
    assert "allowed.example" in upstream.names()
    q = dns.message.make_query("kaspersky.com", "A")
    reply = dns.query.tls(q, "127.0.0.1", port=resolver.dot_port, timeout=5, server_hostname=f"laptop-2.{SERVER_NAME}",
                          verify=str(resolver.cert[0]))  # fmt: skip
    assert addresses(reply) == ["0.0.0.0"]
    event = _device_events(resolver, "kaspersky.com", "laptop-2")[-1]  # the file's "Laptop-2", case-folded
    assert event["labels"]["dns_transport"] == "dot"


def test_slow_upstream_does_not_delay_a_blocked_answer_on_the_same_connection(resolver: EncResolver) -> None:
    with tls_connect(resolver.dot_port, f"phone-1.{SERVER_NAME}", resolver.cert[0]) as sock:
        # Warm-up so that the timing below measures only the two queries.
        dot_send(sock, dns.message.make_query("warm.example", "A"))
        dot_recv(sock)
        slow, blocked = dns.message.make_query("slow.example", "A"), dns.message.make_query(BLOCKED, "A")
        t0 = time.monotonic()
        dot_send(sock, slow)
        dot_send(sock, blocked)
        first = dot_recv(sock)
        t_first = time.monotonic() - t0
        second = dot_recv(sock)
        t_second = time.monotonic() - t0
    assert first.id == blocked.id and addresses(first) == ["0.0.0.0"]
    assert t_first < 1.0, f"the blocked answer waited {t_first:.2f}s behind the slow one"
    assert second.id == slow.id and addresses(second) == ["192.0.2.77"]
    assert t_second >= 1.4  # the upstream really was slow: the order above is not luck


def test_unknown_or_invalid_client_id_refused_under_require(tmp_path: Path, upstream: FakeUpstream) -> None:
    (tmp_path / "ids.txt").write_text("phone-1\n")
    r = EncResolver(tmp_path, upstream.address, "--client-ids", str(tmp_path / "ids.txt"), "--require-client-id",
                    "--allow", "10.255.255.0/24")  # fmt: skip
    try:
        # Outside --allow, but --require-client-id makes the ClientID the access control.
        assert addresses(dot_query(r.dot_port, "allowed.example", f"phone-1.{SERVER_NAME}", r.cert[0])) == [
            "192.0.2.53"
        ]
        for sni in (f"tablet-9.{SERVER_NAME}", SERVER_NAME, f"a.b.{SERVER_NAME}", f"bad_id.{SERVER_NAME}"):
            reply = dot_query(r.dot_port, BLOCKED, sni, None)
            assert rcode(reply) == "REFUSED" and not reply.answer, sni
        assert r.metric("enforcer_dns_encrypted_connections_total", transport="dot", outcome="client_id_refused") == 4
        assert r.events_for(BLOCKED, timeout=0.5) == []  # refused before the chain: no hit
        # The id file is re-read when it changes: tablet-9 becomes known without a restart.
        (tmp_path / "ids.txt").write_text("phone-1\ntablet-9\n")
        eventually(lambda: rcode(dot_query(r.dot_port, BLOCKED, f"tablet-9.{SERVER_NAME}", None)) == "NOERROR",
                   timeout=10, message="tablet-9 not accepted after the ids file changed")  # fmt: skip
    finally:
        r.stop()


def test_source_outside_allow_closed_before_tls(tmp_path: Path, upstream: FakeUpstream) -> None:
    r = EncResolver(tmp_path, upstream.address, "--allow", "10.255.255.0/24")
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            dot_query(r.dot_port, "allowed.example", None, None)
        assert r.metric("enforcer_dns_encrypted_connections_total", transport="dot", outcome="refused") >= 1
        assert r.metric("enforcer_dns_encrypted_connections_total", transport="dot", outcome="accepted") == 0
    finally:
        r.stop()


def test_per_source_cap_and_handshake_timeout(tmp_path: Path, upstream: FakeUpstream) -> None:
    r = EncResolver(tmp_path, upstream.address, "--tls-max-per-source", "2", "--tls-handshake-timeout", "1.5")
    try:
        held = [socket.create_connection(("127.0.0.1", r.dot_port), timeout=5) for _ in range(2)]
        try:
            eventually(lambda: r.metric("enforcer_dns_encrypted_connections_open", transport="dot") == 2, timeout=10)
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                dot_query(r.dot_port, "allowed.example", None, None)
            assert r.metric("enforcer_dns_encrypted_connections_total", transport="dot", outcome="source_limit") == 1
            # The two silent connections never start TLS: closed at the handshake timeout, slots given back.
            eventually(lambda: r.metric("enforcer_dns_encrypted_connections_total", transport="dot",
                                        outcome="handshake_timeout") == 2, timeout=10)  # fmt: skip
            assert held[0].recv(1) == b""
        finally:
            for s in held:
                s.close()
        assert addresses(dot_query(r.dot_port, "allowed.example", None, None)) == ["192.0.2.53"]
    finally:
        r.stop()


def test_certificate_swapped_on_disk_is_used_by_new_handshakes(tmp_path: Path, upstream: FakeUpstream) -> None:
    first = make_cert(tmp_path, "one")
    second = make_cert(tmp_path, "two")
    live_cert, live_key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    shutil.copy(first[0], live_cert)
    shutil.copy(first[1], live_key)
    r = EncResolver(tmp_path, upstream.address, "--tls-cert", str(live_cert), "--tls-key", str(live_key))
    try:
        old = tls_connect(r.dot_port, None, first[0])  # verified against the first certificate only
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_connect(r.dot_port, None, second[0])
        # Swap as certbot does: new files renamed into place (key first, then the certificate).
        for src, dst in ((second[1], live_key), (second[0], live_cert)):
            shutil.copy(src, str(dst) + ".new")
            os.replace(str(dst) + ".new", dst)

        def new_cert_served() -> bool:
            try:
                tls_connect(r.dot_port, None, second[0]).close()
                return True
            except ssl.SSLCertVerificationError:
                return False

        eventually(new_cert_served, timeout=10, message="the new certificate was not picked up")
        dot_send(old, dns.message.make_query("allowed.example", "A"))  # the open connection keeps working
        assert addresses(dot_recv(old)) == ["192.0.2.53"]
        old.close()
        assert r.alive()
    finally:
        r.stop()


RELOADS = "enforcer_dns_encrypted_reloads_total"


def test_broken_certificate_and_client_ids_swaps_are_counted_and_the_last_good_kept(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    first = make_cert(tmp_path, "one")
    live_cert, live_key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    shutil.copy(first[0], live_cert)
    shutil.copy(first[1], live_key)
    ids = tmp_path / "ids.txt"
    ids.write_text("phone-1\n")
    r = EncResolver(tmp_path, upstream.address, "--tls-cert", str(live_cert), "--tls-key", str(live_key),
                    "--client-ids", str(ids), "--require-client-id")  # fmt: skip
    try:
        assert r.metric(RELOADS, kind="certificate", result="failure") == 0  # present from the first scrape
        assert r.metric(RELOADS, kind="client_ids", result="failure") == 0
        # A truncated certificate renamed into place (a botched renewal): logged, counted, the old one kept.
        broken = tmp_path / "broken.pem"
        broken.write_text(first[0].read_text()[:200])
        os.replace(broken, live_cert)
        eventually(lambda: r.metric(RELOADS, kind="certificate", result="failure") == 1, timeout=10,
                   message="the broken certificate was not counted")  # fmt: skip
        assert "not reloaded, the previous one is kept" in r.stderr_text()
        assert addresses(dot_query(r.dot_port, "allowed.example", f"phone-1.{SERVER_NAME}", first[0])) == [
            "192.0.2.53"
        ]  # new handshakes still get the last good certificate
        # A ClientID file with a bad line: the last good set (phone-1) stays, tablet-2 is not let in.
        ids.write_text("tablet-2\nnot a label\n")
        eventually(lambda: r.metric(RELOADS, kind="client_ids", result="failure") == 1, timeout=10,
                   message="the broken ClientID file was not counted")  # fmt: skip
        assert f"{ids}:2:" in r.stderr_text()
        assert rcode(dot_query(r.dot_port, "allowed.example", f"tablet-2.{SERVER_NAME}", first[0])) == "REFUSED"
        assert addresses(dot_query(r.dot_port, "allowed.example", f"phone-1.{SERVER_NAME}", first[0])) == ["192.0.2.53"]
        # Fixed files are picked up and counted as successes.
        shutil.copy(first[0], str(live_cert) + ".new")
        os.replace(str(live_cert) + ".new", live_cert)
        ids.write_text("tablet-2\n")
        eventually(lambda: r.metric(RELOADS, kind="certificate", result="success") == 1
                   and r.metric(RELOADS, kind="client_ids", result="success") == 1, timeout=10,
                   message="the fixed files were not reloaded")  # fmt: skip
        assert rcode(dot_query(r.dot_port, "allowed.example", f"tablet-2.{SERVER_NAME}", first[0])) == "NOERROR"
        assert r.metric(RELOADS, kind="certificate", result="failure") == 1 and r.alive()
    finally:
        r.stop()


def test_beyond_loopback_without_certificate_refuses_to_start() -> None:
    result = run_cli("dns", "--upstream", "127.0.0.1:9", "--dot", "0.0.0.0:8853")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dot 0.0.0.0:8853" in lines[0] and "--tls-cert" in lines[0], result.stderr


def test_loopback_without_certificate_makes_a_self_signed_one(tmp_path: Path, upstream: FakeUpstream) -> None:
    r = EncResolver(tmp_path, upstream.address, "--tls-dir", str(tmp_path / "tls"))
    try:
        cert = tmp_path / "tls" / "dns-selfsigned-cert.pem"
        assert cert.is_file() and str(cert) in r.stderr_text()  # its path is told
        assert (os.stat(tmp_path / "tls" / "dns-selfsigned-key.pem").st_mode & 0o077) == 0
        reply = dns.query.tls(dns.message.make_query(BLOCKED, "A"), "127.0.0.1", port=r.dot_port, timeout=5,
                              server_hostname="localhost", verify=str(cert))  # fmt: skip
        assert addresses(reply) == ["0.0.0.0"] and reply.rcode() == dns.rcode.NOERROR
    finally:
        r.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pipelined_queries_never_read_stay_bounded_and_the_slot_comes_back(tmp_path: Path) -> None:
    """One read of 4,000 pipelined queries for a 12 KB cached answer was answered whole into the write buffer of a
    client that never reads (50 MB a connection, 500 MB from one address), and the idle sweep's close() waited for
    that buffer for ever: the memory and the source's slots never came back."""
    chunk = "x" * 250
    big = [f'big.example. 300 IN TXT "{chunk}" "{chunk}" "{chunk}" "{chunk} {i}"' for i in range(12)]  # 12 KB
    upstream = FakeUpstream(records={"big.example": big})
    r = EncResolver(tmp_path, upstream.address, "--tls-max-per-source", "2", "--tls-idle-timeout", "1")
    try:
        with tls_connect(r.dot_port, None, None) as warm:  # the big answer in the cache
            dot_send(warm, dns.message.make_query("big.example", "TXT"))
            assert len(dot_recv(warm).answer[0]) == 12
        time.sleep(0.5)
        before = _rss_kb(r.proc.pid)
        query = dns.message.make_query("big.example", "TXT").to_wire()
        frame = len(query).to_bytes(2, "big") + query
        held = []
        for _ in range(2):  # the per-source cap
            s = tls_connect(r.dot_port, None, None)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(frame * 4000)  # and never read
            held.append(s)
        time.sleep(1.0)
        grown = _rss_kb(r.proc.pid) - before
        assert grown < 30_000, f"{grown} KB for two connections that read nothing"
        # Idle (nothing read, nothing owed upstream): aborted by the sweep, the source's slots given back.
        eventually(lambda: r.metric("enforcer_dns_encrypted_connections_open", transport="dot") == 0, timeout=15)
        assert addresses(dot_query(r.dot_port, "allowed.example", None, None)) == ["192.0.2.53"]
        for s in held:
            s.close()
        assert r.alive()
    finally:
        r.stop()
        upstream.close()
