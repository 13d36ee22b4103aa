"""Cases through the real API (aiohttp test server on 127.0.0.1, real SQLite store): opened for every non-compliant
device, acknowledged and remediated by named analysts, reopened by a new hit with that hit as the reason, an
append-only audit, a spreadsheet-safe CSV, and the CSRF and auth refusals."""

from __future__ import annotations

import csv
import io
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst.cases import CaseBook
from enforcer.analyst.state import parse_tokens
from enforcer.analyst.web import build_app
from enforcer.config import ConfigError
from enforcer.events import HitEvent
from tests.analyst.analyst_helpers import expected_device, expected_report, generate, local_analyst, write_events

TOKENS = "# analysts\nalice:tok-alice-5e1f9a\nbob: tok-bob-77c2d0\ntok-plain-0a9b8c\n"
ALICE = {"Authorization": "Bearer tok-alice-5e1f9a"}
BOB = {"Authorization": "Bearer tok-bob-77c2d0"}
PLAIN = {"Authorization": "Bearer tok-plain-0a9b8c"}


@pytest.fixture(params=["slices", "index-pass"])
async def client(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_client: Any,
    tmp_path: Path,
    policy,
    inventory_file: Path,
) -> Any:
    # Both ways CaseBook.sync reads attempts: slices by seq (the table), one pass over the covering index.
    monkeypatch.setattr(CaseBook, "_scan_whole", lambda self, new: request.param == "index-pass")
    start = policy.apps["wechat"].effective - timedelta(days=3)
    events = generate(policy, 600, seed=51, start=start, span_days=6)
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")], inventory=str(inventory_file), token=TOKENS)
    assert analyst.ingester.poll_once() == len(events)
    cl = await aiohttp_client(build_app(analyst))
    cl.analyst, cl.events, cl.tmp = analyst, events, tmp_path
    yield cl
    analyst.close()


def _devices(policy, events: list[HitEvent]) -> set[str]:
    return {
        expected_device(client) or client
        for (client, _), row in expected_report(policy, events).items()
        if row["enforced_hits"] and client
    }


async def _cases(client: Any) -> dict[str, dict[str, Any]]:
    resp = await client.get("/api/cases", headers=PLAIN)
    assert resp.status == 200, await resp.text()
    return {c["device"]: c for c in (await resp.json())["cases"]}


async def _post(client: Any, device: str, body: Any, headers: dict[str, str], **kw: Any) -> Any:
    return await client.post(f"/api/cases/{device}", json=body, headers=headers, **kw)


