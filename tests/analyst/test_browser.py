"""A real browser on a real ``enforcer analyst``: log in with the token, check the chart and the non-compliant table.

Starts ``python -m enforcer analyst`` on 127.0.0.1 with generated event files, an inventory and a token, and drives
headless Chromium (Debian ``chromium`` + ``chromedriver``) through selenium. The expected chart points and table
rows are computed here from the HitEvent objects. A screenshot is saved under the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enforcer.events import HitEvent
from tests.analyst.analyst_helpers import HOSTILE, expected_device, expected_report, generate, write_events
from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port, require_tool

pytestmark = pytest.mark.e2e
TOKEN = "browser-test-token-7f3a9c"
NOW = datetime.now(UTC).replace(microsecond=0)


def _get(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture
def dataset(tmp_path: Path, policy) -> tuple[list[HitEvent], Path]:
    events = generate(policy, 900, seed=31, start=NOW - timedelta(days=14), span_days=13)
    events += generate(policy, 300, seed=32)  # 2023: before and after the effective date
    hostile = HitEvent.from_match(
        policy.match_name(HOSTILE),
        action="dns-block",
        component="dns",
        version=policy.fingerprint,
        enforced=True,
        at=NOW - timedelta(hours=1),
        source_ip="10.1.2.7",
        dns_question_name=HOSTILE,
        dns_question_type="A",
    )
    events = [e for e in events if e.dns_question_name != HOSTILE] + [hostile]
    write_events(tmp_path / "events" / "dns.jsonl", [e for e in events if e.component == "dns"])
    write_events(tmp_path / "events" / "proxy.jsonl", [e for e in events if e.component == "proxy"])
    return events, tmp_path / "events"


@pytest.fixture
def analyst(tmp_path: Path, dataset: tuple[list[HitEvent], Path], inventory_file: Path) -> Iterator[str]:
    events, folder = dataset
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "enforcer", "analyst",
            "--listen", f"127.0.0.1:{port}",
            "--events", str(folder),
            "--inventory", str(inventory_file),
            "--token-file", str(token_file),
            "--db", str(tmp_path / "analyst.sqlite"),
            "--blocklist", str(BLOCKLISTS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ingested_all() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return bool(_get(f"{url}/healthz")["ingested"] == len(events))
            except OSError:
                return False

        eventually(ingested_all, timeout=30, interval=0.2, message="analyst did not ingest the events")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        assert proc.returncode == 0, out


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        # Confined to loopback: every name fails to resolve, only the analyst's 127.0.0.1 literal is reachable.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,2200",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_in_chromium(
    analyst: str, browser: Any, dataset: tuple[list[HitEvent], Path], policy, tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    events, _ = dataset
    wait = WebDriverWait(browser, 20)
    browser.get(analyst + "/")
    # Not logged in: the login form, no data.
    wait.until(ec.visibility_of_element_located((By.ID, "login-form")))
    assert not browser.find_element(By.ID, "main").is_displayed()

    # A wrong token is refused and says so.
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login-submit").click()
    wait.until(ec.visibility_of_element_located((By.ID, "login-error")))
    assert "not accepted" in browser.find_element(By.ID, "login-error").text

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1")
    assert browser.find_element(By.ID, "main").is_displayed()

    # Chart: one series per app; each series has one point per time bucket, and the points add up to the app's
    # attempts.
    series = browser.find_elements(By.CSS_SELECTOR, "#chart g.series")
    assert sorted(g.get_attribute("data-app") for g in series) == ["kaspersky", "wechat"]
    for g in series:
        app = g.get_attribute("data-app")
        points = g.find_elements(By.CSS_SELECTOR, "circle.point")
        assert len(g.find_elements(By.TAG_NAME, "polyline")) == 1
        stamps = [datetime.fromisoformat(p.get_attribute("data-bucket")) for p in points]
        bucket = (stamps[1] - stamps[0]).total_seconds()
        first = min(e.timestamp for e in events).timestamp() // bucket
        last = max(e.timestamp for e in events).timestamp() // bucket
        assert len(points) == last - first + 1 <= 60
        assert sum(int(p.get_attribute("data-count")) for p in points) == sum(1 for e in events if e.app == app)

    # Non-compliant table: exactly the (client, app) pairs with enforced attempts, with their devices.
    want = {k: v for k, v in expected_report(policy, events).items() if v["enforced_attempts"]}
    rows = browser.find_elements(By.CSS_SELECTOR, "#noncompliant tbody tr")
    got = {}
    for tr in rows:
        cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        got[(cells[3], cells[4])] = (cells[0], int(cells[7]), int(cells[8]))
    assert got == {k: (expected_device(k[0]) or "-", v["attempts"], v["enforced_attempts"]) for k, v in want.items()}
    assert ("10.1.2.7", "wechat") in got and ("2001:db8:1:2::10", "wechat") in got

    # Non-compliant now: within the last 24 h only the hostile-name event (10.1.2.7, wechat, 1 h ago) is enforced;
    # the generated events end a day before the test started.
    windows = {
        tr.find_elements(By.TAG_NAME, "td")[0].text: [td.text for td in tr.find_elements(By.TAG_NAME, "td")[1:]]
        for tr in browser.find_elements(By.CSS_SELECTOR, "#windows tbody tr")
    }
    assert windows["wechat"][:2] == ["0", "1"] and windows["kaspersky"][:2] == ["0", "0"]
    assert int(windows["wechat"][2]) >= 1

    browser.save_screenshot(str(tmp_path / "dashboard-top.png"))
    if os.environ.get("ANALYST_SCREENSHOT"):
        Path(os.environ["ANALYST_SCREENSHOT"] + ".top.png").write_bytes((tmp_path / "dashboard-top.png").read_bytes())

    # Drill-down: the hostile name is shown as text, never parsed as HTML.
    row = next(
        tr for tr in rows if tr.get_attribute("data-client") == "10.1.2.7" and tr.get_attribute("data-app") == "wechat"
    )
    row.click()
    wait.until(ec.visibility_of_element_located((By.ID, "drill")))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#drill-events tbody tr"))
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#drill-events tbody tr td")]
    assert HOSTILE in cells
    assert browser.find_elements(By.TAG_NAME, "img") == []
    drill_rows = browser.find_elements(By.CSS_SELECTOR, "#drill-events tbody tr")
    assert len(drill_rows) == min(50, sum(1 for e in events if e.source_ip == "10.1.2.7"))

    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("ANALYST_SCREENSHOT"):
        Path(os.environ["ANALYST_SCREENSHOT"]).write_bytes(shot.read_bytes())

    # Filter by app: the chart and the table follow.
    Select(browser.find_element(By.ID, "f-app")).select_by_value("kaspersky")
    browser.find_element(By.ID, "apply").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chart g.series")) == 1)
    apps = {
        tr.find_elements(By.TAG_NAME, "td")[4].text
        for tr in browser.find_elements(By.CSS_SELECTOR, "#noncompliant tbody tr")
    }
    assert apps == {"kaspersky"}
