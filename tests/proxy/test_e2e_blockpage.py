"""Issue 14 item 1 and issue 13 (proxy logins, the page's languages), end to end: the real ``enforcer proxy``
(mitmdump + addon) with curl, Python's ssl and headless Chromium.

Where it runs: a loopback-only network namespace (tests/netns.py), and mitmdump in upstream mode towards
``CatchAllProxy`` (tests/proxy/origins.py), a local forward proxy that records every connection made to it. So a
proxy that dialled a blocked host (weixin.qq.com) would only ever reach the catch-all, and "never an upstream
connection" is checked as "the catch-all saw no new connection"; an allowed request first proves that the catch-all
does see what mitmdump forwards.

- ``page`` (the default): curl trusting the mitmproxy CA gets the 403 block page over HTTPS (English, French by
  Accept-Language); several requests in one tunnel are one event; curl without the CA fails the handshake and the
  attempt is counted once (one event with ``tls.established`` false, ``outcome="handshake_failed"``); Chromium with
  the CA in its NSS store (``certutil``) shows the page; its screenshots are kept (``$ENFORCER_ARTEFACTS`` or the
  test's tmp dir; the path is printed).
- ``refuse`` with ``--auth htpasswd:FILE``: 403 on the CONNECT; 407 without the right password; ``user.name`` in the
  hit events of a logged-in client.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enforcer.events import iter_events
from tests import browser
from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port, require_tool
from tests.netns import loopback_only_netns
from tests.proxy.origins import CatchAllProxy, OriginThread, TlsOrigin, make_cert
from tests.proxy.test_e2e import connect, header, status, stop_proxy, wait_port

pytestmark = pytest.mark.e2e

HAVE_BCRYPT = importlib.util.find_spec("bcrypt") is not None
RULE = "wechat:domain:weixin.qq.com"


@dataclass
class Proxy:
    port: int
    metrics_port: int
    events: Path
    ca: Path
    catch_all: CatchAllProxy
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def docs(self) -> list[dict[str, Any]]:
        return list(iter_events(self.events)) if self.events.exists() else []

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


def launch(tmp: Path, origins: OriginThread, *flags: str) -> Proxy:
    cert, key = make_cert(tmp)
    tls = TlsOrigin(cert, key)
    tls.port = origins.start(tls.handle)
    catch_all = CatchAllProxy(tls)
    catch_all.port = origins.start(catch_all.handle)
    port, metrics_port = free_port(), free_port()
    log, events = tmp / "mitmdump.log", tmp / "events.jsonl"
    cmd = [sys.executable, "-m", "enforcer", "proxy", "--listen", f"127.0.0.1:{port}", "--blocklist", str(BLOCKLISTS),
           "--events", str(events), "--metrics", f"127.0.0.1:{metrics_port}", "--confdir", str(tmp / "confdir"),
           *flags, "--", "--mode", f"upstream:http://127.0.0.1:{catch_all.port}",
           "--set", "ssl_insecure=true"]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    wait_port(port, proc, log)
    wait_port(metrics_port, proc, log)
    return Proxy(port, metrics_port, events, tmp / "confdir" / "mitmproxy-ca-cert.pem", catch_all, proc, log)


@pytest.fixture(scope="module")
def netns() -> Iterator[OriginThread]:
    """The module's loopback-only namespace, with the origins' event loop started inside it."""
    with loopback_only_netns():
        origins = OriginThread()
        try:
            yield origins
        finally:
            origins.stop()


@pytest.fixture(scope="module")
def page(netns: OriginThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    proxy = launch(tmp_path_factory.mktemp("blockpage-page"), netns)
    yield proxy
    stop_proxy(proxy.proc)
    assert proxy.proc.returncode == 0, proxy.log.read_text()[-3000:]


def sha_line(user: str, password: str) -> str:
    """What ``htpasswd -nbs USER PASSWORD`` writes (apache2-utils is not needed for it)."""
    return f"{user}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}"


@pytest.fixture(scope="module")
def refuse(netns: OriginThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp("blockpage-refuse-auth")
    lines = [sha_line("alice", "s3cret")]
    if HAVE_BCRYPT:  # mitmproxy 12 ships bcrypt; with mitmproxy 11 only when it is installed (logins.py)
        import bcrypt

        lines.append("bob:" + bcrypt.hashpw(b"hunter2", bcrypt.gensalt(rounds=4)).decode())
    users = tmp / "users.htpasswd"
    users.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proxy = launch(tmp, netns, "--blocked-connect", "refuse", "--auth", f"htpasswd:{users}")
    yield proxy
    stop_proxy(proxy.proc)


def curl(proxy: Proxy, url: str, *extra: str) -> tuple[int, str, bytes]:
    """curl through the proxy: (exit code, the last response head, the body)."""
    tmp = proxy.events.parent
    head, body = tmp / "curl.head", tmp / "curl.body"
    for f in (head, body):
        f.unlink(missing_ok=True)
    cmd = [require_tool("curl"), "-s", "-x", proxy.url, "-D", str(head), "-o", str(body), "--max-time", "20", *extra]
    done = subprocess.run([*cmd, url], timeout=40, check=False)
    blocks = [b for b in (head.read_bytes().decode("latin-1") if head.exists() else "").split("\r\n\r\n") if b.strip()]
    return done.returncode, blocks[-1] if blocks else "", body.read_bytes() if body.exists() else b""


def new_docs(proxy: Proxy, before: int, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` events after the first ``before``; then check that no further one is coming."""
    docs = eventually(lambda: proxy.docs()[before:] if len(proxy.docs()) >= before + count else None, 10, 0.1,
                      lambda: f"expected {count} new event(s): {proxy.docs()[before:]}")  # fmt: skip
    time.sleep(0.5)  # the writer flushes every 0.1 s: a second event for the same attempt would be there by now
    docs = proxy.docs()[before:]
    assert len(docs) == count, docs
    return docs


