"""The store's page size (``store.PAGE_SIZE``): a new store file gets it; a store file made with SQLite's default
4 KiB pages (every store before this change) keeps them, and ingest, the rollups and the reads work on it as before.

Counts are read back from the real SQLite files and compared with the HitEvent objects written.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from enforcer.analyst import store as store_module
from enforcer.analyst.ingest import Ingester
from enforcer.analyst.report import enforcement_of
from enforcer.analyst.store import Filters, Store
from enforcer.events import HitEvent
from tests.analyst.analyst_helpers import expected_report, generate, write_events


def _page_size(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def _ingest_and_check(db: Path, tmp_path: Path, policy, seed: int, before: list[HitEvent]) -> list[HitEvent]:
    """Ingest 1500 new events into ``db`` (which holds ``before``); check every figure against all of them."""
    new = generate(policy, 1500, seed=seed)
    path = tmp_path / f"dns-{seed}.jsonl"
    write_events(path, new)
    events = before + new
    store = Store(db)
    enforcement = enforcement_of(policy)
    ing = Ingester(store, [path], parser_process=False, enforcement=lambda: enforcement)
    try:
        assert ing.poll_once() == len(new)
        assert ing.poll_once() == 0
        expected = expected_report(policy, events)
        assert store.count() == len(events)
        pairs = store.pairs(Filters(), enforcement)
        assert {k: (v[0], v[1]) for k, v in pairs.items()} == {
            k: (v["hits"], v["enforced_hits"]) for k, v in expected.items()
        }
        newest, _ = store.events(Filters(), 5)
        assert [d["event"]["id"] for d in newest] == [
            e.id for e in sorted(events, key=lambda e: (e.timestamp, bytes.fromhex(e.id)), reverse=True)[:5]
        ]
    finally:
        ing.stop()
        store.close()
    return events


def test_a_new_store_gets_the_page_size(tmp_path: Path, policy) -> None:
    db = tmp_path / "new.sqlite"
    _ingest_and_check(db, tmp_path, policy, 71, [])
    assert store_module.PAGE_SIZE == 16384
    assert _page_size(db) == store_module.PAGE_SIZE
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_store_with_4k_pages_keeps_them_and_works(tmp_path: Path, policy) -> None:
    db = tmp_path / "old.sqlite"
    # A store file as every earlier version made it: SQLite's default page size, WAL, the schema of today.
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(store_module.SCHEMA)
    assert _page_size(db) == 4096
    first = _ingest_and_check(db, tmp_path, policy, 72, [])
    # Opened again with events in it: still 4 KiB, still whole.
    _ingest_and_check(db, tmp_path, policy, 73, first)
    assert _page_size(db) == 4096
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3000
