"""The compliance report: pure aggregations, the streaming pass over event files, and the three output formats.

- ``enforcement_of(policy)``: the policy's ``Enforcement`` table; an attempt is *enforced* when it is a denied event
  (``event.type`` ``["denied"]``) that the table enforces for its app, client and time (on or after the app's
  effective date, not from an exempt client; an app missing from the policy: any denied). The store's SQL is
  rendered from the same table (``Enforcement.sql``), so both count the same attempts.
- ``parse_time(value)`` / ``parse_range(since, until)``: THE parser of time bounds, for ``--since``/``--until`` and
  the API's ``since``/``until``: RFC 3339, a date (midnight UTC), or a duration back from now (``90m``, ``24h``,
  ``7d``, ``2w``); ValueError with one line for anything else, outside 1970..9999, or ``until`` before ``since``.
- ``stream_report(paths, ...)``: one pass over the files (``files.event_files``); ``scan_range`` is the per-line loop
  (``lines.line_blocks`` and ``lines.parse_event_line``, the same reader and rule as the analyst's ingest) counting
  what a ``Selection`` picks into ``identity.Tallies`` (per identified device and app: hits and their times), run in
  worker processes over byte ranges of big inputs (``workers``), merged exactly with ``identity.merge_tallies``.
- ``build_report(tallies, ...)``: the report JSON document (``apps``, ``clients`` and ``bypass``, README "For
  analysts"): per row the raw ``hits`` and the ``attempts`` (bursts within ``--attempt-window``), and which source
  identified the device; the analyst builds the same ``Tallies`` from the store (``identity.tally_store_rows``), so
  ``/api/report`` and ``enforcer report`` share this function.
- ``pairs_of(tallies)``: the per-address ``Pairs`` (client, app) -> [hits, enforced hits, first, last] that the
  store's SQL aggregation (``Store.pairs``) also gives, for comparing both.
- ``unknown_apps(requested, policy, stats)``: ``--app`` names that neither the policy nor the events know.
- The output formats of the document: formats.py.

Duplicates: an event is counted once per (time, ``event.id``), as the store's UNIQUE index does (the first line read
wins). The report keeps a 64-bit fingerprint per event in the selected time range (``lines.fingerprint``). A
sequential pass looks each up in a set (about 70 bytes an event in memory). A worker appends each to its bucket
(``Keys``, 8 bytes an event) and checks its range for a repeat once the range is read (a range with one is counted
again exactly, with the set); it writes them by bucket to a temporary folder, where the workers then check a share
of the buckets each across all ranges (the main process never holds them), and a duplicate that spans two ranges
makes the report take one sequential pass instead, so the first occurrence in file order wins there too.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import os
import re
import secrets
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..policy.enforcement import Enforcement
from .files import check_files, event_files
from .identity import (
    BYPASS,
    CLIENT,
    CONTROL_KIND,
    DEFAULT_WINDOW_S,
    ENFORCED,
    FIRST,
    HITS,
    LAST,
    TIMES,
    USER,
    Identifier,
    Identity,
    Tallies,
    add_hit,
    count_hit,
    merge_tallies,
    report_rows,
    tally_entry,
)
from .lines import (
    DEFAULT_MAX_FILE_BYTES,
    INVALID_MINUTE,
    MAX_LINE_BYTES,
    WRITER_LINES,
    WRITER_LINES_CLEAN,
    clean_block,
    fingerprint,
    id_fingerprint,
    line_blocks,
    minute_us,
    open_event_file,
    parse_event_line,
    tune_gc,
)

if TYPE_CHECKING:
    from ..policy import Policy
from .records import MIN_DATE, canonical_ts, dt_to_ts, ts_to_us, us_to_ts

# (client, app) -> [hits, enforced hits, first_seen, last_seen]: the per-address figures (Store.pairs)
Pairs = dict[tuple[str, str], list[Any]]

_DURATION = re.compile(r"^(\d{1,15}(?:\.\d{1,6})?)\s*([smhdw])$", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SHOWN_CHARS = 40  # of a bad time value, quoted in its error line
_MAX_TIME_CHARS = 64  # longer than any RFC 3339 spelling: refused before parsing


def enforcement_of(policy: Policy | None) -> Enforcement:
    """The rule for an enforced attempt under ``policy`` (None: no policy, every denied event is enforced)."""
    return policy.enforcement if policy is not None else Enforcement(())


_FORMS = "RFC 3339, YYYY-MM-DD, now, or a duration back from now like 24h / 7d"


def parse_time(value: str | None, now: datetime | None = None) -> str | None:
    """A time bound -> canonical timestamp (None for empty). Raises ValueError with one line: not a time, or outside
    1970-01-01..9999-12-31 (``0001-01-01``, ``99999999999d``)."""
    if value is None or not str(value).strip():
        return None
    v = str(value).strip()
    shown = v if len(v) <= _SHOWN_CHARS else v[:_SHOWN_CHARS] + "..."
    if v.lower() == "now":  # --until now: what the durations count back from
        return dt_to_ts(now or datetime.now(UTC))
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
        ts = canonical_ts(v)
        ts_to_us(ts)  # the writer's shape passes canonical_ts unparsed: 2024-02-30 must fail here, not in a caller
        return ts
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
    keys: array[int] = field(default_factory=lambda: array("q"))  # sorted fingerprints of the range's events (workers)
    keys_file: str | None = None  # ... or the file that holds them (``scan_range``'s ``keys_dir``)
    apps: set[str] = field(default_factory=set)  # every app seen in the range, selected or not (--app checks)

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
        self.apps |= other.apps


PARALLEL_MIN_BYTES = 64 * 1024 * 1024  # below this, one process is faster than starting workers
RANGE_BYTES = 64 * 1024 * 1024
RANGES_PER_TASK = 8  # 512 MB, about 900,000 events: see _groups


@dataclass(frozen=True, slots=True)
class Selection:
    """What a pass counts: the rule for an enforced attempt, the time range, the apps (empty: every app), and who
    each event's client is (``identity.Identifier``: inventory and leases; None: the bare address)."""

    enforcement: Enforcement
    since: str | None = None
    until: str | None = None
    apps: frozenset[str] = frozenset()
    identifier: Identifier | None = None