# -- page mode: curl and Python's ssl ---------------------------------------------------------------------------
def test_allowed_traffic_reaches_the_catch_all(page: Proxy) -> None:
    # The control for every "zero connections" below: what mitmdump forwards does reach the catch-all.
    before = page.catch_all.rec.connections
    code, head, _ = curl(page, "http://www.example.org/allowed")
    assert code == 0 and head.startswith("HTTP/1.1 200")
    assert page.catch_all.rec.connections == before + 1


@pytest.mark.parametrize(
    ("accept_language", "lang", "text"),
    [
        (None, "en", "WeChat (Weixin, 微信) is blocked on this network"),
        ("fr-CA,fr;q=0.9,en;q=0.8", "fr", "L\u2019accès à WeChat (Weixin, 微信) est bloqué sur ce réseau"),
        ("en;q=0.5,fr;q=0.7", "fr", "Cette connexion a été bloquée par la politique du réseau."),
        ("fr;q=0,en-CA", "en", "WeChat (Weixin, 微信) is blocked on this network"),
    ],
)
def test_curl_with_the_ca_gets_the_block_page_over_https(
    page: Proxy, accept_language: str | None, lang: str, text: str
) -> None:
    connections, events = page.catch_all.rec.connections, len(page.docs())
    extra = ["--cacert", str(page.ca)] + (["-H", f"Accept-Language: {accept_language}"] if accept_language else [])
    code, head, body = curl(page, "https://weixin.qq.com/cgi-bin/x?y=1", *extra)
    assert code == 0, (code, head)
    assert head.split(" ")[1] == "403" and f"x-enforcer-rule: {RULE}" in head.lower(), head
    assert f"content-language: {lang}" in head.lower()
    page_text = body.decode()
    assert f'<html lang="{lang}">' in page_text and text in page_text
    assert "https://weixin.qq.com/cgi-bin/x?y=1" in page_text  # the request that was refused
    (doc,) = new_docs(page, events, 1)
    assert doc["event"]["action"] == "connect-block" and doc["rule"]["id"] == RULE
    assert doc["tls"] == {"client": {"server_name": "weixin.qq.com"}, "established": True}
    assert doc["url"] == {"full": "https://weixin.qq.com/cgi-bin/x?y=1", "domain": "weixin.qq.com"}
    assert page.catch_all.rec.connections == connections  # never an upstream connection


def test_retries_inside_one_tunnel_are_one_event(page: Proxy) -> None:
    connections, events = page.catch_all.rec.connections, len(page.docs())
    blocked = page.metric("enforcer_blocked_total", component="proxy", app="wechat", category="messaging",
                          action="connect-block")  # fmt: skip
    head, s = connect(page.port, "long.weixin.qq.com:443")
    assert status(head) == 200
    ctx = ssl.create_default_context(cafile=str(page.ca))
    with s, ctx.wrap_socket(s, server_hostname="long.weixin.qq.com") as tls:
        answers = []
        for i in range(3):  # one keep-alive connection, three requests: a browser's retry and favicon
            tls.sendall(f"GET /r{i} HTTP/1.1\r\nHost: long.weixin.qq.com\r\n\r\n".encode())
            answers.append(read_response(tls))
    assert [status(a) for a in answers] == [403, 403, 403]
    assert all(header(a, "X-Enforcer-Rule") == "wechat:domain:weixin.qq.com" for a in answers)
    (doc,) = new_docs(page, events, 1)
    assert doc["url"]["full"] == "https://long.weixin.qq.com/r0" and doc["tls"]["established"] is True
    after = page.metric("enforcer_blocked_total", component="proxy", app="wechat", category="messaging",
                        action="connect-block")  # fmt: skip
    assert after == blocked + 1
    assert page.catch_all.rec.connections == connections


