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
  them: a restart resumes exactly where the last commit ended. (time, ``event.id``) is UNIQUE in the store, so
  anything read twice anyway (copy-truncate rotation, a file listed twice) is stored once and counted as a duplicate.
- Pipeline: JSON parsing of chunk N+1 runs in a parser process while chunk N is inserted; a parser process that
  dies is replaced on the next poll.
- Lines: an incomplete last line of the live file is left for the next poll (the writer may be mid-write); in a
  rotated file it is torn for good: skipped and counted. Invalid lines are skipped, counted by reason
  (``invalid_json``, ``not_event``, ``torn``) and logged once per chunk with the file, byte offset and first one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import re
import threading
from collections.abc import Iterable
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .records import parse_line, record_from_doc, recover, ts_to_us
from .report import event_files
from .store import Row, Store

log = logging.getLogger("enforcer.analyst.ingest")

HEAD_BYTES = 64
CHUNK_BYTES = 16 * 1024 * 1024
_ROTATED = re.compile(r"\.\d+$")
_HEX = re.compile(r"[0-9a-f]{32}")
Parsed = tuple[list[Row], dict[str, int], int, str | None]


def _sha1(line: bytes) -> str:
    return hashlib.sha1(line).hexdigest()


def _nest(doc: dict[str, Any]) -> dict[str, Any]:
    """Flat dotted keys ("event.action": ...) -> nested ECS objects, so the API always returns one shape."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if "." in key and key != "@timestamp":
            parts = key.split(".")
            cur = out
            for p in parts[:-1]:
                nxt = cur.get(p)
                if not isinstance(nxt, dict):
                    nxt = cur[p] = {}
                cur = nxt
            cur.setdefault(parts[-1], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**value, **out[key]}
        else:
            out[key] = value
    return out


class Ingester:
    def __init__(
        self, store: Store, sources: Iterable[str | Path], *, interval: float = 0.5, parser_process: bool = True
    ) -> None:
        self.store = store
        self.sources = [Path(s) for s in sources]
        self.interval = interval
        self.ingested = 0
        self.duplicates = 0
        self.lines = 0
        self.errors: dict[str, int] = {}
        self.polls = 0
        self._conn: Any = None
        self._states: dict[tuple[int, int], tuple[bytes, int, str]] | None = None
        self._lock = threading.Lock()  # poll_once from a test and the thread must not interleave
        self._stop = threading.Event()
        # JSON parsing runs in a separate process: in a thread it would hold the GIL against the inserts (the two
        # convoy on the GIL and ingest gets slower, not faster). "spawn" because forking a threaded process is unsafe.
        self._parser_process = parser_process
        self._parser = self._new_parser()
        self._thread: threading.Thread | None = None

    def _new_parser(self) -> Executor:
        if self._parser_process:
            return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
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
                log.error("the event parser process died; starting a new one")
                self._parser.shutdown(wait=False, cancel_futures=True)
                self._parser = self._new_parser()
            except Exception:  # a broken file or a full disk must not end ingestion for good
                log.exception("ingest poll failed; retrying")
            self._stop.wait(self.interval)

    # -- one pass ---------------------------------------------------------------------------------------------------
    def poll_once(self) -> int:
        with self._lock:
            if self._conn is None:
                self._conn = self.store.writer()
                self._states = Store.file_states(self._conn)
            assert self._states is not None
            stored = 0
            present: set[tuple[int, int]] = set()
            files = event_files(self.sources)
            # Identities as listed, not only as opened: a rotation between listing and opening makes a name open a
            # different file, and the file that moved away must keep its offset.
            for path in files:
                with contextlib.suppress(OSError):
                    st = path.stat()
                    present.add((st.st_dev, st.st_ino))
            for path in files:
                if self._stop.is_set():
                    break
                try:
                    stored += self._read_file(path, present)
                except OSError as exc:
                    log.warning("%s: cannot read: %s", path, exc.strerror)
            gone = [ident for ident in self._states if ident not in present]
            if gone and not self._stop.is_set():
                Store.forget_files(self._conn, gone)
                for ident in gone:
                    del self._states[ident]
            self.polls += 1
            return stored

    def _read_file(self, path: Path, present: set[tuple[int, int]]) -> int:
        assert self._states is not None
        stored = 0
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            ident = (st.st_dev, st.st_ino)
            present.add(ident)
            head = fh.read(HEAD_BYTES)
            state = self._states.get(ident)
            offset = 0
            if state is not None:
                old_head, old_offset, _ = state
                if head.startswith(old_head) and st.st_size >= old_offset:
                    offset = old_offset
                else:
                    log.info("%s: new or truncated file under a known inode; reading from the start", path)
            if offset >= st.st_size:
                if state is None or state[0] != head:
                    self._states[ident] = (head, offset, str(path))
                return 0
            rotated = bool(_ROTATED.search(path.name))
            fh.seek(offset)
            # Parse chunk N+1 in the parser thread while chunk N is inserted here: sqlite3 releases the GIL while it
            # updates the B-trees, so the two overlap on two cores.
            pending: tuple[Future[Parsed], int] | None = None
            read_to = offset
            while not self._stop.is_set():
                chunk = fh.read(CHUNK_BYTES)
                if not chunk:
                    break
                eof = len(chunk) < CHUNK_BYTES
                end = chunk.rfind(b"\n")
                if end < 0 and eof and not rotated:
                    break  # the live file's last line is still being written: wait for its newline
                if end < 0 or (eof and rotated and end + 1 < len(chunk)):
                    # A rotated file is never appended to again, so its partial last line is torn for good (as is a
                    # single "line" longer than a chunk).
                    body, torn = chunk, True
                else:
                    body, torn = chunk[: end + 1], False
                fh.seek(read_to + len(body))
                future = self._parser.submit(parse_chunk, body, str(path), read_to, torn)
                read_to += len(body)
                if pending is not None:
                    stored += self._commit(ident, head, path, *pending)
                pending = (future, read_to)
            if pending is not None:
                stored += self._commit(ident, head, path, *pending)
        return stored

    def _commit(self, ident: tuple[int, int], head: bytes, path: Path, future: Future[Parsed], offset: int) -> int:
        """Store one parsed chunk and the file offset after it in one transaction."""
        assert self._states is not None
        rows, errors, seen, first_bad = future.result()
        self.lines += seen
        if errors:
            for reason, n in errors.items():
                self.errors[reason] = self.errors.get(reason, 0) + n
            log.warning("skipped %d bad line(s); first: %s", sum(errors.values()), first_bad)
        with self._transaction() as conn:
            inserted = Store.insert(conn, rows) if rows else 0
            Store.save_file_state(conn, ident, head, offset, str(path))
        self._states[ident] = (head, offset, str(path))
        self.ingested += inserted
        self.duplicates += len(rows) - inserted
        return inserted

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


def parse_chunk(body: bytes, path: str, offset: int, torn_tail: bool) -> Parsed:
    """Whole lines -> (rows to insert, error counts by reason, lines seen, first problem for the log).

    A plain function of its arguments so that it can run in the parser process. The writer's lines are parsed and
    stored as the bytes read (``json.loads`` takes UTF-8 bytes): no decode here, and the rows go back to the writer
    process as bytes, which pickle at memcpy speed. Anything else takes the text path (replacement characters for
    invalid UTF-8, torn-line recovery, flat dotted keys re-nested).
    """
    rows: list[Row] = []
    errors: dict[str, int] = {}
    seen = 0
    strings: dict[str, str] = {}
    same = strings.setdefault
    lines = body.split(b"\n")
    last = len(lines) - 1
    first_bad: str | None = None
    for i, raw in enumerate(lines):
        if raw[:1] != b"{" or raw[-1:] != b"}":
            raw = raw.strip()
            if not raw:
                continue
        seen += 1
        if torn_tail and i == last:
            errors["torn"] = errors.get("torn", 0) + 1
            first_bad = first_bad or f"{path}: torn last line after byte {offset}"
            continue
        doc: Any = None
        with contextlib.suppress(ValueError):  # UnicodeDecodeError is a ValueError too
            doc = json.loads(raw)
        rec = record_from_doc(doc) if type(doc) is dict else None
        stored: bytes = raw
        if rec is None or ("event" not in doc and any("." in k for k in doc if k != "@timestamp")):
            line = raw.decode("utf-8", "replace")
            parsed = parse_line(line)
            if parsed is None:
                tail = recover(line)
                parsed = parse_line(tail) if tail else None
                reason = "torn" if parsed is not None else ("invalid_json" if not _is_json(line) else "not_event")
                errors[reason] = errors.get(reason, 0) + 1
                first_bad = first_bad or f"{path}: {reason} line after byte {offset}: {line[:80]!r}"
                if parsed is None:
                    continue
                line = tail or line
            rec, doc = parsed
            if "event" not in doc and any("." in k for k in doc if k != "@timestamp"):
                line = json.dumps(_nest(doc), separators=(",", ":"), ensure_ascii=False)
            stored = line.encode("utf-8")
        try:
            ts_us = ts_to_us(rec.ts)
        except ValueError:
            errors["not_event"] = errors.get("not_event", 0) + 1
            first_bad = first_bad or f"{path}: invalid @timestamp after byte {offset}: {rec.ts[:40]!r}"
            continue
        eid = rec.id
        # 16-byte blobs for the writer's uuid4 hex ids: half the UNIQUE index of the hex text, faster inserts.
        key: str | bytes = (
            bytes.fromhex(eid) if len(eid) == 32 and _HEX.fullmatch(eid) else (eid or "sha1:" + _sha1(stored))
        )
        # The same few strings repeat on every row: one object each, so that pickling the rows back to the writer
        # stores a memo reference instead of the string again.
        rows.append(
            (
                key,
                ts_us,
                same(rec.app, rec.app),
                same(rec.client, rec.client),
                same(rec.category, rec.category),
                same(rec.component, rec.component),
                same(rec.action, rec.action),
                same(rec.rule, rec.rule),
                1 if rec.denied else 0,
                same(rec.name, rec.name),
                stored,
            )
        )
    return rows, errors, seen, first_bad


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
