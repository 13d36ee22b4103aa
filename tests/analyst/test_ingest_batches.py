"""Several chunks per ingest transaction (``ingest.COMMIT_ROWS`` / ``COMMIT_SECONDS``): a failure anywhere in the
transaction rolls back every chunk of it and its file offsets, so the next poll stores each event exactly once; and
a transaction is committed once it holds ``COMMIT_ROWS`` events, before the poll ends.

The failure is a real one of SQLite (a trigger that aborts the insert of one client's rows), counts are read back
from the SQLite file and compared with the HitEvent objects written.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from enforcer.analyst import ingest
from enforcer.analyst.ingest import Ingester
from enforcer.analyst.report import enforcement_of
from enforcer.analyst.store import Filters, Store
from tests.analyst.analyst_helpers import generate, write_events
from tests.conftest import eventually


def _stored(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [bytes(r[0]).hex() for r in conn.execute("SELECT eid FROM events")]


def test_a_failed_transaction_rolls_back_all_its_chunks_and_offsets(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = generate(policy, 1500, seed=61)
    path = tmp_path / "dns.jsonl"
    write_events(path, events)
    size = path.stat().st_size
    # ~15 chunks, all in one transaction.
    monkeypatch.setattr(ingest, "CHUNK_BYTES", size // 15)
    monkeypatch.setattr(ingest, "COMMIT_ROWS", 10**9)
    monkeypatch.setattr(ingest, "COMMIT_SECONDS", 3600.0)
    db = tmp_path / "a.sqlite"
    store = Store(db)
    with sqlite3.connect(db) as conn:  # the 1001st event written (a later chunk of the same transaction)
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.eid = X'{events[1000].id}'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    enforcement = enforcement_of(policy)
    ing = Ingester(store, [path], parser_process=False, enforcement=lambda: enforcement)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="refused by the test"):
            ing.poll_once()
        # Nothing of the transaction stayed: no events, no offset, no counts, the rollups empty.
        assert _stored(db) == [] and store.count() == 0
        assert Store.file_states(store.reader()) == {}
        assert ing.ingested == 0 and ing.duplicates == 0
        assert store.pairs(Filters(), enforcement) == {}
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER refuse")
        assert ing.poll_once() == len(events)
        assert ing.poll_once() == 0
    finally:
        ing.stop()
        store.close()
    assert sorted(_stored(db)) == sorted(e.id for e in events)
    assert ing.ingested == len(events) and ing.duplicates == 0


def test_a_transaction_is_committed_at_commit_rows(tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``COMMIT_ROWS`` events in it, the transaction is committed while the poll goes on: a reader sees them
    before the poll ends (here: the poll is held after the first commit until the reader has looked)."""
    events = generate(policy, 1200, seed=62)
    path = tmp_path / "dns.jsonl"
    write_events(path, events)
    monkeypatch.setattr(ingest, "CHUNK_BYTES", path.stat().st_size // 12)
    monkeypatch.setattr(ingest, "COMMIT_ROWS", 300)
    monkeypatch.setattr(ingest, "COMMIT_SECONDS", 3600.0)
    db = tmp_path / "a.sqlite"
    store = Store(db)
    ing = Ingester(store, [path], parser_process=False)
    seen = threading.Event()
    commits: list[int] = []
    flush = Ingester._flush

    def held_flush(self: Ingester) -> None:
        had = self._batch is not None
        flush(self)
        if had and not commits:
            commits.append(1)
            assert seen.wait(30), "the reader never saw the first commit"

    monkeypatch.setattr(Ingester, "_flush", held_flush)
    poll = threading.Thread(target=ing.poll_once)
    poll.start()
    try:
        # Another connection (as the dashboard's) sees the first transaction's events while the poll is held.
        first = eventually(lambda: store.count() or None, timeout=30)
        assert 300 <= first < len(events)
        assert first == len(_stored(db))
        seen.set()
        poll.join(60)
        assert not poll.is_alive()
    finally:
        seen.set()
        ing.stop()
        store.close()
    assert sorted(_stored(db)) == sorted(e.id for e in events)
