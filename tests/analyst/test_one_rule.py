"""One rule for an enforced attempt: the store's SQL (``Enforcement.sql``) and the report's Python
(``Enforcement.enforced_attempt`` in ``report.scan_range``) count the same events, and both match an independent
count (``ipaddress`` and ``zoneinfo`` brute force).

The events straddle the rule on every axis: clients inside and outside the exempt networks (IPv4, IPv6, IPv4-mapped,
none), times before, at and after the effective instant (midnight in the policy's own timezone, to the microsecond),
denied and allowed, and an app the analysed policy no longer has (its denied events always count).
"""

from __future__ import annotations

import ipaddress
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from enforcer.analyst.ingest import Ingester
from enforcer.analyst.report import Selection, enforcement_of, pairs_of, scan_range, stream_report
from enforcer.analyst.store import Filters, Store
from enforcer.events import HitEvent
from enforcer.policy import Policy, load_policy
from enforcer.policy.enforcement import SQL_EXEMPT_FUNCTION, to_us
from tests.analyst.analyst_helpers import write_events

US = timedelta(microseconds=1)
# app -> (timezone, exempt networks, a name its rule blocks)
APPS = {
    "lab": ("Asia/Shanghai", ["10.99.0.0/16", "fd00:99::/32"], "x.lab.test"),
    "plain": ("America/Toronto", [], "x.plain.test"),
    "gone": ("UTC", ["10.99.0.0/16"], "x.gone.test"),  # absent from the analysed policy
}
CLIENTS = ["10.99.0.4", "::ffff:10.99.0.5", "fd00:99::7", "10.1.2.7", "2001:db8::1", None]


def _write_app(folder: Path, app: str) -> Path:
    tz, exempt, name = APPS[app]
    text = (
        f"app: {app}\npolicy:\n  effective: 2023-10-30\n  timezone: {tz}\n  exempt_clients: [{', '.join(exempt)}]\n"
        f"block:\n  - domain: {name.split('.', 1)[1]}\n    category: web\n"
    )
    path = folder / f"{app}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _effective(app: str) -> datetime:
    return datetime(2023, 10, 30, tzinfo=ZoneInfo(APPS[app][0]))


def _events(full: Policy) -> list[HitEvent]:
    out = []
    for app, (_, _, name) in APPS.items():
        eff = _effective(app)
        match = full.match_name(name)
        assert match is not None and match.rule.app == app
        for i, client in enumerate(CLIENTS):
            for at in (eff - timedelta(days=1), eff - US, eff, eff + US, eff + timedelta(days=3)):
                for denied in (True, False):
                    out.append(
                        HitEvent.from_match(
                            match,
                            action="dns-block",
                            component="dns",
                            version=full.fingerprint,
                            # Denied whatever the policy says now: events written under an older policy (before an
                            # exemption or a later effective date) must be judged by the current one.
                            enforced=denied,
                            at=at.astimezone(UTC),
                            source_ip=client,
                            source_port=1024 + i,
                            dns_question_name=name,
                            dns_question_type="A",
                        )
                    )
    return out


def _oracle(ev: HitEvent) -> bool:
    """Enforced attempt, counted without enforcer code: denied, at/after local midnight, client not exempt."""
    if not ev.enforced:
        return False
    if ev.app == "gone":
        return True
    if ev.timestamp < _effective(ev.app):
        return False
    if ev.source_ip is None:
        return True
    addr = ipaddress.ip_address(ev.source_ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not any(addr.version == n.version and addr in n for n in map(ipaddress.ip_network, APPS[ev.app][1]))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Policy, list[HitEvent], Path]:
    (tmp_path / "full").mkdir()
    full = load_policy([_write_app(tmp_path / "full", app) for app in APPS])
    analysed = load_policy([tmp_path / "full" / "lab.yaml", tmp_path / "full" / "plain.yaml"])
    events = _events(full)
    write_events(tmp_path / "events.jsonl", events)
    return analysed, events, tmp_path / "events.jsonl"


def test_sql_and_python_count_the_same_attempts(setup: tuple[Policy, list[HitEvent], Path], tmp_path: Path) -> None:
    policy, events, path = setup
    enforcement = enforcement_of(policy)
    assert set(enforcement.cutovers) == {"lab", "plain"}

    expected: dict[tuple[str, str], list[int]] = {}
    for ev in events:
        row = expected.setdefault((ev.source_ip or "", ev.app), [0, 0])
        row[0] += 1
        row[1] += _oracle(ev)
    # The grid really straddles the rule: exempt denials, early denials and enforced ones all occur.
    assert sum(r[1] for r in expected.values()) == 9 + 18 + 30  # lab: 3 clients x 3 times; plain: 6 x 3; gone: all
    assert sum(1 for ev in events if ev.enforced and not _oracle(ev)) == 90 - 57  # exempt or early denials

    tallies, stats = stream_report([path], enforcement=enforcement)
    report = pairs_of(tallies)  # per address, as the store's SQL counts
    assert stats.events == len(events) == 3 * 6 * 5 * 2
    store = Store(tmp_path / "a.sqlite")
    try:
        assert Ingester(store, [path]).poll_once() == len(events)
        sql = store.pairs(Filters(), enforcement)
        assert sql == report
        assert {k: v[:2] for k, v in report.items()} == expected
        # The other two SQL users of the rule agree with the Python figures.
        rules = store.top_rules(Filters(), enforcement)
        assert {r["app"]: r["enforced_hits"] for r in rules} == {
            app: sum(v[1] for (_, a), v in report.items() if a == app) for app in APPS
        }
        assert store.noncompliant(0, enforcement) == {
            app: len({c for (c, a), v in report.items() if a == app and v[1]}) for app in APPS
        }
        since = to_us(_effective("lab") + US)
        assert store.noncompliant(since, enforcement)["lab"] == 3  # outside the exempt nets, incl. no client
    finally:
        store.close()


def test_sql_expression_equals_python_per_row(setup: tuple[Policy, list[HitEvent], Path]) -> None:
    """The rendered SQL, evaluated row by row, gives the Python answer for every (denied, time, app, client)."""
    policy, events, _ = setup
    enforcement = enforcement_of(policy)
    expr, params = enforcement.sql()
    conn = sqlite3.connect(":memory:")
    conn.create_function(SQL_EXEMPT_FUNCTION, 2, enforcement.is_exempt, deterministic=True)
    conn.execute("CREATE TABLE events (denied INTEGER, ts INTEGER, app TEXT, client TEXT)")
    rows = [(int(ev.enforced), to_us(ev.timestamp), ev.app, ev.source_ip or "") for ev in events]
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
    got = [bool(v) for (v,) in conn.execute(f"SELECT {expr} FROM events ORDER BY rowid", params)]
    want = [enforcement.enforced_attempt(bool(d), app, client, ts) for d, ts, app, client in rows]
    assert got == want == [_oracle(ev) for ev in events]
    conn.close()


def test_a_range_scan_uses_the_same_rule(setup: tuple[Policy, list[HitEvent], Path]) -> None:
    policy, events, path = setup
    pairs, _ = scan_range(str(path), 0, None, Selection(enforcement_of(policy), apps=frozenset({"lab"})))
    assert sum(v[1] for v in pairs.values()) == sum(_oracle(ev) for ev in events if ev.app == "lab") == 9
