"""The per-hour and per-client rollups answer exactly what the events table answers; they follow a policy change,
retention deletes and an older store file.

Each check compares the rollup path (unfiltered ``Filters()``) with the events-table path (``since=0``, which the
rollups never answer) and with figures counted straight from the HitEvent objects (analyst_helpers).
"""

from __future__ import annotations

import ipaddress
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from enforcer.analyst.dashboard import chart_series
from enforcer.analyst.ingest import Ingester
from enforcer.analyst.records import us_to_ts
from enforcer.analyst.report import enforcement_of
from enforcer.analyst.store import HOUR_US, Filters, Store
from enforcer.policy.enforcement import SQL_EXEMPT_FUNCTION, Cutover, Enforcement
from tests.analyst.analyst_helpers import expected_report, generate, local_analyst, write_events

RAW = Filters(since=0)  # every event, but not answerable by the rollups


def _events(policy, n: int, seed: int, span_days: float = 12):
    """``n`` events around the ban's effective date (half before, half after)."""
    start = policy.apps["wechat"].effective - timedelta(days=span_days / 2)
    return generate(policy, n, seed=seed, start=start, span_days=span_days)


def _same_views(store: Store, enforcement: Enforcement, apps: tuple[str, ...] = ()) -> None:
    conn = store.reader()
    assert Store.rollups_current(conn, enforcement)
    f, raw = Filters(apps=apps), Filters(apps=apps, since=0)
    assert store.pairs(f, enforcement) == store.pairs(raw, enforcement)
    assert store.top_rules(f, enforcement, 50) == store.top_rules(raw, enforcement, 50)
    for bucket in (HOUR_US, 24 * HOUR_US):
        assert store.series(f, bucket) == store.series(raw, bucket)
    assert chart_series(store, f) == chart_series(store, raw)


def test_rollups_equal_the_events_table_and_the_hit_events(tmp_path: Path, policy) -> None:
    events = _events(policy, 3000, 41)
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    try:
        # Ingested in many small chunks: each chunk's transaction adds to the rollups.
        assert analyst.ingester.poll_once() == len(events)
        store, eff = analyst.store, analyst.enforcement
        _same_views(store, eff)
        _same_views(store, eff, ("wechat",))
        want = expected_report(policy, events)
        got = store.pairs(Filters(), eff)
        assert {k: (v[0], v[1], v[2], v[3]) for k, v in got.items()} == {
            k: (r["hits"], r["enforced_hits"], r["first_seen"], r["last_seen"]) for k, r in want.items()
        }
        # The per-hour table has one row per (hour, app) with events.
        hours = {(e.timestamp.replace(minute=0, second=0, microsecond=0), e.app) for e in events}
        (n,) = store.reader().execute("SELECT COUNT(*) FROM roll_hour").fetchone()
        assert n == len(hours)
    finally:
        analyst.close()


def test_a_policy_change_rebuilds_the_rollups(tmp_path: Path, policy) -> None:
    events = _events(policy, 1500, 42)
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    try:
        analyst.ingester.poll_once()
        before = analyst.store.pairs(Filters(), analyst.enforcement)
        # Every app enforced ten days later than the shipped policy says: fewer enforced attempts.
        later = Enforcement(
            Cutover(app, datetime.fromtimestamp(c.at, UTC) + timedelta(days=10), c.exempt)
            for app, c in analyst.enforcement.cutovers.items()
        )
        analyst.enforcement = later
        assert not Store.rollups_current(analyst.store.reader(), later)
        analyst.ingester.poll_once()  # nothing new to read; the rollups are rebuilt under the new table
        _same_views(analyst.store, later)
        after = analyst.store.pairs(Filters(), later)
        assert sum(v[1] for v in after.values()) < sum(v[1] for v in before.values())
        assert sum(v[0] for v in after.values()) == sum(v[0] for v in before.values()) == len(events)
    finally:
        analyst.close()