# The shortest writer line: its opening ({"@timestamp":"TIME","event":{"id":"32 hex digits) alone (tests check it
# against the pattern's own minimum)
_WRITER_MIN_BYTES = 91
_FAST_MAX_CHARS = MAX_LINE_BYTES // 4  # a longer writer line may be over MAX_LINE_BYTES in UTF-8: the line rule
_SPANS_MAX = 100_000  # clients whose identity interval is kept


_NEVER = 1 << 62  # after any time in microseconds: an exempt client's events are never enforced
# A client's identity over an interval (``_Counter.spans``) and a (client, app)'s entry (``_Counter._slot``)
_Slot = tuple[int, int, Any, int]
_Span = tuple[int, int, Identity, dict[Any, list[Any]]]

# One event read, as ``_Counter.count_all`` takes it: (ts, ts_us, fingerprint, app, client, denied, device_id, user,
# labels.kind)
_Event = tuple[str, int, int, str, str, bool, str, str, str]


def _newlines(block: bytes) -> int:
    """The newlines in ``block``: one memchr a line (``find``) costs less than ``count``'s step a byte (0.26 against
    0.46 ms a megabyte of 580-byte lines; 1,900 instructions a line less in a worker, bench/report_callgrind.py)."""
    n, find = 0, block.find
    i = find(b"\n")
    while i >= 0:
        n += 1
        i = find(b"\n", i + 1)
    return n


