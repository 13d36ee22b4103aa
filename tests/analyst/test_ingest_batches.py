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


def _rollups_exact(store: Store, enforcement) -> None:
    """The rollups (``Filters()``) answer what the events table (``since=0``) answers."""
    assert Store.rollups_current(store.reader(), enforcement)
    raw = Filters(since=0)
    got = store.pairs(Filters(), enforcement)
    assert got and got == store.pairs(raw, enforcement)
    assert store.top_rules(Filters(), enforcement, 50) == store.top_rules(raw, enforcement, 50)
    for bucket in (3600 * 10**6, 86400 * 10**6):
        assert store.series(Filters(), bucket) == store.series(raw, bucket)


# Where the transaction fails: inserting the 1001st event written (a later chunk of the transaction), or upserting
# the rollups summed over its chunks, just before its COMMIT (``PendingRollups.flush``).
_REFUSE_AN_EVENT = "BEFORE INSERT ON events WHEN NEW.eid = X'{eid}'"
_REFUSE_THE_ROLLUPS = "BEFORE INSERT ON roll_client"


@pytest.mark.parametrize(
    ("parser_process", "refused"),
    [(False, _REFUSE_AN_EVENT), (True, _REFUSE_AN_EVENT), (True, _REFUSE_THE_ROLLUPS)],
    ids=["thread", "process", "at-the-flush"],
)
def test_a_failed_transaction_rolls_back_all_its_chunks_and_offsets(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch, parser_process: bool, refused: str
) -> None:
    """A real failure of SQLite (a trigger) anywhere in the transaction rolls back all of it; the next poll stores
    every event once with exact rollups. At the flush: with the batch dropped before its COMMIT (the code before
    ed2efab) the transaction stayed open, and dropping the trigger failed with "database is locked"."""
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
    with sqlite3.connect(db) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse {refused.format(eid=events[1000].id)}"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    enforcement = enforcement_of(policy)
    ing = Ingester(store, [path], parser_process=parser_process, enforcement=lambda: enforcement)
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
        # The retried transaction's rollups (summed over its chunks, upserted once before its commit) are exact:
        # nothing of the failed one was kept, nothing counted twice.
        _rollups_exact(store, enforcement)
        assert sum(v[0] for v in store.pairs(Filters(), enforcement).values()) == len(events)
    finally:
        ing.stop()
        store.close()
    assert sorted(_stored(db)) == sorted(e.id for e in events)
    assert ing.ingested == len(events) and ing.duplicates == 0


