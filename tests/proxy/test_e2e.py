"""End to end: the real ``enforcer proxy`` (mitmdump + addon) with real clients (httpx, raw sockets, ssl).

How nothing can reach the internet even if the addon failed open: mitmdump runs in upstream mode
(``-- --mode upstream:http://127.0.0.1:C``) towards ``CatchAllProxy``, a local forward proxy that answers every
plain request itself and tunnels every CONNECT, whatever host it names, to a local TLS origin. mitmdump therefore
never resolves or dials the real names (weixin.qq.com, dldir1.qq.com, ...) or the blocked CIDRs; clients only ever
connect to 127.0.0.1. "Reached the origin" means "the catch-all (or the TLS origin behind it) recorded it", and a
block is proven by the origins recording nothing for it. The SNI test and the gate's ``server.error`` are also run
against a second mitmdump in regular mode, where the CONNECT target is a 127.0.0.1 origin (safe by construction).

One mitmdump per mode per module (fixtures), so the module stays within a few seconds of process start-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
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
from enforcer.policy import load_policy
from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port, require_tool
from tests.proxy.origins import PAYLOAD, CatchAllProxy, OriginThread, PlainOrigin, TlsOrigin, make_cert

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    port: int
    metrics_port: int
    events: Path
    blocklists: Path
    ca: Path
    origin_cert: Path
    proc: subprocess.Popen[bytes]
    log: Path
    catch_all: CatchAllProxy | None
    tls: TlsOrigin
    plain: PlainOrigin | None

    def client(self, http2: bool = False) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return httpx.Client(proxy=f"http://127.0.0.1:{self.port}", verify=ctx, http2=http2, timeout=15)

    def alive(self) -> bool:
        return self.proc.poll() is None


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 40) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"enforcer proxy exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False

    eventually(listening, timeout, 0.1, lambda: f"port {port} not listening:\n{log.read_text()[-3000:]}")


def start_proxy(tmp: Path, mode_args: list[str], blocklists: Path) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    port, metrics_port = free_port(), free_port()
    log = tmp / "mitmdump.log"
    cmd = [
        sys.executable,
        "-m",
        "enforcer",
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--blocklist",
        str(blocklists),
        "--events",
        str(tmp / "events.jsonl"),
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        "--confdir",
        str(tmp / "confdir"),
        "--",
        *mode_args,
        "--set",
        "ssl_insecure=true",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    wait_port(port, proc, log)
    wait_port(metrics_port, proc, log)
    return proc, port, metrics_port, log


def stop_proxy(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def origins() -> Iterator[OriginThread]:
    thread = OriginThread()
    yield thread
    thread.stop()


def _copy_blocklists(tmp: Path) -> Path:
    folder = tmp / "blocklists"
    folder.mkdir()
    for f in BLOCKLISTS.glob("*.yaml"):
        shutil.copy(f, folder / f.name)
    (folder / "local.yaml").write_text(
        "app: localtest\nname: Local Test\npolicy:\n  effective: 2023-10-30\nblock:\n"
        "  - domain: blocked.test\n    category: messaging\n",
        encoding="utf-8",
    )
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, origins: OriginThread) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e-upstream")
    cert, key = make_cert(tmp)
    tls = TlsOrigin(cert, key)
    tls.port = origins.start(tls.handle)
    catch_all = CatchAllProxy(tls)
    catch_all.port = origins.start(catch_all.handle)
    blocklists = _copy_blocklists(tmp)
    proc, port, metrics_port, log = start_proxy(
        tmp, ["--mode", f"upstream:http://127.0.0.1:{catch_all.port}"], blocklists
    )
    st = Stack(
        port,
        metrics_port,
        tmp / "events.jsonl",
        blocklists,
        tmp / "confdir" / "mitmproxy-ca-cert.pem",
        cert,
        proc,
        log,
        catch_all,
        tls,
        None,
    )
    yield st
    stop_proxy(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def regular(tmp_path_factory: pytest.TempPathFactory, origins: OriginThread) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e-regular")
    cert, key = make_cert(tmp)
    tls = TlsOrigin(cert, key)
    tls.port = origins.start(tls.handle)
    plain = PlainOrigin()
    plain.port = origins.start(plain.handle)
    blocklists = _copy_blocklists(tmp)
    proc, port, metrics_port, log = start_proxy(tmp, [], blocklists)
    st = Stack(
        port,
        metrics_port,
        tmp / "events.jsonl",
        blocklists,
        tmp / "confdir" / "mitmproxy-ca-cert.pem",
        cert,
        proc,
        log,
        None,
        tls,
        plain,
    )
    yield st
    stop_proxy(proc)


# -- raw helpers -------------------------------------------------------------------------------------------------
def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes to the proxy; return its first response (or whatever it sent before closing or going quiet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            s.settimeout(2)
            while chunk := s.recv(65536):
                out += chunk
                head, sep, body = out.partition(b"\r\n\r\n")
                length = header(head, "Content-Length") if sep else None
                if length is not None and len(body) >= int(length):
                    break
        return out


def connect(port: int, target: str) -> tuple[bytes, socket.socket]:
    """Open a CONNECT tunnel; returns (response head, socket)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(65536)
        if not chunk:
            break
        head += chunk
    return head, s


