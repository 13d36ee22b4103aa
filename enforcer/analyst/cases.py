"""Cases: a non-compliant device is followed from open to acknowledged to remediated, with an append-only audit.

- ``STATES``: ``open`` -> ``acknowledged`` -> ``remediated`` (open -> remediated directly is allowed).
- ``case_key(identity)``: a case follows the identity each enforced attempt got (identity.py, in order of trust:
  ClientID, DHCP lease -> inventory device by MAC/client-id/hostname, proxy user, inventory CIDR, address): the
  inventory device's name when a row names it, else the identity's own key (``id:<ClientID>``, ``mac:<MAC>``,
  ``lease:<client-id or hostname>``, ``user:<login>``, the address). With DHCP one address is a different phone every
  few hours: each holder has its own case. The inventory name and the bare address are what cases were keyed by
  before identities existed, so a store's older cases (``identity`` empty: "legacy") keep their keys, are listed,
  and are changed and reopened like any case whose key an attempt still gets.
- ``CaseBook(store)``: the case tables of the analyst's store (``store.CASES_SCHEMA``), written through its own
  connection (SQLite serialises it with the ingester's writer; each change is one short transaction).
  ``sync(identifier, enforcement, now_us)`` reads the enforced attempts stored since its last call (by ``seq``, the
  arrival order; the position is kept in ``meta`` under ``SEQ_KEY`` with the policy it was read under,
  ``POLICY_KEY``: another policy reads the store again), identifies each at its own time, opens a case for every
  device without one and reopens a remediated case whose device made an enforced attempt after it was remediated,
  recording that hit (time, event id, app, rule, name, client, identity) as the reason. New attempts are read in
  slices of ``SYNC_CHUNK`` by seq, for at most ``SYNC_BUDGET_S`` seconds per call (the rest at the next call); when
  most of the store is new (an upgrade's first pass, a new policy) in one pass over the covering per-client index
  instead. Without leases an identity does not depend on the time, so SQL groups the attempts per (client,
  ClientID, user, app) first; with leases each attempt is identified at its own time. A call that finds another
  one running returns at once.
  ``change(device, state, note, who, now_us)`` is an analyst's transition, ``add_note(device, note, who, now_us)``
  a progress note without one; ``cases()`` lists them with their audit
  trail; ``to_csv(cases)`` is the spreadsheet-safe export.
- ``CaseError(status, message)``: a refused change (404 unknown device, 409 transition not allowed, 400 bad input).
- Every change appends one ``case_audit`` row (who, when, from, to, note, the reopening hit); audit rows are never
  updated (a trigger refuses it), and only retention deletes those of a case closed before its cut-off.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..policy.enforcement import SQL_EXEMPT_FUNCTION, Enforcement
from .formats import csv_cell
from .identity import Identifier, Identity
from .records import us_to_ts
from .store import Store

STATES = ("open", "acknowledged", "remediated")
# Target state -> the states it may be reached from by an analyst.
TRANSITIONS = {"acknowledged": ("open",), "remediated": ("open", "acknowledged")}
MAX_NOTE = 2000  # characters
AUDIT_SHOWN = 50  # audit rows returned per case (the newest)
MAX_CLIENTS = 50  # addresses kept per case (a DHCP device collects many over months): the latest ones
SYSTEM = "system"  # the "who" of automatic opening and reopening
LEGACY = "legacy"  # the identity shown for a case opened before cases followed identities (keyed by device/address)
SEQ_KEY = "cases_seq"  # meta: the last event seq read by CaseBook.sync
POLICY_KEY = "cases_policy"  # meta: the Enforcement.key() it was read under
SYNC_CHUNK = 50_000  # events (by seq) read per query
SYNC_BUDGET_S = 2.0  # per sync call: further slices wait for the next call, the pool is not held
LARGE_RANGE = 4 * SYNC_CHUNK  # more new events than this, and most of the store: one pass over the index

CSV_COLUMNS = [
    "device",
    "state",
    "owner",
    "unit",
    "clients",
    "apps",
    "opened_at",
    "updated_at",
    "updated_by",
    "note",
    "reopened_by_hit",
    "identity",
]


class CaseError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def case_key(ident: Identity) -> str:
    """The case an identified attempt belongs to: the inventory device's name, else the identity's key."""
    return ident.device or ident.key


@dataclass
class _Seen:
    """What one sync read of one device: its identity source, addresses and apps (in order), the earliest hit."""

    source: str
    clients: dict[str, None] = field(default_factory=dict)
    apps: dict[str, None] = field(default_factory=dict)
    reopen: dict[str, Any] | None = None  # the earliest enforced hit after the case was remediated
    reopen_us: int = 0


@dataclass(frozen=True)
class _Slice:
    """The enforced attempts one sync pass reads: ``rng`` (SQL on seq, bound to ``start``, ``end``) and the
    enforcement condition ``eff`` with its parameters."""

    rng: str
    start: int
    end: int
    eff: str
    eff_params: list[Any]

    def where(self) -> tuple[str, list[Any]]:
        return f"{self.rng} AND {self.eff}", [self.start, self.end, *self.eff_params]


class CaseBook:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self.store._connect()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- writes ---------------------------------------------------------------------------------------------------
    def sync(self, identifier: Identifier, enforcement: Enforcement, now_us: int) -> dict[str, int]:
        """Open the cases of new non-compliant devices; reopen remediated ones that hit again. Blocking; returns at
        once when another sync is running (it reads the same attempts)."""
        opened = reopened = 0
        deadline = time.monotonic() + SYNC_BUDGET_S
        if not self._lock.acquire(blocking=False):
            return {"opened": 0, "reopened": 0}
        try:
            conn = self._writer()
            conn.create_function(SQL_EXEMPT_FUNCTION, 2, enforcement.is_exempt, deterministic=True)
            eff, eff_params = enforcement.sql()  # ban apps only: a bypass attempt never opens a case
            policy = json.dumps(enforcement.key())
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", (SEQ_KEY, POLICY_KEY)))
            start = int(meta.get(SEQ_KEY, 0)) if meta.get(POLICY_KEY) == policy else 0
            (top,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            if start > top:
                start = 0  # the table was emptied (retention) and its rowids started again
            while True:
                # New attempts: a seek on seq, a slice at a time. A store's first pass (or a new policy), when
                # most of the store is to read: one scan of the covering per-client index (seq is in every index
                # as the rowid) instead of the table's pages with their documents (GBs at 10M events); 200k
                # events: 0.13 CPU s instead of 0.28-0.39.
                whole = self._scan_whole(int(top) - start)
                end = int(top) if whole else min(int(top), start + SYNC_CHUNK)
                rng = "+seq > ? AND +seq <= ?" if whole else "seq > ? AND seq <= ?"
                known = self._known(conn)
                part = _Slice(rng, start, end, eff, eff_params)
                read = self._grouped if identifier.leases is None else self._per_row
                groups = read(conn, identifier, known, part)
                o, r = self._apply(conn, known, groups, now_us, end, policy)
                opened, reopened, start = opened + o, reopened + r, end
                if start >= top or time.monotonic() > deadline:
                    break
        finally:
            self._lock.release()
        return {"opened": opened, "reopened": reopened}

    def _scan_whole(self, new: int) -> bool:
        """Whether ``new`` events are read in one pass over the index: many, and most of the store."""
        return new > LARGE_RANGE and new * 2 > self.store.count()

    @staticmethod
    def _known(conn: sqlite3.Connection) -> dict[str, tuple[str, int, str, str]]:
        return {
            dev: (state, upd, clients, apps)
            for dev, state, upd, clients, apps in conn.execute(
                "SELECT device, state, updated_us, clients, apps FROM cases"
            )
        }

    @staticmethod
    def _grouped(
        conn: sqlite3.Connection, identifier: Identifier, known: dict[str, tuple[str, int, str, str]], part: _Slice
    ) -> dict[str, _Seen]:
        """Without leases an identity does not depend on the time: one row per (client, ClientID, user, app) from
        SQL, and the reopening hit looked up only for a remediated case that has one."""
        seen: dict[str, _Seen] = {}
        where, params = part.where()
        for client, device_id, user, app, last in conn.execute(
            f"SELECT client, device_id, user, app, MAX(ts) FROM events WHERE {where}"
            " GROUP BY client, app, device_id, user",
            params,
        ):
            ident = identifier.identify(client, last, device_id, user)
            key = case_key(ident)
            if not key:
                continue
            s = _add(seen, key, ident, client, app)
            old = known.get(key)
            if old is None or old[0] != "remediated" or last <= old[1]:
                continue
            row = conn.execute(
                "SELECT ts, eid, rule, name FROM events WHERE client = ? AND app = ? AND ts > ?"
                f" AND device_id = ? AND user = ? AND {where} ORDER BY ts LIMIT 1",
                [client, app, old[1], device_id, user, *params],
            ).fetchone()
            if row is not None:
                _reopen(s, row[0], row[1], app, row[2], row[3], client, ident.source)
        return seen

    @staticmethod
    def _per_row(
        conn: sqlite3.Connection, identifier: Identifier, known: dict[str, tuple[str, int, str, str]], part: _Slice
    ) -> dict[str, _Seen]:
        """With leases each attempt is identified at its own time (one address, several devices over the day); the
        reopening hit's event id, rule and name are read for the one kept."""
        seen: dict[str, _Seen] = {}
        hits: dict[str, int] = {}  # device -> seq of its reopening hit
        where, params = part.where()
        for seq, ts, app, client, device_id, user in conn.execute(
            f"SELECT seq, ts, app, client, device_id, user FROM events WHERE {where}", params
        ):
            ident = identifier.identify(client, ts, device_id, user)
            key = case_key(ident)
            if not key:
                continue
            s = _add(seen, key, ident, client, app)
            old = known.get(key)
            remediated = old is not None and old[0] == "remediated" and ts > old[1]
            if remediated and _reopen(s, ts, b"", app, "", "", client, ident.source):
                hits[key] = seq
        for key, seq in hits.items():
            eid, rule, name = conn.execute("SELECT eid, rule, name FROM events WHERE seq = ?", (seq,)).fetchone()
            hit = seen[key].reopen
            if hit is not None:
                hit.update(event_id=eid.hex() if isinstance(eid, bytes) else str(eid), rule=rule, name=name)
        return seen

    def _apply(
        self,
        conn: sqlite3.Connection,
        known: dict[str, tuple[str, int, str, str]],
        seen: dict[str, _Seen],
        now_us: int,
        seq: int,
        policy: str,
    ) -> tuple[int, int]:
        """One chunk's devices into the cases, with the new read position, in one transaction."""
        opened = reopened = 0
        with _tx(conn):
            for dev, s in seen.items():
                old = known.get(dev)
                if old is None:
                    conn.execute(
                        "INSERT INTO cases (device, state, clients, apps, opened_us, updated_us, updated_by, identity)"
                        " VALUES (?, 'open', ?, ?, ?, ?, ?, ?)",
                        (dev, _merged("[]", s.clients), _merged("[]", s.apps, sort=True), now_us, now_us, SYSTEM,
                         s.source),
                    )  # fmt: skip
                    _audit(conn, dev, now_us, SYSTEM, "", "open", "", None)
                    opened += 1
                    continue
                clients, apps = _merged(old[2], s.clients), _merged(old[3], s.apps, sort=True)
                if s.reopen is not None:
                    conn.execute(
                        "UPDATE cases SET state = 'open', updated_us = ?, updated_by = ?, reopened_by = ?,"
                        " clients = ?, apps = ? WHERE device = ?",
                        (now_us, SYSTEM, json.dumps(s.reopen), clients, apps, dev),
                    )
                    _audit(conn, dev, now_us, SYSTEM, "remediated", "open", "hit again after remediation", s.reopen)
                    reopened += 1
                elif (clients, apps) != (old[2], old[3]):
                    conn.execute("UPDATE cases SET clients = ?, apps = ? WHERE device = ?", (clients, apps, dev))
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(SEQ_KEY, str(seq)), (POLICY_KEY, policy)],
            )
        return opened, reopened

    def change(self, device: str, state: str, note: str, who: str, now_us: int) -> dict[str, Any]:
        """An analyst's transition. Raises CaseError. Blocking."""
        if state not in TRANSITIONS:
            raise CaseError(400, f"state must be one of {', '.join(TRANSITIONS)}")
        if len(note) > MAX_NOTE:
            raise CaseError(400, f"note too long (max {MAX_NOTE} characters)")
        if state == "remediated" and not note.strip():
            # The audit of a closed case must say what was done: it is the record a compliance review reads.
            raise CaseError(400, "a remediated case needs a note saying what was done (e.g. WeChat removed by MDM)")
        with self._lock:
            conn = self._writer()
            with _tx(conn):
                current = _state_of(conn, device)
                if current not in TRANSITIONS[state]:
                    raise CaseError(409, f"a case in state {current} cannot become {state}")
                conn.execute(
                    "UPDATE cases SET state = ?, updated_us = ?, updated_by = ?, note = ?, reopened_by = ''"
                    " WHERE device = ?",
                    (state, now_us, who, note, device),
                )
                _audit(conn, device, now_us, who, current, state, note, None)
        found = self.cases(device)
        return found[0]

    def add_note(self, device: str, note: str, who: str, now_us: int) -> dict[str, Any]:
        """An analyst's progress note on an open or acknowledged case ("left a message", "device handed in"): one
        audit row from and to its state, and the case's latest note, time and analyst. The reopening hit of an open
        case stays shown. Raises CaseError (409 for a remediated case). Blocking."""
        if not note.strip():
            raise CaseError(400, "a note without a state change needs text")
        if len(note) > MAX_NOTE:
            raise CaseError(400, f"note too long (max {MAX_NOTE} characters)")
        with self._lock:
            conn = self._writer()
            with _tx(conn):
                current = _state_of(conn, device)
                if current == "remediated":
                    # Its time is the remediation's: sync reopens the case for an attempt after it (a note would move
                    # it past an attempt not yet read), and its note says what was done.
                    raise CaseError(409, "a remediated case takes no note; it reopens when the device tries again")
                conn.execute(
                    "UPDATE cases SET updated_us = ?, updated_by = ?, note = ? WHERE device = ?",
                    (now_us, who, note, device),
                )
                _audit(conn, device, now_us, who, current, current, note, None)
        return self.cases(device)[0]

    # -- reads ------------------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Cases per state. Blocking."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self.store.reader().execute("SELECT state, COUNT(*) FROM cases GROUP BY state"):
            out[state] = int(n)
        return out

    def cases(self, device: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """Every case (or one, or the first ``limit``), open ones first, each with its newest audit rows. Blocking."""
        conn = self.store.reader()
        where, params = ("WHERE device = ?", [device, limit]) if device is not None else ("", [limit])
        out = []
        for dev, state, clients, apps, opened, updated, by, note, reopened, source in conn.execute(
            "SELECT device, state, clients, apps, opened_us, updated_us, updated_by, note, reopened_by, identity"
            " FROM cases"
            f" {where} ORDER BY CASE state WHEN 'open' THEN 0 WHEN 'acknowledged' THEN 1 ELSE 2 END,"
            " updated_us DESC, device LIMIT ?",
            params,
        ):
            audit = [
                {
                    "at": us_to_ts(at),
                    "who": who,
                    "from": frm or None,
                    "to": to,
                    "note": anote,
                    "hit": json.loads(hit) if hit else None,
                }
                for at, who, frm, to, anote, hit in conn.execute(
                    "SELECT at_us, who, from_state, to_state, note, hit FROM case_audit WHERE device = ?"
                    " ORDER BY id DESC LIMIT ?",
                    (dev, AUDIT_SHOWN),
                )
            ]
            out.append(
                {
                    "device": dev,
                    "identity": source or LEGACY,
                    "state": state,
                    "clients": json.loads(clients),
                    "apps": json.loads(apps),
                    "opened_at": us_to_ts(opened),
                    "updated_at": us_to_ts(updated),
                    "updated_by": by,
                    "note": note,
                    "reopened_by": json.loads(reopened) if reopened else None,
                    "audit": audit,
                }
            )
        return out


def to_csv(cases: list[dict[str, Any]], owners: dict[str, tuple[str | None, str | None]]) -> str:
    """The cases as CSV (``CSV_COLUMNS``), every cell through ``formats.csv_cell`` (no spreadsheet formulas).
    ``owners``: device -> (owner, unit) from the inventory."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for c in cases:
        owner, unit = owners.get(c["device"], (None, None))
        hit = c["reopened_by"]
        reason = f"{hit['ts']} {hit['client']} {hit['app']} {hit['rule']} {hit['name']}" if hit else ""
        w.writerow(
            [
                csv_cell(v)
                for v in (
                    c["device"],
                    c["state"],
                    owner,
                    unit,
                    " ".join(c["clients"]),
                    " ".join(c["apps"]),
                    c["opened_at"],
                    c["updated_at"],
                    c["updated_by"],
                    c["note"],
                    reason,
                    c.get("identity") or LEGACY,
                )
            ]
        )
    return buf.getvalue()


def _add(seen: dict[str, _Seen], key: str, ident: Identity, client: str, app: str) -> _Seen:
    s = seen.get(key)
    if s is None:
        s = seen[key] = _Seen(ident.source)
    if client:
        s.clients.pop(client, None)
        s.clients[client] = None  # latest last
    s.apps[app] = None
    return s


def _reopen(s: _Seen, ts: int, eid: Any, app: str, rule: str, name: str, client: str, source: str) -> bool:
    """Keep the earliest hit after the remediation as the reason to reopen; whether this one is it (so far)."""
    if s.reopen is not None and ts >= s.reopen_us:
        return False
    s.reopen_us = ts
    s.reopen = {
        "ts": us_to_ts(int(ts)),
        "event_id": eid.hex() if isinstance(eid, bytes) else str(eid),
        "app": app,
        "rule": rule,
        "name": name,
        "client": client,
        "identity": source,
    }
    return True


def _merged(old: str, new: dict[str, None], *, sort: bool = False) -> str:
    """The JSON list ``old`` with the values of ``new`` (moved to the end, the latest last), at most MAX_CLIENTS."""
    values = [v for v in json.loads(old) if v not in new] + list(new)
    return json.dumps(sorted(values) if sort else values[-MAX_CLIENTS:])


class _tx:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` (``ROLLBACK`` on an exception) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _state_of(conn: sqlite3.Connection, device: str) -> str:
    """The case's state (inside the caller's transaction); CaseError 404 when the device has none."""
    row = conn.execute("SELECT state FROM cases WHERE device = ?", (device,)).fetchone()
    if row is None:
        raise CaseError(404, f"no case for device {device!r}")
    return str(row[0])


def _audit(
    conn: sqlite3.Connection,
    device: str,
    at_us: int,
    who: str,
    frm: str,
    to: str,
    note: str,
    hit: dict[str, Any] | None,
) -> None:
    conn.execute(
        "INSERT INTO case_audit (device, at_us, who, from_state, to_state, note, hit) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (device, at_us, who, frm, to, note, json.dumps(hit) if hit else ""),
    )
