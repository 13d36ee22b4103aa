"""Hit events: one schema (ECS field names) for the resolver and the proxy, and the one writer that stores them.

- ``HitEvent``: what happened (rule, app, client, name/URL), built from a policy ``Match`` by ``HitEvent.from_match``.
- ``HitEvent.to_ecs()``: one JSON Lines record (nested ECS objects; fields that do not apply are left out), and
  ``HitEvent.to_json()`` its one line: THE writer of the schema. A resolver
  hit names its transport in ``labels.dns_transport`` (udp, tcp, dot, doh, doq) and an encrypted query's ClientID in
  ``device.id``. A hit of a ``kind: control`` app (a bypass control, not a banned app) carries ``labels.kind:
  "control"``; a ban hit carries no ``labels.kind`` (read it as ``labels.kind or "ban"``), so ban events keep the
  layout the analyst's fast line reader expects.
- ``EventWriter``: ``emit()`` appends to a bounded in-memory queue and returns at once; a background thread serialises,
  writes, flushes and rotates by size. A full queue or a failing disk drops events and counts them, it never blocks
  or raises into the caller. ``close()`` flushes what is queued. ``emit_line()`` queues an event its caller has
  already serialised (exactly ``to_json()``'s text: the resolver renders its hits from memoised parts,
  enforcer/dns/observe.py ``HitLines``), so the writer thread only joins, encodes and writes.
- Lines from templates, for a caller that writes many events differing in a few fields (the resolver's hits,
  enforcer/dns/observe.py ``HitLines``): ``cut_template(event, sentinels)`` is ``event.to_json()`` cut around the
  JSON text of placeholder values; joined again with the JSON text of the real values, written by the same
  encoders ``to_json`` uses (``json_text`` for a string, ``second_text`` + 6 digits + ``Z`` for ``@timestamp``), the
  parts give exactly ``to_json()``'s line. So the template is rendered by ``to_json`` itself and the values by its
  own encoders: one renderer of the schema, whatever is memoised around it.
- External rotation: before every batch (and at least every ``check_interval`` seconds when idle) the writer compares
  the (device, inode) of its path with the file it holds; when the file was renamed away (logrotate without
  copytruncate) or deleted, it opens a fresh one. A batch that landed in a file deleted meanwhile (link count 0 after
  the write) is written again to the new file, so ``written`` counts only events that are in a linked file.
  A copytruncate rotation is followed too (the writer re-reads the size; O_APPEND writes go to the new end).
- ``reopen()`` (one writer) and ``reopen_all()`` (every writer of the process) ask for a reopen; both only set a flag
  the writer thread reads within ``flush_interval``, so they are safe from any thread and from a signal handler.
  ``install_reopen_signal(loop)`` routes SIGUSR1, the usual "reopen your logs" signal, to ``reopen_all``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .metrics import EVENTS_DROPPED_TOTAL, EVENTS_QUEUED, EVENTS_WRITTEN_TOTAL, SPECS
from .policy.model import Match

log = logging.getLogger("enforcer.events")

ACTIONS = ("dns-block", "dns-response-block", "http-block", "tls-block", "connect-block")
HOSTNAME = socket.gethostname()

# Bumped by reopen_all() (SIGUSR1); every writer compares it with the value it saw when it opened its file. A plain
# int increment is safe inside a signal handler, where taking a lock the interrupted thread holds would deadlock.
_reopen_generation = 0


def reopen_all() -> None:
    """Ask every EventWriter of this process to reopen its file (async-signal-safe: sets a counter only)."""
    global _reopen_generation
    _reopen_generation += 1


def install_reopen_signal(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """SIGUSR1 -> ``reopen_all()``. With a loop, through ``loop.add_signal_handler``; without one, ``signal.signal``
    (main thread only). Returns False where the handler cannot be installed (not the main thread, no SIGUSR1)."""
    sig = getattr(signal, "SIGUSR1", None)
    if sig is None:
        return False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        if loop is not None:
            loop.add_signal_handler(sig, reopen_all)
        else:
            signal.signal(sig, lambda _signum, _frame: reopen_all())
        return True
    return False


def rfc3339(ts: datetime) -> str:
    """UTC, microseconds, 'Z' suffix: 2023-10-30T04:00:00.000000Z."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def second_text(sec: int) -> str:
    """``rfc3339`` of the whole second ``sec`` (seconds since the epoch) up to its dot: ``2023-10-30T04:00:00.``; the
    time of an event within that second is this, its microseconds in 6 digits, and ``Z``."""
    return rfc3339(datetime.fromtimestamp(sec, UTC))[:-7]


