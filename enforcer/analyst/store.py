"""The analyst's SQLite event store: one table of events, indexed for the questions analysts ask.

- Schema (``SCHEMA``): ``events`` (``seq`` rowid in arrival order, ``ts`` integer microseconds UTC, ``eid`` =
  ``event.id`` (16-byte blob for the writer's uuid4 hex), app, client, category, component, action, rule, denied,
  name, and ``doc`` the ECS JSON line as read, UTF-8 bytes). Indexes: UNIQUE ``(ts, eid)`` is both the dedupe key
  (an event seen twice has the same time and id, and is stored once) and the time index; unlike a UNIQUE index on
  the random id alone, inserts land at its end, which keeps ingest fast as the store grows. ``(app, ts, denied,
  category, component, rule, client)`` and ``(client, app, ts, denied, category, component)`` cover the per-app and
  per-client aggregations (report pairs, chart, top rules, gauges, filters) without reading the table. ``files`` =
  ingest offsets per physical file (device, inode, first bytes, offset), committed in the same transaction as the
  events they cover, so a restart neither loses nor repeats lines; ``facets`` = distinct apps/categories/components
  for the filters.
- ``Store(path)``: opens/creates the database (WAL, synchronous=NORMAL). ``writer()`` is the one write connection
  (used by the ingest thread only); every other method reads through a per-thread connection, so handlers can run
  them in a thread pool while the ingester writes (WAL: readers never wait for the writer).
- ``Filters``: the dashboard/API filters (apps, clients, categories, components, since/until in microseconds).
- Reads: ``events`` (newest first, keyset cursor ``(ts, eid)``), ``pairs`` (what ``report.build_report`` needs),
  ``series`` (attempts per app per time bucket), ``top_rules``, ``noncompliant`` (distinct clients per app with
  enforced attempts since a time), ``last_block`` (per app), ``bounds``, ``facets``, ``count``.

Enforced attempts in SQL: rendered from the policy's ``Enforcement`` table (``Enforcement.sql``: ``denied``, ``ts`` at
or after the app's effective date, the client not exempt), the same table ``report.scan_range`` asks in Python
(``_enforced``).
"""

from __future__ import annotations

import contextlib
import json
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
    doc BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_ts_eid ON events (ts, eid);
CREATE INDEX IF NOT EXISTS events_app ON events (app, ts, denied, category, component, rule, client);
CREATE INDEX IF NOT EXISTS events_client ON events (client, app, ts, denied, category, component);
CREATE TABLE IF NOT EXISTS files (
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    head BLOB NOT NULL,
    offset INTEGER NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (dev, ino)
);
CREATE TABLE IF NOT EXISTS facets (kind TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, value));
"""

INSERT = (
    "INSERT OR IGNORE INTO events (eid, ts, app, client, category, component, action, rule, denied, name, doc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One stored row as inserted: eid, ts_us, app, client, category, component, action, rule, denied, name, doc.
Row = tuple[str | bytes, int, str, str, str, str, str, str, int, str, bytes]


@dataclass(frozen=True, slots=True)
class Filters:
    apps: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    since: int | None = None  # microseconds, inclusive
    until: int | None = None  # microseconds, exclusive

    def where(self) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
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
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            conn.commit()

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
        # The index pages that ingest touches stay in memory (a 1M-event store has ~150 MB of indexes).
        conn.execute("PRAGMA cache_size=-262144")
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
    def insert(conn: sqlite3.Connection, rows: Sequence[Row]) -> int:
        """Insert within the caller's transaction; returns how many rows were new (the rest were duplicates)."""
        before = conn.total_changes
        conn.executemany(INSERT, rows)
        inserted = conn.total_changes - before
        facets = (
            {("app", r[2]) for r in rows} | {("category", r[4]) for r in rows} | {("component", r[5]) for r in rows}
        )
        conn.executemany("INSERT OR IGNORE INTO facets (kind, value) VALUES (?, ?)", sorted(facets))
        return inserted

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
    def count(self) -> int:
        """Stored events. Rows are never deleted and ignored duplicates take no rowid, so the largest rowid is the
        count, read in O(1) instead of a COUNT(*) scan."""
        return int(self.reader().execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

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

    def pairs(self, filters: Filters, enforcement: Enforcement) -> dict[tuple[str, str], list[Any]]:
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
        where, params = filters.where()
        lo, hi = self.reader().execute(f"SELECT MIN(ts), MAX(ts) FROM events WHERE {where}", params).fetchone()
        return None if lo is None else (int(lo), int(hi))

    def series(self, filters: Filters, bucket_us: int) -> list[tuple[int, str, int]]:
        """(bucket start in microseconds, app, attempts)."""
        where, params = filters.where()
        sql = f"SELECT (ts / ?) * ?, app, COUNT(*) FROM events WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2"
        return [(int(b), a, int(n)) for b, a, n in self.reader().execute(sql, [bucket_us, bucket_us, *params])]

    def top_rules(self, filters: Filters, enforcement: Enforcement, limit: int = 10) -> list[dict[str, Any]]:
        where, params = filters.where()
        conn, eff, eff_params = self._enforced(enforcement)
        sql = (
            f"SELECT rule, app, category, COUNT(*) AS n, SUM({eff}), COUNT(DISTINCT client), MAX(ts)"
            f" FROM events WHERE {where} GROUP BY rule, app, category ORDER BY n DESC, rule LIMIT ?"
        )
        return [
            {
                "rule": rule,
                "app": app,
                "category": category,
                "attempts": n,
                "enforced_attempts": int(enf or 0),
                "clients": clients,
                "last_seen": us_to_ts(last),
            }
            for rule, app, category, n, enf, clients, last in conn.execute(sql, [*eff_params, *params, limit])
        ]

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