def tunnel_get(port: int, target: str, ca: Path | None = None, sni: str | None = None) -> tuple[bytes, bytes]:
    """CONNECT ``target``, then one GET inside the tunnel: over TLS trusting ``ca`` (SNI ``sni``, default the target's
    host) when ``ca`` is given, else plain HTTP. Returns (the CONNECT's answer, the answer inside the tunnel)."""
    head, s = connect(port, target)
    with s:
        if status(head) != 200:
            return head, b""
        host = target.rpartition(":")[0].strip("[]")
        request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        conn: socket.socket = s
        if ca is not None:
            conn = ssl.create_default_context(cafile=str(ca)).wrap_socket(s, server_hostname=sni or host)
        conn.sendall(request)
        out = b""
        with contextlib.suppress(TimeoutError, OSError):
            conn.settimeout(5)
            while chunk := conn.recv(65536):
                out += chunk
        return head, out


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0


def header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name.lower().encode():
            return v.strip().decode()
    return None


def seen_anything(st: Stack, needle: str) -> bool:
    assert st.catch_all is not None
    return any(needle in t for t in st.catch_all.rec.targets()) or any(
        needle in (s.headers.get("host", "") + s.target) for s in st.tls.rec.requests
    )


def scrape(st: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{st.metrics_port}/metrics", timeout=5).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- blocks ------------------------------------------------------------------------------------------------------
def test_plain_http_block_with_page(stack: Stack) -> None:
    with stack.client() as c:
        r = c.get("http://dldir1.qq.com/weixin/android/weixin8049android2600_arm64.apk")
    assert r.status_code == 403
    assert r.headers["x-enforcer-rule"] == "wechat:url:dldir1.qq.com/weixin/*"
    assert r.headers["cache-control"] == "no-store" and r.headers["content-type"] == "text/html; charset=utf-8"
    assert "WeChat (Weixin, 微信)" in r.text and "Treasury Board" in r.text
    assert not seen_anything(stack, "weixin8049")


def test_connect_block(stack: Stack) -> None:
    # The default (--blocked-connect page): the CONNECT is accepted, the TLS inside is the proxy's, the answer the page.
    before = stack.catch_all.rec.connections if stack.catch_all else 0
    head, page = tunnel_get(stack.port, "weixin.qq.com:443", ca=stack.ca)
    assert status(head) == 200 and status(page) == 403, (head, page[:300])
    assert header(page, "X-Enforcer-Rule") == "wechat:domain:weixin.qq.com" and b"WeChat" in page
    with stack.client() as c:
        r = c.get("https://sglong.wechat.com/")
    assert r.status_code == 403 and r.headers["x-enforcer-rule"] == "wechat:domain:wechat.com"
    assert stack.catch_all is not None and stack.catch_all.rec.connections == before  # never dialled upstream


def _tls_through(port: int, target: str, sni: str, cafile: Path | None) -> str:
    """CONNECT then a TLS handshake with ``sni``; returns 'ok' or the failure."""
    head, s = connect(port, target)
    if status(head) != 200:
        s.close()
        return f"CONNECT {status(head)}"
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    try:
        with ctx.wrap_socket(s, server_hostname=sni) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            return "ok" if tls.recv(100) else "empty"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc!r}"
    finally:
        s.close()


@pytest.mark.parametrize("sni", ["weixin.qq.com", "sgshort.wechat.com", "dlm.kaspersky-labs.com"])
def test_sni_block_never_reaches_origin(stack: Stack, sni: str) -> None:
    tls_before, connects_before = stack.tls.rec.connections, len(stack.catch_all.rec.connects)  # type: ignore[union-attr]
    outcome = _tls_through(stack.port, f"127.0.0.1:{stack.tls.port}", sni, None)
    assert outcome.startswith("refused"), outcome
    assert stack.tls.rec.connections == tls_before
    assert len(stack.catch_all.rec.connects) == connects_before  # type: ignore[union-attr]


