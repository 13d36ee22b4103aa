"""Cases follow the device, not the address: through the real API (aiohttp test server on 127.0.0.1, real SQLite
store, a Kea memfile lease file read by the analyst's lease follower, events written by the real EventWriter).

One address, two DHCP holders one after the other: two cases, each reopened by its own device only (Alice's phone
reopens its case from the next address it gets). A store whose cases were keyed the old way (device name or address,
no ``identity`` column) keeps them: listed as ``legacy``, changed through the API, and reopened by an attempt that
still gets their key; a lease-identified device gets its own case beside the old address case.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst.cases import CaseBook
from enforcer.analyst.web import build_app
from enforcer.events import HitEvent
from enforcer.policy import Policy
from tests.analyst.analyst_helpers import dns_hit, local_analyst, write_events

INVENTORY = """device,owner,unit,cidr,mac,hostname,client_id
phone-alice,Alice Martin,Finance,,02:00:00:00:0a:01,,
"""
ALICE_MAC, OTHER_MAC = "02:00:00:00:0a:01", "02:00:00:00:0b:02"
SHARED, ALICE_NEXT, NO_LEASE = "10.9.0.50", "10.9.0.51", "10.20.0.5"
OTHER = "mac:" + OTHER_MAC
KEA_HEAD = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"
NOW = datetime.now(UTC).replace(microsecond=0)


def _hit(policy: Policy, client: str, at: datetime, name: str = "long.weixin.qq.com") -> HitEvent:
    return dns_hit(policy, name, client, at)


def _leases(path: Path) -> Path:
    """Kea memfile CSV (start = expire - valid_lifetime): 10.9.0.50 held by Alice's phone from 4 h ago to 2 h ago,
    then by another phone (a MAC the inventory does not know) until 2 h from now; Alice's phone holds 10.9.0.51 from
    1 h ago."""
    t = int(NOW.timestamp())
    path.write_text(
        KEA_HEAD
        + f"{SHARED},{ALICE_MAC},,7200,{t - 7200},1,0,0,alice-phone,0,\n"
        + f"{SHARED},{OTHER_MAC},,14400,{t + 7200},1,0,0,,0,\n"
        + f"{ALICE_NEXT},{ALICE_MAC},,10800,{t + 7200},1,0,0,alice-phone,0,\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(params=["slices", "index-pass"], autouse=True)
def read_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways CaseBook.sync reads attempts: slices by seq (the table), one pass over the covering index."""
    monkeypatch.setattr(CaseBook, "_scan_whole", lambda self, new: request.param == "index-pass")
    return str(request.param)


@pytest.fixture
def setup(tmp_path: Path, policy: Policy) -> dict[str, Any]:
    (tmp_path / "inv.csv").write_text(INVENTORY, encoding="utf-8")
    write_events(
        tmp_path / "ev" / "first.jsonl",
        [_hit(policy, SHARED, NOW - timedelta(hours=3)), _hit(policy, SHARED, NOW - timedelta(hours=1))],
    )
    return {
        "events": tmp_path / "ev",
        "inventory": tmp_path / "inv.csv",
        "leases": _leases(tmp_path / "kea-leases4.csv"),
        "tmp": tmp_path,
    }


async def _client(aiohttp_client: Any, setup: dict[str, Any]) -> Any:
    analyst = local_analyst(
        setup["tmp"], [str(setup["events"])], inventory=str(setup["inventory"]), leases=[str(setup["leases"])]
    )
    analyst.ingester.poll_once()
    cl = await aiohttp_client(build_app(analyst))
    cl.analyst = analyst
    return cl


async def _cases(client: Any) -> dict[str, dict[str, Any]]:
    resp = await client.get("/api/cases")
    assert resp.status == 200, await resp.text()
    return {c["device"]: c for c in (await resp.json())["cases"]}


async def _post(client: Any, device: str, state: str) -> dict[str, Any]:
    resp = await client.post(f"/api/cases/{device}", json={"state": state, "note": "checked"})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def _more(client: Any, setup: dict[str, Any], name: str, events: list[HitEvent]) -> None:
    write_events(setup["events"] / name, events)
    assert client.analyst.ingester.poll_once() == len(events)


