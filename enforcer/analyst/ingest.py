"""Follow the JSON Lines event files of several resolvers and proxies into the SQLite store.

- ``Ingester(store, sources)``: ``poll_once()`` reads what is new in every source file and returns how many events
  it stored; ``start()`` runs it in a background thread every ``interval`` seconds (never on the event loop);
  ``stop()`` ends the thread after its current batch. Counters (``ingested``, ``duplicates``, ``errors`` by reason,
  ``lines``) are plain ints read by the /metrics collector.
- Sources: a file (itself plus its rotations ``FILE.1``..``FILE.N``) or a folder (its ``*.jsonl`` and ``*.jsonl.N``),
  re-listed on each poll so new files and rotations are seen.
- Files are tracked by identity (device, inode) plus their first bytes, not by name: ``EventWriter`` rotates by
  renaming ``events.jsonl`` -> ``events.jsonl.1`` and opening a new file, so the renamed file keeps its offset and the
  new file starts at 0. A reused inode (first bytes differ) or a truncated file (size < offset) starts again at 0.
- Offsets live in the store's ``files`` table and are committed in the same transaction as the events read up to
  them: a restart resumes exactly where the last commit ended. One transaction holds several chunks (up to
  ``COMMIT_ROWS`` events or ``COMMIT_SECONDS``, and the end of a poll); a failed insert rolls them all back, and they
  are read again on the next poll. (time, ``event.id``) is UNIQUE in the store, so
  anything read twice anyway (copy-truncate rotation, a file listed twice) is stored once and counted as a duplicate.
- Pipeline: the next chunks (up to ``PIPELINE_CHUNKS``) are parsed in a parser process while one is inserted; a
  parser process that dies is replaced on the next poll. The parser also sums the chunk's rollups
  (``Store.rollup_of``, under the policy table current when it was submitted), which the writer upserts in the
  chunk's transaction.
- Lines: every line is read by the rule ``enforcer report`` applies too, so both count the same events: the
  writer's own lines a block at a time (``lines.writer_rows``), any other line by ``lines.parse_event_line``. An
  incomplete last line of the live file is left for the next poll (the writer may be mid-write); in a rotated file
  it is final and parsed as it is, as the report does. Skipped lines are counted by reason (``invalid_json``,
  ``not_event``, ``oversize``, ``torn``) and logged once per chunk with the file, byte offset and first one. A line
  over ``lines.MAX_LINE_BYTES`` is skipped without being held in memory.
- Rollups and retention (store.py): each chunk's insert updates the rollups under ``enforcement()`` (the analyst's
  current policy table; rebuilt at the start of a poll when it changed); with ``retention`` (seconds) a poll deletes
  older events in batches of ``PRUNE_BATCH``, one transaction each, for at most ``PRUNE_BUDGET`` seconds, and the
  cases closed before the cut-off (``prune_now``); ``deleted`` counts them.
- Files: only regular files of at most ``max_file_bytes`` are opened (``lines.open_event_file``, non-blocking, so a
  FIFO cannot hang the thread); any other (a FIFO, ``/dev/zero``, a directory named like an event file, a file too
  large) is skipped, counted once in ``files_skipped`` by reason and logged once.
- Failures: a poll that raises (a full disk, a store that cannot be written) is rolled back, counted in
  ``poll_failures``, logged once per streak of the same error, and kept in ``last_error`` until a poll succeeds; the
  thread retries every ``interval`` and the offsets it had not committed are read again, so nothing is lost.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..policy.enforcement import Enforcement
from .files import event_files, is_rotated
from .lines import (
    DEFAULT_MAX_FILE_BYTES,
    MAX_LINE_BYTES,
    EventFileError,
    open_event_file,
    parse_event_line,
    skip_line,
    tune_gc,
    writer_rows,
)
from .store import PendingRollups, Rollup, Row, Store

log = logging.getLogger("enforcer.analyst.ingest")

PRUNE_BATCH = 5000  # events deleted per retention transaction
PRUNE_BUDGET = 1.0  # seconds of deleting per poll before ingest gets its turn
PRUNE_INTERVAL = 60.0  # seconds between retention checks once nothing is left to delete
HEAD_BYTES = 64
CHUNK_BYTES = 16 * 1024 * 1024
# A chunk is read by blocks of this many bytes (to the next newline): each block the writer's lines only takes one
# search (``lines.writer_rows``); a block with any other line, line by line. Under ``lines.MAX_LINE_BYTES``, so that
# a block of writer lines is never refused for its length.
BLOCK_BYTES = 256 * 1024
_SHOWN_BYTES = 80  # of a bad line, quoted in the log
Parsed = tuple[list[Row], dict[str, int], int, str | None, Rollup | None]
# ``parse_chunk_packed``: the same, the rows pickled (protocol 5) by the parser process
Packed = tuple[bytes | list[Row], dict[str, int], int, str | None, Rollup | None]
# Chunks stored per transaction: up to COMMIT_ROWS events or COMMIT_SECONDS of inserting, whichever comes first. Each
# commit writes every page it dirtied to the WAL (and a checkpoint writes it again): at a large store a chunk dirties
# one leaf of the per-client index per client, so committing several chunks at once writes each such leaf once for all
# of them. Measured at a 3M-event store (docs/scale.md, "Ingest, fifth round"): the writer's CPU per event was 29.6 us
# with 131,072 events or 2 s (on a loaded machine 2 s held one or two chunks), 23.3 us with 131,072 events and no time
# bound, 21.7-21.9 us with 524,288 (1,048,576: no better); the bytes written per event went from 7.3 to 3.8 kB. The
# larger the store, the more leaves each transaction dirties (about all of the per-client index's at 10M events, 800
# MB), so at 10M the time bound ends transactions, not the count: ~1.1M events in 30 s, which wrote 2.9 kB an event
# against 3.4 kB with 524,288 (docs/scale.md, "Ingest, ninth round"). Memory stays bounded: dirty pages beyond the
# writer's page cache spill to the WAL. Only a backlog fills a transaction (a poll commits what it read when it ends),
# so readers see a backlog's events at most COMMIT_SECONDS (and the commit) later.
COMMIT_ROWS = 2_097_152
COMMIT_SECONDS = 30.0
# Chunks handed to the parser ahead of the one being inserted (``_read_from``): each holds ~30,000 events, ~20 MB of
# rows on their way back. With one, the parser sat idle through every commit and checkpoint (seconds), and the writer
# then waited for it (docs/scale.md, "Ingest, ninth round").
PIPELINE_CHUNKS = 3


@dataclass(slots=True)
class _Batch:
    """The open ingest transaction: when it began, its events, and what becomes the ingester's on commit."""

    started: float
    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    lines: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # skipped lines by reason
    # Per chunk with bad lines, for the log: (lines skipped, the first).
    problems: list[tuple[int, str | None]] = field(default_factory=list)
    states: dict[tuple[int, int], tuple[bytes, int, str]] = field(default_factory=dict)
    rollups: PendingRollups = field(default_factory=PendingRollups)  # upserted just before the commit