async def test_case_lifecycle_with_named_analysts_and_reopen(client: Any, policy) -> None:
    cases = await _cases(client)
    assert set(cases) == _devices(policy, client.events) and cases
    assert all(c["state"] == "open" and c["audit"][0]["who"] == "system" for c in cases.values())
    device = "phone-0007"  # 10.1.2.7/32 in the inventory
    assert cases[device]["clients"] == ["10.1.2.7"] and cases[device]["owner"] == "Alice Martin"

    resp = await _post(client, device, {"state": "acknowledged", "note": "called the owner"}, ALICE)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["state"], body["updated_by"], body["note"]) == ("acknowledged", "alice", "called the owner")
    resp = await _post(client, device, {"state": "remediated", "note": "WeChat removed"}, BOB)
    assert resp.status == 200
    resp = await _post(client, device, {"state": "acknowledged"}, ALICE)
    assert resp.status == 409 and "remediated" in (await resp.json())["error"]

    # The device hits again after remediation: the next look reopens the case and names the hit.
    again = HitEvent.from_match(
        policy.match_name("long.weixin.qq.com"),
        action="dns-block",
        component="dns",
        version=policy.fingerprint,
        enforced=True,
        at=datetime.now(UTC) + timedelta(seconds=2),
        source_ip="10.1.2.7",
        dns_question_name="long.weixin.qq.com",
        dns_question_type="A",
    )
    write_events(client.tmp / "ev" / "again.jsonl", [again])
    assert client.analyst.ingester.poll_once() == 1
    case = (await _cases(client))[device]
    assert case["state"] == "open"
    hit = case["reopened_by"]
    assert hit["event_id"] == again.id and hit["client"] == "10.1.2.7" and hit["name"] == "long.weixin.qq.com"
    assert [(a["who"], a["from"], a["to"]) for a in reversed(case["audit"])] == [
        ("system", None, "open"),
        ("alice", "open", "acknowledged"),
        ("bob", "acknowledged", "remediated"),
        ("system", "remediated", "open"),
    ]
    assert case["audit"][0]["hit"]["event_id"] == again.id

    # Append-only: the audit cannot be rewritten, even with direct SQL.
    conn = sqlite3.connect(client.analyst.store.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE case_audit SET who = 'mallory'")
    conn.close()


async def test_progress_notes_keep_the_state_and_go_to_the_audit(client: Any) -> None:
    """A case followed for weeks gets notes between its transitions ("left a message", "device handed in"); a
    transition was the only way to write one, so a note moved the case on or was not kept."""
    device = "phone-0007"
    resp = await _post(client, device, {"note": "left a message for the owner"}, ALICE)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["state"], body["updated_by"], body["note"]) == ("open", "alice", "left a message for the owner")
    assert (await _post(client, device, {"state": "acknowledged", "note": "owner called back"}, BOB)).status == 200
    resp = await _post(client, device, {"note": "device handed in to IT", "state": None}, ALICE)
    assert resp.status == 200 and (await resp.json())["state"] == "acknowledged"
    case = (await _cases(client))[device]
    assert (case["state"], case["note"], case["updated_by"]) == ("acknowledged", "device handed in to IT", "alice")
    assert [(a["who"], a["from"], a["to"], a["note"]) for a in reversed(case["audit"])][1:] == [
        ("alice", "open", "open", "left a message for the owner"),
        ("bob", "open", "acknowledged", "owner called back"),
        ("alice", "acknowledged", "acknowledged", "device handed in to IT"),
    ]
    # A note is text; an unknown device is 404 as for a transition.
    for bad in ({"note": "   "}, {"note": ""}, {}, {"note": "x" * 2001}, {"note": 5}):
        resp = await _post(client, device, bad, ALICE)
        assert resp.status == 400, (bad, await resp.text())
    assert (await _post(client, "no-such-device", {"note": "hello"}, ALICE)).status == 404
    assert (await _post(client, device, {"note": "no token"}, {})).status == 401
    assert len((await _cases(client))[device]["audit"]) == 4  # none of the refusals wrote a row
    # A remediated case takes no note: its time is the remediation's, which decides whether a later attempt
    # reopens it (a note posted before a late attempt was read kept the case closed), and its note says what was
    # done.
    assert (await _post(client, device, {"state": "remediated", "note": "WeChat removed"}, BOB)).status == 200
    resp = await _post(client, device, {"note": "checked again"}, ALICE)
    assert resp.status == 409 and "remediated" in (await resp.json())["error"]
    case = (await _cases(client))[device]
    assert (case["state"], case["note"], case["updated_by"], len(case["audit"])) == (
        "remediated",
        "WeChat removed",
        "bob",
        5,
    )


async def test_refusals(client: Any) -> None:
    device = next(iter(await _cases(client)))
    assert (await _post(client, device, {"state": "acknowledged"}, {})).status == 401
    assert (await _post(client, device, {"state": "acknowledged"}, {"Authorization": "Bearer nope"})).status == 401
    assert (await _post(client, "no-such-device", {"state": "acknowledged"}, ALICE)).status == 404
    assert (await _post(client, device, {"state": "closed"}, ALICE)).status == 400
    assert (await _post(client, device, {"state": "remediated", "note": "x" * 2001}, ALICE)).status == 400
    assert (await _post(client, device, ["acknowledged"], ALICE)).status == 400
    # A remediated case says what was done; a misspelt note is not dropped silently.
    resp = await _post(client, device, {"state": "remediated", "note": "  "}, ALICE)
    assert resp.status == 400 and "note" in (await resp.json())["error"]
    resp = await _post(client, device, {"state": "acknowledged", "notes": "called the owner"}, ALICE)
    assert resp.status == 400 and "'notes'" in (await resp.json())["error"]
    # Bodies that raised out of the handler (500): a lone surrogate, nesting too deep to parse, an unknown charset.
    for data, ctype in (
        ('{"state": "acknowledged", "note": "\\ud800"}', "application/json"),
        ("[" * 20_000, "application/json"),
        ('{"state": "acknowledged"}', "application/json; charset=x-nope"),
    ):
        resp = await client.post(f"/api/cases/{device}", data=data, headers={**ALICE, "Content-Type": ctype})
        assert resp.status == 400, (data[:40], await resp.text())
    # CSRF: a form-encoded or text/plain body (what a cross-site form can send without a preflight) is refused, and
    # so is a request that says it comes from another origin.
    resp = await client.post(f"/api/cases/{device}", data="state=remediated", headers={**ALICE})
    assert resp.status == 403 and "application/json" in (await resp.json())["error"]
    resp = await _post(client, device, {"state": "remediated"}, {**ALICE, "Origin": "http://attacker.example"})
    assert resp.status == 403
    resp = await _post(client, device, {"state": "remediated"}, {**ALICE, "Sec-Fetch-Site": "cross-site"})
    assert resp.status == 403
    assert (await _cases(client))[device]["state"] == "open"  # nothing above changed it
    origin = str(client.make_url("")).rstrip("/")
    resp = await _post(client, device, {"state": "remediated", "note": "removed"}, {**PLAIN, "Origin": origin})
    assert resp.status == 200 and (await resp.json())["updated_by"] == "analyst"  # a plain token line


