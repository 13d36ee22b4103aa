"""DNS over HTTPS (enforcer/dns/doh.py) against a real ``enforcer dns`` with real clients: kdig +https, dig +https,
curl --doh-url, httpx over HTTP/2 and HTTP/1.1, and a raw h2 client for the stream cap. Names are answered by the
local fake upstream or sinkholed; curl's own connection goes to a local HTTP server (allowed name) or to the sinkhole
address 0.0.0.0 (blocked name), never off the machine."""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import h2.connection  # type: ignore[import-untyped]
import h2.events  # type: ignore[import-untyped]
import h2.settings  # type: ignore[import-untyped]
import httpx
import pytest
from dnshelpers import addresses, rcode
from encryptedhelpers import SERVER_NAME, EncResolver, make_cert
from fakeupstream import FakeUpstream

from tests.conftest import eventually, free_port, require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BLOCKED = "weixin.qq.com"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream(records={"intranet.example": ["intranet.example. 60 IN A 127.0.0.1"]})
    yield up
    up.close()


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[EncResolver]:
    tmp = tmp_path_factory.mktemp("doh")
    (tmp / "ids.txt").write_text("phone-1\nlaptop-2\n")
    r = EncResolver(tmp, upstream.address, "--client-ids", str(tmp / "ids.txt"))
    yield r
    r.stop()


def _event(r: EncResolver, qname: str, device: str | None) -> dict:  # type: ignore[type-arg]
    def find() -> dict | None:  # type: ignore[type-arg]
        for e in reversed(r.events_for(qname, timeout=0)):
            if e.get("device", {}).get("id") == device:
                return e
        return None

    return eventually(find, timeout=5, message=f"no event for {qname} with device.id {device}")