# The one JSON encoding of an event (``HitEvent.to_json``) and of a template's values (``json_text``).
_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


def json_text(value: str) -> str:
    """The JSON of a string field exactly as ``HitEvent.to_json`` writes it (printable ASCII without a quote or a
    backslash needs no escaping: quoted as is, a third of the cost)."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return _dumps(value)


def cut_template(event: HitEvent, sentinels: tuple[str, ...]) -> tuple[str, ...]:
    """``event.to_json()`` cut around ``sentinels`` (the JSON text of placeholder field values, e.g. ``'"@@ip@@"'``),
    which must each occur exactly once and in this order: ``len(sentinels) + 1`` fixed parts. Joining them with the
    JSON text of other values gives exactly ``to_json()`` of the event with those values (ValueError otherwise)."""
    text = event.to_json()
    parts, start = [], 0
    for sentinel in sentinels:
        if text.count(sentinel) != 1:
            raise ValueError(f"event template: {sentinel} not found exactly once")
        pos = text.index(sentinel)
        if pos < start:
            raise ValueError("event template: fields not in the expected order")
        parts.append(text[start:pos])
        start = pos + len(sentinel)
    parts.append(text[start:])
    return tuple(parts)


# The optional ECS fields, in the order they are written (the analyst's fast path reads the writer's own layout):
# attribute, where it goes, and the attribute it is written only beside (a port without an address, a query type
# without a name, mean nothing).
_OPTIONAL_FIELDS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("source_ip", ("source", "ip"), None),
    ("source_port", ("source", "port"), "source_ip"),
    ("dns_question_name", ("dns", "question", "name"), None),
    ("dns_question_type", ("dns", "question", "type"), "dns_question_name"),
    ("url_full", ("url", "full"), None),
    ("url_domain", ("url", "domain"), None),
    ("http_method", ("http", "request", "method"), None),
    ("tls_server_name", ("tls", "client", "server_name"), None),
    ("destination_ip", ("destination", "ip"), None),
    ("destination_port", ("destination", "port"), None),
    ("device_id", ("device", "id"), None),  # the ClientID of an encrypted DNS query (enforcer/dns/clientid.py)
    # The chain of a discovery (dataset enforcer.discovery): the name asked and the alias or address that matched.
    ("related_hosts", ("related", "hosts"), None),
    ("related_ip", ("related", "ip"), None),
    # Proxy only: whether the TLS handshake of a connection refused with the block page completed (false: the client
    # does not trust the enforcer CA, e.g. a pinned app), and the proxy login (--auth) of the client.
    ("tls_established", ("tls", "established"), None),
    ("user_name", ("user", "name"), None),
)


def _put(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc.setdefault(key, {})
    doc[path[-1]] = value


@dataclass(slots=True)
class HitEvent:
    timestamp: datetime
    action: str
    component: str  # "dns" | "proxy"
    rule_id: str
    app: str
    category: str | None
    reference: str
    version: str
    enforced: bool = True
    exempt: bool = False
    source_ip: str | None = None
    source_port: int | None = None
    dns_question_name: str | None = None
    dns_question_type: str | None = None
    url_full: str | None = None
    url_domain: str | None = None
    http_method: str | None = None
    tls_server_name: str | None = None
    destination_ip: str | None = None
    destination_port: int | None = None
    observer_hostname: str = HOSTNAME
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Events converted from other engines' logs (BIND/Unbound RPZ hits) keep their own dataset, e.g. enforcer.rpz.
    dataset: str | None = None
    device_id: str | None = None  # ClientID (DoT/DoQ server name, DoH path): device.id
    dns_transport: str | None = None  # udp | tcp | dot | doh | doq: labels.dns_transport
    kind: str = "ban"  # the app's kind (policy.model.AppPolicy.kind): ban | control; labels.kind when "control"
    related_hosts: list[str] | None = None
    related_ip: list[str] | None = None
    tls_established: bool | None = None  # proxy block page: tls.established
    user_name: str | None = None  # proxy login (enforcer proxy --auth): user.name

    @classmethod
    def from_match(
        cls,
        match: Match,
        *,
        action: str,
        component: str,
        version: str,
        enforced: bool,
        at: datetime | None = None,
        exempt: bool = False,
        **fields: Any,
    ) -> HitEvent:
        return cls(
            timestamp=at or datetime.now(UTC),
            action=action,
            component=component,
            rule_id=match.rule.id,
            app=match.rule.app,
            category=match.rule.category,
            reference=match.rule.source,
            version=version,
            enforced=enforced,
            exempt=exempt,
            kind=match.app.kind,
            **fields,
        )

    def to_ecs(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "@timestamp": rfc3339(self.timestamp),
            "event": {
                "id": self.id,
                "kind": "alert",
                "category": ["network"],
                "type": ["denied"] if self.enforced else ["allowed"],
                "action": self.action,
                "dataset": self.dataset or f"enforcer.{self.component}",
                "module": "enforcer",
            },
            "rule": {
                "id": self.rule_id,
                "ruleset": self.app,
                "reference": self.reference,
                "version": self.version,
            },
            "observer": {"hostname": self.observer_hostname, "type": self.component},
        }
        if self.category:
            doc["rule"]["category"] = self.category
        if self.exempt:
            doc["labels"] = {"exempt": True}
        if self.dns_transport is not None:
            doc.setdefault("labels", {})["dns_transport"] = self.dns_transport
        if self.kind != "ban":
            doc.setdefault("labels", {})["kind"] = self.kind
        for attr, path, needs in _OPTIONAL_FIELDS:
            value = getattr(self, attr)
            if value is not None and (needs is None or getattr(self, needs) is not None):
                _put(doc, path, value)
        return doc

    def to_json(self) -> str:
        return _dumps(self.to_ecs())


def writable_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot take events (one line: a folder, a read-only or missing parent...), or None when it can.
    Checked at start: a writer that finds out at the first blocked query has already lost that hit's evidence. The
    file is created empty if missing, as the writer would; a FIFO with no reader yet passes (ENXIO)."""
    p = Path(path)
    if p.is_dir():
        return f"{p}: is a folder, expected a file path"
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # a file where a folder of the path should be
            return f"{exc.filename or p.parent}: cannot write: a file stands where a folder of the path should be"
        return f"{exc.filename or p}: cannot write: {exc.strerror}"
    os.close(fd)
    return None