async def test_cases_csv_is_spreadsheet_safe(client: Any) -> None:
    device = "phone-0007"
    note = '=HYPERLINK("http://attacker.example","x")'
    assert (await _post(client, device, {"state": "remediated", "note": note}, BOB)).status == 200
    resp = await client.get("/api/cases.csv", headers=PLAIN)
    assert resp.status == 200 and resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    row = next(r for r in rows if r["device"] == device)
    assert row["note"] == "'" + note and row["state"] == "remediated" and row["updated_by"] == "bob"
    assert row["owner"] == "Alice Martin" and row["unit"] == "Finance"
    assert {r["device"] for r in rows} == set(await _cases(client))


def test_token_file_lines() -> None:
    assert parse_tokens(TOKENS) == {"tok-alice-5e1f9a": "alice", "tok-bob-77c2d0": "bob", "tok-plain-0a9b8c": "analyst"}
    with pytest.raises(ConfigError, match=r"^tokens:2: analyst name"):
        parse_tokens("a:b\nbad name:tok\n", source="tokens")
    with pytest.raises(ConfigError, match=r"^tokens:1: empty token"):
        parse_tokens("carol:\n", source="tokens")
    with pytest.raises(ConfigError, match=r"^tokens:2: this token is already given"):
        parse_tokens("a:same\nb:same\n", source="tokens")


async def test_first_view_prepared_and_served_while_events_arrive(client: Any, policy, monkeypatch) -> None:
    """A slow first view (forced here: any duration counts as slow) is prepared by the refresh and served as
    prepared while new events arrive, at most STALE_VIEWS refresh intervals old; filtered views stay live."""
    import time

    import enforcer.analyst.state as state_mod
    from enforcer.analyst.dashboard import dashboard
    from enforcer.analyst.store import Filters

    monkeypatch.setattr(state_mod, "SLOW_VIEW_SECONDS", 0.0)
    a = client.analyst
    await a.prepare_first_view(lambda: dashboard(a, Filters()))
    first = await (await client.get("/api/dashboard", headers=PLAIN)).json()
    extra = HitEvent.from_match(
        policy.match_name("long.weixin.qq.com"),
        action="dns-block",
        component="dns",
        version=policy.fingerprint,
        enforced=True,
        at=datetime.now(UTC),
        source_ip="10.1.2.7",
        dns_question_name="long.weixin.qq.com",
        dns_question_type="A",
    )
    write_events(client.tmp / "ev" / "extra.jsonl", [extra])
    assert a.ingester.poll_once() == 1
    served = await (await client.get("/api/dashboard", headers=PLAIN)).json()
    assert served["generated_at"] == first["generated_at"] and served["totals"] == first["totals"]
    live = await (await client.get("/api/dashboard", params={"app": "wechat"}, headers=PLAIN)).json()
    assert live["totals"]["hits"] > 0 and live["generated_at"] != first["generated_at"]
    mark, _, view = a.first_view
    # Older than the bound (the view and its prepared aggregations): computed again.
    a.first_view = (mark, time.monotonic() - 3600, view)
    a._prepared = {k: (at - 3600, took, v) for k, (at, took, v) in a._prepared.items()}
    fresh = await (await client.get("/api/dashboard", headers=PLAIN)).json()
    assert fresh["totals"]["hits"] == first["totals"]["hits"] + 1


async def test_no_such_route_or_method_is_json(client: Any) -> None:
    """The API answers in JSON throughout: a wrong method or path too (they were plain text, and a DELETE was told
    to send its body as JSON by the cross-site check)."""
    device = next(iter(await _cases(client)))
    for method, path, status in (
        ("GET", f"/api/cases/{device}", 405),
        ("DELETE", f"/api/cases/{device}", 405),
        ("GET", "/api/nothing", 404),
    ):
        resp = await client.request(method, path, headers=ALICE)
        assert resp.status == status and resp.content_type == "application/json", (method, path)
        assert path in (await resp.json())["error"]
        if status == 405:
            assert "POST" in resp.headers["Allow"]
    assert (await client.request("DELETE", f"/api/cases/{device}")).status == 401  # still asked who first
