"""Headless Chromium resolving every name through enforcer's DoH in secure mode (no fallback to the system resolver):
a blocked host fails to load, an allowed local page loads, and the hit event names the ClientID of the DoH path.

The DoH settings go into the private profile's ``Local State`` (``dns_over_https.mode``/``templates``, the prefs the
``DnsOverHttpsMode``/``DnsOverHttpsTemplates`` policies set), so no global policy file under /etc is written. The fake
upstream answers weixin.qq.com with 127.0.0.1, where the allowed page is served: if enforcer failed open, the
blocked host would load the page, and the test would fail; nothing leaves the machine either way."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from encryptedhelpers import EncResolver
from fakeupstream import FakeUpstream

from tests.conftest import eventually, require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture
def page() -> Iterator[tuple[int, list[str]]]:
    hosts: list[str] = []

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hosts.append(self.headers.get("host", ""))
            body = b"<html><head><title>allowed page</title></head><body>ok</body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], hosts
    finally:
        server.shutdown()
        server.server_close()


def _chromium(profile: Path, template: str) -> Any:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile.mkdir(parents=True, exist_ok=True)
    (profile / "Local State").write_text(json.dumps({"dns_over_https": {"mode": "secure", "templates": template}}))
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--ignore-certificate-errors",  # the DoH server's test certificate
                 f"--user-data-dir={profile}"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def test_chromium_secure_doh_blocks_a_host_and_loads_an_allowed_page(
    tmp_path: Path, page: tuple[int, list[str]]
) -> None:
    port, hosts = page
    up = FakeUpstream(records={"intranet.example": ["intranet.example. 60 IN A 127.0.0.1"],
                               "weixin.qq.com": ["weixin.qq.com. 60 IN A 127.0.0.1"]})  # fmt: skip
    r = EncResolver(tmp_path, up.address, "--mode", "nxdomain")
    driver = None
    try:
        driver = _chromium(tmp_path / "profile", f"{r.doh_url}/laptop-7{{?dns}}")
        driver.get(f"http://intranet.example:{port}/")
        assert driver.title == "allowed page" and set(hosts) == {f"intranet.example:{port}"}  # (and its favicon)
        with contextlib.suppress(Exception):  # a navigation error is one way to fail to load
            driver.get(f"http://weixin.qq.com:{port}/")
        assert driver.title != "allowed page" and set(hosts) == {f"intranet.example:{port}"}  # never reached the page
        assert "intranet.example" in up.names() and "weixin.qq.com" not in up.names()

        def doh_event() -> dict[str, Any] | None:
            events = r.events_for("weixin.qq.com", timeout=0)
            return next((e for e in events if e.get("device", {}).get("id") == "laptop-7"), None)

        event = eventually(doh_event, timeout=10, message="no DoH hit event with device.id laptop-7")
        assert event["labels"]["dns_transport"] == "doh"
    finally:
        if driver is not None:
            driver.quit()
        r.stop()
        up.close()