class Ingester:
    def __init__(
        self,
        store: Store,
        sources: Iterable[str | Path],
        *,
        interval: float = 0.5,
        parser_process: bool = True,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        enforcement: Callable[[], Enforcement] | None = None,
        retention: float | None = None,
    ) -> None:
        self.store = store
        # The current policy's table (the analyst's, reloaded with the policy): the rollups' enforced counts follow it.
        self.enforcement = enforcement
        self.retention = retention  # seconds; None keeps everything
        self.deleted = 0  # events deleted by retention
        self.cases_pruned = 0
        self.retention_runs = 0
        self._next_prune = 0.0
        self.sources = [Path(s) for s in sources]
        self.interval = interval
        self.max_file_bytes = max_file_bytes
        self.ingested = 0
        self.duplicates = 0
        self.lines = 0
        self.errors: dict[str, int] = {}
        self.files_skipped: dict[str, int] = {}
        self._refused: set[tuple[str, str]] = set()  # (path, reason) already counted and logged
        self.polls = 0
        # Polls that raised (a full disk, a store that cannot be written): ``last_error`` is the latest one's line
        # until a poll succeeds again; /healthz and /metrics show both (ingestion stops, the service keeps serving).
        self.poll_failures = 0
        self.last_error: str | None = None
        self._streak = 0
        self._last_line: str | None = None  # the full line logged for the current streak
        self._conn: Any = None
        self._states: dict[tuple[int, int], tuple[bytes, int, str]] | None = None
        self._lock = threading.Lock()  # poll_once from a test and the thread must not interleave
        self._stop = threading.Event()
        # JSON parsing runs in a separate process: in a thread it would hold the GIL against the inserts (the two
        # convoy on the GIL and ingest gets slower, not faster). "spawn" because forking a threaded process is unsafe.
        self._parser_process = parser_process
        self._parser = self._new_parser()
        self._thread: threading.Thread | None = None
        self._batch: _Batch | None = None  # the open ingest transaction, if any

    def _new_parser(self) -> Executor:
        if self._parser_process:
            # The bulk readers' collector (lines.GC_THRESHOLDS): a chunk's ~30,000 row tuples set off a young
            # collection every 700 with the default (3 % of the parser's instructions, bench: docs/scale.md).
            return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=tune_gc)
        return ThreadPoolExecutor(1, thread_name_prefix="enforcer-analyst-parse")

    # -- thread -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="enforcer-analyst-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
        self._parser.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except BrokenExecutor:
                self._failed("the event parser process died; starting a new one", "the event parser process died")
                self._parser.shutdown(wait=False, cancel_futures=True)
                self._parser = self._new_parser()
            except Exception as exc:  # a broken file or a full disk must not end ingestion for good
                self._failed(
                    f"ingest poll failed, retrying every {self.interval:g} s: {type(exc).__name__}: {exc}",
                    _public(exc),
                    # An expected failure (the disk, the store) is one line; anything else is a bug: its stack.
                    trace=not isinstance(exc, (sqlite3.Error, OSError)),
                )
            else:
                if self.last_error is not None:
                    log.warning("ingest works again after %d failed poll(s)", self._streak)
                    self.last_error = self._last_line = None
            self._stop.wait(self.interval)

    def _failed(self, line: str, public: str, trace: bool = False) -> None:
        """Count a failed poll; log it once per streak of the same error (a full disk fails every poll, for hours).
        ``public`` is what /healthz (no token) shows: no paths, no event data."""
        self.poll_failures += 1
        self._streak = self._streak + 1 if self.last_error is not None else 1
        if line != self._last_line:
            log.error("%s", line, exc_info=trace or log.isEnabledFor(logging.DEBUG))
        self._last_line = line
        self.last_error = public

    # -- one pass ---------------------------------------------------------------------------------------------------
    def poll_once(self) -> int:
        with self._lock:
            if self._conn is None:
                self._conn = self.store.writer()
                self._states = Store.file_states(self._conn)
            assert self._states is not None
            self._check_rollups()
            stored = 0
            present: set[tuple[int, int]] = set()
            files = event_files(self.sources)
            # Identities as listed, not only as opened: a rotation between listing and opening makes a name open a
            # different file, and the file that moved away must keep its offset.
            for path in files:
                with contextlib.suppress(OSError):
                    st = path.stat()
                    present.add((st.st_dev, st.st_ino))
            try:
                for path in files:
                    if self._stop.is_set():
                        break
                    try:
                        stored += self._read_file(path, present)
                    except OSError as exc:
                        log.warning("%s: cannot read: %s", path, exc.strerror)
                self._flush()
            except BaseException:
                self._abort()
                raise
            gone = [ident for ident in self._states if ident not in present]
            if gone and not self._stop.is_set():
                Store.forget_files(self._conn, gone)
                for ident in gone:
                    del self._states[ident]
            self._prune()
            self.polls += 1
            return stored

    def _check_rollups(self) -> None:
        """Rebuild the rollups when they were computed under another policy table (or never: an older store)."""
        if self.enforcement is None:
            return
        enforcement = self.enforcement()
        if Store.rollups_current(self._conn, enforcement):
            return
        t0 = time.monotonic()
        with self._transaction() as conn:
            Store.rebuild_rollups(conn, enforcement)
        log.info("rollups rebuilt for the current policy in %.1f s", time.monotonic() - t0)

    def prune_now(self, now: float | None = None) -> int:
        """Retention: delete the events older than ``retention`` in batches of ``PRUNE_BATCH``, one transaction each
        (readers never wait: WAL), for at most ``PRUNE_BUDGET`` seconds a poll so that ingest keeps its pace; and the
        audit of cases closed (remediated) before the cut-off. Returns the events deleted."""
        if self.retention is None:
            return 0
        cutoff_us = int(((now if now is not None else time.time()) - self.retention) * 1_000_000)
        enforcement = self.enforcement() if self.enforcement is not None else None
        deadline = time.monotonic() + PRUNE_BUDGET
        deleted = 0
        while not self._stop.is_set():
            with self._transaction() as conn:
                n = Store.delete_before(conn, cutoff_us, PRUNE_BATCH, enforcement)
            deleted += n
            if n < PRUNE_BATCH or time.monotonic() >= deadline:
                break
        with self._transaction() as conn:
            self.cases_pruned += Store.prune_cases(conn, cutoff_us)
        self.deleted += deleted
        self.retention_runs += 1
        if deleted:
            log.info("retention: deleted %d event(s) older than %s s", deleted, self.retention)
        return deleted

    def _prune(self) -> None:
        if self.retention is None or self._stop.is_set() or time.monotonic() < self._next_prune:
            return
        deleted = self.prune_now()
        # More left (the budget ran out): go on at the next poll; else look again in PRUNE_INTERVAL.
        self._next_prune = time.monotonic() + (0 if deleted >= PRUNE_BATCH else PRUNE_INTERVAL)

    def _refuse(self, path: Path, exc: EventFileError) -> None:
        if exc.reason == "unreadable" and not os.path.lexists(path):
            return  # renamed or deleted since the listing (rotation): read under its new name, or gone
        if (str(path), exc.reason) in self._refused:
            return
        self._refused.add((str(path), exc.reason))
        self.files_skipped[exc.reason] = self.files_skipped.get(exc.reason, 0) + 1
        log.warning("skipping event file %s", exc)

    def _read_file(self, path: Path, present: set[tuple[int, int]]) -> int:
        try:
            fh = open_event_file(path, self.max_file_bytes)
        except EventFileError as exc:
            self._refuse(path, exc)
            return 0
        for key in [k for k in self._refused if k[0] == str(path)]:
            self._refused.discard(key)  # fine again: a later refusal is news
        with fh:
            st = os.fstat(fh.fileno())
            ident = (st.st_dev, st.st_ino)
            present.add(ident)
            head = fh.read(HEAD_BYTES)
            offset = self._resume_at(path, ident, head, st.st_size)
            if offset is None:
                return 0
            return self._read_from(fh, path, ident, head, offset)

    def _resume_at(self, path: Path, ident: tuple[int, int], head: bytes, size: int) -> int | None:
        """Where to go on reading the file (its stored offset while its first bytes are unchanged, else 0); None
        when there is nothing new."""
        assert self._states is not None
        state = self._states.get(ident)
        offset = 0
        if state is not None:
            old_head, old_offset, _ = state
            if head.startswith(old_head) and size >= old_offset:
                offset = old_offset
            else:
                log.info("%s: new or truncated file under a known inode; reading from the start", path)
        if offset >= size:
            if state is None or state[0] != head:
                self._states[ident] = (head, offset, str(path))
            return None
        return offset

    def _read_from(self, fh: BinaryIO, path: Path, ident: tuple[int, int], head: bytes, offset: int) -> int:
        rotated = is_rotated(path)
        fh.seek(offset)
        # Parse the next chunks in the parser process while this one is inserted here: sqlite3 releases the GIL while
        # it updates the B-trees, so the two overlap on two cores. Up to PIPELINE_CHUNKS ahead, so that the parser
        # does not wait out a long commit (a checkpoint: seconds) with nothing to do.
        pending: collections.deque[tuple[Future[Packed], int]] = collections.deque()
        read_to = offset
        stored = 0
        while not self._stop.is_set():
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                break
            step = self._submit(fh, path, chunk, read_to, rotated)
            if step is None:
                break
            pending.append(step)
            read_to = step[1]
            if len(pending) > PIPELINE_CHUNKS:
                stored += self._commit(ident, head, path, *pending.popleft())
        while pending:
            stored += self._commit(ident, head, path, *pending.popleft())
        return stored

    def _submit(
        self, fh: BinaryIO, path: Path, chunk: bytes, read_to: int, rotated: bool
    ) -> tuple[Future[Packed], int] | None:
        """The whole lines of ``chunk`` (read at ``read_to``) handed to the parser, and the offset after them; the
        file is left positioned there. None: stop here until the next poll."""
        eof = len(chunk) < CHUNK_BYTES
        end = chunk.rfind(b"\n")
        if end < 0 and len(chunk) > MAX_LINE_BYTES:
            # One line over the limit: skip it whole without holding it, and count it once, when its end
            # is known (the live file's may still be growing: look again on the next poll).
            nxt = skip_line(fh, read_to + len(chunk))
            if nxt is None and not rotated:
                return None
            new_to = nxt if nxt is not None else fh.tell()
            future: Future[Packed] = Future()
            future.set_result(([], {"oversize": 1}, 1, f"{path}: oversize line after byte {read_to}", None))
            fh.seek(new_to)
            return future, new_to
        if end < 0 and not rotated:
            return None  # the live file's last line is still being written: wait for its newline
        # A rotated file is never appended to again: its unterminated last line is final, parsed as is.
        body = chunk if (end < 0 or (eof and rotated)) else chunk[: end + 1]
        fh.seek(read_to + len(body))
        enforcement = self.enforcement() if self.enforcement is not None else None
        parse = parse_chunk_packed if self._parser_process else parse_chunk
        return self._parser.submit(parse, body, str(path), read_to, enforcement), read_to + len(body)

    def _commit(self, ident: tuple[int, int], head: bytes, path: Path, future: Future[Packed], offset: int) -> int:
        """Store one parsed chunk and the file offset after it in the open ingest transaction (``_Batch``), which is
        committed once it holds ``COMMIT_ROWS`` events or is ``COMMIT_SECONDS`` old, and at the end of the poll."""
        packed, errors, seen, first_bad, rollup = future.result()
        rows: list[Row] = pickle.loads(packed) if isinstance(packed, bytes) else packed
        batch = self._batch
        if batch is None:
            self._conn.execute("BEGIN IMMEDIATE")
            batch = self._batch = _Batch(time.monotonic())
        # Counted and logged on commit: a rolled-back chunk is read again, and its bad lines must count once.
        batch.lines += seen
        if errors:
            for reason, n in errors.items():
                batch.errors[reason] = batch.errors.get(reason, 0) + n
            batch.problems.append((sum(errors.values()), first_bad))
        enforcement = self.enforcement() if self.enforcement is not None else None
        inserted = Store.insert(self._conn, rows, enforcement, rollup, batch.rollups) if rows else 0
        Store.save_file_state(self._conn, ident, head, offset, str(path))
        batch.rows += len(rows)
        batch.inserted += inserted
        batch.duplicates += len(rows) - inserted
        batch.states[ident] = (head, offset, str(path))
        if batch.rows >= COMMIT_ROWS or time.monotonic() - batch.started >= COMMIT_SECONDS:
            self._flush()
        return inserted

    def _flush(self) -> None:
        """Commit the open ingest transaction; only then do its offsets and counts become the ingester's."""
        batch = self._batch
        if batch is None:
            return
        # Still the open batch until the commit succeeds: a failure here (a full disk) leaves it for ``_abort``.
        batch.rollups.flush(self._conn)
        self._conn.execute("COMMIT")
        self._batch = None
        assert self._states is not None
        self._states.update(batch.states)
        self.ingested += batch.inserted
        self.duplicates += batch.duplicates
        self.lines += batch.lines
        for reason, n in batch.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + n
        for n, first_bad in batch.problems:
            log.warning("skipped %d bad line(s); first: %s", n, first_bad)

    def _abort(self) -> None:
        """Roll the open ingest transaction back (a failed insert): its chunks are read again on the next poll."""
        batch, self._batch = self._batch, None
        if batch is not None and self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _public(exc: Exception) -> str:
    """A failed poll in a line safe for an unauthenticated /healthz: SQLite's message names no file, an OSError's
    reason without its path, anything else its type only (the log has the rest)."""
    if isinstance(exc, sqlite3.Error):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or 'error'}"
    return f"{type(exc).__name__} (see the analyst log)"


