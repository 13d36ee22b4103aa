"""The compliance report: pure aggregations, the streaming pass over event files, and the three output formats.

- ``effective_map(policy)``: app -> canonical effective timestamp; an attempt is *enforced* when it is a denied event
  (``event.type`` ``["denied"]``) at or after its app's effective date (an app missing from the policy: any denied).
- ``parse_time(value)``: ``--since``/``--until`` values: RFC 3339, a date (midnight UTC), or a duration back from
  now (``90m``, ``24h``, ``7d``, ``2w``).
- ``event_files(paths)``: files and folders -> the files to read (a folder: its ``*.jsonl`` plus rotated
  ``*.jsonl.N``; a file: itself plus its rotated siblings ``FILE.N``), oldest first, each file once (by inode).
- ``Pairs`` / ``add_event``: the only state, one entry per (client, app): attempts, enforced, first, last.
- ``stream_report(paths, ...)``: one pass over the files, memory ~ number of (client, app) pairs, never ~ events;
  ``scan_range`` is the per-line loop (bytes, writer-shaped lines without a JSON parse), run in worker processes
  over byte ranges of big inputs (``workers``), merged exactly with ``merge_pairs``.
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
from collections.abc import Iterable, Iterator
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

    def merge(self, other: ReportStats) -> None:
        self.lines += other.lines
        self.events += other.events
        self.invalid += other.invalid
        self.recovered += other.recovered
        self.first_invalid = self.first_invalid or other.first_invalid


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


def merge_pairs(into: Pairs, other: Pairs) -> None:
    for key, (n, enf, first, last) in other.items():
        entry = into.get(key)
        if entry is None:
            into[key] = [n, enf, first, last]
        else:
            entry[0] += n
            entry[1] += enf
            entry[2] = min(entry[2], first)
            entry[3] = max(entry[3], last)


# Byte markers of the writer's own line shape (see records.fast_fields for why substring search is sound).
_B_HEAD = b'{"@timestamp":"'
_B_RULESET = b'"ruleset":"'
_B_SOURCE_IP = b'"source":{"ip":"'
_B_SOURCE = b'"source":'
_B_DENIED = b'"type":["denied"]'
_B_ALLOWED = b'"type":["allowed"]'
_READ = 1024 * 1024
PARALLEL_MIN_BYTES = 64 * 1024 * 1024  # below this, one process is faster than starting workers
RANGE_BYTES = 64 * 1024 * 1024


def _slow_fields(line: bytes) -> tuple[bytes, bytes, bytes, bool] | None:
    """Any other line: full JSON parse (and recovery of a torn line's whole tail); values as bytes."""
    f = fast_fields(line.decode("utf-8", "replace"))
    if f is None:
        return None
    return f[0].encode(), f[1].encode(), f[2].encode(), f[3]


def _range_chunks(path: str, start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """(byte offset, whole lines) of the lines that start in ``[start, end)``; the last piece may lack a newline."""
    with open(path, "rb") as fh:
        pos = start
        if start > 0:
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                pos += len(fh.readline())  # the line in progress belongs to the previous range
        fh.seek(pos)
        rest = b""
        while True:
            data = fh.read(_READ)
            if not data:
                if rest:
                    yield pos, rest
                return
            data = rest + data
            if end is not None and pos + len(data) >= end:
                # The line holding byte end-1 starts in this range: take it whole, then stop.
                cut = data.find(b"\n", max(0, end - pos - 1))
                while cut < 0:
                    more = fh.read(_READ)
                    if not more:
                        break
                    data += more
                    cut = data.find(b"\n", max(0, end - pos - 1))
                if end > pos:
                    yield pos, data[: cut + 1] if cut >= 0 else data
                return
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            yield pos, data[: cut + 1]
            rest = data[cut + 1 :]
            pos += cut + 1


def scan_range(
    path: str,
    start: int,
    end: int | None,
    effective: dict[str, str],
    since: str | None,
    until: str | None,
    apps: tuple[str, ...],
) -> tuple[Pairs, ReportStats]:
    """Aggregate the lines that *start* in ``[start, end)`` of one file (``end`` None: to EOF).

    Works on bytes (no UTF-8 decode for the writer's lines) and decodes only the (client, app) keys at the end. A
    plain function of its arguments so that workers can run it. ``first_invalid`` is ``FILE:LINE`` for a range that
    starts at 0, else ``FILE:+LINE@BYTE`` (line counted from the range start).
    """
    eff = {k.encode(): v.encode() for k, v in effective.items()}
    eff_get = eff.get
    since_b = since.encode() if since else None
    until_b = until.encode() if until else None
    app_filter = {a.encode() for a in apps}
    pairs: dict[tuple[bytes, bytes], list[Any]] = {}
    pairs_get = pairs.get
    stats = ReportStats()
    events = 0
    lines_before = 0
    for _, data in _range_chunks(path, start, end):
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        stats.lines += len(lines)
        for i, line in enumerate(lines):
            # Fast path, inlined: this loop runs once per event (see records.fast_fields for why it is sound).
            f: tuple[bytes, bytes, bytes, bool] | None = None
            if (
                line[:15] == _B_HEAD
                and line[-1:] == b"}"
                and line.count(b"{") == line.count(b"}")
                and line.find(_B_HEAD, 1) < 0
                and line[42:43] == b'"'
            ):
                j = line.find(_B_RULESET)
                if j >= 0:
                    j += 11
                    app = line[j : line.find(b'"', j)]
                    denied = True if _B_DENIED in line else (False if _B_ALLOWED in line else None)
                    j = line.find(_B_SOURCE_IP)
                    if j >= 0:
                        j += 16
                        client = line[j : line.find(b'"', j)]
                    elif _B_SOURCE in line:
                        denied = None  # source present but not in writer order: parse fully
                    else:
                        client = b""
                    if denied is not None and app and b"\\" not in app and b"\\" not in client:
                        f = (line[15:42], app, client, denied)
            if f is None:
                line = line.strip()
                if not line:
                    stats.lines -= 1  # blank lines are not lines of the log
                    continue
                f = _slow_fields(line)
                if f is None:
                    stats.invalid += 1
                    if stats.first_invalid is None:
                        n = lines_before + i + 1
                        stats.first_invalid = f"{path}:{n}" if start == 0 else f"{path}:+{n}@{start}"
                    tail = recover(line.decode("utf-8", "replace"))
                    f = _slow_fields(tail.encode()) if tail else None
                    if f is None:
                        continue
                    stats.recovered += 1
            ts, app, client, denied = f
            if (since_b is not None and ts < since_b) or (until_b is not None and ts >= until_b):
                continue
            if app_filter and app not in app_filter:
                continue
            events += 1
            enforced = denied and ts >= eff_get(app, b"")
            entry = pairs_get((client, app))
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
        lines_before += len(lines)
    stats.events = events
    out: Pairs = {
        (c.decode("utf-8", "replace"), a.decode("utf-8", "replace")): [n, e, first.decode(), last.decode()]
        for (c, a), (n, e, first, last) in pairs.items()
    }
    return out, stats


def _ranges(files: list[Path], parallel: bool) -> list[tuple[str, int, int | None]]:
    out: list[tuple[str, int, int | None]] = []
    for p in files:
        size = p.stat().st_size
        if not parallel or size <= RANGE_BYTES:
            out.append((str(p), 0, None))
            continue
        starts = list(range(0, size, RANGE_BYTES))
        for i, s0 in enumerate(starts):
            out.append((str(p), s0, starts[i + 1] if i + 1 < len(starts) else None))
    return out


def stream_report(
    paths: Iterable[str | Path],
    *,
    effective: dict[str, str],
    since: str | None = None,
    until: str | None = None,
    apps: Iterable[str] = (),
    workers: int = 1,
) -> tuple[Pairs, ReportStats]:
    """One streaming pass over the event files. ``since`` inclusive, ``until`` exclusive (canonical timestamps).

    Memory ~ (client, app) pairs per worker. With ``workers`` > 1 and more than ``PARALLEL_MIN_BYTES`` of input,
    the files are cut into byte ranges (at line starts) that worker processes aggregate; the partial results merge
    exactly (sums, min, max), so the figures do not depend on the number of workers.
    """
    paths = list(paths)
    stats = ReportStats(missing=[str(p) for p in paths if not Path(p).exists()])
    files = event_files(paths)
    total = sum(f.stat().st_size for f in files)
    parallel = workers > 1 and total > PARALLEL_MIN_BYTES
    tasks = _ranges(files, parallel)
    pairs: Pairs = {}
    app_list = tuple(apps)
    if parallel and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(scan_range, p, s0, e0, effective, since, until, app_list) for p, s0, e0 in tasks]
            for fut in futures:
                part, part_stats = fut.result()
                merge_pairs(pairs, part)
                stats.merge(part_stats)
    else:
        for p, s0, e0 in tasks:
            part, part_stats = scan_range(p, s0, e0, effective, since, until, app_list)
            merge_pairs(pairs, part)
            stats.merge(part_stats)
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
