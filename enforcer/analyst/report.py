"""The compliance report: pure aggregations, the streaming pass over event files, and the three output formats.

- ``effective_map(policy)``: app -> canonical effective timestamp; an attempt is *enforced* when it is a denied event
  (``event.type`` ``["denied"]``) at or after its app's effective date (an app missing from the policy: any denied).
- ``parse_time(value)`` / ``parse_range(since, until)``: THE parser of time bounds, for ``--since``/``--until`` and
  the API's ``since``/``until``: RFC 3339, a date (midnight UTC), or a duration back from now (``90m``, ``24h``,
  ``7d``, ``2w``); ValueError with one line for anything else, outside 1970..9999, or ``until`` before ``since``.
- ``event_files(paths)``: files and folders -> the files to read (a folder: its ``*.jsonl`` plus rotated
  ``*.jsonl.N``; a file: itself plus its rotated siblings ``FILE.N``), oldest first, each file once (by inode).
  Entries named like event files that are not regular files are listed too, so that the caller refuses them
  (``check_files``) instead of silently skipping them.
- ``Pairs`` / ``add_event``: one entry per (client, app): attempts, enforced, first, last.
- ``stream_report(paths, ...)``: one pass over the files; ``scan_range`` is the per-line loop (``lines.line_blocks``
  and ``lines.parse_event_line``, the same reader and rule as the analyst's ingest), run in worker processes over
  byte ranges of big inputs (``workers``), merged exactly with ``merge_pairs``.
- ``build_report(pairs, ...)``: the CONTRACT JSON document (``apps`` and ``clients``); the store builds the same
  ``Pairs`` with SQL, so ``/api/report`` and ``enforcer report`` share this function.
- ``to_csv`` / ``to_table`` / ``to_json``: the output formats; ``csv_cell`` neutralises spreadsheet formulas.

Duplicates: an event is counted once per (time, ``event.id``), as the store's UNIQUE index does (the first line read
wins). The report keeps a 64-bit fingerprint per event in the selected time range (``lines.fingerprint``, about 70
bytes an event in memory); workers return theirs sorted, and a duplicate that spans two workers' ranges makes the
report take one sequential pass instead, so the first occurrence in file order wins there too.
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
import os
import re
import unicodedata
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .inventory import Inventory
from .lines import DEFAULT_MAX_FILE_BYTES, EventFileError, fingerprint, line_blocks, open_event_file, parse_event_line
from .records import MIN_TS, canonical_ts, dt_to_ts

# (client, app) -> [attempts, enforced_attempts, first_seen, last_seen]
Pairs = dict[tuple[str, str], list[Any]]

CLIENT_FIELDS = ("client", "device", "app", "attempts", "enforced_attempts", "first_seen", "last_seen")
_DURATION = re.compile(r"^(\d{1,15}(?:\.\d{1,6})?)\s*([smhdw])$", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ROTATED = re.compile(r"^(.*)\.(\d+)$")


def effective_map(policy: Any) -> dict[str, str]:
    """app -> canonical timestamp from which its denied events count as enforced."""
    if policy is None:
        return {}
    return {app: dt_to_ts(ap.effective) for app, ap in policy.apps.items()}


_FORMS = "RFC 3339, YYYY-MM-DD, or a duration like 24h / 7d"


def parse_time(value: str | None, now: datetime | None = None) -> str | None:
    """A time bound -> canonical timestamp (None for empty). Raises ValueError with one line: not a time, or outside
    1970-01-01..9999-12-31 (``0001-01-01``, ``99999999999d``)."""
    if value is None or not str(value).strip():
        return None
    v = str(value).strip()
    shown = v if len(v) <= 40 else v[:40] + "..."
    m = _DURATION.match(v.lower())
    if m:
        now = now or datetime.now(UTC)
        try:
            return dt_to_ts(now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)]))
        except (ValueError, OverflowError):
            raise ValueError(f"duration {shown!r} reaches before {MIN_TS[:10]}") from None
    if len(v) > 64 or not v.isascii():
        raise ValueError(f"invalid time {shown!r} ({_FORMS})")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            v += "T00:00:00+00:00"
        return canonical_ts(v)
    except ValueError as exc:
        detail = str(exc) if str(exc).startswith("time ") else _FORMS
        raise ValueError(f"invalid time {shown!r} ({detail})") from None


def parse_range(since: str | None, until: str | None, now: datetime | None = None) -> tuple[str | None, str | None]:
    """``--since``/``--until`` (and the API's) -> canonical bounds; ValueError (one line, naming the parameter)."""
    now = now or datetime.now(UTC)
    bounds: list[str | None] = []
    for name, value in (("since", since), ("until", until)):
        try:
            bounds.append(parse_time(value, now))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    lo, hi = bounds
    if lo is not None and hi is not None and hi < lo:
        raise ValueError(f"until ({hi}) is before since ({lo})")
    return lo, hi


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
    if path.exists() or path.is_symlink():
        out.append(path)
    return sorted(out, key=_rotation_key)


def check_files(files: Iterable[Path], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> list[EventFileError]:
    """Every file that ``open_event_file`` refuses (not a regular file, too large, unreadable), for the caller to
    report; the files are opened the same way again when they are read."""
    problems: list[EventFileError] = []
    for f in files:
        try:
            open_event_file(f, max_bytes).close()
        except EventFileError as exc:
            problems.append(exc)
    return problems


def event_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the event files to read; each physical file once."""
    seen: set[tuple[int, int]] = set()
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            bases = sorted(q for q in p.iterdir() if q.suffix == ".jsonl" or _is_rotated_jsonl(q.name))
            candidates = sorted(bases, key=_rotation_key)
        else:
            candidates = rotated_siblings(p)
        for q in candidates:
            try:
                st = q.stat()
            except OSError:
                # A dangling symlink named like an event file: listed, so that opening it says why.
                if q.is_symlink():
                    out.append(q)
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
    invalid: int = 0  # skipped lines, all reasons (``skipped`` by reason)
    recovered: int = 0  # events recovered from the tail of a torn line (counted, and their line in ``invalid``)
    duplicates: int = 0  # events read again (same time and event.id), counted once
    skipped: dict[str, int] = field(default_factory=dict)
    first_invalid: str | None = None
    missing: list[str] = field(default_factory=list)
    keys: array = field(default_factory=lambda: array("Q"))  # sorted fingerprints of the range's events (workers)

    def skip(self, reason: str) -> None:
        self.invalid += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def merge(self, other: ReportStats) -> None:
        self.lines += other.lines
        self.events += other.events
        self.invalid += other.invalid
        self.recovered += other.recovered
        self.duplicates += other.duplicates
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
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


PARALLEL_MIN_BYTES = 64 * 1024 * 1024  # below this, one process is faster than starting workers
RANGE_BYTES = 64 * 1024 * 1024


def scan_range(
    path: str,
    start: int,
    end: int | None,
    effective: dict[str, str],
    since: str | None,
    until: str | None,
    apps: tuple[str, ...],
    seen: set[int] | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> tuple[Pairs, ReportStats]:
    """Aggregate the events on the lines that *start* in ``[start, end)`` of one file (``end`` None: to EOF).

    A plain function of its arguments so that workers can run it. ``seen``: the fingerprints of events already
    counted (shared across the files of a sequential pass); without it the range dedupes on its own and returns its
    fingerprints sorted in ``stats.keys``. ``first_invalid`` is ``FILE:LINE`` for a range that starts at 0, else
    ``FILE:+LINE@BYTE`` (line counted from the range start). Raises ``EventFileError`` for a file that is not
    (any longer) a regular file of at most ``max_file_bytes``.
    """
    own = seen is None
    seen_set: set[int] = set() if seen is None else seen
    app_filter = set(apps)
    pairs: Pairs = {}
    stats = ReportStats()
    n = 0

    def bad(reason: str) -> None:
        stats.skip(reason)
        if stats.first_invalid is None:
            stats.first_invalid = f"{path}:{n}" if start == 0 else f"{path}:+{n}@{start}"

    with open_event_file(path, max_file_bytes) as fh:
        for block in line_blocks(fh, start, end):
            if block is None:
                n += 1
                stats.lines += 1
                bad("oversize")
                continue
            lines = block.split(b"\n")
            if not lines[-1]:
                lines.pop()
            last = -1 if block.endswith(b"\n") else len(lines) - 1  # the file's unterminated last line
            for i, raw in enumerate(lines):
                n += 1
                parsed, reason = parse_event_line(raw, i == last)
                if parsed is None:
                    if reason is not None:
                        stats.lines += 1
                        bad(reason)
                    continue
                stats.lines += 1
                if reason is not None:  # torn: the line is skipped, the event found at its end counts
                    bad(reason)
                    stats.recovered += 1
                rec = parsed.record
                ts = rec.ts
                if (since is not None and ts < since) or (until is not None and ts >= until):
                    continue
                fp = fingerprint(parsed.ts_us, parsed.key)
                if fp in seen_set:
                    stats.duplicates += 1
                    continue
                seen_set.add(fp)
                if app_filter and rec.app not in app_filter:
                    continue
                stats.events += 1
                add_event(pairs, ts, rec.app, rec.client, rec.denied, effective)
    if own:
        stats.keys = array("Q", sorted(seen_set))
    return pairs, stats


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


def _overlap(parts: list[array]) -> bool:
    """Whether two sorted fingerprint arrays share a value (an event seen by two workers)."""
    merged = heapq.merge(*parts)
    return any(a == b for a, b in itertools.pairwise(merged))


def stream_report(
    paths: Iterable[str | Path],
    *,
    effective: dict[str, str],
    since: str | None = None,
    until: str | None = None,
    apps: Iterable[str] = (),
    workers: int = 1,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> tuple[Pairs, ReportStats]:
    """One streaming pass over the event files. ``since`` inclusive, ``until`` exclusive (canonical timestamps).

    Memory ~ (client, app) pairs plus one fingerprint per selected event. With ``workers`` > 1 and more than
    ``PARALLEL_MIN_BYTES`` of input, the files are cut into byte ranges (at line starts) that worker processes
    aggregate; the partial results merge exactly (sums, min, max), so the figures do not depend on the number of
    workers. Raises ``EventFileError`` for a file that is not a regular file of at most ``max_file_bytes``.
    """
    paths = list(paths)
    stats = ReportStats(missing=[str(p) for p in paths if not Path(p).exists()])
    files = event_files(paths)
    problems = check_files(files, max_file_bytes)
    if problems:
        raise problems[0]
    total = sum(f.stat().st_size for f in files)
    parallel = workers > 1 and total > PARALLEL_MIN_BYTES
    tasks = _ranges(files, parallel)
    app_list = tuple(apps)
    if parallel and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pairs: Pairs = {}
        part_stats: list[ReportStats] = []
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                pool.submit(scan_range, p, s0, e0, effective, since, until, app_list, None, max_file_bytes)
                for p, s0, e0 in tasks
            ]
            for fut in futures:
                part, st = fut.result()
                merge_pairs(pairs, part)
                part_stats.append(st)
        if not _overlap([st.keys for st in part_stats]):
            for st in part_stats:
                st.keys = array("Q")
                stats.merge(st)
            return pairs, stats
        # The same event in two ranges: only one pass in file order says which occurrence counts.
    pairs = {}
    seen: set[int] = set()
    for p, s0, e0 in _ranges(files, False):
        part, st = scan_range(p, s0, e0, effective, since, until, app_list, seen, max_file_bytes)
        merge_pairs(pairs, part)
        stats.merge(st)
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


_FORMULA = frozenset("=+-@")
_CONTROL_START = ("\t", "\r", "\n")


def csv_cell(value: Any) -> Any:
    """One CSV cell, with spreadsheet formulas neutralised (OWASP CSV injection): a text that starts with a tab, CR
    or LF, or whose first non-blank character is ``= + - @`` or a compatibility form of one (full-width ``＝ ＋ － ＠``,
    small ``﹦ ﹢ ﹣ ﹫``: NFKC maps them to ASCII, and spreadsheets do the same), gets a leading ``'``, which
    spreadsheets read as "text" and which a reader strips to get the value back."""
    if value is None:
        return ""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(_CONTROL_START):
        return "'" + value
    head = value.lstrip()
    if head and (head[0] in _FORMULA or unicodedata.normalize("NFKC", head[0])[:1] in _FORMULA):
        return "'" + value
    return value


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    # RFC 4180 CRLF rows: the csv module quotes a field holding any character of the line terminator, so with
    # "\n" alone a CR inside a hostile value would go out unquoted and split the row in a spreadsheet.
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CLIENT_FIELDS)
    for row in report["clients"]:
        w.writerow([csv_cell(row[k]) for k in CLIENT_FIELDS])
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