def read_response(conn: ssl.SSLSocket) -> bytes:
    """One HTTP/1.1 response with a Content-Length, read whole."""
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(header(head, "Content-Length") or 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


def test_curl_without_the_ca_fails_the_handshake_and_is_counted_once(page: Proxy) -> None:
    connections, events = page.catch_all.rec.connections, len(page.docs())
    labels = {"component": "proxy", "app": "wechat", "category": "messaging", "action": "connect-block"}
    blocked = page.metric("enforcer_blocked_total", **labels)
    failed = page.metric("enforcer_proxy_flows_total", outcome="handshake_failed")
    code, head, _ = curl(page, "https://weixin.qq.com/")  # the system store does not hold the mitmproxy CA
    assert code == 60 and head.startswith("HTTP/1.1 200"), (code, head)  # SSL certificate problem, after the CONNECT
    (doc,) = new_docs(page, events, 1)
    assert doc["event"]["action"] == "connect-block" and doc["event"]["type"] == ["denied"]
    assert doc["tls"] == {"client": {"server_name": "weixin.qq.com"}, "established": False}
    assert doc["url"] == {"domain": "weixin.qq.com"} and doc["destination"] == {"port": 443}
    assert page.metric("enforcer_blocked_total", **labels) == blocked + 1
    assert page.metric("enforcer_proxy_flows_total", outcome="handshake_failed") == failed + 1
    assert page.catch_all.rec.connections == connections


def test_a_client_that_leaves_before_tls_is_counted_once(page: Proxy) -> None:
    # CONNECT, then gone before any byte of TLS: the hit is recorded when the client leaves.
    connections, events = page.catch_all.rec.connections, len(page.docs())
    head, s = connect(page.port, "dlm.kaspersky-labs.com:443")
    s.close()
    assert status(head) == 200
    (doc,) = new_docs(page, events, 1)
    assert doc["rule"]["ruleset"] == "kaspersky" and doc["url"] == {"domain": "dlm.kaspersky-labs.com"}
    assert "tls" not in doc
    assert page.catch_all.rec.connections == connections


def test_sni_behind_an_innocent_connect_host_is_still_refused(page: Proxy) -> None:
    # The page is for a blocked CONNECT host; a blocked SNI behind an allowed one is refused as before (never
    # decrypted, nothing dialled), and an allowed CONNECT host with a blocked SNI never gets a certificate.
    connections = page.catch_all.rec.connections
    head, s = connect(page.port, "www.example.org:443")
    assert status(head) == 200
    ctx = ssl.create_default_context(cafile=str(page.ca))
    # The refusal may show at the handshake, the send or the read: all three belong in the block.
    with s, pytest.raises((ssl.SSLError, OSError)), ctx.wrap_socket(s, server_hostname="weixin.qq.com") as tls:  # noqa: PT012
        tls.sendall(b"GET / HTTP/1.1\r\nHost: weixin.qq.com\r\n\r\n")
        if not tls.recv(100):
            raise OSError("closed")
    assert page.catch_all.rec.connections == connections


# -- page mode: Chromium -----------------------------------------------------------------------------------------
@pytest.fixture
def chromium(page: Proxy, tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through the proxy, with the mitmproxy CA in its NSS store ($HOME/.pki/nssdb), which is what
    a managed device's trust looks like; ``--ignore-certificate-errors`` would also hide a wrong certificate."""
    certutil = require_tool("certutil")
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run([certutil, "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True, timeout=30)
    subprocess.run([certutil, "-A", "-d", f"sql:{nssdb}", "-n", "enforcer test CA", "-t", "C,,", "-i", str(page.ca)],
                   check=True, timeout=30)  # fmt: skip
    env = {**os.environ, "HOME": str(home)}
    with browser.chromium(tmp_path / "profile", f"--proxy-server={page.url}", env=env, window=(1000, 1100)) as driver:
        yield driver


@pytest.mark.parametrize(("accept_language", "lang"), [("en-CA,en;q=0.9", "en"), ("fr-CA,fr;q=0.9,en;q=0.5", "fr")])
def test_chromium_shows_the_block_page(
    page: Proxy, chromium: Any, tmp_path: Path, accept_language: str, lang: str
) -> None:
    from selenium.webdriver.common.by import By

    events = len(page.docs())
    agent = chromium.execute_script("return navigator.userAgent")
    chromium.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": agent, "acceptLanguage": accept_language})
    chromium.get("https://weixin.qq.com/")
    assert chromium.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
    heading = chromium.find_element(By.TAG_NAME, "h1").text
    want = "is blocked on this network" if lang == "en" else "est bloqué sur ce réseau"
    assert want in heading and "WeChat" in heading, heading
    body = chromium.find_element(By.TAG_NAME, "body").text
    assert "wechat:domain:weixin.qq.com" in body and "https://weixin.qq.com/" in body
    # Both official languages are on the page, the other one in its own section.
    other = chromium.find_element(By.CSS_SELECTOR, "section").get_attribute("lang")
    assert other == ("fr" if lang == "en" else "en")
    shot = browser.artefacts(tmp_path) / f"blockpage-{lang}.png"
    chromium.save_screenshot(str(shot))
    assert shot.stat().st_size > 5000
    print(f"block page screenshot: {shot}")
    docs = eventually(lambda: page.docs()[events:], 10, 0.1, "no event for the page view")
    assert {d["event"]["action"] for d in docs} == {"connect-block"}
    assert all(d["tls"]["established"] is True for d in docs), docs  # Chromium trusts the CA: no failed handshake
    assert all(d["url"]["domain"] == "weixin.qq.com" for d in docs)
    print(f"events for one page view: {len(docs)}")
    # Chromium's own background requests (its search engine, updates) are allowed and do reach the catch-all; the
    # blocked host never does.
    assert not [t for t in page.catch_all.rec.targets() if "qq.com" in t], page.catch_all.rec.targets()


# -- refuse mode and proxy logins --------------------------------------------------------------------------------
def test_refuse_mode_answers_403_on_the_connect(refuse: Proxy) -> None:
    connections, events = refuse.catch_all.rec.connections, len(refuse.docs())
    auth = base64.b64encode(b"alice:s3cret").decode()
    s = socket.create_connection(("127.0.0.1", refuse.port), timeout=10)
    with s:
        s.sendall(f"CONNECT weixin.qq.com:443 HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
        head = s.recv(65536)
    assert status(head) == 403 and header(head, "X-Enforcer-Rule") == RULE
    code, _, _ = curl(refuse, "https://weixin.qq.com/", "-U", "alice:s3cret", "--cacert", str(refuse.ca))
    assert code == 56  # curl: CONNECT tunnel failed, response 403
    docs = new_docs(refuse, events, 2)  # refuse mode records the hit at the CONNECT: one each
    assert [(d["event"]["action"], d["rule"]["id"], d["user"]["name"]) for d in docs] == [
        ("connect-block", RULE, "alice")
    ] * 2
    assert refuse.catch_all.rec.connections == connections


def test_wrong_or_missing_login_gets_407_and_reaches_nothing(refuse: Proxy) -> None:
    connections, events = refuse.catch_all.rec.connections, len(refuse.docs())
    for extra in ([], ["-U", "alice:wrong"], ["-U", "mallory:s3cret"]):
        code, head, _ = curl(refuse, "http://www.example.org/", *extra)
        assert code == 0 and head.startswith("HTTP/1.1 407"), (extra, head)
        assert 'proxy-authenticate: basic realm="mitmproxy"' in head.lower()
    assert refuse.catch_all.rec.connections == connections and len(refuse.docs()) == events


@pytest.mark.parametrize("user", ["alice", pytest.param("bob", marks=pytest.mark.skipif(
    not HAVE_BCRYPT, reason="bcrypt htpasswd lines need the bcrypt package (mitmproxy 12 has it)"))])  # fmt: skip
def test_logged_in_user_is_in_the_hit_events(refuse: Proxy, user: str) -> None:
    password = {"alice": "s3cret", "bob": "hunter2"}[user]
    connections, events = refuse.catch_all.rec.connections, len(refuse.docs())
    code, head, _ = curl(refuse, "http://www.example.org/fine", "-U", f"{user}:{password}")
    assert code == 0 and head.startswith("HTTP/1.1 200")  # logged in: allowed traffic flows
    assert refuse.catch_all.rec.connections == connections + 1
    code, head, _ = curl(refuse, "http://dldir1.qq.com/weixin/x.apk", "-U", f"{user}:{password}")
    assert head.startswith("HTTP/1.1 403") and "x-enforcer-rule: wechat:url:dldir1.qq.com/weixin/*" in head.lower()
    code, _, _ = curl(refuse, "https://sglong.wechat.com/", "-U", f"{user}:{password}")
    assert code == 56
    docs = new_docs(refuse, events, 2)
    assert [d["event"]["action"] for d in docs] == ["http-block", "connect-block"]
    assert all(d["user"] == {"name": user} for d in docs), docs
    assert refuse.catch_all.rec.connections == connections + 1
