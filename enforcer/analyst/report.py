"""The compliance report: pure aggregations, the streaming pass over event files, and the three output formats.

- ``effective_map(policy)``: app -> canonical effective timestamp; an attempt is *enforced* when it is a denied event
  (``event.type`` ``["denied"]``) at or after its app's effective date (an app missing from the policy: any denied).
- ``parse_time(value)``: ``--since``/``--until`` values: RFC 3339, a date (midnight UTC), or a duration back from
  now (``90m``, ``24h``, ``7d``, ``2w``).
- ``event_files(paths)``: files and folders -> the files to read (a folder: its ``*.jsonl`` plus rotated
  ``*.jsonl.N``; a file: itself plus its rotated siblings ``FILE.N``), oldest first, each file once (by inode).
- ``Pairs`` / ``add_event``: the only state, one entry per (client, app): attempts, enforced, first, last.
- ``stream_report(paths, ...)``: one pass over the files, memory ~ number of (client, app) pairs, never ~ events.
- ``build_report(pairs, ...)``: the CONTRACT JSON document (``apps`` and ``clients``); the store builds the same
  ``Pairs`` with SQL, so ``/api/report`` and ``enforcer report`` share this function.
- ``to_csv`` / ``to_table`` / ``to_json``: the output formats.

Duplicates: the report counts event *lines*; it does not dedupe by ``event.id`` because that needs memory ~ events
(10M ids is ~1 GB in Python). A line is only ever written once by ``EventWriter`` (rotation renames, it never
copies), and a file named twice (directly and through its folder) is read once, so lines == events in practice;
the SQLite store, which has an index anyway, dedupes by ``event.id``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .inventory import Inventory
from .records import canonical_ts, dt_to_ts, fast_fields, recover

# (client, app) -> [attempts, enforced_attempts, first_seen, last_seen]
Pairs = dict[tuple[str, str], list[Any]]

CLIENT_FIELDS = ("client", "device", "app", "attempts", "enforced_attempts", "first_seen", "last_seen")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ROTATED = re.compile(r"^(.*)\.(\d+)$")


def effective_map(policy: Any) -> dict[str, str]:
    """app -> canonical timestamp from which its denied events count as enforced."""
    if policy is None:
        return {}
    return {app: dt_to_ts(ap.effective) for app, ap in policy.apps.items()}


def parse_time(value: str | None, now: datetime | None = None) -> str | None:
    """A time bound -> canonical timestamp (None for empty). Raises ValueError with the reason."""
    if value is None or not str(value).strip():
        return None
    v = str(value).strip()
    m = _DURATION.match(v.lower())
    if m:
        now = now or datetime.now(UTC)
        return dt_to_ts(now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)]))
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            v += "T00:00:00+00:00"
        return canonical_ts(v)
    except ValueError:
        raise ValueError(f"invalid time {value!r} (RFC 3339, YYYY-MM-DD, or a duration like 24h / 7d)") from None


def _rotation_key(path: Path) -> tuple[str, int]:
    m = _ROTATED.match(path.name)
    if m and m.group(2).isdigit():
        return m.group(1), -int(m.group(2))  # oldest rotation (highest N) first
    return path.name, 0


def rotated_siblings(path: Path) -> list[Path]:
    """``path`` and its rotations ``path.1`` .. ``path.N`` that exist, oldest first."""
    out: list[Path] = []
    parent = path.parent if str(path.parent) else Path(".")
    prefix = path.name + "."
    try:
        names = os.listdir(parent)
    except OSError:
        names = []
    for name in names:
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            out.append(parent / name)
    if path.exists():
        out.append(path)
    return sorted(out, key=_rotation_key)


def event_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the event files to read; each physical file once."""
    seen: set[tuple[int, int]] = set()
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            bases = sorted(
                q for q in p.iterdir() if q.is_file() and (q.suffix == ".jsonl" or _is_rotated_jsonl(q.name))
            )
            candidates = sorted(bases, key=_rotation_key)
        else:
            candidates = rotated_siblings(p)
        for q in candidates:
            try:
                st = q.stat()
            except OSError:
                continue
            ident = (st.st_dev, st.st_ino)
            if ident not in seen:
                seen.add(ident)
                out.append(q)
    return out


def _is_rotated_jsonl(name: str) -> bool:
    m = _ROTATED.match(name)
    return bool(m and m.group(1).endswith(".jsonl"))


@dataclass
class ReportStats:
    lines: int = 0
    events: int = 0
    invalid: int = 0
    recovered: int = 0
    first_invalid: str | None = None
    missing: list[str] = field(default_factory=list)


def add_event(pairs: Pairs, ts: str, app: str, client: str, denied: bool, effective: dict[str, str]) -> None:
    enforced = denied and ts >= effective.get(app, "")
    entry = pairs.get((client, app))
    if entry is None:
        pairs[(client, app)] = [1, 1 if enforced else 0, ts, ts]
        return
    entry[0] += 1
    if enforced:
        entry[1] += 1
    if ts < entry[2]:
        entry[2] = ts
    elif ts > entry[3]:
        entry[3] = ts


