"""Bypass attempts on the dashboard (``GET /api/dashboard``) through the real API (aiohttp test server on 127.0.0.1,
real SQLite store, events written by the real EventWriter): hits of the control app (blocklists/controls.yaml) are
the ``bypass`` rows, counted as attempts (bursts) and hits, and never in the totals, the non-compliant table or the
cases; the page carries the panel in both languages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from enforcer.analyst.web import build_app
from enforcer.policy import Policy
from tests.analyst.analyst_helpers import dns_hit, local_analyst, write_events

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


async def test_bypass_rows_apart_from_the_ban(aiohttp_client: Any, tmp_path: Path, policy: Policy) -> None:
    assert policy.apps["controls"].kind == "control"
    events = [
        # 10.5.0.1: one WeChat attempt, and two bypass bursts (3 hits within a minute, then one 10 minutes later).
        dns_hit(policy, "long.weixin.qq.com", "10.5.0.1", T0),
        *(dns_hit(policy, "dns.google", "10.5.0.1", T0 + timedelta(seconds=10 * i)) for i in range(3)),
        dns_hit(policy, "cloudflare-dns.com", "10.5.0.1", T0 + timedelta(minutes=10)),
        # 10.5.0.2: bypass attempts only: never a non-compliant device, never a case.
        dns_hit(policy, "dns.google", "10.5.0.2", T0 + timedelta(minutes=1)),
    ]
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    try:
        assert analyst.ingester.poll_once() == len(events)
        client = await aiohttp_client(build_app(analyst))
        doc = await (await client.get("/api/dashboard")).json()
        bypass = {(r["client"], r["app"]): (r["attempts"], r["hits"], r["identity"]) for r in doc["bypass"]}
        assert bypass == {("10.5.0.1", "controls"): (2, 4, "address"), ("10.5.0.2", "controls"): (1, 1, "address")}
        assert doc["bypass_total"] == 2
        assert [r["client"] for r in doc["bypass"]] == ["10.5.0.1", "10.5.0.2"]  # most attempts first
        # The totals and the non-compliant table are the ban's only.
        assert doc["totals"]["attempts"] == doc["totals"]["hits"] == 1
        assert doc["totals"]["clients"] == doc["totals"]["noncompliant_clients"] == 1
        assert [(r["client"], r["app"]) for r in doc["noncompliant"]] == [("10.5.0.1", "wechat")]
        cases = (await (await client.get("/api/cases")).json())["cases"]
        assert [(c["device"], c["apps"]) for c in cases] == [("10.5.0.1", ["wechat"])]
        # "Non-compliant now" and its gauge: the ban apps only (a controls series could only ever read 0)
        assert {w["app"] for w in doc["windows"]} == {"kaspersky", "wechat"}
        analyst.refresh_gauges()
        metrics = text_string_to_metric_families(await (await client.get("/metrics")).text())
        gauge = next(f for f in metrics if f.name == "enforcer_noncompliant_clients")
        assert {s.labels["app"] for s in gauge.samples} == {"kaspersky", "wechat"}
        # Filtered to the control app: its rows, still no non-compliance.
        doc = await (await client.get("/api/dashboard", params={"app": "controls"})).json()
        assert doc["bypass_total"] == 2 and doc["noncompliant_total"] == 0 and doc["totals"]["attempts"] == 0
        for lang, title in (("en", "Bypass attempts"), ("fr", "Tentatives de contournement")):
            page = await (await client.get("/", params={"lang": lang})).text()
            assert 'id="bypass-panel"' in page and title in page
    finally:
        analyst.close()