class _Counter:
    """One pass's counting: ``block`` reads a block of whole lines into a list of events in file order,
    ``count_all`` is the rule for each event read (in the time range, once per (time, id), of a selected app ->
    counted for its device). One loop over a block's events rather than a call or three per event: at 10M events
    each call costs seconds."""

    def __init__(
        self,
        select: Selection,
        identifier: Identifier,
        tallies: Tallies,
        prior: set[int] | frozenset[int] = frozenset(),
        exact: bool = False,
    ) -> None:
        self.select, self.tallies, self.identifier = select, tallies, identifier
        self.stats = ReportStats()  # the current range's (``_scan``)
        self.seen: set[int] = set()  # the fingerprints of the current range's events (``_scan``)
        self.prior = prior  # ... and of the events counted before it (a sequential pass over several files)
        # Bucket mode (a worker's first pass, ``_count``): each fingerprint appended to its bucket (``Keys``) instead
        # of looked up in ``seen``; a range is then checked for repeats once, a bucket at a time (``Keys.repeats``).
        self.keys: Keys | None = None
        self.exact = exact  # no deferred counting (``count_rows``): after ``settle`` found it could not say
        # The time range in microseconds (``count_rows``; ``since``/``until`` are canonical, so the same bounds)
        self.since_us = ts_to_us(select.since) if select.since is not None else -_NEVER
        self.until_us = ts_to_us(select.until) if select.until is not None else _NEVER
        self.minutes: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM" -> its microseconds (lines.minute_us)
        # client -> (lo, hi, identity, {app (or (app, "control")): its tallies entry}): Identifier.identify_span of
        # the client's last event without device.id and user, reused while the next events fall in [lo, hi)
        self.spans: dict[str, _Span] = {}
        # ``count_rows``: app -> client -> (lo, hi, append to the times of the client and app over that interval,
        # the first time a denied hit is enforced), and each such interval's (identity, app, client, times, kind)
        # for ``settle``
        self.slots: dict[str, dict[str, _Slot]] = {}
        self.pending: list[tuple[Identity, str, str, array[int], str]] = []

    def block(self, block: bytes, n: int, where: str) -> int:
        """The lines of ``block`` (whole lines; the last one unterminated only at the end of the file), numbered
        after ``n``; returns the last number. The writer's own lines are found by ``lines.WRITER_LINES`` (its
        ``WRITER_LINES_CLEAN`` in a block without backslashes and control characters) in the decoded block, one
        regular-expression search for all of them instead of a parse per line; every other line (and a block that
        is not valid UTF-8) takes ``lines.parse_event_line``, the rule both paths give.

        A block whose every line is the writer's (the common case: the count of matches is the count of lines) is
        counted by ``count_rows`` straight from ``findall``'s tuples, without a match object, a span or an event
        tuple per line; any other block takes ``search``, line by line in file order."""
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            events: list[_Event] = []
            n = self.lines(block, n, where, events)
            self.count_all(events)
            return n
        rows = [] if self.exact else (WRITER_LINES_CLEAN if clean_block(block) else WRITER_LINES).findall(text)
        if (
            rows
            and len(rows) == _newlines(block) + (not block.endswith(b"\n"))
            # No line over MAX_LINE_BYTES (the line rule's "oversize"): every line is a writer line, at least
            # _WRITER_MIN_BYTES long, so the longest is at most the block less the others.
            and len(block) - (len(rows) - 1) * (_WRITER_MIN_BYTES + 1) <= MAX_LINE_BYTES
        ):
            done = self.count_rows(rows)
            self.stats.lines += done
            n += done
            if done == len(rows):
                return n
            # A line whose time is not one (``count_rows`` stopped there): it and the rest, in order, line by line.
            return self.search(text.split("\n", done)[done], n, where)
        return self.search(text, n, where)

    def search(self, text: str, n: int, where: str) -> int:
        """``block`` for a decoded block that holds other lines than the writer's: each writer line found by the
        search, the lines in between by the line rule, all counted in file order."""
        events: list[_Event] = []
        pos = found = 0
        minutes, add = self.minutes, events.append
        for m in WRITER_LINES.finditer(text):
            s, e = m.span()
            if s != pos:  # the lines in between are not the writer's
                n = self.lines(text[pos:s].encode("utf-8"), n, where, events)
            pos = e + 1
            minute, ss, us, eid, typ, app, client = m.groups()
            base = minutes.get(minute)
            if base is None:
                base = minute_us(self.minutes, minute)
            sec = int(ss + us)
            if base == INVALID_MINUTE or sec >= 60_000_000 or e - s > _FAST_MAX_CHARS:
                n = self.lines(text[s:pos].encode("utf-8"), n, where, events)  # the line rule says what it is
                continue
            n += 1
            found += 1
            ts_us = base + sec
            ts = f"{minute}:{ss}.{us}Z"
            add((ts, ts_us, id_fingerprint(ts_us, eid), app, client or "", typ == "denied", "", "", ""))
        if pos < len(text):
            n = self.lines(text[pos:].encode("utf-8"), n, where, events)
        self.stats.lines += found
        self.count_all(events)
        return n

    def count_rows(self, rows: list[tuple[str, ...]]) -> int:
        """``count_all`` for the writer lines of a block, as ``findall`` gives them (``lines.REPORT_FIELDS``), in
        one loop: the same rule (time range, once per (time, id), selected apps, the identity over the client's
        lease interval). Deferred to ``settle``: each hit is only appended, as ``ts_us * 2 + enforced``, to the
        times of its client and app over the client's identity interval; the entry they count in, its hits and its
        last address are settled once per interval. Each event touches a handful of objects instead of
        a dozen (at 20,000 devices they are not in the processor's caches: the memory, not the instructions, was
        most of this loop's time). Stops at the first line whose time is not one (the line rule decides what it
        is); returns the number of lines counted or skipped before it."""
        stats, seen, prior, by_app = self.stats, self.seen, self.prior, self.slots
        lo, hi, only, apps = self.since_us, self.until_us, self.select.apps, stats.apps
        mget, sadd = self.minutes.get, seen.add
        adds = None if self.keys is None else self.keys.adds
        done = counted = duplicates = 0
        for minute, ss, us, eid, typ, app, client in rows:
            base = mget(minute)
            if base is None:
                base = minute_us(self.minutes, minute)
            sec = int(ss + us)
            if base == INVALID_MINUTE or sec >= 60_000_000:
                break
            done += 1
            ts_us = base + sec
            if not lo <= ts_us < hi:
                continue
            fp = hash((ts_us, eid))  # lines.id_fingerprint, inline
            if adds is not None:
                adds[fp >> _BUCKET_SHIFT](fp)
            elif fp in seen or fp in prior:
                duplicates += 1
                continue
            else:
                sadd(fp)
            if only:
                if app not in apps:
                    apps.add(app)
                if app not in only:
                    continue
            counted += 1
            slots = by_app.get(app)
            if slots is None:
                slots = by_app[app] = {}
            slot = slots.get(client)
            if slot is None or not slot[0] <= ts_us < slot[1]:
                slot = self._slot(slots, app, client, ts_us)
            slot[2](ts_us * 2 + 1 if typ == "denied" and ts_us >= slot[3] else ts_us * 2)
        if not only:  # every app counted has its slots (settle clears them only after the block)
            apps.update(by_app)
        stats.events += counted
        stats.duplicates += duplicates
        return done

    def _span(self, client: str, ts_us: int) -> _Span:
        """The client's identity over the interval that holds ``ts_us`` (``Identifier.identify_span``), with no
        entries yet (``count_all``)."""
        if len(self.spans) >= _SPANS_MAX:
            self.spans.clear()
        lo, hi, ident = self.identifier.identify_span(client, ts_us)
        span = self.spans[client] = (lo, hi, ident, {})
        return span

    def _slot(self, slots: dict[str, _Slot], app: str, client: str, ts_us: int) -> _Slot:
        """The times of ``client`` and ``app`` over the client's identity interval that holds ``ts_us``, kept for
        ``settle`` with what it needs: the identity, and the first time at which a denied event of that client and
        app is enforced (``_NEVER`` for an exempt client): ``Enforcement.enforced_attempt`` with ``kind=None``."""
        lo, hi, ident = self.identifier.identify_span(client, ts_us)
        enforcement = self.select.enforcement
        cut = enforcement.cutover(app)
        at = _NEVER if cut.exempt and cut.is_exempt(client) else cut.at_us
        times: array[int] = array("q")
        self.pending.append((ident, app, client, times, CONTROL_KIND if app in enforcement.controls else ""))
        if len(slots) >= _SPANS_MAX:
            slots.clear()
        slot = slots[client] = (lo, hi, times.append, at)
        return slot

    def settle(self) -> bool:
        """``count_rows``' hits into their tallies entries, and each entry's last time and address. False when
        that cannot be told without the order of the events: two addresses of one device with its last hit at the
        same microsecond, or an entry that also has a user (the last user is the user of the last event *when it
        was read*); the caller then counts again with ``exact`` (each event in file order)."""
        ok = True
        for ident, app, client, times, kind in self.pending:
            if not times:
                continue
            last_us = max(times) >> 1
            entry = tally_entry(self.tallies, ident, app, client, "", last_us, kind)
            if not entry[TIMES]:  # new: these times are its own (no copy)
                entry[TIMES] = times
                continue
            # Hits counted before: by the line rule, or in another interval of the device.
            if entry[USER]:
                ok = False
            if last_us > entry[LAST]:
                entry[LAST], entry[CLIENT] = last_us, client
            elif last_us == entry[LAST] and client != entry[CLIENT]:
                ok = False
            entry[TIMES].extend(times)
        self.pending.clear()
        self.slots.clear()
        return ok

    def lines(self, chunk: bytes, n: int, where: str, events: list[_Event]) -> int:
        """Each line of ``chunk`` as ``lines.parse_event_line`` judges it (a file's unterminated last line: torn
        when it is not JSON); its event, if any, appended to ``events``."""
        stats = self.stats
        lines = chunk.split(b"\n")
        if not lines[-1]:
            lines.pop()
        last = -1 if chunk.endswith(b"\n") else len(lines) - 1  # the file's unterminated last line
        for i, raw in enumerate(lines):
            n += 1
            parsed, reason = parse_event_line(raw, i == last)
            if parsed is None and reason is None:
                continue  # a blank line
            stats.lines += 1
            if reason is not None:  # skipped; "torn": the line is skipped, the event found at its end counts
                stats.skip(reason, where.format(n), recovered=parsed is not None)
            if parsed is not None:
                rec, ts_us = parsed.record, parsed.ts_us
                fp = fingerprint(ts_us, parsed.key)
                events.append((rec.ts, ts_us, fp, rec.app, rec.client, rec.denied, rec.device_id, rec.user, rec.kind))
        return n

    def count_all(self, events: list[_Event]) -> None:
        """Each event read, in order: in the time range, once per (time, id), of a selected app -> counted for its
        device."""
        select, stats, seen, tallies, spans = self.select, self.stats, self.seen, self.tallies, self.spans
        prior, keys = self.prior, self.keys
        since, until, only, apps = select.since, select.until, select.apps, stats.apps
        enforced_attempt, controls = select.enforcement.enforced_attempt, select.enforcement.controls
        identify = self.identifier.identify
        counted = duplicates = 0
        for ts, ts_us, fp, app, client, denied, device_id, user, kind in events:
            if (since is not None and ts < since) or (until is not None and ts >= until):
                continue
            if keys is not None:
                keys.adds[fp >> _BUCKET_SHIFT](fp)
            elif fp in seen or fp in prior:
                duplicates += 1
                continue
            else:
                seen.add(fp)
            if app not in apps:
                apps.add(app)
            if only and app not in only:
                continue
            counted += 1
            # kind=None: a ban app's enforced hits are non-compliance, a control app's are bypass attempts (their
            # own section: identity.add_hit); Store.identity_rows renders the same rule. Not denied: never enforced.
            enforced = denied and enforced_attempt(denied, app, client, ts_us, None)
            if app in controls:
                kind = CONTROL_KIND
            if device_id or user:
                add_hit(tallies, identify(client, ts_us, device_id, user), app, client, user, ts_us, enforced, kind)
                continue
            # The client's identity over its current lease interval, and the entries it counts in by app: most
            # events touch only these, not the (section, identity, app) table (a key to build and hash, and one
            # more place in memory to reach, per event).
            span = spans.get(client)
            if span is None or not span[0] <= ts_us < span[1]:
                span = self._span(client, ts_us)
            entries = span[3]
            slot = app if kind != CONTROL_KIND else (app, kind)
            entry = entries.get(slot)
            if entry is None:
                entry = entries[slot] = tally_entry(tallies, span[2], app, client, user, ts_us, kind)
            count_hit(entry, client, user, ts_us, enforced)
        stats.events += counted
        stats.duplicates += duplicates