def test_retention_deletes_in_batches_and_keeps_the_rollups_exact(tmp_path: Path, policy, monkeypatch) -> None:
    import enforcer.analyst.ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "PRUNE_BATCH", 97)  # many batches over a small store
    events = _events(policy, 2000, 43, span_days=20)
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")], retention=5 * 86400.0)
    try:
        ing = analyst.ingester
        ing._prune = lambda: None  # type: ignore[method-assign]  # this test runs retention itself, at a chosen now
        ing.poll_once()
        middle = sorted(e.timestamp for e in events)[len(events) // 2]
        now = (middle + timedelta(days=5)).timestamp()
        deleted = ing.prune_now(now=now)
        kept = [e for e in events if e.timestamp.timestamp() >= now - 5 * 86400]
        assert deleted == len(events) - len(kept) and 0 < deleted < len(events)
        assert analyst.store.count() == len(kept)
        (n,) = analyst.store.reader().execute("SELECT COUNT(*) FROM events").fetchone()
        assert n == len(kept)
        _same_views(analyst.store, analyst.enforcement)
        want = expected_report(policy, kept)
        got = analyst.store.pairs(Filters(), analyst.enforcement)
        assert {k: (v[0], v[1], v[2]) for k, v in got.items()} == {
            k: (r["hits"], r["enforced_hits"], r["first_seen"]) for k, r in want.items()
        }
        assert ing.prune_now(now=now) == 0  # nothing older is left
    finally:
        analyst.close()


OLD_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY, eid BLOB NOT NULL, ts INTEGER NOT NULL, app TEXT NOT NULL,
    client TEXT NOT NULL, category TEXT NOT NULL, component TEXT NOT NULL, action TEXT NOT NULL, rule TEXT NOT NULL,
    denied INTEGER NOT NULL, name TEXT NOT NULL, doc BLOB NOT NULL);
CREATE UNIQUE INDEX events_ts_eid ON events (ts, eid);
CREATE TABLE files (dev INTEGER NOT NULL, ino INTEGER NOT NULL, head BLOB NOT NULL, offset INTEGER NOT NULL,
    path TEXT NOT NULL, PRIMARY KEY (dev, ino));
