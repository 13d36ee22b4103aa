"""The compliance report: pure aggregations, the streaming pass over event files, and the three output formats.

- ``enforcement_of(policy)``: the policy's ``Enforcement`` table; an attempt is *enforced* when it is a denied event
  (``event.type`` ``["denied"]``) that the table enforces for its app, client and time (on or after the app's
  effective date, not from an exempt client; an app missing from the policy: any denied). The store's SQL is
  rendered from the same table (``Enforcement.sql``), so both count the same attempts.
- ``parse_time(value)`` / ``parse_range(since, until)``: THE parser of time bounds, for ``--since``/``--until`` and
  the API's ``since``/``until``: RFC 3339, a date (midnight UTC), or a duration back from now (``90m``, ``24h``,
  ``7d``, ``2w``); ValueError with one line for anything else, outside 1970..9999, or ``until`` before ``since``.
- ``Pairs`` / ``add_event``: one entry per (client, app): attempts, enforced, first, last.
- ``stream_report(paths, ...)``: one pass over the files (``files.event_files``); ``scan_range`` is the per-line loop
  (``lines.line_blocks`` and ``lines.parse_event_line``, the same reader and rule as the analyst's ingest) counting
  what a ``Selection`` picks, run in worker processes over byte ranges of big inputs (``workers``), merged exactly
  with ``merge_pairs``.
- ``build_report(pairs, ...)``: the report JSON document (``apps`` and ``clients``, README "For analysts"); the
  store builds the same ``Pairs`` with SQL, so ``/api/report`` and ``enforcer report`` share this function.
- The output formats of the document: formats.py.

Duplicates: an event is counted once per (time, ``event.id``), as the store's UNIQUE index does (the first line read
wins). The report keeps a 64-bit fingerprint per event in the selected time range (``lines.fingerprint``, about 70
bytes an event in memory); workers return theirs sorted, and a duplicate that spans two workers' ranges makes the
report take one sequential pass instead, so the first occurrence in file order wins there too.
"""

from __future__ import annotations

import heapq
import itertools
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..policy.enforcement import Enforcement
from .files import check_files, event_files
from .inventory import Inventory
from .lines import DEFAULT_MAX_FILE_BYTES, Parsed, fingerprint, line_blocks, open_event_file, parse_event_line

if TYPE_CHECKING:
    from ..policy import Policy
from .records import MIN_DATE, canonical_ts, dt_to_ts

# (client, app) -> [attempts, enforced_attempts, first_seen, last_seen]
Pairs = dict[tuple[str, str], list[Any]]

_DURATION = re.compile(r"^(\d{1,15}(?:\.\d{1,6})?)\s*([smhdw])$", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SHOWN_CHARS = 40  # of a bad time value, quoted in its error line
_MAX_TIME_CHARS = 64  # longer than any RFC 3339 spelling: refused before parsing


def enforcement_of(policy: Policy | None) -> Enforcement:
    """The rule for an enforced attempt under ``policy`` (None: no policy, every denied event is enforced)."""
    return policy.enforcement if policy is not None else Enforcement(())


_FORMS = "RFC 3339, YYYY-MM-DD, or a duration like 24h / 7d"


def parse_time(value: str | None, now: datetime | None = None) -> str | None:
    """A time bound -> canonical timestamp (None for empty). Raises ValueError with one line: not a time, or outside
    1970-01-01..9999-12-31 (``0001-01-01``, ``99999999999d``)."""
    if value is None or not str(value).strip():
        return None
    v = str(value).strip()
    shown = v if len(v) <= _SHOWN_CHARS else v[:_SHOWN_CHARS] + "..."
    m = _DURATION.match(v.lower())
    if m:
        now = now or datetime.now(UTC)
        try:
            return dt_to_ts(now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)]))
        except (ValueError, OverflowError):
            raise ValueError(f"duration {shown!r} reaches before {MIN_DATE}") from None
    if len(v) > _MAX_TIME_CHARS or not v.isascii():
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
    keys: array[int] = field(default_factory=lambda: array("Q"))  # sorted fingerprints of the range's events (workers)

    def skip(self, reason: str, where: str | None = None, *, recovered: bool = False) -> None:
        """One skipped line (``where``: its ``FILE:LINE``, kept for the first); ``recovered``: its event counts."""
        self.invalid += 1
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if recovered:
            self.recovered += 1
        if self.first_invalid is None:
            self.first_invalid = where

    def merge(self, other: ReportStats) -> None:
        self.lines += other.lines
        self.events += other.events
        self.invalid += other.invalid
        self.recovered += other.recovered
        self.duplicates += other.duplicates
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        self.first_invalid = self.first_invalid or other.first_invalid