def _trust(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _wire(name: str) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = 0  # RFC 8484 4.1: cache friendly
    return q.to_wire()


def test_kdig_https_path_client_id_wins_over_sni(resolver: EncResolver) -> None:
    kdig = require_tool("kdig")
    out = subprocess.run(
        [kdig, "@127.0.0.1", "-p", str(resolver.doh_port), "+https=/dns-query/phone-1",
         f"+tls-sni=laptop-2.{SERVER_NAME}", "+tls-ca=" + str(resolver.cert[0]),
         f"+tls-hostname=laptop-2.{SERVER_NAME}", BLOCKED, "A", "+short"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.stdout.split() == ["0.0.0.0"], out.stdout + out.stderr
    event = _event(resolver, BLOCKED, "phone-1")  # the path's id, not the SNI's laptop-2
    assert event["labels"]["dns_transport"] == "doh" and event["event"]["action"] == "dns-block"


def test_dig_https(resolver: EncResolver) -> None:
    dig = require_tool("dig")
    out = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(resolver.doh_port), "+https=/dns-query/laptop-2",
         "+tls-ca=" + str(resolver.cert[0]), f"+tls-hostname={SERVER_NAME}", "kaspersky.com", "A", "+short",
         "+tries=1"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert out.stdout.split() == ["0.0.0.0"], out.stdout + out.stderr
    assert _event(resolver, "kaspersky.com", "laptop-2")["labels"]["dns_transport"] == "doh"


def test_httpx_get_and_post_over_http2_and_http1(resolver: EncResolver, upstream: FakeUpstream) -> None:
    for http2 in (True, False):
        with httpx.Client(http2=http2, http1=not http2, verify=_trust(resolver.cert[0]), timeout=5) as client:
            b64 = base64.urlsafe_b64encode(_wire(BLOCKED)).rstrip(b"=").decode()
            got = client.get(f"{resolver.doh_url}/phone-1", params={"dns": b64})
            assert got.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert got.status_code == 200 and got.headers["content-type"] == "application/dns-message"
            assert addresses(dns.message.from_wire(got.content)) == ["0.0.0.0"]
            posted = client.post(f"{resolver.doh_url}", content=_wire("intranet.example"),
                                 headers={"content-type": "application/dns-message"})  # fmt: skip
            assert posted.status_code == 200 and int(posted.headers["cache-control"].split("=")[1]) <= 60
            assert addresses(dns.message.from_wire(posted.content)) == ["127.0.0.1"]
    assert "intranet.example" in upstream.names()


def test_bad_requests_get_http_errors(resolver: EncResolver) -> None:
    with httpx.Client(verify=False, timeout=5) as client:
        base = f"https://127.0.0.1:{resolver.doh_port}"
        assert client.get(base + "/other").status_code == 404
        assert client.get(base + "/dns-query", params={"dns": "!!!"}).status_code == 400
        assert client.get(base + "/dns-query").status_code == 400
        assert client.post(base + "/dns-query", content=_wire("x.example"), headers={"content-type": "text/plain"}
                           ).status_code == 415  # fmt: skip
        assert client.put(base + "/dns-query", content=b"").status_code == 405
        assert client.get(base + "/dns-query/Bad_Id", params={"dns": "AAAA"}).status_code == 403  # invalid id
    assert resolver.alive()
    assert resolver.metric("enforcer_dns_encrypted_connections_total", transport="doh", outcome="bad_request") >= 4


def test_curl_doh_url_blocks_a_host_and_loads_an_allowed_page(resolver: EncResolver) -> None:
    curl = require_tool("curl")
    served: list[str] = []

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.append(self.headers.get("host", ""))
            body = b"allowed page"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    page = http.server.HTTPServer(("127.0.0.1", 0), Page)
    port = page.server_address[1]
    threading.Thread(target=page.serve_forever, daemon=True).start()
    try:
        doh = ["--doh-url", f"{resolver.doh_url}/phone-1", "--doh-insecure", "-s", "-m", "5"]
        ok = subprocess.run([curl, *doh, f"http://intranet.example:{port}/"], capture_output=True, text=True,
                            timeout=20)  # fmt: skip
        assert ok.stdout == "allowed page" and served == [f"intranet.example:{port}"], ok.stderr
        closed = free_port()  # nothing listens there: the sinkhole address must not lead anywhere
        blocked = subprocess.run([curl, *doh, "-v", f"http://{BLOCKED}:{closed}/"], capture_output=True, text=True,
                                 timeout=20)  # fmt: skip
        assert blocked.returncode != 0 and f"0.0.0.0:{closed}" in blocked.stderr, blocked.stderr
        assert "192.0.2." not in blocked.stderr  # not the upstream's answer
        assert len(served) == 1
        assert _event(resolver, BLOCKED, "phone-1")["labels"]["dns_transport"] == "doh"
    finally:
        page.shutdown()
        page.server_close()


def test_unknown_client_id_gets_403_under_require(tmp_path: Path, upstream: FakeUpstream) -> None:
    (tmp_path / "ids.txt").write_text("phone-1\n")
    r = EncResolver(tmp_path, upstream.address, "--client-ids", str(tmp_path / "ids.txt"), "--require-client-id")
    try:
        b64 = base64.urlsafe_b64encode(_wire(BLOCKED)).rstrip(b"=").decode()
        with httpx.Client(http2=True, verify=False, timeout=5) as client:
            for path in ("/dns-query", "/dns-query/tablet-9", "/dns-query/a.b"):
                assert client.get(r.doh_url.replace("/dns-query", path), params={"dns": b64}).status_code == 403, path
            good = client.get(r.doh_url + "/phone-1", params={"dns": b64})
            assert good.status_code == 200 and addresses(dns.message.from_wire(good.content)) == ["0.0.0.0"]
        assert r.metric("enforcer_dns_encrypted_connections_total", transport="doh", outcome="client_id_refused") == 3
        assert len(r.events_for(BLOCKED, count=2, timeout=1)) == 1  # only the known device's query reached the chain
    finally:
        r.stop()


def test_http2_stream_cap(tmp_path: Path, upstream: FakeUpstream) -> None:
    r = EncResolver(tmp_path, upstream.address, "--doh-max-streams", "2")
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", r.doh_port), timeout=5) as raw, ctx.wrap_socket(raw) as sock:
            conn = h2.connection.H2Connection()
            conn.initiate_connection()
            # Three streams at once, before the server's SETTINGS (cap 2) arrive: the third is over the cap.
            for sid in (1, 3, 5):
                conn.send_headers(sid, [(":method", "POST"), (":path", "/dns-query"), (":scheme", "https"),
                                        (":authority", "x"), ("content-type", "application/dns-message")])  # fmt: skip
            sock.sendall(conn.data_to_send())
            events = conn.receive_data(sock.recv(65_536))
            changed = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
            assert changed[0].changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 2
            eventually(lambda: r.metric("enforcer_dns_encrypted_connections_total", transport="doh",
                                        outcome="stream_limit") == 1, timeout=5)  # fmt: skip
    finally:
        r.stop()


def test_certificate_swap_reaches_doh(tmp_path: Path, upstream: FakeUpstream) -> None:
    first, second = make_cert(tmp_path, "one"), make_cert(tmp_path, "two")
    live_cert, live_key = tmp_path / "live-cert.pem", tmp_path / "live-key.pem"
    shutil.copy(first[0], live_cert)
    shutil.copy(first[1], live_key)
    r = EncResolver(tmp_path, upstream.address, "--tls-cert", str(live_cert), "--tls-key", str(live_key))
    try:
        query = {"dns": base64.urlsafe_b64encode(_wire("intranet.example")).rstrip(b"=").decode()}

        def works_with(ca: Path) -> bool:
            try:
                with httpx.Client(http2=True, verify=_trust(ca), timeout=5) as client:
                    return client.get(r.doh_url, params=query).status_code == 200
            except httpx.ConnectError:
                return False

        assert works_with(first[0]) and not works_with(second[0])
        for src, dst in ((second[1], live_key), (second[0], live_cert)):
            shutil.copy(src, str(dst) + ".new")
            os.replace(str(dst) + ".new", dst)
        eventually(lambda: works_with(second[0]), timeout=10, message="DoH still serves the old certificate")
        assert not works_with(first[0])
    finally:
        r.stop()


def test_blocked_answer_is_a_sinkhole_not_an_upstream_answer(resolver: EncResolver, upstream: FakeUpstream) -> None:
    with httpx.Client(http2=True, verify=False, timeout=5) as client:
        reply = client.post(resolver.doh_url, content=_wire("long.weixin.qq.com"),
                            headers={"content-type": "application/dns-message"})  # fmt: skip
    assert rcode(dns.message.from_wire(reply.content)) == "NOERROR"
    assert "long.weixin.qq.com" not in upstream.names()  # blocked names never leave