class EventWriter:
    """Bounded, non-blocking JSON Lines writer with size-based rotation.

    ``emit`` is safe from any thread and from the event loop: it appends to a deque (atomic under the GIL) or counts
    a drop. The writer thread wakes every ``flush_interval`` seconds, or at once when the queue is half full.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        max_queue: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        backups: int = 5,
        flush_interval: float = 0.1,
        check_interval: float = 1.0,
    ) -> None:
        self.path = Path(path) if path else None
        self.max_queue = max_queue
        self.max_bytes = max_bytes
        self.backups = backups
        self.flush_interval = flush_interval
        self.check_interval = check_interval
        self.reopened = 0  # files reopened after an outside rotation, a delete or a reopen request
        self.written = 0
        self.dropped = 0
        self._queue: collections.deque[HitEvent | str] = collections.deque()  # str: emit_line's serialised events
        self._wake = threading.Event()
        self._stop = False
        self._file: Any = None
        self._size = 0
        self._regular = True
        self._ident: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the open file
        self._seen_generation = _reopen_generation
        self._reopen_requested = False
        self._last_check = 0.0
        self._busy = False
        self._last_error_log = float("-inf")  # the first error is always logged, even right after boot
        self._thread: threading.Thread | None = None
        if self.path is not None:
            self._thread = threading.Thread(target=self._run, name="enforcer-event-writer", daemon=True)
            self._thread.start()

    # -- producer side -------------------------------------------------------------------------------------------
    def emit(self, event: HitEvent | str) -> bool:
        """Queue one event, as an object or already serialised (its ``to_json()`` text, no newline: the resolver's
        memoised lines); False (and counted as dropped) when the queue is full or the writer is closed."""
        if self.path is None:
            return False
        q = self._queue
        if self._stop or len(q) >= self.max_queue:
            self.dropped += 1
            return False
        q.append(event)
        if len(q) == self.max_queue // 2:
            self._wake.set()
        return True

    emit_line = emit  # the name the resolver's hit lines use (a str); one queueing rule for both

    def close(self, timeout: float = 5.0) -> None:
        """Write everything queued, then stop the thread and close the file."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Block until the queue is empty (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        # _busy covers the batch the writer has taken off the queue but not yet written.
        while (self._queue or self._busy) and time.monotonic() < deadline:
            if self._queue:
                self._wake.set()
            time.sleep(0.002)

    def reopen(self) -> None:
        """Close and reopen the file before the next write (within ``flush_interval`` when idle). Thread-safe."""
        self._reopen_requested = True

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- writer thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            # Idle too: release a rotated or deleted file promptly (its disk space, logrotate's compress step).
            self._check_file(self.check_interval)
            self._drain()
            if self._stop:
                self._drain()
                if self._file is not None:
                    with contextlib.suppress(OSError):
                        self._file.close()
                return

    def _drain(self) -> None:
        self._busy = True  # set before the first pop, so flush() never sees "empty and idle" mid-batch
        try:
            self._drain_queue()
        finally:
            self._busy = False

    def _drain_queue(self) -> None:
        q = self._queue
        while q:
            batch: list[str] = []
            try:
                while q and len(batch) < 1000:
                    event = q.popleft()
                    batch.append(event if type(event) is str else event.to_json())  # type: ignore[union-attr]
            except Exception:  # a broken event must not kill the writer
                log.exception("cannot serialise a hit event")
                self.dropped += 1
            if batch:
                self._write(batch)

    def _check_file(self, every: float) -> None:
        """Close the file (the next write opens the path afresh) when a reopen was asked for, or when the path no
        longer names the file held open: renamed away or deleted. Checks the path at most every ``every`` seconds."""
        if self._file is None:
            self._reopen_requested = False
            self._seen_generation = _reopen_generation
            return
        if self._reopen_requested or self._seen_generation != _reopen_generation:
            self._reopen_requested = False
            self._seen_generation = _reopen_generation
            log.info("event log %s: reopening on request", self.path)
            self._reopen_now()
            return
        if not self._regular:  # a FIFO or device is never rotated by name
            return
        now = time.monotonic()
        if now - self._last_check < every:
            return
        self._last_check = now
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            log.info("event log %s was deleted; writing to a new file", self.path)
            self._reopen_now()
            return
        except OSError:
            return  # e.g. a permission change on the folder: keep writing to the file we hold
        if (st.st_dev, st.st_ino) != self._ident:
            log.info("event log %s was moved away (rotated); writing to a new file", self.path)
            self._reopen_now()
        elif st.st_size < self._size:
            self._size = st.st_size  # truncated under us (copytruncate): O_APPEND writes go to its new end

    def _reopen_now(self) -> None:
        self._close_quietly()
        self.reopened += 1

    def _write(self, lines: list[str]) -> None:
        # The trailing empty line gives the last newline: ``join(lines) + "\n"`` copied the whole batch once more
        # (0.7 against 0.33 us per event for 1,000 lines of 590 bytes, docs/performance.md).
        data = "\n".join([*lines, ""]).encode("utf-8")
        try:
            self._check_file(0.0)
            for _attempt in range(2):
                if self._file is None:
                    self._open()
                if self._regular and self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                self._file.write(data)
                self._file.flush()
                self._size += len(data)
                # Deleted between the check and the write: those lines are in no file. Write them again, once.
                if not self._regular or os.fstat(self._file.fileno()).st_nlink > 0:
                    break
                log.info("event log %s was deleted while writing; writing the batch to a new file", self.path)
                self._reopen_now()
            else:
                raise OSError(0, "the event file keeps being deleted")
            self.written += len(lines)
        except OSError as exc:
            self.dropped += len(lines)
            now = time.monotonic()
            if now - self._last_error_log > 10:
                self._last_error_log = now
                log.error("event log %s: cannot write, %d event(s) dropped: %s", self.path, len(lines), exc.strerror)
            self._close_quietly()

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across batches
        st = os.fstat(self._file.fileno())
        # A pipe or device (a log shipper's FIFO, /dev/stdout) cannot tell() and must never be renamed away.
        self._regular = stat.S_ISREG(st.st_mode)
        self._size = st.st_size if self._regular else 0
        self._ident = (st.st_dev, st.st_ino)
        self._last_check = time.monotonic()
        self._seen_generation = _reopen_generation

    def _rotate(self) -> None:
        assert self.path is not None
        self._close_quietly()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._open()

    def _close_quietly(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._file = None
        self._size = 0

    # -- metrics -------------------------------------------------------------------------------------------------
    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Expose enforcer_events_written_total / enforcer_events_dropped_total from this writer's counters."""
        registry.register(_WriterCollector(self))


class _WriterCollector(Collector):
    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        for name, value in ((EVENTS_WRITTEN_TOTAL, self.writer.written), (EVENTS_DROPPED_TOTAL, self.writer.dropped)):
            family = CounterMetricFamily(name[: -len("_total")], SPECS[name].help)
            family.add_metric([], value)
            yield family
        queue = GaugeMetricFamily(EVENTS_QUEUED, SPECS[EVENTS_QUEUED].help)
        queue.add_metric([], self.writer.queued)
        yield queue


def json_docs(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``lines``; blank, torn or invalid lines and non-objects are skipped."""
    for line in lines:
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            yield doc


def iter_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Read a JSON Lines event file; torn or invalid lines are skipped."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from json_docs(fh)
