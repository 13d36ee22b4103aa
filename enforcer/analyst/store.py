"""The analyst's SQLite event store: one table of events, indexed for the questions analysts ask.

- Schema (``SCHEMA``): ``events`` (``seq`` rowid in arrival order, ``ts`` integer microseconds UTC, ``eid`` =
  ``event.id`` (16-byte blob for the writer's uuid4 hex), app, client, category, component, action, rule, denied,
  name, and ``doc`` the ECS JSON line as read, UTF-8 bytes). Indexes: UNIQUE ``(ts, eid)`` is both the dedupe key
  (an event seen twice has the same time and id, and is stored once) and the time index; unlike a UNIQUE index on
  the random id alone, inserts land at its end, which keeps ingest fast as the store grows. ``events_app``
  ``(app, ts, denied, category, component, rule, client, device_id, user, kind)`` and ``events_who`` ``(client,
  app, ts, denied, device_id, user, kind, category, component)`` cover the per-app and per-client aggregations
  (report pairs, chart, top rules, gauges, filters, the per-device tallies) without reading the table. ``files`` =
  ingest offsets per physical file (device, inode, first bytes, offset), committed in the same transaction as the
  events they cover, so a restart neither loses nor repeats lines; ``facets`` = distinct apps/categories/components
  for the filters. Identity columns ``device_id``, ``user``, ``kind`` (added to an older store file by
  ``_migrate``, which also replaces its ``events_client`` and ``events_ident`` indexes by ``events_who`` and an
  ``events_app`` without the identity columns). ``meta``: the stored-event count and the policy key of the
  rollups.
- Rollups, updated by ``insert`` in the caller's transaction and taken back by ``delete_before``: ``roll_hour`` (per
  hour and app: events, enforced events) and ``roll_client`` (per client, app, rule, category: events, enforced
  events, first and last time; after a retention delete a row's first time is only a lower bound, exact per
  client and app). One definition sums them, ``sum_rollups`` (in Python, enforced = ``Enforcement.enforced_attempt``):
  the parser's ``rollup_of`` of each chunk and the writer's read-back of rows (duplicates, a rebuild, a delete) both
  go through it. Their enforced counts are those of one ``Enforcement`` (``ROLLUP_KEY``); under
  another one (a policy change) ``rebuild_rollups`` recomputes them, and readers use the events table meanwhile.
  ``pairs``, ``series`` (whole-hour buckets) and ``top_rules`` read them when ``Filters.rollup_ok`` (no filter but
  apps).
- Cases (``CASES_SCHEMA``, used by cases.py): ``cases`` (its ``identity`` column added to an older store file on
  open) and the append-only ``case_audit``; ``prune_cases`` is the
  retention of closed ones; ``delete_before`` the retention of events, in batches.
- ``Store(path)``: opens/creates the database (WAL, synchronous=NORMAL; a new file gets ``PAGE_SIZE`` pages).
  ``writer()`` is the one write connection (used by the ingest thread only); every other method reads through a
  per-thread connection, so handlers can run them in a thread pool while the ingester writes (WAL: readers never
  wait for the writer).
- ``Filters``: the dashboard/API filters (apps, clients, categories, components, since/until in microseconds, the
  search text and the clients whose inventory names matched it).
- Reads: ``events`` (newest first, keyset cursor ``(ts, eid)``), ``pairs`` (what ``report.build_report`` needs),
  ``series`` (hits per app per time bucket), ``top_rules`` (hits and enforced hits per rule), ``noncompliant``
  (distinct clients per app with enforced attempts since a time), ``last_block`` (per app), ``bounds``, ``facets``,
  ``count``, ``content_mark`` (what a view persisted across restarts is checked against), ``identity_rows``
  (streamed in per-device order), ``first_enforced_after`` (what reopens a case).

Enforced attempts in SQL: rendered from the policy's ``Enforcement`` table (``Enforcement.sql``: ``denied``, ``ts`` at
or after the app's effective date, the client not exempt), the same table ``report.scan_range`` asks in Python
(``_enforced``).
"""

from __future__ import annotations

import contextlib
import json
import operator
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..policy.enforcement import SQL_EXEMPT_FUNCTION, Enforcement
from .records import us_to_ts

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    eid BLOB NOT NULL,
    ts INTEGER NOT NULL,
    app TEXT NOT NULL,
    client TEXT NOT NULL,
    category TEXT NOT NULL,
    component TEXT NOT NULL,
    action TEXT NOT NULL,
    rule TEXT NOT NULL,
    denied INTEGER NOT NULL,
    name TEXT NOT NULL,
    doc BLOB NOT NULL,
    device_id TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS events_ts_eid ON events (ts, eid);