def test_sni_block_regular_mode_zero_connections(regular: Stack) -> None:
    before = regular.tls.rec.connections
    outcome = _tls_through(regular.port, f"127.0.0.1:{regular.tls.port}", "weixin.qq.com", None)
    assert outcome.startswith("refused"), outcome
    assert regular.tls.rec.connections == before
    # The same tunnel with an innocent SNI is passed through undecrypted: the client sees the origin's own cert.
    outcome = _tls_through(regular.port, f"127.0.0.1:{regular.tls.port}", "origin.test", regular.origin_cert)
    assert outcome == "ok" and regular.tls.rec.connections == before + 1


def test_literal_ip_in_blocked_cidr(stack: Stack) -> None:
    for target in ("129.226.3.47:443", "101.32.104.4:80", "[::ffff:129.226.3.47]:443"):
        head, page = tunnel_get(stack.port, target)  # plain HTTP inside the accepted tunnel gets the page too
        assert status(head) == 200 and status(page) == 403, target
        assert (header(page, "X-Enforcer-Rule") or "").startswith("wechat:cidr:")
    with stack.client() as c:
        r = c.get("http://162.62.163.63/anything")
    assert r.status_code == 403 and r.headers["x-enforcer-rule"] == "wechat:cidr:162.62.163.63/32"
    assert not any(
        ip in t for t in stack.catch_all.rec.targets() for ip in ("129.226.3.47", "101.32.104.4", "162.62.163.63")
    )  # type: ignore[union-attr]


def test_store_pages_any_parameter_order_and_case(stack: Stack) -> None:
    with stack.client() as c:
        for url in (
            "https://play.google.com/store/apps/details?id=com.tencent.mm",
            "https://play.google.com/store/apps/details?hl=en&gl=CA&id=com.tencent.mm",
            "https://play.google.com/store/apps/details?ID=COM.TENCENT.MM&hl=fr",
            "https://apps.apple.com/ca/app/wechat/id414478124",
            "http://a.app.qq.com/o/simple.jsp?PkgName=com.tencent.mm",
        ):
            r = c.get(url)
            assert r.status_code == 403, url
            assert r.headers["x-enforcer-rule"] == "wechat:store:wechat", url
        ok = c.get("https://play.google.com/store/apps/details?hl=en&id=com.tencent.mobileqq")
    assert ok.status_code == 200 and ok.content == PAYLOAD
    assert [s.target for s in stack.tls.rec.requests if "mobileqq" in s.target]
    assert not [s.target for s in stack.tls.rec.requests if "tencent.mm" in s.target.lower()]


def test_shared_host_only_wechat_paths_blocked(stack: Stack) -> None:
    with stack.client() as c:
        blocked = c.get("https://dldir1.qq.com/weixin/Windows/WeChatSetup.exe")
        qq = c.get("https://dldir1.qq.com/qqfile/qq/QQNT/Windows/QQ_x64.exe")
        qq_plain = c.get("http://dldir1.qq.com/qqfile/qq/QQNT/Windows/QQ_x64.exe")
    assert blocked.status_code == 403 and blocked.headers["x-enforcer-rule"] == "wechat:url:dldir1.qq.com/weixin/*"
    assert qq.status_code == 200 and qq.content == PAYLOAD and qq_plain.status_code == 200
    reached = [s for s in stack.tls.rec.requests if s.target == "/qqfile/qq/QQNT/Windows/QQ_x64.exe"]
    assert reached and reached[-1].sni == "dldir1.qq.com"  # intercepted: mitmproxy's own TLS to the origin
    assert not seen_anything(stack, "WeChatSetup")


def test_mmtls_shortlink_to_raw_ip(stack: Stack) -> None:
    with stack.client() as c:
        post = c.post("http://203.0.113.77/mmtls/0a1b2c3d", content=b"\x00\x01mmtls")
        get = c.get("http://203.0.113.77/mmtls/0a1b2c3d")
    assert post.status_code == 403 and post.headers["x-enforcer-rule"] == "wechat:url:mmtls-shortlink"
    assert get.status_code == 200  # GET of the same path is not the WeChat signature
    posts = [s for s in stack.catch_all.rec.requests if "/mmtls/" in s.target]  # type: ignore[union-attr]
    assert [s.method for s in posts] == ["GET"]


