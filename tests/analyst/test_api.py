"""The analyst HTTP API through aiohttp's test client: auth, headers, filters, paging, report JSON/CSV, metrics."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from enforcer.analyst.web import SECURITY_HEADERS, Analyst, AnalystSettings, build_app
from enforcer.events import HitEvent
from tests.analyst.analyst_helpers import HOSTILE, expected_noncompliant, expected_report, generate, ts, write_events
from tests.conftest import BLOCKLISTS

TOKEN = "t0ken-with-enough-entropy-4b1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def events(policy) -> list[HitEvent]:
    # Two weeks up to now, so that the 1h/24h/7d windows have something in them, plus a month in 2023 around the
    # effective date, so that monitor-mode events exist too.
    recent = generate(policy, 1200, seed=21, start=NOW - timedelta(days=14), span_days=14)
    old = generate(policy, 600, seed=22)
    return recent + old


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, policy, events: list[HitEvent], inventory_file: Path) -> Any:
    write_events(tmp_path / "dns.jsonl", [e for e in events if e.component == "dns"])
    write_events(tmp_path / "proxy.jsonl", [e for e in events if e.component == "proxy"])
    settings = AnalystSettings(
        listen="127.0.0.1:0",
        events=[str(tmp_path / "dns.jsonl"), str(tmp_path / "proxy.jsonl")],
        inventory=str(inventory_file),
        token=TOKEN,
        db=str(tmp_path / "analyst.sqlite"),
        blocklist=[str(BLOCKLISTS)],
        parser_process=False,
    )
    analyst = Analyst(settings)
    assert analyst.ingester.poll_once() == len(events)
    analyst.refresh_gauges(now=NOW)
    cl = await aiohttp_client(build_app(analyst))
    cl.analyst = analyst
    yield cl
    analyst.close()


async def _all_pages(client: Any, params: dict[str, str], limit: int = 97) -> AsyncIterator[list[dict]]:
    cursor = None
    while True:
        q = {**params, "limit": str(limit)}
        if cursor:
            q["cursor"] = cursor
        resp = await client.get("/api/events", params=q, headers=AUTH)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert set(body) == {"events", "next"}
        assert len(body["events"]) <= limit
        yield body["events"]
        cursor = body["next"]
        if cursor is None:
            return


async def _collect(client: Any, params: dict[str, str], limit: int = 97) -> list[dict]:
    out: list[dict] = []
    async for page in _all_pages(client, params, limit):
        out += page
    return out


async def test_auth(client: Any) -> None:
    for path in ("/api/events", "/api/report", "/api/report.csv", "/api/dashboard"):
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await client.get(path, headers={"Authorization": f"Basic {TOKEN}"})).status == 401
        assert (await client.get(path, headers=AUTH)).status == 200
    page = await client.get("/")
    assert page.status == 401
    html = await page.text()
    assert 'id="login-form"' in html and "weixin" not in html  # the shell only: no data before login
    assert (await client.get("/", headers=AUTH)).status == 200
    # No auth for health, metrics and the page's own assets.
    for path in ("/healthz", "/metrics", "/static/app.js", "/static/app.css"):
        assert (await client.get(path)).status == 200, path


async def test_security_headers_on_every_response(client: Any) -> None:
    for path, headers in (
        ("/", {}),
        ("/", AUTH),
        ("/api/events", AUTH),
        ("/api/events", {}),
        ("/healthz", {}),
        ("/static/app.js", {}),
        ("/nope", {}),
        ("/api/events?limit=0", AUTH),
    ):
        resp = await client.get(path, headers=headers)
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, (path, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert "unsafe-inline" not in script_src and "frame-ancestors 'none'" in csp


async def test_paging_returns_every_event_once_newest_first(client: Any, events: list[HitEvent]) -> None:
    got = await _collect(client, {})
    ids = [e["event"]["id"] for e in got]
    assert len(ids) == len(set(ids)) == len(events)
    assert set(ids) == {e.id for e in events}
    stamps = [e["@timestamp"] for e in got]
    assert stamps == sorted(stamps, reverse=True)
    assert got[0]["rule"]["ruleset"] in ("wechat", "kaspersky")  # ECS objects as written


@pytest.mark.parametrize(
    "params",
    [
        {"app": "wechat"},
        {"client": "2001:db8:1:2::10"},
        {"category": "update"},
        {"component": "proxy"},
        {"app": "kaspersky", "component": "dns", "since": "2023-10-30"},
        {"since": ts(NOW - timedelta(days=7))},
        {"until": "2023-10-31T12:00:00Z", "client": "10.1.2.7,10.20.0.5"},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
async def test_filters(client: Any, events: list[HitEvent], params: dict[str, str]) -> None:
    def keep(e: HitEvent) -> bool:
        if "app" in params and e.app != params["app"]:
            return False
        if "client" in params and e.source_ip not in params["client"].split(","):
            return False
        if "category" in params and e.category != params["category"]:
            return False
        if "component" in params and e.component != params["component"]:
            return False
        if params.get("since") == ts(NOW - timedelta(days=7)) and e.timestamp < NOW - timedelta(days=7):
            return False
        if params.get("since") == "2023-10-30" and e.timestamp < datetime(2023, 10, 30, tzinfo=UTC):
            return False
        return not ("until" in params and e.timestamp >= datetime(2023, 10, 31, 12, tzinfo=UTC))

    want = {e.id for e in events if keep(e)}
    got = await _collect(client, params, limit=250)
    assert want, "the filter selects nothing: the test data is too small"
    assert len(got) == len(want) and {e["event"]["id"] for e in got} == want


async def test_bad_parameters_are_400(client: Any) -> None:
    bad = ("limit=0", "limit=5000", "limit=x", "since=someday", "cursor=abc", "until=2023-13-45")
    for q in (*bad, "since=2024-02-30T00:00:00.000000Z", "until=2024-13-45T99:99:99.000000Z"):
        resp = await client.get(f"/api/events?{q}", headers=AUTH)
        assert resp.status == 400, q
        assert "error" in await resp.json()


async def test_an_unknown_app_is_400_naming_the_known_ones(client: Any) -> None:
    """A typo in an app filter is refused as ``enforcer report --app`` refuses it, not answered with an empty,
    clean-looking report; an app the policy or the stored events know is fine."""
    for path in ("/api/report", "/api/report.csv", "/api/dashboard", "/api/events"):
        resp = await client.get(path, params={"app": "wechta"}, headers=AUTH)
        assert resp.status == 400, path
        error = (await resp.json())["error"]
        assert "unknown app 'wechta'" in error and "kaspersky" in error and "wechat" in error, error
        resp = await client.get(path, params={"app": "wechat"}, headers=AUTH)
        assert resp.status == 200, path


async def test_report_json_and_csv(client: Any, policy, events: list[HitEvent]) -> None:
    resp = await client.get("/api/report", headers=AUTH)
    doc = await resp.json()
    assert set(doc) == {"generated_at", "since", "until", "attempt_window_seconds", "apps", "clients", "bypass"}
    assert {(r["client"], r["app"]): r for r in doc["clients"]} == expected_report(policy, events)

    since = datetime(2023, 10, 30, tzinfo=UTC)
    resp = await client.get("/api/report.csv", params={"since": "2023-10-30", "app": "wechat"}, headers=AUTH)
    assert resp.status == 200 and resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    want = expected_report(policy, events, since=since, apps={"wechat"})
    assert {(r["client"], r["app"]): r for r in rows} == {
        k: {kk: "" if vv is None else str(vv) for kk, vv in v.items() if kk != "device_id"} | {"section": "clients"}
        for k, v in want.items()
    }


async def test_dashboard_data(client: Any, policy, events: list[HitEvent]) -> None:
    resp = await client.get("/api/dashboard", params={"app": "kaspersky"}, headers=AUTH)
    data = await resp.json()
    want = {k: v for k, v in expected_report(policy, events, apps={"kaspersky"}).items() if v["enforced_attempts"]}
    assert {(r["client"], r["app"]): r["enforced_attempts"] for r in data["noncompliant"]} == {
        k: v["enforced_attempts"] for k, v in want.items()
    }
    phone = next(r for r in data["noncompliant"] if r["client"] == "10.1.2.7")
    assert (phone["device"], phone["owner"], phone["unit"]) == ("phone-0007", "Alice Martin", "Finance")
    series = data["series"]
    assert list(series["apps"]) == ["kaspersky"]
    assert sum(series["apps"]["kaspersky"]) == sum(1 for e in events if e.app == "kaspersky")
    # Three years of data: per-day buckets (dashboard.BUCKETS: up to 200 points, then per day).
    assert series["bucket_seconds"] == 86400
    assert len(series["buckets"]) == len(series["apps"]["kaspersky"])
    # The chart and the top rules count hits (the cards and tables count attempts, bursts).
    assert sum(r["hits"] for r in data["top_rules"]) <= sum(series["apps"]["kaspersky"])
    assert all(r["hits"] >= r["enforced_hits"] >= 0 for r in data["top_rules"]) and data["top_rules"]
    assert data["ingest"]["stored"] == len(events)
    assert data["facets"]["app"] == ["kaspersky", "wechat"]


async def test_hostile_name_is_returned_as_data(client: Any) -> None:
    got = await _collect(client, {}, limit=1000)
    names = [e.get("dns", {}).get("question", {}).get("name") for e in got]
    assert HOSTILE in names  # stored and returned verbatim as a JSON string; the page renders it as text


async def test_metrics(client: Any, policy, events: list[HitEvent]) -> None:
    resp = await client.get("/metrics")
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    nc = {(s.labels["app"], s.labels["window"]): s.value for s in families["enforcer_noncompliant_clients"].samples}
    for window, delta in (("1h", timedelta(hours=1)), ("24h", timedelta(days=1)), ("7d", timedelta(days=7))):
        want = expected_noncompliant(policy, events, NOW, delta)
        for app in ("wechat", "kaspersky"):
            assert nc[(app, window)] == want.get(app, 0), (app, window)
    assert nc[("wechat", "7d")] > 0
    last = {s.labels["app"]: s.value for s in families["enforcer_last_block_timestamp_seconds"].samples}
    for app in ("wechat", "kaspersky"):
        newest = max(e.timestamp for e in events if e.app == app and e.enforced)
        assert last[app] == pytest.approx(newest.timestamp(), abs=1e-6)
    ingested = families["enforcer_analyst_events_ingested"].samples
    assert ingested[0].value == len(events)


async def test_new_events_show_up_in_memoised_views(
    client: Any, policy, events: list[HitEvent], tmp_path: Path
) -> None:
    first = await (await client.get("/api/report", headers=AUTH)).json()
    again = await (await client.get("/api/report", headers=AUTH)).json()
    assert again["clients"] == first["clients"]  # served from the memo: same figures
    more = generate(policy, 150, seed=23, start=NOW - timedelta(days=1), span_days=1)
    write_events(tmp_path / "dns.jsonl", more)  # appends to the file the analyst follows
    analyst = client.analyst
    assert await asyncio.get_running_loop().run_in_executor(None, analyst.ingester.poll_once) == 150
    after = await (await client.get("/api/report", headers=AUTH)).json()
    assert {(r["client"], r["app"]): r for r in after["clients"]} == expected_report(policy, events + more)
    dash = await (await client.get("/api/dashboard", headers=AUTH)).json()
    assert dash["totals"]["hits"] == len(events) + 150


async def test_start_analyst_in_a_running_loop(tmp_path: Path, policy, events: list[HitEvent]) -> None:
    """The entry point for embedding (``start_analyst``): listens on a free port, ingests, stops cleanly."""
    import aiohttp

    from enforcer.analyst.web import start_analyst

    write_events(tmp_path / "ev" / "a.jsonl", events[:200])
    runner = await start_analyst(
        AnalystSettings(
            listen="127.0.0.1:0",
            events=[str(tmp_path / "ev")],
            db=str(tmp_path / "a.sqlite"),
            blocklist=[str(BLOCKLISTS)],
            poll_interval=0.05,
        )
    )
    try:
        assert runner.port > 0 and runner.url == f"http://127.0.0.1:{runner.port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                async with session.get(runner.url + "/healthz") as resp:
                    assert resp.status == 200
                    if (await resp.json())["ingested"] == 200:
                        break
                await asyncio.sleep(0.05)
            async with session.get(runner.url + "/api/report") as resp:  # no token configured: open on loopback
                doc = await resp.json()
        assert sum(a["attempts"] for a in doc["apps"]) == 200
    finally:
        await runner.stop()
    assert runner.analyst.ingester._thread is None  # the ingest thread was joined