CREATE TABLE facets (kind TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, value));
"""


def test_an_older_store_file_is_migrated(tmp_path: Path, policy) -> None:
    """A store written by the previous version (no identity columns, no rollups, no meta): opened, migrated, its
    events counted and rolled up on the first poll."""
    events = _events(policy, 800, 44)
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    # The previous version's ingest: same rows, the old 11-column insert.
    old = tmp_path / "old.sqlite"
    probe = Store(tmp_path / "probe.sqlite")
    ing = Ingester(probe, [tmp_path / "ev"], parser_process=False)
    ing.poll_once()
    rows = (
        probe.reader()
        .execute("SELECT eid, ts, app, client, category, component, action, rule, denied, name, doc FROM events")
        .fetchall()
    )
    files = probe.reader().execute("SELECT dev, ino, head, offset, path FROM files").fetchall()
    ing.stop()
    probe.close()
    conn = sqlite3.connect(old)
    conn.executescript(OLD_SCHEMA)
    conn.executemany("INSERT INTO events VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?)", files)
    conn.commit()
    conn.close()

    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")], db=str(old))
    try:
        cols = {r[1] for r in analyst.store.reader().execute("PRAGMA table_info(events)")}
        assert {"device_id", "user", "kind"} <= cols
        assert analyst.store.count() == len(events)
        assert not Store.rollups_current(analyst.store.reader(), analyst.enforcement)
        assert analyst.ingester.poll_once() == 0  # offsets kept: nothing read twice
        _same_views(analyst.store, analyst.enforcement)
        first = min(e.timestamp for e in events)
        assert min(v[2] for v in analyst.store.pairs(Filters(), analyst.enforcement).values()) == us_to_ts(
            int(first.timestamp() * 1_000_000)
        )
    finally:
        analyst.close()


def test_without_a_policy_table_the_rollups_are_marked_stale(tmp_path: Path, policy) -> None:
    """An ingester without ``enforcement`` (a tool, a test) cannot keep the enforced counts: readers fall back."""
    events = _events(policy, 300, 45)
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    store = Store(tmp_path / "s.sqlite")
    eff = enforcement_of(policy)
    ing = Ingester(store, [tmp_path / "ev"], parser_process=False)
    try:
        ing.poll_once()
        assert not Store.rollups_current(store.reader(), eff)
        assert store.pairs(Filters(), eff) == store.pairs(RAW, eff)
        assert sum(v[0] for v in store.pairs(Filters(), eff).values()) == len(events)
    finally:
        ing.stop()
        store.close()


def test_rollups_summed_by_the_parser_equal_the_read_back_and_the_sql_rule(tmp_path: Path, policy) -> None:
    """The ingest's parser sums each chunk's rollups (``Store.rollup_of``); the writer upserts them. The same rows
    read back by the writer (``rebuild_rollups``) give identical tables, with an exempt client, a control app, an
    app the table does not know, and a chunk read twice (its duplicates are read back); and both equal a GROUP BY of
    the table under ``Enforcement.sql`` (the readers' fallback rule), under this table and after a policy change."""
    from enforcer.analyst.ingest import parse_chunk

    events = _events(policy, 2000, 44)
    path = tmp_path / "ev" / "dns.jsonl"
    write_events(path, events)
    body = path.read_bytes()
    some_client = events[0].source_ip
    assert some_client
    # The shipped table, one client exempt from wechat, and kaspersky unknown to it (always enforced).
    table = Enforcement(
        [
            *(c for app, c in enforcement_of(policy).cutovers.items() if app not in ("wechat", "kaspersky")),
            Cutover("wechat", policy.apps["wechat"].effective, [ipaddress.ip_network(some_client)]),
        ]
    )
    rows, errors, seen, _, rollup = parse_chunk(body, str(path), 0, table)
    assert not errors and seen == len(rows) == len(events) and rollup is not None
    assert sum(n for n, _ in rollup[1].values()) == len(events)
    assert 0 < sum(e for _, e in rollup[1].values()) < len(events)

    def tables(store: Store) -> tuple[list[Any], ...]:
        conn = store.reader()
        return tuple(
            conn.execute(f"SELECT * FROM {t} ORDER BY {order}").fetchall()
            for t, order in (("roll_hour", "1, 2"), ("roll_client", "1, 2, 3, 4"), ("facets", "1, 2"))
        )

    def grouped_in_sql(store: Store, enforcement: Enforcement) -> tuple[list[Any], ...]:
        """Both rollups as one GROUP BY each over the table, enforced by the SQL rendering of the rule."""
        conn = sqlite3.connect(store.path)
        conn.create_function(SQL_EXEMPT_FUNCTION, 2, enforcement.is_exempt, deterministic=True)
        eff, params = enforcement.sql()
        try:
            hours = conn.execute(
                f"SELECT (ts / {HOUR_US}) * {HOUR_US}, app, COUNT(*), SUM({eff}) FROM events GROUP BY 1, 2"
                " ORDER BY 1, 2",
                params,
            ).fetchall()
            clients = conn.execute(
                f"SELECT client, app, rule, category, COUNT(*), SUM({eff}), MIN(ts), MAX(ts) FROM events"
                " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                params,
            ).fetchall()
        finally:
            conn.close()
        return hours, clients

    python_store, sql_store = Store(tmp_path / "py.sqlite"), Store(tmp_path / "sql.sqlite")
    try:
        for store in (python_store, sql_store):
            conn = store.writer()
            conn.execute("BEGIN")
            Store.rebuild_rollups(conn, table)  # empty: sets the rollups' policy key
            conn.execute("COMMIT")
        conn = python_store.writer()
        half = len(rows) // 2
        for part in (rows[:half], rows[half:], rows[:half]):  # the last one: all duplicates, nothing added
            conn.execute("BEGIN")
            Store.insert(conn, part, table, Store.rollup_of(part, table))
            conn.execute("COMMIT")
        conn = sql_store.writer()
        conn.execute("BEGIN")
        Store.insert(conn, rows, table)
        Store.rebuild_rollups(conn, table)
        conn.execute("COMMIT")
        got, want = tables(python_store), tables(sql_store)
        assert got == want and len(got[1]) > 10
        assert python_store.count() == sql_store.count() == len(events)
        assert got[:2] == grouped_in_sql(python_store, table)
        _same_views(python_store, table)
        # A policy change (wechat's date a day later, nobody exempt): rebuilt, equal to the SQL rule again.
        later = Enforcement(
            [
                *(c for app, c in table.cutovers.items() if app != "wechat"),
                Cutover("wechat", policy.apps["wechat"].effective + timedelta(days=1), []),
            ]
        )
        conn = python_store.writer()
        conn.execute("BEGIN")
        Store.rebuild_rollups(conn, later)
        conn.execute("COMMIT")
        changed = tables(python_store)
        assert changed[:2] == grouped_in_sql(python_store, later) and changed[1] != got[1]
        _same_views(python_store, later)
    finally:
        python_store.close()
        sql_store.close()
