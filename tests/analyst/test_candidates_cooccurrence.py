"""Co-occurrence in the Candidates panel (``GET /api/candidates``) through the real API (aiohttp test server on
127.0.0.1): hit events written by the real EventWriter, the query log written by the resolver's own ``QueryLog``
(enforcer/dns/querylog.py, every query kept). The unknown name that three clients ask for around their blocked WeChat
queries, and nobody else does, is proposed with the co-occurrence signal; a name everyone asks for and a name one
client asks for are not; without ``--query-log`` (or before the resolver wrote it) co-occurrence does not run and the
answer says so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enforcer.analyst.web import build_app
from enforcer.dns.querylog import QueryLog
from enforcer.events import HitEvent
from enforcer.policy import Policy
from tests.analyst.analyst_helpers import local_analyst, write_events

BANNED = "long.weixin.qq.com"
NEAR = "wx-media.unlisted-cdn.example"  # asked only by the clients of blocked WeChat queries, right around them
COMMON = "ordinary.example.org"  # asked by them too, but by many other clients as well
SOLO = "solo.unlisted.example"  # asked by one of them only
HITTERS = ["10.3.0.1", "10.3.0.2", "10.3.0.3"]
OTHERS = [f"10.4.0.{i}" for i in range(1, 13)]
QTYPE_A = 1


def _files(tmp_path: Path, policy: Policy) -> tuple[Path, Path]:
    """The blocked queries (events) and the allowed ones (query log), seconds apart: QueryLog stamps its records with
    the time they are recorded, so the events are stamped now too."""
    match = policy.match_name(BANNED)
    assert match is not None
    now = datetime.now(UTC)
    events = [
        HitEvent.from_match(match, action="dns-block", component="dns", version=policy.fingerprint, enforced=True,
                            at=now, source_ip=client, dns_question_name=BANNED, dns_question_type="A")
        for client in HITTERS
    ]  # fmt: skip
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    path = tmp_path / "queries.jsonl"
    qlog = QueryLog(path, sample=1.0, flush_interval=0.05)
    try:
        for client in HITTERS:
            qlog.record(client, NEAR, QTYPE_A)
            qlog.record(client, COMMON, QTYPE_A)
        qlog.record(HITTERS[0], SOLO, QTYPE_A)
        for client in OTHERS:
            qlog.record(client, COMMON, QTYPE_A)
        qlog.flush()
    finally:
        qlog.close()
    assert qlog.written == 2 * len(HITTERS) + 1 + len(OTHERS) and qlog.dropped == 0
    return tmp_path / "ev", path


async def _candidates(aiohttp_client: Any, tmp_path: Path, events: Path, **settings: Any) -> dict[str, Any]:
    analyst = local_analyst(tmp_path, [str(events)], db=str(tmp_path / f"a{len(settings)}.sqlite"), **settings)
    try:
        client = await aiohttp_client(build_app(analyst))
        resp = await client.get("/api/candidates")
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        page = await (await client.get("/", params={"lang": "fr"})).text()
        assert 'id="cand-cooc"' in page
        return data
    finally:
        analyst.close()


async def test_cooccurring_name_is_proposed_with_the_query_log(
    aiohttp_client: Any, tmp_path: Path, policy: Policy
) -> None:
    events, qlog = _files(tmp_path, policy)
    data = await _candidates(aiohttp_client, tmp_path, events, query_logs=[str(qlog)])
    assert (data["co_occurrence"], data["query_logs"]) == (True, 1)
    by_name = {c["name"]: c for c in data["candidates"]}
    assert NEAR in by_name and COMMON not in by_name and SOLO not in by_name, by_name
    near = by_name[NEAR]
    assert near["signals"] == ["co-occurrence"] and near["app"] == "wechat" and near["kind"] == "host"
    assert near["clients"] == len(HITTERS) and near["count"] == len(HITTERS)
    assert near["confidence"] == "medium"  # three clients, no other client asked for it
    assert near["rule"]["host"] == NEAR and BANNED in near["detail"][0]


async def test_without_the_query_log_cooccurrence_does_not_run(
    aiohttp_client: Any, tmp_path: Path, policy: Policy
) -> None:
    events, _ = _files(tmp_path, policy)
    for settings in ({}, {"query_logs": [str(tmp_path / "not-written-yet.jsonl")]}):
        data = await _candidates(aiohttp_client, tmp_path, events, **settings)
        assert (data["co_occurrence"], data["query_logs"]) == (False, 0)
        assert NEAR not in {c["name"] for c in data["candidates"]}
        assert "--query-log" in data["note"]
