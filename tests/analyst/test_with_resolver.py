"""The analyst on a real resolver's and a real proxy's events: ``enforcer dns`` blocks real queries, ``enforcer
proxy`` (mitmdump) blocks real HTTP requests, and ``enforcer report`` and ``enforcer analyst`` count exactly what the
test sent (the independent count).

Nothing can leave 127.0.0.1 even if blocking failed: the resolver's upstream is a closed local port, and mitmdump
runs in upstream mode towards the proxy tests' local catch-all proxy (tests/proxy/origins.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import httpx
import pytest

from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port
from tests.proxy.origins import CatchAllProxy, OriginThread, TlsOrigin, make_cert
from tests.proxy.test_e2e import start_proxy, stop_proxy

pytestmark = pytest.mark.e2e

QUERIES = {"long.weixin.qq.com": "wechat", "www.wechat.com": "wechat", "kaspersky.com": "kaspersky"}
URLS = {"http://dldir1.qq.com/weixin/android/weixin.apk": "wechat", "http://kaspersky.com/downloads/": "kaspersky"}


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "enforcer", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def test_report_and_analyst_count_resolver_and_proxy_blocks(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    events = tmp_path / "events" / "dns.jsonl"
    resolver = _start(
        ["dns", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dead}", "--blocklist", str(BLOCKLISTS),
         "--events", str(events)]
    )  # fmt: skip
    sent = {"wechat": 0, "kaspersky": 0}
    try:

        def answers() -> bool:
            try:
                dns.query.udp(dns.message.make_query("kaspersky.com", "A"), "127.0.0.1", port=port, timeout=0.5)
            except (OSError, dns.exception.Timeout):
                assert resolver.poll() is None, "resolver did not start"
                return False
            sent["kaspersky"] += 1
            return True

        # The 0.5 s query timeout is the pause between tries, as before.
        eventually(answers, timeout=20, interval=0, message="resolver did not start")
        for i in range(60):
            name = list(QUERIES)[i % len(QUERIES)]
            reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)
            assert reply.answer and reply.answer[0][0].address == "0.0.0.0"  # blocked (null mode)
            sent[QUERIES[name]] += 1
    finally:
        out = _stop(resolver)
    assert resolver.returncode == 0, out

    origins = OriginThread()
    try:
        cert, key = make_cert(tmp_path)
        tls = TlsOrigin(cert, key)
        tls.port = origins.start(tls.handle)
        catch_all = CatchAllProxy(tls)
        catch_all.port = origins.start(catch_all.handle)
        # The proxy writes events.parent / "events.jsonl", beside the resolver's file.
        proc, proxy_port, _, _ = start_proxy(
            events.parent, ["--mode", f"upstream:http://127.0.0.1:{catch_all.port}"], BLOCKLISTS
        )
        try:
            with httpx.Client(proxy=f"http://127.0.0.1:{proxy_port}", timeout=15) as client:
                for i in range(20):
                    url = list(URLS)[i % len(URLS)]
                    resp = client.get(url)
                    assert resp.status_code == 403 and resp.headers["X-Enforcer-Rule"].startswith(URLS[url])
                    sent[URLS[url]] += 1
        finally:
            stop_proxy(proc)
        assert catch_all.rec.requests == []  # blocked before any upstream connection
    finally:
        origins.stop()

    report = subprocess.run(
        [sys.executable, "-m", "enforcer", "report", "--events", str(events.parent), "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert {a["app"]: a["hits"] for a in doc["apps"]} == sent
    assert {(c["client"], c["app"]): (c["hits"], c["enforced_hits"]) for c in doc["clients"]} == {
        ("127.0.0.1", app): (n, n) for app, n in sent.items()
    }

    web_port = free_port()
    analyst = _start(
        ["analyst", "--listen", f"127.0.0.1:{web_port}", "--events", str(events.parent), "--db",
         str(tmp_path / "a.sqlite"), "--blocklist", str(BLOCKLISTS)]
    )  # fmt: skip
    try:

        def report() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/report", timeout=2) as resp:
                    api: dict[str, Any] = json.loads(resp.read())
                if sum(a["hits"] for a in api["apps"]) == sum(sent.values()):
                    return api
            except OSError:
                pass
            assert analyst.poll() is None, "analyst did not ingest the events"
            return None

        api = eventually(report, timeout=20, interval=0.2, message="analyst did not ingest the events")
    finally:
        out = _stop(analyst)
    assert analyst.returncode == 0, out
    assert api["clients"] == doc["clients"] and api["apps"] == doc["apps"]