def _finish(tallies: Tallies) -> None:
    """Each entry's hits, enforced hits and first time, from its times (``count_rows`` only appends them)."""
    odd = (1).__and__
    for entry in tallies.values():
        times = entry[TIMES]
        if times:
            entry[HITS] = len(times)
            entry[ENFORCED] = sum(map(odd, times))
            entry[FIRST] = min(times) >> 1


def _scan(counter: _Counter, path: str, start: int, end: int | None, max_file_bytes: int) -> ReportStats:
    """The lines that start in ``[start, end)`` of one file, counted by ``counter`` into its tallies, with a new
    set of fingerprints (``counter.seen``) and the range's own stats (returned)."""
    stats = counter.stats = ReportStats()
    counter.seen = set()
    if counter.keys is not None:
        counter.keys = Keys()
    where = f"{path}:{{}}" if start == 0 else f"{path}:+{{}}@{start}"
    n = 0
    with open_event_file(path, max_file_bytes) as fh:
        for block in line_blocks(fh, start, end):
            if block is None:  # a line over MAX_LINE_BYTES, skipped unread
                n += 1
                stats.lines += 1
                stats.skip("oversize", where.format(n))
                continue
            n = counter.block(block, n, where)
    return stats


def _count(
    select: Selection,
    ranges: list[tuple[str, int, int | None]],
    max_file_bytes: int,
    prior: set[int] | frozenset[int] = frozenset(),
    keys: Callable[[int, Keys | set[int]], None] | None = None,
    bucketed: bool = False,
) -> tuple[Tallies, list[ReportStats]]:
    """Consecutive ranges counted into one tallies, each range deduping on its own (and against ``prior``);
    ``keys(i, fingerprints)`` is given each range's fingerprints by bucket once the count is final.

    ``bucketed`` (a worker's tasks): the first pass appends each fingerprint to its bucket instead of looking it up
    in a set; a range that holds an event twice sends the task to the pass with the set, which counts the first
    occurrence in file order. Counted again with each event in file order (``_Counter.exact``) in the rare case
    ``settle`` cannot tell the last address or user of a device."""
    assert not (bucketed and prior), "a bucketed pass has no set to look earlier events up in"
    mode = "keys" if bucketed else "set"
    while True:
        exact = mode == "exact"
        tallies: Tallies = {}
        counter = _Counter(select, select.identifier or Identifier(), tallies, prior, exact)
        counter.keys = Keys() if mode == "keys" else None
        stats: list[ReportStats] = []
        found: list[Keys | set[int]] = []
        repeats = False
        for path, start, end in ranges:
            stats.append(_scan(counter, path, start, end, max_file_bytes))
            if counter.keys is not None:
                if counter.keys.repeats():
                    repeats = True
                    break
                found.append(counter.keys)
            else:
                found.append(counter.seen)
            counter.seen = set()
        if repeats:
            mode = "set"
        elif counter.settle() or exact:
            break
        else:
            mode = "exact"
    _finish(tallies)
    if keys is not None:
        for i, part in enumerate(found):
            keys(i, part)
    return tallies, stats


