"""Cases: a non-compliant device is followed from open to acknowledged to remediated, with an append-only audit.

- ``STATES``: ``open`` -> ``acknowledged`` -> ``remediated`` (open -> remediated directly is allowed). A case is
  keyed by its device: the inventory device name, else the client address.
- ``CaseBook(store)``: the case tables of the analyst's store (``store.CASES_SCHEMA``), written through its own
  connection (SQLite serialises it with the ingester's writer; each change is one short transaction).
  ``sync(rows, enforcement, now_us)`` opens a case for every non-compliant device without one and reopens a
  remediated case whose device made an enforced attempt after it was remediated, recording that hit (time, event
  id, app, rule, name, client) as the reason; ``change(device, state, note, who, now_us)`` is an analyst's
  transition; ``cases()`` lists them with their audit trail; ``to_csv(cases)`` is the spreadsheet-safe export.
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
from collections.abc import Iterable
from typing import Any

from ..policy.enforcement import Enforcement
from .formats import csv_cell
from .records import us_to_ts
from .store import Store

STATES = ("open", "acknowledged", "remediated")
# Target state -> the states it may be reached from by an analyst.
TRANSITIONS = {"acknowledged": ("open",), "remediated": ("open", "acknowledged")}
MAX_NOTE = 2000  # characters
AUDIT_SHOWN = 50  # audit rows returned per case (the newest)
SYSTEM = "system"  # the "who" of automatic opening and reopening

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
]


class CaseError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def case_key(row: dict[str, Any]) -> str:
    """The device a non-compliant row belongs to: its inventory device, else its address."""
    return str(row.get("device") or row.get("client") or "")


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
    def sync(self, rows: Iterable[dict[str, Any]], enforcement: Enforcement, now_us: int) -> dict[str, int]:
        """Open the cases of new non-compliant devices; reopen remediated ones that hit again. Blocking."""
        devices: dict[str, dict[str, set[str]]] = {}
        for r in rows:
            key = case_key(r)
            if key:
                d = devices.setdefault(key, {"clients": set(), "apps": set()})
                d["clients"].add(str(r.get("client") or ""))
                d["apps"].add(str(r.get("app") or ""))
        opened = reopened = 0
        with self._lock:
            conn = self._writer()
            known = {
                dev: (state, upd, clients, apps)
                for dev, state, upd, clients, apps in conn.execute(
                    "SELECT device, state, updated_us, clients, apps FROM cases"
                )
            }
            reopen: list[tuple[str, str, str, dict[str, Any]]] = []
            # New cases and changed client lists: one transaction for all of them.
            with _tx(conn):
                for dev, info in devices.items():
                    clients = json.dumps(sorted(c for c in info["clients"] if c))
                    apps = json.dumps(sorted(a for a in info["apps"] if a))
                    if dev not in known:
                        conn.execute(
                            "INSERT INTO cases (device, state, clients, apps, opened_us, updated_us, updated_by)"
                            " VALUES (?, 'open', ?, ?, ?, ?, ?)",
                            (dev, clients, apps, now_us, now_us, SYSTEM),
                        )
                        _audit(conn, dev, now_us, SYSTEM, "", "open", "", None)
                        opened += 1
                        continue
                    state, updated_us, old_clients, old_apps = known[dev]
                    if state == "remediated":
                        hit = self.store.first_enforced_after(json.loads(clients), updated_us, enforcement)
                        if hit is not None:
                            reopen.append((dev, clients, apps, hit))
                    elif (clients, apps) != (old_clients, old_apps):
                        conn.execute("UPDATE cases SET clients = ?, apps = ? WHERE device = ?", (clients, apps, dev))
                for dev, clients, apps, hit in reopen:
                    conn.execute(
                        "UPDATE cases SET state = 'open', updated_us = ?, updated_by = ?, reopened_by = ?,"
                        " clients = ?, apps = ? WHERE device = ?",
                        (now_us, SYSTEM, json.dumps(hit), clients, apps, dev),
                    )
                    _audit(conn, dev, now_us, SYSTEM, "remediated", "open", "hit again after remediation", hit)
                    reopened += 1
        return {"opened": opened, "reopened": reopened}

    def change(self, device: str, state: str, note: str, who: str, now_us: int) -> dict[str, Any]:
        """An analyst's transition. Raises CaseError. Blocking."""
        if state not in TRANSITIONS:
            raise CaseError(400, f"state must be one of {', '.join(TRANSITIONS)}")
        if len(note) > MAX_NOTE:
            raise CaseError(400, f"note too long (max {MAX_NOTE} characters)")
        with self._lock:
            conn = self._writer()
            with _tx(conn):
                row = conn.execute("SELECT state FROM cases WHERE device = ?", (device,)).fetchone()
                if row is None:
                    raise CaseError(404, f"no case for device {device!r}")
                current = row[0]
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
        for dev, state, clients, apps, opened, updated, by, note, reopened in conn.execute(
            "SELECT device, state, clients, apps, opened_us, updated_us, updated_by, note, reopened_by FROM cases"
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
                )
            ]
        )
    return buf.getvalue()


class _tx:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` (``ROLLBACK`` on an exception) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


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