async def test_two_holders_of_one_address_have_their_own_cases(
    aiohttp_client: Any, setup: dict[str, Any], policy: Policy
) -> None:
    client = await _client(aiohttp_client, setup)
    try:
        cases = await _cases(client)
        assert set(cases) == {"phone-alice", OTHER}
        alice, other = cases["phone-alice"], cases[OTHER]
        assert (alice["identity"], alice["owner"], alice["unit"], alice["clients"]) == (
            "lease",
            "Alice Martin",
            "Finance",
            [SHARED],
        )
        assert (other["identity"], other["owner"], other["clients"]) == ("lease", None, [SHARED])
        for device in cases:
            assert (await _post(client, device, "remediated"))["state"] == "remediated"

        # The address's current holder hits again: its own case reopens, Alice's (who held the address before)
        # does not.
        again = _hit(policy, SHARED, datetime.now(UTC) + timedelta(seconds=2))
        _more(client, setup, "second.jsonl", [again])
        cases = await _cases(client)
        assert cases["phone-alice"]["state"] == "remediated" and cases["phone-alice"]["reopened_by"] is None
        assert cases[OTHER]["state"] == "open"
        hit = cases[OTHER]["reopened_by"]
        assert (hit["event_id"], hit["client"], hit["identity"]) == (again.id, SHARED, "lease")
        assert [(a["who"], a["to"]) for a in cases["phone-alice"]["audit"]] == [("anonymous", "remediated"),
                                                                                 ("system", "open")]  # fmt: skip

        # Alice's phone hits from the address it holds now: her case reopens, with that address.
        hers = _hit(policy, ALICE_NEXT, datetime.now(UTC) + timedelta(seconds=3), "dns.weixin.qq.com")
        _more(client, setup, "third.jsonl", [hers])
        cases = await _cases(client)
        assert set(cases) == {"phone-alice", OTHER}  # no case for either address
        alice = cases["phone-alice"]
        assert alice["state"] == "open" and alice["reopened_by"]["event_id"] == hers.id
        assert alice["reopened_by"]["client"] == ALICE_NEXT and alice["clients"] == [SHARED, ALICE_NEXT]
        assert cases[OTHER]["reopened_by"]["event_id"] == again.id  # unchanged by Alice's hit

        # The CSV says how each device was identified.
        resp = await client.get("/api/cases.csv")
        rows = {r["device"]: r for r in csv.DictReader(io.StringIO(await resp.text()))}
        assert {d: r["identity"] for d, r in rows.items()} == {"phone-alice": "lease", OTHER: "lease"}
        assert rows["phone-alice"]["owner"] == "Alice Martin" and rows[OTHER]["owner"] == ""
    finally:
        client.analyst.close()


OLD_CASES_SCHEMA = """
CREATE TABLE cases (device TEXT PRIMARY KEY, state TEXT NOT NULL, clients TEXT NOT NULL, apps TEXT NOT NULL,
    opened_us INTEGER NOT NULL, updated_us INTEGER NOT NULL, updated_by TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
    reopened_by TEXT NOT NULL DEFAULT '');
CREATE TABLE case_audit (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, at_us INTEGER NOT NULL,
    who TEXT NOT NULL, from_state TEXT NOT NULL, to_state TEXT NOT NULL, note TEXT NOT NULL,
    hit TEXT NOT NULL DEFAULT '');
"""


async def test_cases_keyed_the_old_way_keep_working(aiohttp_client: Any, setup: dict[str, Any], policy: Policy) -> None:
    """A store written before cases followed identities: its cases (by address) are shown, can be changed, and
    one whose key an attempt still gets (an address with no lease) is reopened by it."""
    past = int((NOW - timedelta(days=2)).timestamp() * 1_000_000)
    conn = sqlite3.connect(setup["tmp"] / "a.sqlite")  # the store local_analyst opens
    conn.executescript(OLD_CASES_SCHEMA)
    conn.executemany(
        "INSERT INTO cases (device, state, clients, apps, opened_us, updated_us, updated_by) VALUES (?,?,?,?,?,?,?)",
        [(SHARED, "open", f'["{SHARED}"]', '["wechat"]', past, past, "system"),
         (NO_LEASE, "remediated", f'["{NO_LEASE}"]', '["wechat"]', past, past, "bob")],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO case_audit (device, at_us, who, from_state, to_state, note) VALUES (?,?,?,?,?,?)",
        [(SHARED, past, "system", "", "open", ""), (NO_LEASE, past, "bob", "open", "remediated", "fixed")],
    )
    conn.commit()
    conn.close()

    client = await _client(aiohttp_client, setup)
    try:
        cases = await _cases(client)
        # The old address case is kept and shown; the two devices behind that address get their own cases.
        assert set(cases) == {SHARED, NO_LEASE, "phone-alice", OTHER}
        assert cases[SHARED]["identity"] == cases[NO_LEASE]["identity"] == "legacy"
        assert cases[SHARED]["state"] == "open" and cases[SHARED]["clients"] == [SHARED]  # not merged into
        changed = await _post(client, SHARED, "acknowledged")
        assert (changed["state"], changed["identity"], changed["updated_by"]) == ("acknowledged", "legacy", "anonymous")
        assert [a["to"] for a in changed["audit"]] == ["acknowledged", "open"]

        # An address without a lease is still identified by itself: its old case reopens on a new attempt.
        again = _hit(policy, NO_LEASE, datetime.now(UTC) + timedelta(seconds=2))
        _more(client, setup, "second.jsonl", [again])
        cases = await _cases(client)
        old = cases[NO_LEASE]
        assert old["state"] == "open" and old["reopened_by"]["event_id"] == again.id
        assert old["reopened_by"]["identity"] == "address"
        assert [(a["who"], a["to"]) for a in reversed(old["audit"])] == [("bob", "remediated"), ("system", "open")]
        assert cases[SHARED]["state"] == "acknowledged"
    finally:
        client.analyst.close()