def scan_range(
    path: str,
    start: int,
    end: int | None,
    select: Selection,
    seen: set[int] | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    keys_dir: str | None = None,
) -> tuple[Tallies, ReportStats]:
    """Aggregate the events on the lines that *start* in ``[start, end)`` of one file (``end`` None: to EOF).

    A plain function of its arguments so that workers can run it. ``seen``: the fingerprints of events already
    counted (shared across the files of a sequential pass: this range's are added); without it the range dedupes
    on its own and returns its fingerprints sorted in ``stats.keys`` (or, with ``keys_dir``, by bucket in a file
    there named by ``stats.keys_file``: the main process then never holds every range's fingerprints at once).
    ``first_invalid`` is ``FILE:LINE`` for a range that starts at 0, else ``FILE:+LINE@BYTE`` (line counted from
    the range start). Raises ``EventFileError`` for a file that is not (any longer) a regular file of at most
    ``max_file_bytes``.
    """
    found: list[Keys | set[int]] = []
    tallies, (stats,) = _count(
        select, [(path, start, end)], max_file_bytes, seen or frozenset(), lambda _i, keys: found.append(keys)
    )
    (keys,) = found  # a set: this pass is not bucketed
    assert isinstance(keys, set)
    if seen is not None:
        seen |= keys
    elif keys_dir is None:
        stats.keys = array("q", sorted(keys))
    else:
        stats.keys_file = Keys.of(keys).write(keys_dir)  # by bucket: no sort needed
    return tallies, stats