def parse_chunk(body: bytes, path: str, offset: int, enforcement: Enforcement | None = None) -> Parsed:
    """Lines -> (rows to insert, skipped lines by reason, lines seen, first problem for the log, the rows' rollups).

    A plain function of its arguments so that it can run in the parser process. Every line is read by the rule
    ``enforcer report`` applies too: the writer's lines of each ``BLOCK_BYTES`` block by ``lines.writer_rows`` (one
    search for the block), a block holding any other line by ``lines.parse_event_line``, line by line. The writer's
    lines are stored as the bytes read, and the rows go back to the writer process as bytes, which pickle at memcpy
    speed. With an ``enforcement``, the chunk's rollups (``store.Rollup``) are summed here too, so that the writer
    upserts a few hundred rollup rows instead of grouping the chunk's rows again in SQL.
    """
    rows: list[Row] = []
    errors: dict[str, int] = {}
    seen = 0
    strings: dict[str, str] = {}
    # The same few strings repeat on every row: one object each, so that pickling the rows back to the writer stores
    # a memo reference instead of the string again. The id and the document as bytearray: see ``parse_chunk_packed``.
    same = strings.setdefault
    minutes: dict[str, int] = {}
    first_bad: str | None = None
    add = rows.append

    def line_rule(raw: bytes, final: bool) -> None:
        nonlocal seen, first_bad
        parsed, reason = parse_event_line(raw, final)
        if parsed is None and reason is None:
            return  # blank
        seen += 1
        if reason is not None:
            errors[reason] = errors.get(reason, 0) + 1
            first_bad = first_bad or f"{path}: {reason} line after byte {offset}: {raw[:_SHOWN_BYTES]!r}"
        if parsed is None:
            return
        rec, key = parsed.record, parsed.key
        add(
            (
                bytearray(key) if type(key) is bytes else key,
                parsed.ts_us,
                same(rec.app, rec.app),
                same(rec.client, rec.client),
                same(rec.category, rec.category),
                same(rec.component, rec.component),
                same(rec.action, rec.action),
                same(rec.rule, rec.rule),
                1 if rec.denied else 0,
                same(rec.name, rec.name),
                bytearray(parsed.doc),
                same(rec.device_id, rec.device_id),
                same(rec.user, rec.user),
                same(rec.kind, rec.kind),
            )
        )

    size, start = len(body), 0
    while start < size:
        cut = body.find(b"\n", start + BLOCK_BYTES)
        end = size if cut < 0 else cut + 1
        block = body[start:end]
        final = end == size and not block.endswith(b"\n")  # a rotated file's unterminated last line
        fast = writer_rows(block, minutes)
        if fast is None:
            lines = block.split(b"\n")
            last = len(lines) - 1 if final else -1
            for i, raw in enumerate(lines):
                line_rule(raw, i == last)
        else:
            for item in fast:
                if isinstance(item, bytes):  # a time that is not one: the line rule says what the line is
                    line_rule(item, final and item is fast[-1])
                    continue
                seen += 1
                raw, ts_us, eid, denied, action, rule, app, category, component, client, name = item
                add(
                    (
                        bytearray.fromhex(eid),
                        ts_us,
                        same(app, app),
                        same(client, client),
                        same(category, category),
                        same(component, component),
                        same(action, action),
                        same(rule, rule),
                        1 if denied else 0,
                        same(name, name),
                        bytearray(raw),
                        "",
                        "",
                        "",
                    )
                )
        start = end
    rollup = Store.rollup_of(rows, enforcement) if enforcement is not None else None
    return rows, errors, seen, first_bad, rollup


def parse_chunk_packed(body: bytes, path: str, offset: int, enforcement: Enforcement | None = None) -> Packed:
    """``parse_chunk`` as the parser process runs it, for the writer: the rows pickled here with protocol 5.

    Why: the writer is the slower stage of the pipeline, and the sqlite3 module binds a ``bytes`` parameter only
    after asking its adapter registry (every type but int, float, str and bytearray is looked up), ~0.3 us each,
    two a row; so ``parse_chunk`` gives each row's id and document as bytearray, which binds as the same BLOB
    without it. Protocol 5 unpickles a bytearray as fast as bytes (the executor's own protocol, 4, rebuilds it by a
    call, twice as slow), and the writer unpickles the rows from one bytes object (``Ingester._commit``). Measured:
    docs/scale.md, "Ingest, sixth round"."""
    rows, errors, seen, first_bad, rollup = parse_chunk(body, path, offset, enforcement)
    return pickle.dumps(rows, protocol=5), errors, seen, first_bad, rollup