def test_rollups_of_many_chunks_in_one_transaction_through_the_parser_process(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """~20 chunks parsed in the real parser process (``parse_chunk_packed``: ids and documents as bytearray,
    pickled with protocol 5) and stored in one transaction: every line stored as the bytes written, ids and
    documents as BLOBs, the rollups summed across the chunks equal the events table; a second file with half
    duplicates (its rollups grouped again in SQL) in the same transaction keeps them exact."""
    events = generate(policy, 2000, seed=63)
    first, second = tmp_path / "ev" / "dns.jsonl", tmp_path / "ev" / "proxy.jsonl"
    write_events(first, events[:1500])
    write_events(second, events[1000:])  # 500 read twice
    monkeypatch.setattr(ingest, "CHUNK_BYTES", first.stat().st_size // 20)
    monkeypatch.setattr(ingest, "COMMIT_ROWS", 10**9)
    monkeypatch.setattr(ingest, "COMMIT_SECONDS", 3600.0)
    store = Store(tmp_path / "a.sqlite")
    enforcement = enforcement_of(policy)
    ing = Ingester(store, [tmp_path / "ev"], enforcement=lambda: enforcement)
    commits: list[int] = []
    flush = Ingester._flush

    def counted_flush(self: Ingester) -> None:
        commits.append(self._batch is not None)
        flush(self)

    monkeypatch.setattr(Ingester, "_flush", counted_flush)
    try:
        assert ing.poll_once() == len(events)
        assert commits == [True]  # one transaction for both files
        assert ing.duplicates == 500
        _rollups_exact(store, enforcement)
        assert sum(v[0] for v in store.pairs(Filters(), enforcement).values()) == len(events)
        with sqlite3.connect(store.path) as conn:
            kinds = conn.execute("SELECT DISTINCT typeof(eid), typeof(doc) FROM events").fetchall()
            docs = {bytes(eid).hex(): bytes(doc) for eid, doc in conn.execute("SELECT eid, doc FROM events")}
        assert kinds == [("blob", "blob")]
        written = (first.read_bytes() + second.read_bytes()).splitlines()
        assert {line for line in written} == set(docs.values())
        assert sorted(docs) == sorted(e.id for e in events)
    finally:
        ing.stop()
        store.close()


def test_pending_rollups_of_a_stale_policy_key_are_dropped(tmp_path: Path, policy) -> None:
    """A chunk under another policy table in the same transaction marks the rollups stale: the rollups summed
    before it are not upserted at the flush, and the rebuild makes them exact."""
    from datetime import timedelta

    from enforcer.analyst.ingest import parse_chunk
    from enforcer.analyst.store import PendingRollups
    from enforcer.policy.enforcement import Cutover, Enforcement

    events = generate(policy, 600, seed=64)
    path = tmp_path / "dns.jsonl"
    write_events(path, events)
    table = enforcement_of(policy)
    later = Enforcement(
        [
            *(c for app, c in table.cutovers.items() if app != "wechat"),
            Cutover("wechat", policy.apps["wechat"].effective + timedelta(days=1), []),
        ]
    )
    rows, _, _, _, _ = parse_chunk(path.read_bytes(), str(path), 0)
    store = Store(tmp_path / "a.sqlite")
    try:
        conn = store.writer()
        conn.execute("BEGIN")
        Store.rebuild_rollups(conn, table)
        conn.execute("COMMIT")
        pending = PendingRollups()
        conn.execute("BEGIN")
        Store.insert(conn, rows[:300], table, Store.rollup_of(rows[:300], table), pending)
        assert pending.key is not None and pending.clients
        Store.insert(conn, rows[300:], later, Store.rollup_of(rows[300:], later), pending)
        pending.flush(conn)
        conn.execute("COMMIT")
        assert not pending.clients and pending.key is None
        reader = store.reader()
        assert not Store.rollups_current(reader, table) and not Store.rollups_current(reader, later)
        assert reader.execute("SELECT COUNT(*) FROM roll_client").fetchone()[0] == 0
        conn.execute("BEGIN")
        Store.rebuild_rollups(conn, later)
        conn.execute("COMMIT")
        _rollups_exact(store, later)
        pending.add(Store.rollup_of(rows[:10], table))
        with pytest.raises(ValueError, match="two policy keys"):
            pending.add(Store.rollup_of(rows[:10], later))
    finally:
        store.close()


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


def test_the_parser_has_chunks_ahead_of_each_insert(tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one chunk is inserted, the next ``PIPELINE_CHUNKS`` are already with the parser (so that it works
    through a long commit); every event is still stored once, in file order."""
    events = generate(policy, 1200, seed=66)
    path = tmp_path / "dns.jsonl"
    write_events(path, events)
    monkeypatch.setattr(ingest, "CHUNK_BYTES", path.stat().st_size // 12)
    submitted: list[int] = []
    ahead: list[int] = []
    real_submit, real_commit = Ingester._submit, Ingester._commit

    def submit(self, *args):  # type: ignore[no-untyped-def]
        step = real_submit(self, *args)
        submitted.append(step is not None)
        return step

    def commit(self, *args):  # type: ignore[no-untyped-def]
        ahead.append(sum(submitted) - len(ahead) - 1)
        return real_commit(self, *args)

    monkeypatch.setattr(Ingester, "_submit", submit)
    monkeypatch.setattr(Ingester, "_commit", commit)
    store = Store(tmp_path / "a.sqlite")
    ing = Ingester(store, [path], parser_process=False, enforcement=lambda: enforcement_of(policy))
    try:
        assert ing.poll_once() == len(events)
    finally:
        ing.stop()
        store.close()
    assert len(ahead) >= 12
    assert ahead[: -ingest.PIPELINE_CHUNKS] == [ingest.PIPELINE_CHUNKS] * (len(ahead) - ingest.PIPELINE_CHUNKS)
    assert ahead[-ingest.PIPELINE_CHUNKS :] == list(range(ingest.PIPELINE_CHUNKS - 1, -1, -1))
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:
        stored = [bytes(r[0]).hex() for r in conn.execute("SELECT eid FROM events ORDER BY seq")]
    assert stored == [e.id for e in events]


def test_the_parser_process_runs_with_the_bulk_readers_collector(tmp_path: Path) -> None:
    """The parser process allocates a tuple a row: it runs with ``lines.GC_THRESHOLDS``, as the analyst does."""
    import gc

    from enforcer.analyst.lines import GC_THRESHOLDS

    store = Store(tmp_path / "a.sqlite")
    ing = Ingester(store, [tmp_path / "none.jsonl"], parser_process=True)
    try:
        # A spawned process starts with the default (700, 10, 10) unless its initializer sets them.
        assert ing._parser.submit(gc.get_threshold).result(timeout=60) == GC_THRESHOLDS != (700, 10, 10)
    finally:
        ing.stop()
        store.close()
