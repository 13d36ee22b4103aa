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
from tests.browser import LOOPBACK_ONLY, artefacts, chromium
from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port

pytestmark = pytest.mark.e2e
TOKEN = "browser-test-token-7f3a9c"
NOW = datetime.now(UTC).replace(microsecond=0)
BYPASS_NAME, BYPASS_CLIENT = "dns.google", "10.1.2.8"  # a public DoH resolver (controls.yaml), from lab-tablets


def _ban(events: list[HitEvent]) -> list[HitEvent]:
    """The events of banned apps (what non-compliance and cases are made of; control apps are bypass attempts)."""
    return [e for e in events if e.app != "controls"]


def _bypass_rows(browser: Any) -> list[list[str]]:
    return [[td.text for td in tr.find_elements("tag name", "td")] for tr in browser.find_elements(
        "css selector", "#bypass tbody tr")]  # fmt: skip


def _get(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _fnv1a(text: str) -> int:
    h = 0x811C9DC5
    for ch in text:
        h = ((h ^ ord(ch)) * 0x01000193) & 0xFFFFFFFF
    return h


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
    # A CONNECT to a host name blocked by the proxy: no destination.ip, the host is url.domain (shown with its port).
    connect = HitEvent.from_match(
        policy.match_name("long.weixin.qq.com"),
        action="connect-block",
        component="proxy",
        version=policy.fingerprint,
        enforced=True,
        at=NOW - timedelta(minutes=30),
        source_ip="10.1.2.7",
        url_domain="long.weixin.qq.com",
        destination_port=443,
    )
    # A bypass attempt (a control app, blocklists/controls.yaml): the bypass panel, never non-compliance.
    bypass = HitEvent.from_match(
        policy.match_name(BYPASS_NAME),
        action="dns-block",
        component="dns",
        version=policy.fingerprint,
        enforced=True,
        at=NOW - timedelta(hours=2),
        source_ip=BYPASS_CLIENT,
        dns_question_name=BYPASS_NAME,
        dns_question_type="A",
    )
    events = [e for e in events if e.dns_question_name != HOSTILE] + [hostile, connect, bypass]
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
    # Confined to loopback: every name fails to resolve, only the analyst's 127.0.0.1 literal is reachable.
    with chromium(tmp_path / "chromium-profile", LOOPBACK_ONLY) as driver:
        yield driver


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
    # Read in one script call: a thousand points read one WebDriver call each outlast the page's 30 s self-refresh,
    # which redraws the chart.
    series = browser.execute_script(
        "return [...document.querySelectorAll('#chart g.series')].map(g => ({app: g.dataset.app,"
        " colour: g.dataset.colour, lines: g.querySelectorAll('polyline').length,"
        " points: [...g.querySelectorAll('circle.point')].map(p => [p.getAttribute('data-bucket'),"
        " Number(p.getAttribute('data-count'))])}))"
    )
    assert sorted(g["app"] for g in series) == sorted({e.app for e in events})
    for g in series:
        app, points = g["app"], g["points"]
        assert g["lines"] == 1
        stamps = [datetime.fromisoformat(b) for b, _ in points]
        bucket = (stamps[1] - stamps[0]).total_seconds()
        first = min(e.timestamp for e in events).timestamp() // bucket
        last = max(e.timestamp for e in events).timestamp() // bucket
        # Two years of data: per-day buckets (long windows are per hour or per day, never coarser).
        assert bucket == 86400 and len(points) == last - first + 1
        assert sum(n for _, n in points) == sum(1 for e in events if e.app == app)
        # The colour follows the app's name (FNV-1a), not its position among the series.
        assert g["colour"] == f"c{_fnv1a(app) % 12}"

    # Non-compliant table: exactly the (client, app) pairs with enforced attempts, with their devices.
    want = {k: v for k, v in expected_report(policy, _ban(events)).items() if v["enforced_attempts"]}
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
    # (the CONNECT block, 30 min ago, is the same client: one client in the last hour too).
    assert windows["wechat"][:2] == ["1", "1"] and windows["kaspersky"][:2] == ["0", "0"]
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
    assert "long.weixin.qq.com:443" in cells  # the CONNECT block shows its host, not "-"

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


def test_cases_and_french_in_chromium(
    analyst: str, browser: Any, dataset: tuple[list[HitEvent], Path], policy, tmp_path: Path
):
    """The cases panel (acknowledge with a note, then a progress note, from the page), the search box, the switch
    to French; screenshots of the dashboard in English and French kept as artefacts."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    events, _ = dataset
    # A row read while the page redraws it (after an action) is read again.
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(analyst + "/?lang=en")
    wait.until(ec.visibility_of_element_located((By.ID, "login-form")))
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    assert "every event is kept" in browser.find_element(By.ID, "retention").text

    # One case per non-compliant device (inventory device, else the address), all open.
    want = {
        expected_device(client) or client
        for (client, _), row in expected_report(policy, _ban(events)).items()
        if row["enforced_hits"] and client
    }
    rows = browser.find_elements(By.CSS_SELECTOR, "#cases tbody tr")
    assert {tr.get_attribute("data-device") for tr in rows} == want
    assert {tr.get_attribute("data-state") for tr in rows} == {"open"}

    # Acknowledge phone-0007 with a note, from the page.
    row = browser.find_element(By.CSS_SELECTOR, '#cases tbody tr[data-device="phone-0007"]')
    row.find_element(By.CSS_SELECTOR, "input.note").send_keys("owner called")
    row.find_element(By.CSS_SELECTOR, 'button[data-target="acknowledged"]').click()
    wait.until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, '#cases tbody tr[data-device="phone-0007"]').get_attribute("data-state")
            == "acknowledged"
        )
    )
    case = next(c for c in _get(analyst + "/api/cases", TOKEN)["cases"] if c["device"] == "phone-0007")
    assert (case["state"], case["note"], case["updated_by"]) == ("acknowledged", "owner called", "analyst")
    # A progress note from the page: the case stays acknowledged, the note shows in its row.
    row = browser.find_element(By.CSS_SELECTOR, '#cases tbody tr[data-device="phone-0007"]')
    row.find_element(By.CSS_SELECTOR, "input.note").send_keys("device handed in")
    row.find_element(By.CSS_SELECTOR, 'button[data-target="note"]').click()
    wait.until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, '#cases tbody tr[data-device="phone-0007"] .note-text').text
            == "device handed in"
        )
    )
    case = next(c for c in _get(analyst + "/api/cases", TOKEN)["cases"] if c["device"] == "phone-0007")
    assert (case["state"], case["note"]) == ("acknowledged", "device handed in")
    assert [(a["from"], a["to"]) for a in case["audit"][:2]] == [
        ("acknowledged", "acknowledged"),
        ("open", "acknowledged"),
    ]

    shots = artefacts(tmp_path)
    en = shots / "dashboard-en.png"
    browser.save_screenshot(str(en))

    # Bypass attempts: their own panel, apart from the ban (the control app is neither a case nor a
    # non-compliant row), with its own screenshot.
    want_bypass = [["lab-tablets", "Lab", "Research", BYPASS_CLIENT, "cidr", "controls"]]
    assert [r[:6] for r in _bypass_rows(browser)] == want_bypass
    assert [r[8:] for r in _bypass_rows(browser)] == [["1", "1"]]  # attempts, hits
    panel = browser.find_element(By.ID, "bypass-panel")
    assert panel.find_element(By.TAG_NAME, "h2").text.startswith("Bypass attempts")
    assert "never makes a device non-compliant" in panel.text
    nc_apps = browser.execute_script(
        "return [...document.querySelectorAll('#noncompliant tbody tr')].map(tr => tr.dataset.app)"
    )
    assert "controls" not in nc_apps and "wechat" in nc_apps
    bypass_en = shots / "bypass-en.png"
    browser.execute_script("arguments[0].scrollIntoView()", panel)
    panel.screenshot(str(bypass_en))

    # The search box: a device name narrows the non-compliant table to that device's clients.
    browser.find_element(By.ID, "f-q").send_keys("phone-0007")
    browser.find_element(By.ID, "apply").click()
    wait.until(
        lambda d: (
            d.execute_script(
                "return [...new Set([...document.querySelectorAll('#noncompliant tbody tr')]"
                ".map(tr => tr.dataset.client))]"
            )
            == ["10.1.2.7"]
        )
    )
    assert "q=phone-0007" in browser.current_url  # the view's address: bookmarked or shared as it is

    # The switch: the same page in French, the token and the filters kept for the tab.
    browser.find_element(By.ID, "lang-switch").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "fr")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1")
    assert browser.find_element(By.ID, "f-q").get_attribute("value") == "phone-0007"
    clients = browser.execute_script(
        "return [...new Set([...document.querySelectorAll('#noncompliant tbody tr')].map(tr => tr.dataset.client))]"
    )
    assert clients == ["10.1.2.7"]
    browser.find_element(By.ID, "f-q").clear()
    browser.find_element(By.ID, "apply").click()
    wait.until(lambda d: "q=" not in d.current_url)
    wait.until(lambda d: len(_bypass_rows(d)) == 1)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Examen de la conformité"
    assert browser.find_element(By.ID, "lang-switch").text == "English"
    state = browser.find_element(By.CSS_SELECTOR, '#cases tbody tr[data-device="phone-0007"] td.state').text
    assert state == "pris en charge"
    assert "tous les événements sont gardés" in browser.find_element(By.ID, "retention").text
    fr = shots / "dashboard-fr.png"
    browser.save_screenshot(str(fr))
    panel = browser.find_element(By.ID, "bypass-panel")
    assert panel.find_element(By.TAG_NAME, "h2").text.startswith("Tentatives de contournement")
    assert "ne rend jamais un appareil non conforme" in panel.text
    # The identity source in French (the API keeps its own name)
    assert [r[:6] for r in _bypass_rows(browser)] == [[*want_bypass[0][:4], "plage d'adresses", "controls"]]
    bypass_fr = shots / "bypass-fr.png"
    browser.execute_script("arguments[0].scrollIntoView()", panel)
    panel.screenshot(str(bypass_fr))
    assert en.stat().st_size > 10_000 and fr.stat().st_size > 10_000
    assert bypass_en.stat().st_size > 2_000 and bypass_fr.stat().st_size > 2_000
    print(f"screenshots: {en} {fr} {bypass_en} {bypass_fr}")