# The overlap check reads the workers' fingerprints a bucket at a time (the top bits of the 64-bit value): about
# 40,000 of them at 10M events, held in a set for a moment, instead of every fingerprint at once.
KEY_BUCKETS = 256
_BUCKET_SHIFT = 64 - 8


class Keys:
    """A range's fingerprints by bucket (their top 8 bits): appended as the events are read (``adds``, indexed by
    ``fp >> _BUCKET_SHIFT``, -128..127: the list's index from its end for the negative half), written to a file
    for the overlap check (``write``, read back by ``_read_keys``). A Python step an event, where a set of the
    range's fingerprints cost a lookup in a table of millions (out of the processor's caches) and then a second
    step to bucket them for the file; repeats inside the range are found a bucket at a time (``repeats``)."""

    __slots__ = ("adds", "parts")

    def __init__(self) -> None:
        self.parts: list[array[int]] = [array("q") for _ in range(KEY_BUCKETS)]
        self.adds: list[Callable[[int], None]] = [part.append for part in self.parts]

    @classmethod
    def of(cls, values: Iterable[int]) -> Keys:
        keys = cls()
        adds = keys.adds
        for v in values:
            adds[v >> _BUCKET_SHIFT](v)
        return keys

    def repeats(self) -> bool:
        """Whether a fingerprint was appended twice (the same event read twice in the range)."""
        return any(len(set(part)) != len(part) for part in self.parts)

    def write(self, keys_dir: str) -> str:
        """Written to a new file in ``keys_dir`` (its name returned): each bucket's size, then bucket 0, 1, ..."""
        fd, name = tempfile.mkstemp(suffix=".keys", dir=keys_dir)
        with os.fdopen(fd, "wb") as fh:
            array("Q", map(len, self.parts)).tofile(fh)
            for part in self.parts:
                part.tofile(fh)
        return name