CREATE TABLE IF NOT EXISTS files (
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    head BLOB NOT NULL,
    offset INTEGER NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (dev, ino)
);
CREATE TABLE IF NOT EXISTS facets (kind TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, value));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roll_hour (
    hour INTEGER NOT NULL,
    app TEXT NOT NULL,
    n INTEGER NOT NULL,
    enforced INTEGER NOT NULL,
    PRIMARY KEY (hour, app)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roll_client (
    client TEXT NOT NULL,
    app TEXT NOT NULL,
    rule TEXT NOT NULL,
    category TEXT NOT NULL,
    n INTEGER NOT NULL,
    enforced INTEGER NOT NULL,
    first_us INTEGER NOT NULL,
    last_us INTEGER NOT NULL,
    PRIMARY KEY (client, app, rule, category)
) WITHOUT ROWID;
"""
# Cases (cases.py): one row per device with its current state, and the append-only audit of every change (an UPDATE
# of an audit row is refused by a trigger; only retention deletes the audit of a case closed before its cut-off).
CASES_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    device TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    clients TEXT NOT NULL,
    apps TEXT NOT NULL,
    opened_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    reopened_by TEXT NOT NULL DEFAULT '',
    identity TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS case_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    who TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    note TEXT NOT NULL,
    hit TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS case_audit_device ON case_audit (device, id);
CREATE TRIGGER IF NOT EXISTS case_audit_append_only BEFORE UPDATE ON case_audit
BEGIN SELECT RAISE(ABORT, 'case_audit is append-only'); END;
"""
# Added after the first release: a store file of an older version gets them by ALTER TABLE (``Store._migrate``).
ADDED_COLUMNS = (
    ("device_id", "TEXT NOT NULL DEFAULT ''"),
    ("user", "TEXT NOT NULL DEFAULT ''"),
    ("kind", "TEXT NOT NULL DEFAULT ''"),
)
# One index for everything asked per client (the per-device tallies, a client filter, what reopens a case, the
# first seen after a retention delete), covering: each index costs ingest ~7 us an event, so the two earlier ones
# (``events_client`` and ``events_ident``, dropped by ``_migrate``) are one now.
WHO_INDEX = (
    "CREATE INDEX IF NOT EXISTS events_who ON events"
    " (client, app, ts, denied, device_id, user, kind, category, component)"
)
DROPPED_INDEXES = ("events_client", "events_ident")
# Per app and time (gauges, last block, a filter by app or time), covering the per-device tallies of an app filter
# too (its last three columns; an older store's events_app without them is rebuilt by ``_migrate``).
APP_COLUMNS = ("app", "ts", "denied", "category", "component", "rule", "client", "device_id", "user", "kind")
APP_INDEX = f"CREATE INDEX IF NOT EXISTS events_app ON events ({', '.join(APP_COLUMNS)})"

INSERT = (
    "INSERT OR IGNORE INTO events"
    " (eid, ts, app, client, category, component, action, rule, denied, name, doc, device_id, user, kind)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One stored row as inserted: eid, ts_us, app, client, category, component, action, rule, denied, name, doc,
# device_id, user, kind.
Row = tuple[str | bytes | bytearray, int, str, str, str, str, str, str, int, str, bytes | bytearray, str, str, str]
# The rollups of some rows (``Store.rollup_of``, in the ingest's parser process): the policy key
# they were computed under, (hour, app) -> [events, enforced], (client, app, rule, category) -> [events, enforced,
# first, last], and the facets (kind, value).
Rollup = tuple[str, dict[tuple[int, str], list[int]], dict[tuple[str, str, str, str], list[int]], set[tuple[str, str]]]

HOUR_US = 3600 * 1_000_000
# Page size of a new store file (SQLite's default is 4096). Measured at a 3M-event store, 1M events more (docs/scale.md,
# "Ingest, fifth round"): the writer's CPU 16.7 us an event with 16 KiB pages against 22.1-24.0 us with 4 KiB, the
# kernel's share 3.6 us against 7.3-7.9 (a quarter of the WAL frames and write calls for the same bytes, shallower
# b-trees), and a 10% smaller file.
PAGE_SIZE = 16384
ROLLUP_KEY = "rollup_enforcement"  # meta: the Enforcement.key() the rollups' enforced counts were computed under
STORED_KEY = "stored"  # meta: events in the table (rows are deleted by retention, so MAX(seq) is not the count)


@dataclass(frozen=True, slots=True)
class Filters:
    apps: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    since: int | None = None  # microseconds, inclusive
    until: int | None = None  # microseconds, exclusive
    # The search box: a substring of the name, the rule or the client (case-insensitive), or one of
    # ``search_clients`` (the clients whose inventory device/owner matched, found by the caller).
    search: str = ""
    search_clients: tuple[str, ...] = ()

    @property
    def rollup_ok(self) -> bool:
        """Whether the per-app rollups answer these filters (all time, only an app filter at most)."""
        return not (
            self.clients
            or self.categories
            or self.components
            or self.since is not None
            or self.until is not None
            or self.search
        )

    def where(self) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        if self.search:
            needle = self.search.lower()
            alts = ["instr(lower(name), ?) > 0", "instr(lower(rule), ?) > 0", "instr(lower(client), ?) > 0"]
            params += [needle, needle, needle]
            if self.search_clients:
                alts.append(f"client IN ({','.join('?' * len(self.search_clients))})")
                params.extend(self.search_clients)
            parts.append(f"({' OR '.join(alts)})")
        for column, values in (
            ("app", self.apps),
            ("client", self.clients),
            ("category", self.categories),
            ("component", self.components),
        ):
            if values:
                parts.append(f"{column} IN ({','.join('?' * len(values))})")
                params.extend(values)
        if self.since is not None:
            parts.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            parts.append("ts < ?")
            params.append(self.until)
        return (" AND ".join(parts) or "1"), params


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with contextlib.closing(self._connect()) as conn:
            if int(conn.execute("PRAGMA page_count").fetchone()[0]) == 0:
                # A new store only: an existing file keeps its page size (changing it is a VACUUM of the whole
                # store, and in WAL mode not possible at all).
                conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            self._migrate(conn)
            conn.executescript(CASES_SCHEMA)
            if "identity" not in {row[1] for row in conn.execute("PRAGMA table_info(cases)")}:
                # A case opened before cases followed identities: empty, shown as "legacy" (cases.py).
                conn.execute("ALTER TABLE cases ADD COLUMN identity TEXT NOT NULL DEFAULT ''")
            conn.commit()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Bring a store file of an older version up to ``SCHEMA``: the identity columns, their index, the stored
        count. Rollups of an older store are built by the ingester on its first poll (no ``ROLLUP_KEY`` yet)."""
        have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
        for column, decl in ADDED_COLUMNS:
            if column not in have:
                conn.execute(f"ALTER TABLE events ADD COLUMN {column} {decl}")
        for name in DROPPED_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        conn.execute(WHO_INDEX)
        app_columns = tuple(row[2] for row in conn.execute("PRAGMA index_info(events_app)"))
        if app_columns and app_columns != APP_COLUMNS:
            conn.execute("DROP INDEX events_app")
        conn.execute(APP_INDEX)
        if conn.execute("SELECT 1 FROM meta WHERE key = ?", (STORED_KEY,)).fetchone() is None:
            (n,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (STORED_KEY, str(n)))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-32000")
        return conn

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (sqlite3 connections must not be shared between threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def writer(self) -> sqlite3.Connection:
        conn = self._connect()
        # Checkpoint the WAL every ~64 MB instead of every 4 MB: fewer fsyncs and page rewrites during bulk ingest.
        conn.execute("PRAGMA wal_autocheckpoint=16384")
        # The pages one ingest transaction dirties stay in memory until its commit: its table and time-index pages,
        # and one leaf of the per-client index per (client, app) it touches, 20,000 leaves of 16 KiB = 320 MB for
        # 10,000 clients and two apps. With 256 MiB (enough for 4 KiB pages) they spilled to the WAL and were
        # written again: at a 6M-event store 8.5 kB written an event and 23.6 us of writer CPU, against 3.8 kB and
        # 21.1 us with 1 GiB (docs/scale.md, "Ingest, fifth round"). Allocated as used: a small store never reaches it.
        conn.execute("PRAGMA cache_size=-1048576")
        with self._lock:
            self._conns.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # -- writes (ingest thread) ---------------------------------------------------------------------------------
    @staticmethod
    def insert(
        conn: sqlite3.Connection,
        rows: Sequence[Row],
        enforcement: Enforcement | None = None,
        rollup: Rollup | None = None,
        pending: PendingRollups | None = None,
    ) -> int:
        """Insert within the caller's transaction; returns how many rows were new (the rest were duplicates).

        The rollups take the new rows in the same transaction (``enforcement`` decides their enforced counts); without
        an ``enforcement`` they are marked stale (readers fall back to the events table until a rebuild). ``rollup``:
        the rows' rollups already summed (``rollup_of``), upserted as they are when every row was new and they were
        summed under the rollups' policy key; else the new rows are grouped again in SQL. ``pending``: such a
        ``rollup`` is added to it instead, for the caller to upsert once before its commit (``PendingRollups``)."""
        seq0 = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        before = conn.total_changes
        conn.executemany(INSERT, rows)
        inserted = conn.total_changes - before
        facets = rollup[3] if rollup is not None else _facets(rows)
        conn.executemany("INSERT OR IGNORE INTO facets (kind, value) VALUES (?, ?)", sorted(facets))
        if inserted:
            _add_stored(conn, inserted)
            key = _rollup_key(conn)
            if enforcement is None or key != _key_text(enforcement):
                conn.execute("DELETE FROM meta WHERE key = ?", (ROLLUP_KEY,))
            elif rollup is not None and inserted == len(rows) and rollup[0] == key:
                if pending is not None:
                    pending.add(rollup)
                else:
                    _upsert_rollup(conn, rollup[1], rollup[2])
            else:
                _roll(conn, enforcement, "seq > ?", [seq0], +1)
        return inserted

    @staticmethod
    def rollup_of(rows: Iterable[Row], enforcement: Enforcement) -> Rollup:
        """The rollups of ``rows`` (``sum_rollups``): what the ingest's parser process hands the writer with each
        chunk, so that the writer upserts a few hundred rollup rows instead of grouping the chunk again."""
        rows = rows if isinstance(rows, Sequence) else list(rows)
        hours, clients = sum_rollups(map(_ROLLED, rows), enforcement)
        return _key_text(enforcement), hours, clients, _facets_of_rollup(hours, clients, rows)

    @staticmethod
    def rollups_current(conn: sqlite3.Connection, enforcement: Enforcement) -> bool:
        return _rollup_key(conn) == _key_text(enforcement)

    @staticmethod
    def rebuild_rollups(conn: sqlite3.Connection, enforcement: Enforcement) -> None:
        """Within the caller's transaction: the rollups recomputed from every stored event under ``enforcement``
        (an older store's first start, or a policy whose effective dates or exempt clients changed)."""
        conn.execute("DELETE FROM roll_hour")
        conn.execute("DELETE FROM roll_client")
        _roll(conn, enforcement, "1", [], +1)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (ROLLUP_KEY, _key_text(enforcement)),
        )

    @staticmethod
    def delete_before(
        conn: sqlite3.Connection, cutoff_us: int, batch: int, enforcement: Enforcement | None = None
    ) -> int:
        """Within the caller's transaction: delete at most ``batch`` of the oldest events before ``cutoff_us``,
        taking them out of the rollups too; returns how many were deleted (0: nothing older is left)."""
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (seq INTEGER PRIMARY KEY)")
        conn.execute("DELETE FROM doomed")
        conn.execute(
            "INSERT INTO doomed (seq) SELECT seq FROM events WHERE ts < ? ORDER BY ts LIMIT ?", (cutoff_us, batch)
        )
        (n,) = conn.execute("SELECT COUNT(*) FROM doomed").fetchone()
        if not n:
            return 0
        current = enforcement is not None and _rollup_key(conn) == _key_text(enforcement)
        if current:
            assert enforcement is not None
            _roll(conn, enforcement, "seq IN (SELECT seq FROM doomed)", [], -1)
            touched = conn.execute(
                "SELECT DISTINCT client, app FROM events WHERE seq IN (SELECT seq FROM doomed)"
            ).fetchall()
        conn.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM doomed)")
        if current:
            conn.execute("DELETE FROM roll_hour WHERE n <= 0")
            conn.execute("DELETE FROM roll_client WHERE n <= 0")
            # First seen of what is left, per (client, app): one index seek each (events_who leads with client,
            # app, ts; a per-rule MIN would read every row of the pair for its rule). Rows of the pair are raised to
            # it, so MIN(first_us) over the pair (``pairs``, its only reader) is exact again.
            conn.executemany(
                "UPDATE roll_client SET first_us = MAX(first_us, (SELECT MIN(ts) FROM events WHERE client = ?1"
                " AND app = ?2)) WHERE client = ?1 AND app = ?2",
                touched,
            )
        else:
            conn.execute("DELETE FROM meta WHERE key = ?", (ROLLUP_KEY,))
        _add_stored(conn, -int(n))
        return int(n)

    @staticmethod
    def prune_cases(conn: sqlite3.Connection, cutoff_us: int) -> int:
        """Within the caller's transaction: forget the cases closed (remediated) before ``cutoff_us``, their audit
        included; open and acknowledged cases are kept whatever their age. Returns how many were forgotten."""
        doomed = [
            d
            for (d,) in conn.execute(
                "SELECT device FROM cases WHERE state = 'remediated' AND updated_us < ?", (cutoff_us,)
            )
        ]
        conn.executemany("DELETE FROM case_audit WHERE device = ?", [(d,) for d in doomed])
        conn.executemany("DELETE FROM cases WHERE device = ?", [(d,) for d in doomed])
        return len(doomed)

    @staticmethod
    def file_states(conn: sqlite3.Connection) -> dict[tuple[int, int], tuple[bytes, int, str]]:
        return {
            (d, i): (bytes(h), o, p) for d, i, h, o, p in conn.execute("SELECT dev, ino, head, offset, path FROM files")
        }

    @staticmethod
    def save_file_state(conn: sqlite3.Connection, ident: tuple[int, int], head: bytes, offset: int, path: str) -> None:
        conn.execute(
            "INSERT INTO files (dev, ino, head, offset, path) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (dev, ino) DO UPDATE SET"
            " head = excluded.head, offset = excluded.offset, path = excluded.path",
            (ident[0], ident[1], head, offset, path),
        )

    @staticmethod
    def forget_files(conn: sqlite3.Connection, idents: Iterable[tuple[int, int]]) -> None:
        conn.executemany("DELETE FROM files WHERE dev = ? AND ino = ?", list(idents))

    # -- reads ------------------------------------------------------------------------------------------------------
    def content_mark(self) -> tuple[int, int]:
        """(stored events, highest ``seq``): changes with every insert and every delete (two O(1)/O(log n) reads),
        so a view computed under one mark describes the store exactly while the mark is the same."""
        conn = self.reader()
        (top,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return self.count(), int(top)

    def count(self) -> int:
        """Stored events, kept in ``meta`` by every insert and delete (O(1), no COUNT(*) scan)."""
        row = self.reader().execute("SELECT value FROM meta WHERE key = ?", (STORED_KEY,)).fetchone()
        return int(row[0]) if row else 0

    def facets(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"app": [], "category": [], "component": []}
        for kind, value in self.reader().execute("SELECT kind, value FROM facets ORDER BY kind, value"):
            if value:
                out.setdefault(kind, []).append(value)
        return out

    def events(
        self, filters: Filters, limit: int, cursor: tuple[int, str | bytes] | None = None
    ) -> tuple[list[Any], tuple[int, str | bytes] | None]:
        """Newest first (time, then event id). Returns (ECS documents, cursor after the last one, or None)."""
        where, params = filters.where()
        if cursor is not None:
            where += " AND (ts, eid) < (?, ?)"
            params += [cursor[0], cursor[1]]
        rows = (
            self.reader()
            .execute(
                f"SELECT ts, eid, doc FROM events WHERE {where} ORDER BY ts DESC, eid DESC LIMIT ?",
                [*params, limit + 1],
            )
            .fetchall()
        )
        nxt = None
        if len(rows) > limit:
            rows = rows[:limit]
            nxt = (int(rows[-1][0]), rows[-1][1])
        docs = []
        for _, _, doc in rows:
            try:
                docs.append(json.loads(doc))
            except ValueError:  # stored from a valid line, so only a damaged database gets here
                continue
        return docs, nxt

    def _enforced(self, enforcement: Enforcement) -> tuple[sqlite3.Connection, str, list[Any]]:
        """This thread's reader, able to evaluate ``enforcement``'s SQL, and that SQL with its parameters."""
        conn = self.reader()
        # Per query, on this thread's own connection: the table of the current policy, whatever ran here before.
        conn.create_function(SQL_EXEMPT_FUNCTION, 2, enforcement.is_exempt, deterministic=True)
        expr, params = enforcement.sql()
        return conn, expr, params

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """This thread's reader inside one read transaction: the rollups' key and rows from the same commit."""
        conn = self.reader()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _app_where(filters: Filters) -> tuple[str, list[Any]]:
        if not filters.apps:
            return "1", []
        return f"app IN ({','.join('?' * len(filters.apps))})", list(filters.apps)

    def pairs(self, filters: Filters, enforcement: Enforcement) -> dict[tuple[str, str], list[Any]]:
        """(client, app) -> [attempts, enforced attempts, first seen, last seen]: from ``roll_client`` when it answers
        the filters (one row per client, app, rule and category instead of one per event), else from the events."""
        if filters.rollup_ok:
            with self._snapshot() as conn:
                if Store.rollups_current(conn, enforcement):
                    where, params = self._app_where(filters)
                    sql = (
                        "SELECT client, app, SUM(n), SUM(enforced), MIN(first_us), MAX(last_us) FROM roll_client"
                        f" WHERE {where} GROUP BY client, app"
                    )
                    return {
                        (client, app): [int(n), int(enf or 0), us_to_ts(first), us_to_ts(last)]
                        for client, app, n, enf, first, last in conn.execute(sql, params)
                        if n > 0
                    }
        where, params = filters.where()
        conn, eff, eff_params = self._enforced(enforcement)
        sql = (
            f"SELECT client, app, COUNT(*), SUM({eff}), MIN(ts), MAX(ts) FROM events WHERE {where} GROUP BY client, app"
        )
        return {
            (client, app): [n, int(enf or 0), us_to_ts(first), us_to_ts(last)]
            for client, app, n, enf, first, last in conn.execute(sql, [*eff_params, *params])
        }

    def bounds(self, filters: Filters) -> tuple[int, int] | None:
        """Earliest and latest event time; two single-aggregate queries, so that each is one index seek when the
        filters allow it (SQLite's min/max shortcut does not apply to ``SELECT MIN(ts), MAX(ts)``)."""
        where, params = filters.where()
        conn = self.reader()
        (lo,) = conn.execute(f"SELECT MIN(ts) FROM events WHERE {where}", params).fetchone()
        if lo is None:
            return None
        (hi,) = conn.execute(f"SELECT MAX(ts) FROM events WHERE {where}", params).fetchone()
        return int(lo), int(hi)

    def series(self, filters: Filters, bucket_us: int) -> list[tuple[int, str, int]]:
        """(bucket start in microseconds, app, attempts); from ``roll_hour`` for whole-hour buckets when it answers
        the filters."""
        if filters.rollup_ok and bucket_us % HOUR_US == 0:
            with self._snapshot() as conn:
                if _rollup_key(conn) is not None:
                    where, params = self._app_where(filters)
                    sql = (
                        f"SELECT (hour / ?) * ?, app, SUM(n) FROM roll_hour WHERE {where} AND n > 0"
                        " GROUP BY 1, 2 ORDER BY 1, 2"
                    )
                    return [(int(b), a, int(n)) for b, a, n in conn.execute(sql, [bucket_us, bucket_us, *params])]
        where, params = filters.where()
        sql = f"SELECT (ts / ?) * ?, app, COUNT(*) FROM events WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
        return [(int(b), a, int(n)) for b, a, n in self.reader().execute(sql, [bucket_us, bucket_us, *params])]

    def top_rules(self, filters: Filters, enforcement: Enforcement, limit: int = 10) -> list[dict[str, Any]]:
        rows: list[tuple[Any, ...]] | None = None
        if filters.rollup_ok:
            with self._snapshot() as conn:
                if Store.rollups_current(conn, enforcement):
                    where, params = self._app_where(filters)
                    # One roll_client row per (client, rule, app, category): COUNT(*) is the distinct clients.
                    sql = (
                        "SELECT rule, app, category, SUM(n) AS n, SUM(enforced), COUNT(*), MAX(last_us)"
                        f" FROM roll_client WHERE {where} AND n > 0 GROUP BY rule, app, category"
                        " ORDER BY n DESC, rule LIMIT ?"
                    )
                    rows = conn.execute(sql, [*params, limit]).fetchall()
        if rows is None:
            where, params = filters.where()
            conn, eff, eff_params = self._enforced(enforcement)
            sql = (
                f"SELECT rule, app, category, COUNT(*) AS n, SUM({eff}), COUNT(DISTINCT client), MAX(ts)"
                f" FROM events WHERE {where} GROUP BY rule, app, category ORDER BY n DESC, rule LIMIT ?"
            )
            rows = conn.execute(sql, [*eff_params, *params, limit]).fetchall()
        return [
            {
                "rule": rule,
                "app": app,
                "category": category,
                "hits": int(n),
                "enforced_hits": int(enf or 0),
                "clients": int(clients),
                "last_seen": us_to_ts(last),
            }
            for rule, app, category, n, enf, clients, last in rows
        ]

    def identity_rows(self, filters: Filters, enforcement: Enforcement) -> Iterator[tuple[Any, ...]]:
        """``(app, client, device_id, user, kind, ts_us, enforced)`` for the filters, streamed in the order of a
        covering index (``events_who`` by client, or ``events_app`` under an app filter): the table's documents are
        never read (the tallies sort each device's times themselves, so no other order is needed)."""
        where, params = filters.where()
        conn, _, _ = self._enforced(enforcement)
        # Both kinds: a ban app's enforced hits are non-compliance, a control app's are the report's bypass attempts
        # (identity.py tells the sections apart by app), as report.scan_range counts them.
        eff, eff_params = enforcement.sql(kind=None)
        # The order of the index that covers the filter: by app and time within an app filter (events_app), else
        # by client (events_who). Never a sort, never a read of the table's documents (a search aside).
        order = "app, ts" if filters.apps else "client, app, ts"
        sql = f"SELECT app, client, device_id, user, kind, ts, {eff} FROM events WHERE {where} ORDER BY {order}"
        yield from conn.execute(sql, [*eff_params, *params])

    def first_enforced_after(
        self, clients: Sequence[str], after_us: int, enforcement: Enforcement
    ) -> dict[str, Any] | None:
        """The earliest enforced attempt of any of ``clients`` after ``after_us`` (what reopens a remediated case)."""
        conn, eff, eff_params = self._enforced(enforcement)
        best: tuple[Any, ...] | None = None
        for client in clients:
            row = conn.execute(
                f"SELECT ts, eid, app, rule, name, client FROM events WHERE client = ? AND ts > ? AND {eff}"
                " ORDER BY ts LIMIT 1",
                [client, after_us, *eff_params],
            ).fetchone()
            if row is not None and (best is None or row[0] < best[0]):
                best = tuple(row)
        if best is None:
            return None
        ts, eid, app, rule, name, client = best
        return {
            "ts": us_to_ts(int(ts)),
            "event_id": eid.hex() if isinstance(eid, bytes) else str(eid),
            "app": app,
            "rule": rule,
            "name": name,
            "client": client,
        }

    def noncompliant(self, since_us: int, enforcement: Enforcement) -> dict[str, int]:
        """app -> distinct clients with at least one enforced attempt at or after ``since_us``.

        One query per app so that each is a range seek on ``(app, ts, ...)`` covering only the window.
        """
        conn, eff, eff_params = self._enforced(enforcement)
        sql = f"SELECT COUNT(DISTINCT client) FROM events WHERE app = ? AND ts >= ? AND {eff}"
        out: dict[str, int] = {}
        for app in self.facets().get("app", []):
            n = int(conn.execute(sql, [app, since_us, *eff_params]).fetchone()[0])
            if n:
                out[app] = n
        return out

    def last_block(self) -> dict[str, int]:
        """app -> time (microseconds) of its latest denied event; one index walk per app."""
        out: dict[str, int] = {}
        conn = self.reader()
        for app in self.facets().get("app", []):
            row = conn.execute(
                "SELECT ts FROM events WHERE app = ? AND denied = 1 ORDER BY ts DESC LIMIT 1", (app,)
            ).fetchone()
            if row is not None:
                out[app] = int(row[0])
        return out

    def iter_all(self) -> Iterator[tuple[str, int]]:
        """(eid, ts) of every stored event, for tests and diagnostics."""
        yield from self.reader().execute("SELECT eid, ts FROM events ORDER BY seq")


# -- rollups and counters (writer side) -----------------------------------------------------------------------------
def _key_text(enforcement: Enforcement) -> str:
    return json.dumps(enforcement.key())


def _rollup_key(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (ROLLUP_KEY,)).fetchone()
    return None if row is None else str(row[0])


def _add_stored(conn: sqlite3.Connection, delta: int) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)",
        (STORED_KEY, str(delta)),
    )


