"""The dashboard's Candidates view: ``GET /api/candidates`` on a real analyst (start_analyst, HTTP on 127.0.0.1) over
event files written by the one event writer (enforcer/events.py): a discovery event (an unlisted name whose answer
led into a banned CIDR) and a proxy SNI under a Kaspersky brand with an unlisted ccTLD become candidates with their
evidence; a listed name and a must-pass name never do; the page carries the panel; the API needs the token."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from enforcer.analyst.web import AnalystSettings, start_analyst
from enforcer.events import EventWriter, HitEvent
from tests.conftest import BLOCKLISTS

TOKEN = "candidates-test-token-0123456789"


def hit(i: int, **fields: object) -> HitEvent:
    base: dict[str, object] = {
        "timestamp": datetime.now(UTC) - timedelta(hours=1, seconds=-i),
        "action": "dns-response-block",
        "component": "dns",
        "rule_id": "wechat:cidr:101.32.104.4/32",
        "app": "wechat",
        "category": "messaging",
        "reference": "blocklists/wechat.yaml:300",
        "version": "test",
        "source_ip": f"10.1.0.{i % 3 + 1}",
        "source_port": 5000 + i,
    }
    return HitEvent(**{**base, **fields})  # type: ignore[arg-type]


def write(path: Path, events: list[HitEvent]) -> None:
    writer = EventWriter(path)
    for e in events:
        assert writer.emit(e)
    writer.close()


async def test_candidates_api_and_panel(tmp_path: Path) -> None:
    folder = tmp_path / "events"
    folder.mkdir()
    discovered = [
        hit(i, dataset="enforcer.discovery", dns_question_name="new-cdn.wechat-media.example",
            dns_question_type="A", related_hosts=["new-cdn.wechat-media.example"], related_ip=["101.32.104.4"])
        for i in range(4)
    ]  # fmt: skip
    listed = [hit(9, dataset="enforcer.discovery", dns_question_name="weixin.qq.com", related_ip=["101.32.104.4"])]
    safety = [hit(10, dataset="enforcer.discovery", dns_question_name="qq.com", related_ip=["101.32.104.4"])]
    plain = [hit(11, action="dns-block", rule_id="wechat:domain:weixin.qq.com", dns_question_name="weixin.qq.com")]
    write(folder / "dns.jsonl", discovered + listed + safety + plain)
    sni = hit(12, component="proxy", action="proxy-tls-monitor", app="kaspersky", rule_id="kaspersky:cidr:x",
              tls_server_name="update.kaspersky.com.ng", destination_ip="203.0.113.9")  # fmt: skip
    write(folder / "proxy.jsonl", [sni])

    runner = await start_analyst(AnalystSettings(
        listen="127.0.0.1:0", events=[str(folder)], db=str(tmp_path / "a.sqlite"), blocklist=[str(BLOCKLISTS)],
        poll_interval=0.05, token=TOKEN,
    ))  # fmt: skip
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(runner.url + "/api/candidates") as resp:
                assert resp.status == 401
            async with session.get(runner.url + "/api/candidates", headers=auth) as resp:
                assert resp.status == 200
                data = await resp.json()
            async with session.get(runner.url + "/", headers=auth) as resp:
                page = await resp.text()
        by_name = {c["name"]: c for c in data["candidates"]}
        assert set(by_name) == {"new-cdn.wechat-media.example", "kaspersky.com.ng"}, data
        cdn = by_name["new-cdn.wechat-media.example"]
        assert cdn["rule"]["host"] == "new-cdn.wechat-media.example" and cdn["app"] == "wechat"
        assert cdn["confidence"] == "high" and cdn["count"] == 4 and cdn["clients"] == 3
        assert cdn["signals"] == ["resolved-into-policy"] and "101.32.104.4" in cdn["rule"]["source"]
        kng = by_name["kaspersky.com.ng"]
        assert kng["kind"] == "domain" and kng["app"] == "kaspersky" and kng["signals"] == ["app-domain"]
        assert "SNI update.kaspersky.com.ng" in kng["detail"]
        assert "co-occurrence" in data["note"]
        assert 'id="candidates-panel"' in page and "Candidates (proposed rules)" in page
        # The analyst ingests the discovery events as ordinary hits (one schema, one writer): all 8 stored.
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                async with session.get(runner.url + "/healthz") as resp:
                    if (await resp.json())["ingested"] == 8:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the analyst did not ingest the 8 events")
    finally:
        await runner.stop()