def _read_keys(path: str, lo: int = 0, hi: int = KEY_BUCKETS) -> Iterator[array[int]]:
    """The fingerprints of a ``Keys.write`` file, one bucket at a time, of buckets ``lo`` to ``hi`` - 1."""
    with open(path, "rb") as fh:
        sizes = array("Q")
        sizes.fromfile(fh, KEY_BUCKETS)
        fh.seek(sizes.itemsize * (KEY_BUCKETS + sum(sizes[:lo])))
        for size in sizes[lo:hi]:
            part = array("q")
            if size:
                part.fromfile(fh, size)
            yield part


# A worker's Selection: sent once when the worker starts (``_worker_init``), not with each range. Its identifier
# (the inventory and every lease, 4.8 MB pickled for 20,000 leases) cost about 0.45 s to pickle in the main process
# and as much to unpickle in the worker for each 64 MB range, and each range started with cold caches.
_WORKER_SELECT: list[Selection] = []


def _worker_init(select: Selection) -> None:
    _WORKER_SELECT[:] = [select]
    # The worker's collector (lines.GC_THRESHOLDS), and the Selection (its leases and inventory, as long-lived as
    # the worker) kept out of the full collections.
    tune_gc()
    gc.freeze()


def _worker_scan(
    ranges: list[tuple[str, int, int | None]], max_file_bytes: int, keys_dir: str
) -> tuple[Tallies, list[ReportStats]]:
    """``scan_range`` over consecutive ``ranges`` in a worker, with the Selection it was started with: counted into
    one tallies (each range still dedupes on its own and writes its own fingerprints, ``stats.keys_file``)."""
    files: list[str] = []
    tallies, stats = _count(
        _WORKER_SELECT[0],
        ranges,
        max_file_bytes,
        keys=lambda _i, keys: files.append((Keys.of(keys) if isinstance(keys, set) else keys).write(keys_dir)),
        bucketed=True,
    )
    for st, name in zip(stats, files, strict=True):
        st.keys_file = name
    return tallies, stats


