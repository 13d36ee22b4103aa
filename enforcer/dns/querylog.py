"""The optional, sampled query log of ALLOWED names (``enforcer dns --query-log PATH --query-log-sample 0.1``).

Discovery (``enforcer discover``, enforcer/discover/) reads it to find names that the same client asks for within a
few seconds of a blocked WeChat/Kaspersky query, and names under the apps' own domains that no rule lists. It is off
by default: it records which client asked for which name, which hit events alone never do for allowed traffic.

- ``QueryLog(path, sample, ...)``: ``record(host, qname, qtype)`` is called by the chain for every forwarded or cached
  answer. It keeps one query in ``1/sample`` (a random draw; 0 records nothing, 1 everything), appends a tuple to a
  bounded deque (full: the record is dropped and counted in ``dropped``) and returns: no I/O on the event loop. A
  daemon thread writes the batch as JSON Lines ``{"ts": UNIX, "client": IP, "name": NAME, "type": QTYPE}``.
- Retention is bounded by size: at ``max_bytes`` the file rotates to ``PATH.1`` ... ``PATH.<backups>`` and the oldest
  is deleted, so the log never holds more than ``(backups + 1) * max_bytes`` bytes.
- ``iter_query_log(path)``: the records of one file and its rotated siblings, oldest first (torn lines skipped).
- ``close()`` writes what is queued and stops the thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .wire import qtype_name

log = logging.getLogger("enforcer.dns")

DEFAULT_SAMPLE = 0.1
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_BACKUPS = 3
MAX_QUEUE = 10_000


class QueryLog:
    """Sampled allowed queries -> a size-bounded JSON Lines file, written by one daemon thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample: float = DEFAULT_SAMPLE,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        max_queue: int = MAX_QUEUE,
        flush_interval: float = 0.5,
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"sample rate {sample!r} is not between 0 and 1")
        self.path = Path(path)
        self.sample = sample
        self.max_bytes = max_bytes
        self.backups = backups
        self.max_queue = max_queue
        self.flush_interval = flush_interval
        self.written = 0
        self.dropped = 0
        self._queue: collections.deque[tuple[float, str, str, int]] = collections.deque()
        self._random = random.random
        self._wake = threading.Event()
        self._stop = False
        self._file: Any = None
        self._size = 0
        self._thread = threading.Thread(target=self._run, name="enforcer-query-log", daemon=True)
        self._thread.start()

    # -- producer side (the event loop) -----------------------------------------------------------------------------
    def record(self, host: str, qname: str, qtype: int) -> None:
        if self._random() >= self.sample or self._stop:
            return
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append((time.time(), host, qname, qtype))

    def close(self, timeout: float = 5.0) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> None:
        """Block until the queue is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.01)

    # -- writer thread ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self._drain()
            if self._stop:
                self._drain()
                if self._file is not None:
                    with contextlib.suppress(OSError):
                        self._file.close()
                return

    def _drain(self) -> None:
        q = self._queue
        lines = []
        while q:
            ts, host, name, qtype = q.popleft()
            lines.append(
                json.dumps(
                    {"ts": round(ts, 3), "client": host, "name": name, "type": qtype_name(qtype)},
                    separators=(",", ":"),
                    ensure_ascii=False,
                )
            )
        if not lines:
            return
        try:
            if self._file is None:
                self._open()
            data = "\n".join(lines) + "\n"
            self._file.write(data)
            self._file.flush()
            self._size += len(data.encode())
            self.written += len(lines)
            if self._size >= self.max_bytes:
                self._rotate()
        except OSError as exc:
            self.dropped += len(lines)
            log.warning("query log %s: write failed (%s); %d records dropped", self.path, exc, len(lines))
            self._file = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: the log names clients and what they asked for (docs/operators.md, "The query log (privacy)").
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        for i in range(self.backups, 0, -1):
            src = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            dst = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, dst)
        if self.backups == 0:
            self.path.unlink(missing_ok=True)


def iter_query_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of ``path`` and its rotated files ``path.N`` (oldest first); bad lines are skipped."""
    p = Path(path)
    rotated = sorted(
        (x for x in p.parent.glob(p.name + ".*") if x.name[len(p.name) + 1 :].isdigit()),
        key=lambda x: -int(x.name[len(p.name) + 1 :]),
    )
    for f in [*rotated, p]:
        if not f.is_file():
            continue
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if (
                    isinstance(doc, dict)
                    and isinstance(doc.get("name"), str)
                    and isinstance(doc.get("ts"), int | float)
                ):
                    yield doc
