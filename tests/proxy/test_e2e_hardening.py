"""Issue 10 end to end: the real ``enforcer proxy`` (mitmdump + addon, regular mode) against hostile clients.

Where it runs: a loopback-only network namespace (tests/netns.py) in which ``lo`` also carries 77.74.177.5, an
address of a blocked ``cidr`` rule (kaspersky 77.74.176.0/21). So a proxy that failed open reaches only a local
recorder, never the real host. mitmdump runs in a private mount namespace whose /etc/resolv.conf points at a fake
DNS server on 127.0.0.1:53 in the same network namespace: glibc ``getaddrinfo`` (mitmproxy's and the gate's) does
real DNS over UDP, with answers the test chooses:

- ``evil.test`` -> 77.74.177.5 (a name into a blocked range);
- ``rebind.test`` -> 127.0.0.1 and 77.74.177.5 by turns, TTL 0 (DNS rebinding: a second lookup gets the other);
- ``good.test``, ``dldir1.qq.com``, ``example.com`` -> 127.0.0.1.

The origins listen on 0.0.0.0 and record the local address of every connection: "never connected to the blocked
address" is checked there, not inferred from the proxy's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dnslib
import pytest

from enforcer.events import iter_events
from enforcer.policy.urlrules import MAX_PATH
from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port, require_tool
from tests.netns import loopback_only_netns
from tests.proxy.origins import OriginThread, PlainOrigin, TlsOrigin, make_cert
from tests.proxy.test_e2e import connect, header, raw, status, stop_proxy, tunnel_get, wait_port

pytestmark = pytest.mark.e2e

BLOCKED_IP = "77.74.177.5"


class FakeDns:
    """UDP DNS on 127.0.0.1:53 (the namespace's own): A answers from ``names``; a list is served in turn."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.turn: dict[str, int] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="fake-dns", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(Exception):
                self.sock.sendto(self._answer(data), peer)

    def _answer(self, data: bytes) -> bytes:
        query = dnslib.DNSRecord.parse(data)
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        if name not in self.names:
            reply.header.rcode = dnslib.RCODE.NXDOMAIN
        elif query.q.qtype == dnslib.QTYPE.A:
            answers = self.names[name]
            i = self.turn.get(name, 0)
            self.turn[name] = i + 1
            reply.add_answer(dnslib.RR(query.q.qname, dnslib.QTYPE.A, ttl=0, rdata=dnslib.A(answers[i % len(answers)])))
        return reply.pack()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(2)


@dataclass
class Local:
    """Which local address each accepted connection was made to."""

    addresses: list[str] = field(default_factory=list)

    def reached_blocked(self) -> bool:
        return BLOCKED_IP in self.addresses


@dataclass
class Net:
    port: int
    ca: Path
    plain: PlainOrigin
    plain_local: Local
    tls: TlsOrigin
    tls_local: Local
    dns: FakeDns
    log: Path
    events: Path


def _serve_any(thread: OriginThread, origin: PlainOrigin | TlsOrigin, local: Local) -> int:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        local.addresses.append(str(writer.get_extra_info("sockname")[0]))
        await origin.handle(reader, writer)

    async def go() -> int:
        server = await asyncio.start_server(handle, "0.0.0.0", 0)
        thread._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    return asyncio.run_coroutine_threadsafe(go(), thread.loop).result(10)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    ip = require_tool("ip")
    unshare = require_tool("unshare")
    tmp = tmp_path_factory.mktemp("e2e-hardening")
    with loopback_only_netns():
        subprocess.run([ip, "addr", "add", f"{BLOCKED_IP}/32", "dev", "lo"], check=True, timeout=10)
        dns = FakeDns(
            {
                "evil.test": [BLOCKED_IP],
                "rebind.test": ["127.0.0.1", BLOCKED_IP],
                "good.test": ["127.0.0.1"],
                "dldir1.qq.com": ["127.0.0.1"],
                "example.com": ["127.0.0.1"],
                "weixin.qq.com": ["127.0.0.1"],  # a fail-open reaches the local origins, never the real host
            }
        )
        origins = OriginThread()
        cert, key = make_cert(tmp)
        plain, plain_local = PlainOrigin(), Local()
        plain.port = _serve_any(origins, plain, plain_local)
        tls, tls_local = TlsOrigin(cert, key), Local()
        tls.port = _serve_any(origins, tls, tls_local)
        resolv = tmp / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n", encoding="utf-8")
        port = free_port()
        log = tmp / "mitmdump.log"
        # mitmdump in a private mount namespace whose /etc/resolv.conf is the fake DNS above.
        cmd = [unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
               'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
               sys.executable, "-m", "enforcer", "proxy", "--listen", f"127.0.0.1:{port}",
               "--blocklist", str(BLOCKLISTS), "--events", str(tmp / "events.jsonl"),
               "--confdir", str(tmp / "confdir"), "--", "--set", "ssl_insecure=true"]  # fmt: skip
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        try:
            wait_port(port, proc, log)
            ca = tmp / "confdir" / "mitmproxy-ca-cert.pem"
            yield Net(port, ca, plain, plain_local, tls, tls_local, dns, log, tmp / "events.jsonl")
        finally:
            stop_proxy(proc)
            origins.stop()
            dns.close()


def _get(net: Net, url: str, host: str | None = None) -> bytes:
    host_line = f"Host: {host}\r\n" if host else ""
    return raw(net.port, f"GET {url} HTTP/1.1\r\n{host_line}Connection: close\r\n\r\n".encode())


# -- 1. literals and names that lead into a blocked range -------------------------------------------------------
@pytest.mark.parametrize("spelling", ["1296740613", "0x4d4ab105", "0115.0112.0261.05", "77.74.45317", "77.4894981"])
def test_literal_spellings_never_connect(net: Net, spelling: str) -> None:
    out = _get(net, f"http://{spelling}:{net.plain.port}/x")
    assert status(out) == 403 and (header(out, "X-Enforcer-Rule") or "").startswith("kaspersky:cidr:"), out[:200]
    head, page = tunnel_get(net.port, f"{spelling}:{net.tls.port}")  # accepted, the block page inside
    assert status(head) == 200 and status(page) == 403, (head[:200], page[:200])
    assert (header(page, "X-Enforcer-Rule") or "").startswith("kaspersky:cidr:"), page[:200]
    out = _get(net, f"http://good.test:{net.plain.port}/x", host=spelling)
    assert status(out) == 403, out[:200]
    assert not net.plain_local.reached_blocked() and not net.tls_local.reached_blocked()


def test_blocked_literal_shows_the_page_over_tls_in_regular_mode(net: Net) -> None:
    # Regular mode (no upstream proxy): the block-page tunnel completes TLS with a certificate from the proxy's CA
    # for the SNI, answers the page, and never dials the blocked address.
    head, page = tunnel_get(net.port, f"1296740613:{net.tls.port}", ca=net.ca, sni="update.example")
    assert status(head) == 200 and status(page) == 403, (head[:200], page[:300])
    assert header(page, "X-Enforcer-Rule") == "kaspersky:cidr:77.74.176.0/21" and b"Kaspersky" in page
    assert not net.plain_local.reached_blocked() and not net.tls_local.reached_blocked()


def test_a_name_ending_in_an_ideographic_full_stop_is_the_name(net: Net) -> None:
    """``xn--com-bz3b`` is ``com\u3002``: mitmproxy reads the host as ``weixin.qq.com\u3002`` and getaddrinfo (IDNA)
    asks DNS for weixin.qq.com; the matcher stripped the trailing dot before mapping the full stop, so no name rule
    matched and the proxy connected. (The UTF-8 spelling itself mitmproxy refuses as a bad request line.)"""
    host = "weixin.qq.xn--com-bz3b"
    before = (len(net.plain_local.addresses), len(net.tls_local.addresses))
    out = _get(net, f"http://{host}:{net.plain.port}/x")
    assert status(out) == 403 and header(out, "X-Enforcer-Rule") == "wechat:domain:weixin.qq.com", out[:300]
    head, page = tunnel_get(net.port, f"{host}:{net.tls.port}")
    assert status(head) == 200 and status(page) == 403, (head[:200], page[:200])
    assert header(page, "X-Enforcer-Rule") == "wechat:domain:weixin.qq.com", page[:200]
    assert (len(net.plain_local.addresses), len(net.tls_local.addresses)) == before  # no origin was dialled


def test_name_resolving_into_a_blocked_range_never_connects(net: Net) -> None:
    out = _get(net, f"http://evil.test:{net.plain.port}/x")
    assert status(out) == 502 and b"blocked by enforcer rule kaspersky:cidr:77.74.176.0/21" in out, out[:300]
    # Through a CONNECT tunnel (passed through: no url rules for evil.test) the client's TLS goes nowhere.
    head, s = connect(net.port, f"evil.test:{net.tls.port}")
    assert status(head) == 200  # lazy: the CONNECT is answered before any server is dialled
    with contextlib.suppress(OSError), s:
        ctx = ssl._create_unverified_context()
        # The refusal may surface at the handshake, the send or the read: all three belong in the block.
        with pytest.raises((ssl.SSLError, OSError)), ctx.wrap_socket(s, server_hostname="evil.test") as t:  # noqa: PT012
            t.sendall(b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n")
            if not t.recv(100):
                raise OSError("closed")
    assert not net.plain_local.reached_blocked() and not net.tls_local.reached_blocked()
    # The same proxy still serves a name that resolves somewhere allowed, by name (Host kept).
    out = _get(net, f"http://good.test:{net.plain.port}/fine", host=f"good.test:{net.plain.port}")
    seen = net.plain.rec.requests[-1]
    assert status(out) == 200 and seen.target == "/fine" and seen.headers["host"] == f"good.test:{net.plain.port}"
    # The hit event names the address the name resolved to.

    def hits_for_evil() -> list[dict[str, Any]]:
        docs = list(iter_events(net.events)) if net.events.exists() else []
        return [d for d in docs if d.get("url", {}).get("domain") == "evil.test"]

    hits = eventually(hits_for_evil, 10, 0.1, "no hit event for evil.test")
    assert hits and hits[0]["event"]["action"] == "connect-block" and hits[0]["destination"]["ip"] == BLOCKED_IP
    assert hits[0]["rule"]["id"] == "kaspersky:cidr:77.74.176.0/21"


def test_rebinding_name_is_dialled_at_the_address_judged(net: Net) -> None:
    # Each lookup of rebind.test alternates 127.0.0.1 / 77.74.177.5. The gate judges its own lookup and dials exactly
    # that address: a request either reaches 127.0.0.1 or is refused, never the blocked address.
    outcomes = []
    for i in range(6):
        out = _get(net, f"http://rebind.test:{net.plain.port}/r{i}")
        outcomes.append(status(out))
    assert 200 in outcomes and any(code != 200 for code in outcomes), outcomes
    assert not net.plain_local.reached_blocked(), net.plain_local.addresses


# -- 2. decryption is not decided by the SNI alone -------------------------------------------------------------
def _through_tunnel(net: Net, target: str, sni: str | None, request: bytes) -> bytes:
    head, s = connect(net.port, target)
    assert status(head) == 200, head
    ctx = ssl.create_default_context(cafile=str(net.ca))
    if sni is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with s, ctx.wrap_socket(s, server_hostname=sni) as t:
        t.sendall(request)
        out = b""
        with contextlib.suppress(TimeoutError, OSError):
            t.settimeout(5)
            while chunk := t.recv(65536):
                out += chunk
        return out


def test_connect_host_with_url_rules_is_decrypted_despite_the_sni(net: Net) -> None:
    before = len(net.tls.rec.requests)
    # CONNECT dldir1.qq.com with SNI example.com: decrypted (the client must trust the proxy CA), then judged.
    out = _through_tunnel(
        net,
        f"dldir1.qq.com:{net.tls.port}",
        "example.com",
        b"GET /weixin/android/x.apk HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    assert status(out) == 403 and header(out, "X-Enforcer-Rule") == "wechat:url:dldir1.qq.com/weixin/*", out[:300]
    out = _through_tunnel(
        net,
        f"dldir1.qq.com:{net.tls.port}",
        "example.com",
        b"GET /qqfile/QQ.exe HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    assert status(out) == 200
    assert [s.target for s in net.tls.rec.requests[before:]] == ["/qqfile/QQ.exe"]


# -- 3. paths as the origin reads them, HTTP/1.1 and HTTP/2 ------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["//weixin/x.apk", "/./weixin/x.apk", "/%2e/weixin/x.apk", "/x/../weixin/x.apk", "/x/%2e%2e/weixin/x.apk"]
)
def test_path_variants_blocked_over_http1_and_http2(net: Net, path: str, tmp_path: Path) -> None:
    before = len(net.plain.rec.requests) + len(net.tls.rec.requests)
    out = _get(net, f"http://dldir1.qq.com:{net.plain.port}{path}")
    assert status(out) == 403, (path, out[:200])
    curl = require_tool("curl")
    cmd = [curl, "-s", "--path-as-is", "--http2", "--cacert", str(net.ca), "-x", f"http://127.0.0.1:{net.port}"]
    cmd += ["-o", os.devnull, "-w", "%{http_version} %{http_code}", "--max-time", "15"]
    url = f"https://dldir1.qq.com:{net.tls.port}{path}"
    got = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=30)
    assert got.stdout == "2 403", (path, got.stdout, got.stderr)
    assert len(net.plain.rec.requests) + len(net.tls.rec.requests) == before


@pytest.mark.parametrize(
    "pad", ["a/../", "./", "/", "%2e/", "x;p/../"], ids=["dotdot", "dot", "slash", "escaped", "params"]
)
def test_a_path_padded_past_what_the_rules_read_is_refused(net: Net, pad: str) -> None:
    """Paths were judged on their first 8 KiB: padding that an origin folds away (dot segments, slashes) pushed
    ``weixin/`` past the cut and the download was served. Past it, the proxy refuses (414) instead of guessing."""
    path = "/" + pad * (MAX_PATH // len(pad) + 1) + "weixin/x.apk"
    before = len(net.plain.rec.requests) + len(net.tls.rec.requests)
    out = _get(net, f"http://dldir1.qq.com:{net.plain.port}{path}")
    assert status(out) == 414 and header(out, "X-Enforcer-Rule") == "enforcer:path-too-long", out[:300]
    curl = require_tool("curl")
    cmd = [curl, "-s", "--path-as-is", "--http2", "--cacert", str(net.ca), "-x", f"http://127.0.0.1:{net.port}"]
    cmd += ["-o", os.devnull, "-w", "%{http_version} %{http_code}", "--max-time", "15"]
    got = subprocess.run(
        [*cmd, f"https://dldir1.qq.com:{net.tls.port}{path}"], capture_output=True, text=True, timeout=30
    )
    assert got.stdout == "2 414", (got.stdout, got.stderr)
    assert len(net.plain.rec.requests) + len(net.tls.rec.requests) == before
    # A long query is not a long path: it is read whole (store rules read its parameters) and passed.
    out = _get(net, f"http://good.test:{net.plain.port}/ok?q=" + "a" * 20_000)
    assert status(out) == 200, out[:300]


# -- 4. Host header anomalies ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [
        "Host: weixin.qq.com:80:80\r\n",
        "Host: good.test\r\nHost: weixin.qq.com\r\n",
        "Host: weixin.qq.com\r\nHost: good.test\r\n",
        "Host: user@good.test\r\n",
    ],
)
def test_ambiguous_host_gets_400(net: Net, extra: str) -> None:
    before = len(net.plain.rec.requests)
    out = raw(net.port, f"GET http://good.test:{net.plain.port}/h HTTP/1.1\r\n{extra}\r\n".encode())
    assert status(out) == 400, out[:300]
    assert len(net.plain.rec.requests) == before


# -- 5. mitmproxy's DNS mode judges answers as the resolver does -------------------------------------------------
def test_dns_mode_answer_into_a_blocked_range_is_sinkholed(net: Net, tmp_path: Path) -> None:
    """``evil.test`` is no listed name, but the fake DNS answers an address in Kaspersky's range: mitmproxy's own
    resolver put that answer in the flow and the DNS mode served it (only the question name was judged)."""
    import dns.message
    import dns.query

    unshare = require_tool("unshare")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n", encoding="utf-8")
    port, dns_port = free_port(), free_port(socket.SOCK_DGRAM)
    log = tmp_path / "mitmdump.log"
    cmd = [unshare, "--mount", "--propagation", "private", "--", "sh", "-c",
           'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
           sys.executable, "-m", "enforcer", "proxy", "--listen", f"127.0.0.1:{port}",
           "--blocklist", str(BLOCKLISTS), "--events", str(tmp_path / "events.jsonl"),
           "--confdir", str(tmp_path / "confdir"),
           "--", "--mode", "regular", "--mode", f"dns@127.0.0.1:{dns_port}"]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        wait_port(port, proc, log)

        def ask(name: str) -> list[str] | None:
            try:
                reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=dns_port, timeout=2)
            except (dns.exception.Timeout, OSError):
                return None
            return [rr.to_text() for rrset in reply.answer for rr in rrset if rrset.rdtype == 1]

        assert eventually(lambda: ask("good.test"), 20, 0.2, "the DNS mode does not answer") == ["127.0.0.1"]
        assert ask("evil.test") == ["0.0.0.0"], log.read_text()[-2000:]
        assert ask("weixin.qq.com") == ["0.0.0.0"]
        stop_proxy(proc)  # the events are written by the time it has stopped
        events = list(iter_events(tmp_path / "events.jsonl"))
        actions = {(e["event"]["action"], e["rule"]["id"]) for e in events}
        assert ("dns-response-block", "kaspersky:cidr:77.74.176.0/21") in actions, actions
    finally:
        stop_proxy(proc)