def add_event(pairs: Pairs, ts: str, app: str, client: str, enforced: bool) -> None:
    """Count one event of ``client`` for ``app`` at ``ts``; ``enforced``: the analyst's rule said so."""
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


@dataclass(frozen=True, slots=True)
class Selection:
    """What a pass counts: the rule for an enforced attempt, the time range and the apps (empty: every app)."""

    enforcement: Enforcement
    since: str | None = None
    until: str | None = None
    apps: frozenset[str] = frozenset()


def _range_lines(fh: BinaryIO, start: int, end: int | None) -> Iterator[tuple[Parsed | None, str | None]]:
    """Every line that starts in ``[start, end)`` as ``lines.parse_event_line`` judges it (an oversize line, skipped
    unread, as ``(None, "oversize")``)."""
    for block in line_blocks(fh, start, end):
        if block is None:
            yield None, "oversize"
            continue
        lines = block.split(b"\n")
        if not lines[-1]:
            lines.pop()
        last = -1 if block.endswith(b"\n") else len(lines) - 1  # the file's unterminated last line
        for i, raw in enumerate(lines):
            yield parse_event_line(raw, i == last)


def scan_range(
    path: str,
    start: int,
    end: int | None,
    select: Selection,
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
    seen_set: set[int] = set() if seen is None else seen
    pairs: Pairs = {}
    stats = ReportStats()
    where = f"{path}:{{}}" if start == 0 else f"{path}:+{{}}@{start}"
    with open_event_file(path, max_file_bytes) as fh:
        for n, (parsed, reason) in enumerate(_range_lines(fh, start, end), 1):
            if parsed is None and reason is None:
                continue  # a blank line
            stats.lines += 1
            if reason is not None:  # skipped; "torn": the line is skipped, the event found at its end counts
                stats.skip(reason, where.format(n), recovered=parsed is not None)
            if parsed is not None:
                _count(parsed, select, seen_set, pairs, stats)
    if seen is None:
        stats.keys = array("Q", sorted(seen_set))
    return pairs, stats


def _count(parsed: Parsed, select: Selection, seen: set[int], pairs: Pairs, stats: ReportStats) -> None:
    """One event read: in the time range, once per (time, id), of a selected app -> counted in ``pairs``."""
    rec = parsed.record
    ts = rec.ts
    if (select.since is not None and ts < select.since) or (select.until is not None and ts >= select.until):
        return
    fp = fingerprint(parsed.ts_us, parsed.key)
    if fp in seen:
        stats.duplicates += 1
        return
    seen.add(fp)
    if select.apps and rec.app not in select.apps:
        return
    stats.events += 1
    enforced = select.enforcement.enforced_attempt(rec.denied, rec.app, rec.client, parsed.ts_us)
    add_event(pairs, ts, rec.app, rec.client, enforced)


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


def _overlap(parts: list[array[int]]) -> bool:
    """Whether two sorted fingerprint arrays share a value (an event seen by two workers)."""
    merged = heapq.merge(*parts)
    return any(a == b for a, b in itertools.pairwise(merged))


def stream_report(
    paths: Iterable[str | Path],
    *,
    enforcement: Enforcement,
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
    select = Selection(enforcement, since, until, frozenset(apps))
    if parallel and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pairs: Pairs = {}
        part_stats: list[ReportStats] = []
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(scan_range, p, s0, e0, select, None, max_file_bytes) for p, s0, e0 in tasks]
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
        part, st = scan_range(p, s0, e0, select, seen, max_file_bytes)
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
    """The report JSON document. Clients sorted by app, then most enforced attempts, attempts, client."""
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