def test_websocket_upgrade_blocked(stack: Stack) -> None:
    upgrade = (
        "GET http://wx.qq.com/ws HTTP/1.1\r\nHost: wx.qq.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    out = raw(stack.port, upgrade.encode())
    assert status(out) == 403 and header(out, "X-Enforcer-Rule") == "wechat:domain:wx.qq.com"
    # The same upgrade inside intercepted TLS (wss) to a blocked path of a shared host.
    head, s = connect(stack.port, "dldir1.qq.com:443")
    assert status(head) == 200
    ctx = ssl.create_default_context(cafile=str(stack.ca))
    with ctx.wrap_socket(s, server_hostname="dldir1.qq.com") as tls:
        tls.sendall(upgrade.replace("http://wx.qq.com/ws", "/weixin/ws").replace("wx.qq.com", "dldir1.qq.com").encode())
        reply = tls.recv(65536)
    assert status(reply) == 403 and header(reply, "X-Enforcer-Rule") == "wechat:url:dldir1.qq.com/weixin/*"
    assert not seen_anything(stack, "/ws")


def curl_h2(st: Stack, url: str, tmp: Path) -> tuple[str, int, dict[str, str], bytes]:
    """curl over HTTP/2 through the proxy (httpx does not negotiate h2 inside a proxy tunnel)."""
    head_file, body_file = tmp / "head", tmp / "body"
    cmd = [require_tool("curl"), "-s", "--http2", "--cacert", str(st.ca), "-x", f"http://127.0.0.1:{st.port}"]
    cmd += ["-D", str(head_file), "-o", str(body_file), "--max-time", "15", url]
    subprocess.run(cmd, timeout=30, check=True)
    # -D holds the proxy's CONNECT answer first, then the response itself: keep the last block.
    blocks = [b for b in head_file.read_bytes().decode("latin-1").split("\r\n\r\n") if b.strip()]
    lines = blocks[-1].split("\r\n")
    version, code = lines[0].split(" ")[:2]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return version, int(code), headers, body_file.read_bytes()


def test_http2(stack: Stack, tmp_path: Path) -> None:
    version, code, headers, body = curl_h2(stack, "https://dldir1.qq.com/weixin/mac/WeChatMac.dmg", tmp_path)
    assert (version, code) == ("HTTP/2", 403) and headers["x-enforcer-rule"] == "wechat:url:dldir1.qq.com/weixin/*"
    assert b"WeChat" in body
    version, code, headers, body = curl_h2(stack, "https://dldir1.qq.com/qqfile/mac/QQ.dmg", tmp_path)
    assert (version, code) == ("HTTP/2", 200) and body == PAYLOAD
    assert any(s.target == "/qqfile/mac/QQ.dmg" for s in stack.tls.rec.requests)


# -- allowed traffic ---------------------------------------------------------------------------------------------
def test_allowed_traffic_is_byte_identical(stack: Stack) -> None:
    body = os.urandom(300_000)
    with stack.client() as c:
        r = c.post("http://www.example.org/upload?x=1", content=body, headers={"X-Test": "kept"})
        work = c.get("http://work.weixin.qq.com/wework_admin/frame")  # the explicit WeCom exception
    assert r.status_code == 200 and r.content == PAYLOAD
    assert r.headers["x-request-sha256"] == hashlib.sha256(body).hexdigest()
    seen = [s for s in stack.catch_all.rec.requests if s.target == "http://www.example.org/upload?x=1"]  # type: ignore[union-attr]
    assert seen and seen[-1].body == body and seen[-1].headers["x-test"] == "kept"
    assert work.status_code == 200 and work.content == PAYLOAD


def test_tls_without_url_rules_is_not_decrypted(stack: Stack) -> None:
    # www.example.org has no url rule: the tunnel is passed through and the client talks to the origin itself.
    before = stack.tls.rec.connections
    outcome = _tls_through(stack.port, "www.example.org:443", "origin.test", stack.origin_cert)
    assert outcome == "ok"
    assert stack.tls.rec.connections == before + 1 and stack.tls.rec.snis[-1] == "origin.test"


# -- hostile input -----------------------------------------------------------------------------------------------
# (bytes, whether the input names something blocked and so must never get a 200 from upstream)
HOSTILE: list[tuple[bytes, bool]] = [
    (b"GET http://www.example.org/ HTTP/1.1\r\nHost: www.example.org\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", False),
    (b"GET http://weixin.qq.com/ HTTP/1.1\r\nHost: weixin.qq.com\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: weixin.qq.com:notaport\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", False),
    (b"GET http://[::1 HTTP/1.1\r\n\r\n", False),
    (b"GET http://www.example.org/ HTTP/1.1\r\nHost: weixin.qq.com\r\n\r\n", True),
    (b"GET http://www.example.org/ HTTP/1.1\r\nHost: WEIXIN.QQ.COM.\r\n\r\n", True),
    (b"GET http://[::ffff:101.32.104.4]/ HTTP/1.1\r\nHost: [::ffff:101.32.104.4]\r\n\r\n", True),
    (b"GET http://[2001:db8::1]:8080/ HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n", False),
    (b"GET http://xn--fsqu00a.wechat.com/ HTTP/1.1\r\nHost: xn--fsqu00a.wechat.com\r\n\r\n", True),
    ("GET http://例子.wechat.com/ HTTP/1.1\r\nHost: 例子.wechat.com\r\n\r\n".encode(), True),
    ("GET http://www.example.org/ HTTP/1.1\r\nHost: ｗｅｃｈａｔ.com\r\n\r\n".encode(), True),
    ("CONNECT 例子.wechat.com:443 HTTP/1.1\r\nHost: 例子.wechat.com:443\r\n\r\n".encode(), True),
    (b"CONNECT xn--fsqu00a.wechat.com:443 HTTP/1.1\r\n\r\n", True),
    (b"CONNECT [::ffff:101.32.104.4]:443 HTTP/1.1\r\n\r\n", True),
    (b"CONNECT weixin.qq.com HTTP/1.1\r\n\r\n", True),
    (b"CONNECT weixin.qq.com:99999 HTTP/1.1\r\n\r\n", True),
    (b"GET http://weixin.qq.com\x00.example.org/ HTTP/1.1\r\n\r\n", True),
    (b"\x16\x03\x01\x02\x00garbage-tls", False),
    (
        b"POST http://203.0.113.5/mmtls/deadbeef HTTP/1.1\r\nHost: 203.0.113.5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        True,
    ),
]


def test_hostile_input_never_crashes_or_fails_open(stack: Stack) -> None:
    policy = load_policy([stack.blocklists])
    for data, names_blocked in HOSTILE:
        out = raw(stack.port, data)
        assert stack.alive(), data[:80]
        if names_blocked:
            # A blocked CONNECT is accepted (200) to show the block page inside; nothing is dialled (checked below).
            accepted = data.startswith(b"CONNECT") and status(out) == 200
            assert (status(out) != 200 or accepted) and b"X-Origin: local" not in out, (data[:80], out[:300])
    # Still serving, and nothing the policy blocks ever reached the catch-all or the TLS origin.
    with stack.client() as c:
        assert c.get("http://www.example.org/after-hostile").status_code == 200
    assert stack.catch_all is not None
    for target in stack.catch_all.rec.targets():
        host = httpx.URL(target if "://" in target else f"//{target}").host
        match = policy.match_host(host) if host else None
        assert match is None or not match.blocked, target


# -- operations --------------------------------------------------------------------------------------------------
def test_metrics_and_events(stack: Stack) -> None:
    with stack.client() as c:
        c.get("http://dldir1.qq.com/weixin/x.apk")
    m = scrape(stack)
    blocked = {k: v for k, v in m.items() if k[0] == "enforcer_blocked_total"}
    assert any(dict(k[1]).get("action") == "http-block" and v >= 1 for k, v in blocked.items())
    assert m[("enforcer_proxy_flows_total", (("outcome", "blocked"),))] >= 1
    assert m[("enforcer_policy_reloads_total", (("result", "success"),))] >= 1

    def written() -> list[dict[str, Any]]:
        docs = list(iter_events(stack.events)) if stack.events.exists() else []
        return docs if any(d.get("url", {}).get("full") == "http://dldir1.qq.com/weixin/x.apk" for d in docs) else []

    docs = eventually(written, 10, 0.1, "no http-block event for x.apk")
    http_events = [d for d in docs if d.get("url", {}).get("full") == "http://dldir1.qq.com/weixin/x.apk"]
    assert http_events and http_events[-1]["event"]["action"] == "http-block"
    assert http_events[-1]["source"]["ip"] == "127.0.0.1" and http_events[-1]["observer"]["type"] == "proxy"
    assert http_events[-1]["http"]["request"]["method"] == "GET"
    assert {"connect-block", "tls-block"} <= {d["event"]["action"] for d in docs}


def test_reload_on_blocklist_edit(stack: Stack) -> None:
    local = stack.blocklists / "local.yaml"
    original = local.read_text()
    with stack.client() as c:
        assert c.get("http://reload.example.net/").status_code == 200
        local.write_text(original + "  - domain: reload.example.net\n    category: web\n")
        eventually(lambda: c.get("http://reload.example.net/").status_code == 403, 15, 0.3, "edit not applied")
        assert c.get("http://reload.example.net/").status_code == 403
        # A broken edit keeps the last good policy and is counted.
        local.write_text(original + "  - domain: [broken\n")
        failure = ("enforcer_policy_reloads_total", (("result", "failure"),))
        eventually(lambda: scrape(stack).get(failure), 15, 0.3, "broken edit not counted")
        assert scrape(stack)[("enforcer_policy_reloads_total", (("result", "failure"),))] >= 1
        assert c.get("http://reload.example.net/").status_code == 403
    local.write_text(original)
    assert "local.yaml:" in stack.log.read_text()  # the PATH:LINE:COL error was logged


def test_standalone_script_survives_live_reload(tmp_path: Path, origins: OriginThread) -> None:
    """``mitmdump -s addon.py`` (a copy, so no other mitmdump sees the edit); touching it makes mitmproxy reload it.

    Upstream mode towards a local ``CatchAllProxy``, like the ``stack`` fixture: had the addon failed open, the
    CONNECT to weixin.qq.com would only ever reach the catch-all on 127.0.0.1 (which records it), never the name.
    """
    cert, key = make_cert(tmp_path)
    tls = TlsOrigin(cert, key)
    tls.port = origins.start(tls.handle)
    catch_all = CatchAllProxy(tls)
    catch_all.port = origins.start(catch_all.handle)
    script = tmp_path / "addon.py"
    shutil.copy(ROOT / "enforcer" / "proxy" / "addon.py", script)
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "mitmdump.log"
    cmd = [str(Path(sys.executable).with_name("mitmdump")), "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    cmd += ["--mode", f"upstream:http://127.0.0.1:{catch_all.port}", "--set", "ssl_insecure=true"]
    cmd += ["--set", f"confdir={tmp_path / 'confdir'}", "--set", "connection_strategy=lazy", "-s", str(script)]
    cmd += ["--set", f"enforcer_blocklist={BLOCKLISTS}", "--set", f"enforcer_metrics=127.0.0.1:{metrics_port}"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, proc, log)
        wait_port(metrics_port, proc, log)
        head, page = tunnel_get(port, "weixin.qq.com:443")
        assert status(head) == 200 and status(page) == 403
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'enforcer_proxy_flows_total{outcome="blocked"} 2.0' in metrics  # the CONNECT and the request inside
        loaded_before = len(log.read_text())
        later = time.time() + 5
        os.utime(script, (later, later))
        # mitmproxy polls the script's mtime (every second): wait for a load logged after the change.
        eventually(
            lambda: "Loading script" in log.read_text()[loaded_before:], 30, 0.2, lambda: log.read_text()[-3000:]
        )

        # The new instance serves its own (fresh) registry on the same port, and still blocks.
        def fresh_registry() -> str:
            with contextlib.suppress(httpx.HTTPError):
                text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
                if 'outcome="blocked"' not in text and "enforcer_policy_rules" in text:
                    return text
            return ""

        metrics = eventually(fresh_registry, 30, 0.2, "the reloaded addon's own registry was never served")
        assert 'outcome="blocked"' not in metrics and "enforcer_policy_rules" in metrics, metrics[-2000:]
        head, page = tunnel_get(port, "weixin.qq.com:443")
        assert status(head) == 200 and status(page) == 403 and proc.poll() is None
        assert not [t for t in catch_all.rec.targets() if "weixin" in t]
        text = log.read_text()
        assert "Traceback" not in text and "Address already in use" not in text, text[-3000:]
    finally:
        stop_proxy(proc)


def test_sighup_reloads(stack: Stack) -> None:
    def successes() -> float:
        return scrape(stack).get(("enforcer_policy_reloads_total", (("result", "success"),)), 0.0)

    before = successes()
    stack.proc.send_signal(signal.SIGHUP)  # enforcer proxy forwards it to mitmdump
    eventually(lambda: successes() > before, 15, 0.2, "SIGHUP did not reload")
    assert successes() > before and stack.alive()
    assert "SIGHUP: reloading the policy" in stack.log.read_text()