def _facets(rows: Iterable[Row]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for r in rows:
        out.update((("app", r[2]), ("category", r[4]), ("component", r[5])))
    return out


def _facets_of_rollup(
    hours: dict[tuple[int, str], list[int]], clients: dict[tuple[str, str, str, str], list[int]], rows: Iterable[Row]
) -> set[tuple[str, str]]:
    out = {("app", app) for _, app in hours} | {("category", category) for _, _, _, category in clients}
    out.update(("component", component) for component in {r[5] for r in rows})
    return out


# What a rollup reads of an event: (ts_us, app, client, rule, category, denied), from a ``Row`` or from the table.
RollupInput = tuple[int, str, str, str, str, int]
_ROLLED = operator.itemgetter(1, 2, 3, 7, 4, 8)  # Row -> RollupInput
_ROLLED_SQL = "ts, app, client, rule, category, denied"  # the events table -> RollupInput


def sum_rollups(
    rows: Iterable[RollupInput], enforcement: Enforcement
) -> tuple[dict[tuple[int, str], list[int]], dict[tuple[str, str, str, str], list[int]]]:
    """The one definition of both rollups: (hour, app) -> [events, enforced], and (client, app, rule, category) ->
    [events, enforced, first, last]; enforced is ``Enforcement.enforced_attempt`` (the rule ``Enforcement.sql``
    renders for the readers' fallback over the table). The parser sums each chunk's rows with it, the writer the
    rows it reads back (a chunk with duplicates, a rebuild, a retention delete)."""
    hours: dict[tuple[int, str], list[int]] = {}
    clients: dict[tuple[str, str, str, str], list[int]] = {}
    enforced_attempt = enforcement.enforced_attempt
    for ts, app, client, rule, category, denied in rows:
        enf = 1 if denied and enforced_attempt(True, app, client, ts) else 0
        hk = (ts // HOUR_US * HOUR_US, app)
        h = hours.get(hk)
        if h is None:
            hours[hk] = [1, enf]
        else:
            h[0] += 1
            h[1] += enf
        ck = (client, app, rule, category)
        c = clients.get(ck)
        if c is None:
            clients[ck] = [1, enf, ts, ts]
        else:
            c[0] += 1
            c[1] += enf
            if ts < c[2]:
                c[2] = ts
            elif ts > c[3]:
                c[3] = ts
    return hours, clients


class PendingRollups:
    """The parser's per-chunk rollups of one ingest transaction, summed here and upserted once before its commit
    (``flush``). A chunk's rollups hold about one (client, app, rule, category) row per few events at a large store,
    so upserting each chunk's was a tenth of the writer's time; the transaction's sum holds each key once (at most
    ``ingest.COMMIT_ROWS`` events' worth). Only rollups summed under the stored rollups' policy key are added
    (``Store.insert``); if that key is gone by the flush (a chunk under another policy marked the rollups stale in
    the same transaction), they are dropped with the rest, and the rebuild recomputes everything."""

    __slots__ = ("clients", "hours", "key")

    def __init__(self) -> None:
        self.key: str | None = None
        self.hours: dict[tuple[int, str], list[int]] = {}
        self.clients: dict[tuple[str, str, str, str], list[int]] = {}

    def add(self, rollup: Rollup) -> None:
        key, hours, clients, _ = rollup
        if self.key is None:
            self.key = key
        elif key != self.key:  # not Store.insert's case (it checks the stored key); kept exact anyway
            raise ValueError("rollups of two policy keys in one transaction")
        mine = self.hours
        for hk, (n, enf) in hours.items():
            h = mine.get(hk)
            if h is None:
                mine[hk] = [n, enf]
            else:
                h[0] += n
                h[1] += enf
        by_client = self.clients
        for ck, (n, enf, lo, hi) in clients.items():
            c = by_client.get(ck)
            if c is None:
                by_client[ck] = [n, enf, lo, hi]
            else:
                c[0] += n
                c[1] += enf
                if lo < c[2]:
                    c[2] = lo
                if hi > c[3]:
                    c[3] = hi

    def flush(self, conn: sqlite3.Connection) -> None:
        """Within the transaction the rollups were added in, before its commit; empties this."""
        if self.key is not None and _rollup_key(conn) == self.key:
            _upsert_rollup(conn, self.hours, self.clients)
        self.clear()

    def clear(self) -> None:
        self.key = None
        self.hours = {}
        self.clients = {}


def _upsert_rollup(
    conn: sqlite3.Connection,
    hours: dict[tuple[int, str], list[int]],
    clients: dict[tuple[str, str, str, str], list[int]],
    sign: int = 1,
) -> None:
    """Add (``sign`` +1) or take out (-1) summed rollups to/from both rollup tables."""
    conn.executemany(
        "INSERT INTO roll_hour (hour, app, n, enforced) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (hour, app) DO UPDATE SET n = n + excluded.n, enforced = enforced + excluded.enforced",
        [(hour, app, sign * n, sign * enf) for (hour, app), (n, enf) in hours.items()],
    )
    first = "MIN(first_us, excluded.first_us)" if sign > 0 else "first_us"  # a delete recomputes it afterwards
    conn.executemany(
        "INSERT INTO roll_client (client, app, rule, category, n, enforced, first_us, last_us)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (client, app, rule, category) DO UPDATE SET n = n + excluded.n,"
        f" enforced = enforced + excluded.enforced, first_us = {first}, last_us = MAX(last_us, excluded.last_us)",
        [(*key, sign * n, sign * enf, lo, hi) for key, (n, enf, lo, hi) in clients.items()],
    )


def _roll(conn: sqlite3.Connection, enforcement: Enforcement, where: str, params: list[Any], sign: int) -> None:
    """Add (``sign`` +1) or take out (-1) the events matching ``where`` (the chunk just inserted, the batch about to
    be deleted, every event for a rebuild) to/from both rollups: read back and summed by ``sum_rollups``."""
    # The cursor is read a row at a time as it is summed: memory bounded by the sums, not by the rows.
    hours, clients = sum_rollups(conn.execute(f"SELECT {_ROLLED_SQL} FROM events WHERE {where}", params), enforcement)
    _upsert_rollup(conn, hours, clients, sign)
