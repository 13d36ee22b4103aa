"""Identity in order of trust, attempts as bursts, bypass attempts apart, unknown ``--app``: through ``enforcer report``
on event files written by the real EventWriter, and the analyst's ``/api/report`` and ``/api/dashboard`` on the same
files (the card totals agree with the tables)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst.identity import Identifier, bursts
from enforcer.analyst.inventory import Inventory
from enforcer.analyst.leases import Lease, LeaseBook
from enforcer.analyst.web import build_app
from enforcer.events import HitEvent
from enforcer.policy import Policy
from tests.analyst.analyst_helpers import dns_hit, local_analyst, write_events
from tests.conftest import BLOCKLISTS, run_cli

T0 = datetime(2023, 11, 6, 9, 0, tzinfo=UTC)  # after the ban's effective date
US = 1_000_000

INVENTORY = """device,owner,unit,cidr,mac,hostname,client_id
phone-alice,Alice Martin,Finance,,02:00:00:00:0a:01,,
laptop-bob,Bob Roy,Ops,,,,bob-laptop
tablet-lab,Lab,Research,10.9.0.0/24,,,
printer,Facilities,HQ,,,printer-3,
"""


def _lease_file(path: Path) -> Path:
    """Kea memfile CSV: 10.9.0.50 held by Alice's phone 09:00-10:00, released, then by an unknown device from 10:00;
    10.9.0.60 held by the printer (known by its hostname only)."""
    t = int(T0.timestamp())
    path.write_text(
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"
        f"10.9.0.50,02:00:00:00:0a:01,01:02:00:00:00:0a:01,3600,{t + 3600},1,0,0,alice-phone,0,\n"
        f"10.9.0.50,02:00:00:00:0a:01,01:02:00:00:00:0a:01,0,{t},1,0,0,alice-phone,0,\n"
        f"10.9.0.50,02:00:00:00:0b:02,01:02:00:00:00:0b:02,3600,{t + 7200},1,0,0,,0,\n"
        f"10.9.0.60,02:00:00:00:0c:03,,3600,{t + 3600},1,0,0,printer-3.corp.example,0,\n",
        encoding="utf-8",
    )
    return path


def _events(policy: Policy) -> list[HitEvent]:
    w = "long.weixin.qq.com"
    return [
        # Alice's phone through its lease: a burst of 3 hits (10 s apart), then one 5 minutes later: 2 attempts.
        *(dns_hit(policy, w, "10.9.0.50", T0 + timedelta(minutes=10, seconds=10 * i)) for i in range(3)),
        dns_hit(policy, w, "10.9.0.50", T0 + timedelta(minutes=15)),
        # The same address after the release: another device (a MAC the inventory does not know).
        dns_hit(policy, w, "10.9.0.50", T0 + timedelta(hours=1, minutes=5)),
        # A ClientID beats the lease: Bob's laptop on the address the lease gives Alice's phone.
        dns_hit(policy, w, "10.9.0.50", T0 + timedelta(minutes=20), device_id="bob-laptop"),
        # The printer: its lease names it by hostname (FQDN in the lease, bare name in the inventory).
        dns_hit(policy, "kaspersky.com", "10.9.0.60", T0 + timedelta(minutes=30)),
        # A proxy login with no lease: the user.
        dns_hit(policy, w, "10.7.7.7", T0 + timedelta(minutes=40), user_name="carol"),
        # No lease, no login, an inventory range: cidr; nothing at all: the address.
        dns_hit(policy, w, "10.9.0.99", T0 + timedelta(minutes=45)),
        dns_hit(policy, w, "192.0.2.77", T0 + timedelta(minutes=46)),
        # A bypass attempt (a control app): its own section, never non-compliance.
        dns_hit(policy, "dns.google", "10.9.0.99", T0 + timedelta(minutes=47)),
    ]


@pytest.fixture
def files(tmp_path: Path, policy: Policy) -> dict[str, Path]:
    write_events(tmp_path / "ev" / "events.jsonl", _events(policy))
    (tmp_path / "inv.csv").write_text(INVENTORY, encoding="utf-8")
    return {"events": tmp_path / "ev", "inventory": tmp_path / "inv.csv", "leases": _lease_file(tmp_path / "l.csv")}


def _report(files: dict[str, Path], *extra: str) -> dict[str, Any]:
    out = run_cli(
        "report", "--events", str(files["events"]), "--inventory", str(files["inventory"]),
        "--leases", str(files["leases"]), "--blocklist", str(BLOCKLISTS), "--format", "json", *extra,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _by_device(rows: list[dict[str, Any]]) -> dict[tuple[Any, str], dict[str, Any]]:
    return {(r["device"] or r["mac"] or r["user"] or r["client"], r["app"]): r for r in rows}


def test_each_event_gets_its_best_identity(files: dict[str, Path]) -> None:
    doc = _report(files)
    rows = _by_device(doc["clients"])
    want = {
        ("phone-alice", "wechat"): ("lease", "Alice Martin", "Finance", "02:00:00:00:0a:01", 4, 2),
        ("02:00:00:00:0b:02", "wechat"): ("lease", None, None, "02:00:00:00:0b:02", 1, 1),
        ("laptop-bob", "wechat"): ("client-id", "Bob Roy", "Ops", None, 1, 1),
        ("printer", "kaspersky"): ("lease", "Facilities", "HQ", "02:00:00:00:0c:03", 1, 1),
        ("carol", "wechat"): ("proxy-user", None, None, None, 1, 1),
        ("tablet-lab", "wechat"): ("cidr", "Lab", "Research", None, 1, 1),
        ("192.0.2.77", "wechat"): ("address", None, None, None, 1, 1),
    }
    got = {k: (r["identity"], r["owner"], r["unit"], r["mac"], r["hits"], r["attempts"]) for k, r in rows.items()}
    assert got == want
    assert rows[("laptop-bob", "wechat")]["device_id"] == "bob-laptop"
    assert rows[("carol", "wechat")]["user"] == "carol" and rows[("carol", "wechat")]["client"] == "10.7.7.7"
    # All ban hits after the effective date: enforced; bursts count alike.
    assert all(r["enforced_hits"] == r["hits"] and r["enforced_attempts"] == r["attempts"] for r in doc["clients"])
    # The bypass attempt is apart, with the same row shape, and not in the apps of non-compliance.
    assert [(r["app"], r["identity"], r["device"], r["hits"]) for r in doc["bypass"]] == [
        ("controls", "cidr", "tablet-lab", 1)
    ]
    assert set(doc["bypass"][0]) == set(doc["clients"][0])
    assert {a["app"] for a in doc["apps"]} == {"wechat", "kaspersky"}
    assert {a["app"]: (a["hits"], a["attempts"]) for a in doc["apps"]} == {"wechat": (9, 7), "kaspersky": (1, 1)}


def test_attempt_window(files: dict[str, Path]) -> None:
    alice = ("phone-alice", "wechat")
    for window, attempts in (("0", 4), ("20", 3), ("60", 2), ("301", 1)):
        doc = _report(files, "--attempt-window", window)
        assert doc["attempt_window_seconds"] == float(window)
        assert _by_device(doc["clients"])[alice]["attempts"] == attempts, window
        assert _by_device(doc["clients"])[alice]["hits"] == 4
    out = run_cli("report", "--events", str(files["events"]), "--attempt-window", "-1")
    assert out.returncode == 2 and "--attempt-window" in out.stderr


def test_table_and_csv_show_owner_unit_and_bypass(files: dict[str, Path]) -> None:
    base = ["report", "--events", str(files["events"]), "--inventory", str(files["inventory"]),
            "--leases", str(files["leases"]), "--blocklist", str(BLOCKLISTS)]  # fmt: skip
    table = run_cli(*base, "--format", "table")
    assert table.returncode == 0, table.stderr
    text = table.stdout
    head, _, bypass = text.partition("Bypass attempts")
    assert "Alice Martin" in head and "Finance" in head and "OWNER" in head and "UNIT" in head
    assert "controls" not in head.split("CLIENT", 1)[1] and "controls" in bypass and "tablet-lab" in bypass
    csv_out = run_cli(*base, "--format", "csv")
    lines = csv_out.stdout.splitlines()
    assert lines[0].endswith(",section") and sum(1 for x in lines[1:] if x.endswith(",bypass")) == 1
    assert any("Alice Martin,Finance,lease,02:00:00:00:0a:01" in x for x in lines)


def test_unknown_app_exits_1_naming_the_known_ones(files: dict[str, Path]) -> None:
    out = run_cli("report", "--events", str(files["events"]), "--blocklist", str(BLOCKLISTS), "--app", "wechta")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert "'wechta'" in lines[0] and "controls, kaspersky, wechat" in lines[0]
    # An app that the events name but the policy no longer does is known.
    doc = _report(files, "--app", "kaspersky")
    assert [r["app"] for r in doc["clients"]] == ["kaspersky"]


async def test_api_and_dashboard_agree_with_the_report(
    aiohttp_client: Any, files: dict[str, Path], tmp_path: Path
) -> None:
    report = _report(files)
    analyst = local_analyst(
        tmp_path, [str(files["events"])], inventory=str(files["inventory"]), leases=[str(files["leases"])]
    )
    try:
        assert analyst.ingester.poll_once() == len(_events_count(files))
        client = await aiohttp_client(build_app(analyst))
        api = await (await client.get("/api/report")).json()
        dash = await (await client.get("/api/dashboard")).json()
    finally:
        analyst.close()
    strip = lambda doc: {k: v for k, v in doc.items() if k != "generated_at"}  # noqa: E731
    assert strip(api) == strip(report)
    # The dashboard's table and cards: one row per device and app with enforced attempts; the card counts the
    # distinct devices of those rows, and the totals are the sums of the report's rows.
    nc = dash["noncompliant"]
    assert {(r["device"] or r["mac"] or r["user"] or r["client"], r["app"]) for r in nc} == set(
        _by_device(report["clients"])
    )
    assert all(r["identity"] for r in nc)
    totals = dash["totals"]
    assert totals["noncompliant_rows"] == dash["noncompliant_total"] == len(nc) == 7
    assert totals["noncompliant_clients"] == 7  # seven devices, one app each
    assert totals["hits"] == sum(r["hits"] for r in report["clients"]) == 10
    assert totals["attempts"] == sum(r["attempts"] for r in report["clients"]) == 8


def _events_count(files: dict[str, Path]) -> list[str]:
    return (files["events"] / "events.jsonl").read_text(encoding="utf-8").splitlines()


async def test_card_counts_devices_not_rows(aiohttp_client: Any, tmp_path: Path, policy: Policy) -> None:
    """One device non-compliant for two apps: two rows in the table, one device on the card (and both say so)."""
    events = [
        dns_hit(policy, "long.weixin.qq.com", "10.9.0.5", T0),
        dns_hit(policy, "kaspersky.com", "10.9.0.5", T0 + timedelta(minutes=1)),
    ]
    write_events(tmp_path / "ev" / "e.jsonl", events)
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    try:
        assert analyst.ingester.poll_once() == 2
        client = await aiohttp_client(build_app(analyst))
        dash = await (await client.get("/api/dashboard")).json()
    finally:
        analyst.close()
    assert len(dash["noncompliant"]) == dash["totals"]["noncompliant_rows"] == 2
    assert dash["totals"]["noncompliant_clients"] == dash["totals"]["clients"] == 1


def test_identifier_order_and_bursts() -> None:
    book = LeaseBook()
    book.add(Lease("10.0.0.1", 100 * US, 200 * US, mac="02:00:00:00:00:01"))
    inv = Inventory.load(None)
    ident = Identifier(inv, book)
    assert ident.identify("10.0.0.1", 150 * US, "dev-1", "u").source == "client-id"
    assert ident.identify("10.0.0.1", 150 * US, "", "u").source == "lease"
    assert ident.identify("::ffff:10.0.0.1", 150 * US).key == "mac:02:00:00:00:00:01"  # the mapped form
    assert ident.identify("10.0.0.1", 200 * US, "", "u").source == "proxy-user"  # the lease ended
    assert ident.identify("10.0.0.1", 99 * US).source == "address"
    # Bursts anchored at the first hit: 0, 30, 59.9 | 60 | 200 (window 60 s); enforced only at 30 and 200.
    times = [0, 30 * US, 59_900_000, 60 * US, 200 * US]
    enforced = {30 * US, 200 * US}
    assert bursts([t * 2 + (t in enforced) for t in times], 60 * US) == (3, 2)
    assert bursts([t * 2 for t in times], 0) == (5, 0)


async def test_analyst_follows_the_lease_file_and_counts_bad_lines(
    aiohttp_client: Any, tmp_path: Path, policy: Policy
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    t = int(T0.timestamp())
    head = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"
    leases = tmp_path / "kea-leases4.csv"
    leases.write_text(head + "10.9.0.50,not-a-mac,,3600,1,1,0,0,,0,\n", encoding="utf-8")
    (tmp_path / "inv.csv").write_text(INVENTORY, encoding="utf-8")
    write_events(tmp_path / "ev" / "e.jsonl", [dns_hit(policy, "long.weixin.qq.com", "10.9.0.50", T0)])
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")], inventory=str(tmp_path / "inv.csv"), leases=[str(leases)])
    try:
        assert analyst.ingester.poll_once() == 1
        client = await aiohttp_client(build_app(analyst))
        before = await (await client.get("/api/report")).json()
        # Kea appends the lease that held the address at the event's time; the analyst reads the new line.
        with leases.open("a", encoding="utf-8") as fh:
            fh.write(f"10.9.0.50,02:00:00:00:0a:01,,3600,{t + 3600},1,0,0,alice-phone,0,\n")
        analyst.ingester.poll_once()
        await analyst.db(analyst.refresh_gauges)
        after = await (await client.get("/api/report")).json()
        text = await (await client.get("/metrics")).text()
    finally:
        analyst.close()
    assert [(r["identity"], r["device"]) for r in before["clients"]] == [("cidr", "tablet-lab")]
    assert [(r["identity"], r["device"], r["owner"]) for r in after["clients"]] == [
        ("lease", "phone-alice", "Alice Martin")
    ]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["enforcer_analyst_lease_lines_skipped"].samples[0].value == 1