def _groups(ranges: list[tuple[str, int, int | None]], workers: int) -> list[list[tuple[str, int, int | None]]]:
    """Consecutive ranges grouped into tasks: a task's result (up to 40,000 rows at 20,000 leases) costs the main
    process about 0.4 s to receive and merge, so 90 one-range tasks at 10M events made it a third busy process on
    two cores; at most ``RANGES_PER_TASK`` a task, and at least four tasks a worker (a small input stays balanced).
    Tasks shrink toward the end (what is left over twice the workers, down to two ranges): with 8 ranges a task to
    the end, one worker ran the last task alone for ~2 s of a 10M-event report while the other had none."""
    cap = max(1, min(RANGES_PER_TASK, len(ranges) // (4 * workers)))
    out: list[list[tuple[str, int, int | None]]] = []
    i = 0
    while i < len(ranges):
        size = min(cap, max(2, (len(ranges) - i) // (2 * workers)))
        out.append(ranges[i : i + size])
        i += size
    return out


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


@contextlib.contextmanager
def _one_hash_seed() -> Iterator[None]:
    """Workers started meanwhile share one random hash seed (``PYTHONHASHSEED``, read when an interpreter starts):
    their fingerprints (``lines.fingerprint``: Python's hash of the id) compare across them. Random for each run,
    as the seed of any process is; the environment is restored afterwards."""
    before = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = str(secrets.randbelow(4294967295) + 1)  # 1..2**32-1 (0 turns hashing off)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONHASHSEED"]
        else:
            os.environ["PYTHONHASHSEED"] = before


def _overlap(files: list[str], lo: int = 0, hi: int = KEY_BUCKETS) -> bool:
    """Whether two fingerprint files (``Keys.write``: by bucket, no value twice in one) share a value (an event seen
    by two workers) in buckets ``lo`` to ``hi`` - 1: bucket by bucket, the values of every file in one set. The
    report's workers check a share of the buckets each (``_OVERLAP_SHARES``)."""
    for buckets in zip(*(_read_keys(f, lo, hi) for f in files), strict=True):
        values: set[int] = set()
        for part in buckets:
            values.update(part)
        if len(values) != sum(map(len, buckets)):
            return True
    return False


# The overlap check's shares, run by the pool's workers once the counting is done: it was 1.3-1.9 s of the main
# process alone at the end of a 10M-event report (docs/scale.md).
_OVERLAP_SHARES = 8


def stream_report(
    paths: Iterable[str | Path],
    *,
    enforcement: Enforcement,
    since: str | None = None,
    until: str | None = None,
    apps: Iterable[str] = (),
    workers: int = 1,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    identifier: Identifier | None = None,
) -> tuple[Tallies, ReportStats]:
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
    select = Selection(enforcement, since, until, frozenset(apps), identifier)
    if parallel and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        tallies: Tallies = {}
        part_stats: list[ReportStats] = []
        # The workers' fingerprints go to files (8 bytes an event: 80 MB at 10M events), checked from there.
        keys_dir = tempfile.TemporaryDirectory(prefix="enforcer-report-")
        with (
            keys_dir,
            _one_hash_seed(),
            ProcessPoolExecutor(
                min(workers, len(tasks)),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(select,),
            ) as pool,
        ):
            # One task per worker in flight and one more, merged in submission order and dropped once merged: a
            # finished future holds its result (the group's hit times, 8 bytes an event), and with every task
            # submitted at once the results that wait for an earlier one pile up in the main process.
            todo = iter(_groups(tasks, workers))
            inflight: collections.deque[Any] = collections.deque()
            for group in itertools.islice(todo, workers + 1):
                inflight.append(pool.submit(_worker_scan, group, max_file_bytes, keys_dir.name))
            while inflight:
                part, sts = inflight.popleft().result()
                for group in itertools.islice(todo, 1):
                    inflight.append(pool.submit(_worker_scan, group, max_file_bytes, keys_dir.name))
                merge_tallies(tallies, part)
                del part
                part_stats.extend(sts)
            names = [st.keys_file for st in part_stats if st.keys_file]
            step = KEY_BUCKETS // _OVERLAP_SHARES
            checks = [pool.submit(_overlap, names, lo, lo + step) for lo in range(0, KEY_BUCKETS, step)]
            overlap = any(check.result() for check in checks)
        if not overlap:
            for st in part_stats:
                st.keys_file = None
                stats.merge(st)
            return tallies, stats
        # The same event in two ranges: only one pass in file order says which occurrence counts.
        del tallies, part_stats
    tallies = {}
    seen: set[int] = set()
    for p, s0, e0 in _ranges(files, False):
        part, st = scan_range(p, s0, e0, select, seen, max_file_bytes)
        merge_tallies(tallies, part)
        stats.merge(st)
    return tallies, stats


def build_report(
    tallies: Tallies,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    since: str | None = None,
    until: str | None = None,
    generated_at: str | None = None,
) -> dict[str, Any]:
    """The report JSON document. ``clients``: one row per identified device and app (bypass attempts apart, in
    ``bypass``), sorted by app, then most enforced attempts, attempts, client. ``apps``: per app of ``clients``, the
    sums of its rows (``attempts`` and ``hits``) and their number (``clients``)."""
    clients, bypass = report_rows(tallies, int(window_s * 1_000_000))
    apps: dict[str, list[Any]] = {}
    for row in clients:
        a = apps.get(row["app"])
        if a is None:
            apps[row["app"]] = [row["attempts"], row["hits"], 1, row["first_seen"], row["last_seen"]]
        else:
            a[0] += row["attempts"]
            a[1] += row["hits"]
            a[2] += 1
            a[3] = min(a[3], row["first_seen"])
            a[4] = max(a[4], row["last_seen"])
    return {
        "generated_at": generated_at or dt_to_ts(datetime.now(UTC)),
        "since": since,
        "until": until,
        "attempt_window_seconds": window_s,
        "apps": [
            {"app": app, "attempts": v[0], "hits": v[1], "clients": v[2], "first_seen": v[3], "last_seen": v[4]}
            for app, v in sorted(apps.items())
        ],
        "clients": clients,
        BYPASS: bypass,
    }


def pairs_of(tallies: Tallies) -> Pairs:
    """Per address and app: [hits, enforced hits, first, last] (bypass attempts included), as ``Store.pairs``."""
    pairs: Pairs = {}
    for (_section, _key, app), (hits, enf, first, last, _times, ident, client, _user) in tallies.items():
        if ident.source not in ("cidr", "address"):
            raise ValueError("pairs_of: rows grouped by device, not by address (leases, ClientIDs or users)")
        entry = pairs.get((client, app))
        if entry is None:
            pairs[(client, app)] = [hits, enf, us_to_ts(first), us_to_ts(last)]
        else:
            entry[0] += hits
            entry[1] += enf
            entry[2] = min(entry[2], us_to_ts(first))
            entry[3] = max(entry[3], us_to_ts(last))
    return pairs


def unknown_apps(requested: Iterable[str], policy: Policy | None, stats: ReportStats) -> list[str]:
    """The ``--app`` names that neither the policy nor the events read know (a typo would print an empty report)."""
    known = set(policy.apps) if policy is not None else set()
    return sorted(set(requested) - known - stats.apps)