def stream_report(
    paths: Iterable[str | Path],
    *,
    effective: dict[str, str],
    since: str | None = None,
    until: str | None = None,
    apps: Iterable[str] = (),
) -> tuple[Pairs, ReportStats]:
    """One streaming pass over the event files. ``since`` inclusive, ``until`` exclusive (canonical timestamps)."""
    pairs: Pairs = {}
    stats = ReportStats()
    app_filter = set(apps)
    eff_get = effective.get
    for raw in paths:
        if not Path(raw).exists():
            stats.missing.append(str(raw))
    for path in event_files(paths):
        with open(path, encoding="utf-8", errors="replace", newline="\n") as fh:
            for lineno, raw_line in enumerate(fh, 1):
                line = raw_line.rstrip()
                if not line:
                    continue
                stats.lines += 1
                f = fast_fields(line)
                if f is None:
                    stats.invalid += 1
                    if stats.first_invalid is None:
                        stats.first_invalid = f"{path}:{lineno}"
                    tail = recover(line)
                    f = fast_fields(tail) if tail else None
                    if f is None:
                        continue
                    stats.recovered += 1
                ts, app, client, denied = f
                if (since is not None and ts < since) or (until is not None and ts >= until):
                    continue
                if app_filter and app not in app_filter:
                    continue
                stats.events += 1
                # add_event inlined: this loop runs once per event.
                enforced = denied and ts >= eff_get(app, "")
                entry = pairs.get((client, app))
                if entry is None:
                    pairs[(client, app)] = [1, 1 if enforced else 0, ts, ts]
                    continue
                entry[0] += 1
                if enforced:
                    entry[1] += 1
                if ts < entry[2]:
                    entry[2] = ts
                elif ts > entry[3]:
                    entry[3] = ts
    return pairs, stats


def build_report(
    pairs: Pairs,
    *,
    inventory: Inventory | None = None,
    since: str | None = None,
    until: str | None = None,
    generated_at: str | None = None,
) -> dict[str, Any]:
    """The CONTRACT document. Clients sorted by app, then most enforced attempts, attempts, client."""
    apps: dict[str, list[Any]] = {}
    clients: list[dict[str, Any]] = []
    for (client, app), (attempts, enforced, first, last) in pairs.items():
        a = apps.get(app)
        if a is None:
            apps[app] = [attempts, 1, first, last]
        else:
            a[0] += attempts
            a[1] += 1
            a[2] = min(a[2], first)
            a[3] = max(a[3], last)
        dev = inventory.lookup(client) if inventory is not None and client else None
        clients.append(
            {
                "client": client or None,
                "device": dev.device if dev else None,
                "app": app,
                "attempts": attempts,
                "enforced_attempts": enforced,
                "first_seen": first,
                "last_seen": last,
            }
        )
    clients.sort(key=lambda c: (c["app"], -c["enforced_attempts"], -c["attempts"], c["client"] or ""))
    return {
        "generated_at": generated_at or dt_to_ts(datetime.now(UTC)),
        "since": since,
        "until": until,
        "apps": [
            {"app": app, "attempts": v[0], "clients": v[1], "first_seen": v[2], "last_seen": v[3]}
            for app, v in sorted(apps.items())
        ],
        "clients": clients,
    }


def _csv_cell(value: Any) -> Any:
    # A cell starting with = + - @ is a formula in spreadsheets (CSV injection); quote it as text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CLIENT_FIELDS)
    for row in report["clients"]:
        w.writerow([_csv_cell(row[k]) for k in CLIENT_FIELDS])
    return buf.getvalue()


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _printable(value: Any) -> str:
    # Terminal output: control characters in event data must not move the cursor or recolour the screen.
    text = "-" if value is None else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def to_table(report: dict[str, Any]) -> str:
    lines = [
        f"Compliance report  generated {report['generated_at']}  "
        f"since {report['since'] or '-'}  until {report['until'] or '-'}",
        "",
    ]
    lines += _table(
        ["APP", "ATTEMPTS", "CLIENTS", "FIRST SEEN", "LAST SEEN"],
        [
            [_printable(a["app"]), str(a["attempts"]), str(a["clients"]), a["first_seen"], a["last_seen"]]
            for a in report["apps"]
        ],
        {1, 2},
    )
    lines.append("")
    lines += _table(
        ["CLIENT", "DEVICE", "APP", "ATTEMPTS", "ENFORCED", "FIRST SEEN", "LAST SEEN"],
        [
            [
                _printable(c["client"]),
                _printable(c["device"]),
                _printable(c["app"]),
                str(c["attempts"]),
                str(c["enforced_attempts"]),
                c["first_seen"],
                c["last_seen"],
            ]
            for c in report["clients"]
        ],
        {3, 4},
    )
    if not report["clients"]:
        lines.append("(no events)")
    return "\n".join(lines) + "\n"


FORMATTERS = {"json": to_json, "csv": to_csv, "table": to_table}
