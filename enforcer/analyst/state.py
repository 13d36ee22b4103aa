"""The analyst's state: its settings, what the handlers share, and the compliance figures on /metrics.

- ``AnalystSettings``: what ``enforcer analyst`` (and ``enforcer serve``) configure: listen, event sources,
  inventory, token, SQLite path, blocklist.
- ``Analyst``: store, ingester, inventory, the policy (watched; its ``Enforcement`` table decides which attempts
  were enforced), the Host check's names; ``db`` runs blocking work in a bounded thread pool, ``aggregate`` memoises
  an aggregation until the next stored event (concurrent callers of one share its pass), ``refresh_gauges``
  computes the non-compliant client counts.
- ``parse_tokens(text)``: the ``--token-file`` lines (``name:token`` or a plain ``token``) -> {token: analyst name}.
- ``Analyst.sync_cases``: opens and reopens cases (cases.py) from the enforced attempts, by identity; run with the
  gauges.
- The first view across restarts: a slow first view, once prepared, is also written beside the store
  (``<db>.first-view.json``, ``VIEW_FILE_SUFFIX``) with what it was computed from (the store's ``content_mark``, the
  policy table, the attempt window, the lease and inventory files' size and time); a restart whose store and inputs
  are still exactly those serves it at once (``first_view_prepared`` true, its ``generated_at`` says when) instead of
  a request waiting for a pass over every event. Anything else (events added or deleted, another policy, a changed
  lease file) and it is not used.
- ``_AnalystCollector``: the Prometheus collector of those figures and of the ingest counters.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..atomic import write_atomic
from ..config import ConfigError, default_blocklist
from ..metrics import (
    ANALYST_EVENTS_DUPLICATE_TOTAL,
    ANALYST_EVENTS_INGESTED_TOTAL,
    ANALYST_EVENTS_STORED,
    ANALYST_FILES_SKIPPED_TOTAL,
    ANALYST_HOST_REFUSED_TOTAL,
    ANALYST_INGEST_ERRORS_TOTAL,
    ANALYST_INGEST_FAILURES_TOTAL,
    ANALYST_LEASE_LINES_SKIPPED_TOTAL,
    LAST_BLOCK_TIMESTAMP,
    NONCOMPLIANT_CLIENTS,
    SPECS,
)
from .cases import CaseBook
from .hostcheck import host_names
from .identity import AnalystIdentity, tallies_of_apps
from .ingest import Ingester
from .inventory import Inventory
from .lines import DEFAULT_MAX_FILE_BYTES, SKIP_REASONS
from .records import dt_to_ts, ts_to_us
from .report import enforcement_of
from .store import Filters, Store

T = TypeVar("T")
log = logging.getLogger("enforcer.analyst")

WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}

MAX_LIMIT = 1000

MEMO_SIZE = 8  # memoised aggregations (a 1M-event store: a few MB each)
TALLIES = "tallies"  # the aggregation name of the per-device tallies (dashboard.identity_tallies)
SLOW_VIEW_SECONDS = 0.5  # a first view that takes this long is prepared in the background and may be served stale
STALE_VIEWS = 3  # ... by at most this many refresh intervals
PREPARING: contextvars.ContextVar[bool] = contextvars.ContextVar("enforcer_analyst_preparing", default=False)
VIEW_FILE_SUFFIX = ".first-view.json"  # beside the store: the last slow first view and what it was computed from
VIEW_FORMAT = 2  # bumped when the dashboard document changes shape: an older file is then not served
MAX_VIEW_FILE_BYTES = 64 * 1024 * 1024

DEFAULT_ANALYST = "analyst"  # the name of a plain token line (no "name:")
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", re.ASCII)


def parse_tokens(text: str, source: str = "--token-file") -> dict[str, str]:
    """The token file's text -> {token: analyst name}. A line is ``name:token`` or a plain ``token`` (named
    ``analyst``); blank lines and ``#`` comments are skipped. ConfigError (``source:line: problem``) for a bad name,
    an empty token or a token given twice."""
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            name, token = DEFAULT_ANALYST, line
        name, token = name.strip(), token.strip()
        if not _TOKEN_NAME.fullmatch(name):
            raise ConfigError(
                f"{source}:{lineno}: analyst name {name[:40]!r} must be 1-64 of A-Z a-z 0-9 . _ @ - (line: name:token)"
            )
        if not token:
            raise ConfigError(f"{source}:{lineno}: empty token after {name!r}:")
        if token in out:
            raise ConfigError(f"{source}:{lineno}: this token is already given on an earlier line")
        out[token] = name
    if not out:
        raise ConfigError(f"{source}: no token in the file")
    return out


@dataclass
class AnalystSettings:
    listen: str = "127.0.0.1:8000"
    events: list[str] = field(default_factory=lambda: ["var/events"])  # the folder enforcer serve writes to
    inventory: str | None = None
    token: str | None = None
    db: str = "var/analyst.sqlite"
    blocklist: list[str] = field(default_factory=lambda: [default_blocklist()])
    poll_interval: float = 0.5
    refresh_interval: float = 5.0
    parser_process: bool = True
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    allowed_hosts: list[str] = field(default_factory=list)  # --allowed-host: further names for the Host check
    leases: list[str] = field(default_factory=list)  # --leases: DHCP lease files (identity.AnalystIdentity)
    attempt_window: float = 60.0  # --attempt-window: seconds within which one device's hits are one attempt
    retention: float | None = None  # --retention in seconds: events older than this are deleted; None keeps all
    query_logs: list[str] = field(default_factory=list)  # --query-log: the resolver's query log (candidates.py)


class Analyst:
    """State shared by the handlers: store, ingester, inventory and the policy's enforcement table."""

    def __init__(self, settings: AnalystSettings, *, inventory: Inventory | None = None) -> None:
        from ..policy.reloader import PolicyHolder

        self.settings = settings
        self.token = settings.token or None
        # token -> analyst name (``--token-file`` lines ``name:token``, or a plain ``token`` named "analyst").
        self.tokens = parse_tokens(self.token) if self.token else {}
        self.inventory = inventory if inventory is not None else Inventory.load(settings.inventory)
        # Identity sources: the --leases files read now (off the loop: the Analyst is built in a thread) and again
        # by refresh_gauges when they change; --attempt-window.
        self.identity = AnalystIdentity(settings.leases, settings.attempt_window, self.inventory)
        self.holder = PolicyHolder(settings.blocklist, on_change=self._policy_changed)
        self.enforcement = enforcement_of(self.holder.policy)
        self.store = Store(settings.db)
        self.ingester = Ingester(
            self.store,
            settings.events,
            interval=settings.poll_interval,
            parser_process=settings.parser_process,
            max_file_bytes=settings.max_file_bytes,
            enforcement=lambda: self.enforcement,
            retention=settings.retention,
        )
        self.cases = CaseBook(self.store)
        # The Host check: always without a token (the only thing between a rebinding page and the data), and with
        # one when names are configured (defence in depth; by default a token-protected analyst may be reached by
        # any name a site gives it).
        self.host_check = not self.token or bool(settings.allowed_hosts)
        self.host_names = host_names(settings)
        self.host_refused = 0
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="enforcer-analyst-db")
        self.gate = asyncio.Semaphore(16)  # bounds queued DB work; further requests wait here, not in the pool
        self._memo: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        # Aggregations being computed, by memo key: a second caller waits for the same pass instead of starting
        # another (the first request after a start and the refresh loop's preparation of the first view, each
        # minutes of one core at 10M events).
        self._inflight: dict[tuple[Any, ...], asyncio.Task[Any]] = {}
        # (aggregation, policy key) -> (when prepared, seconds it took, value) of the unfiltered first view.
        self._prepared: dict[tuple[str, Any], tuple[float, float, Any]] = {}
        self._prepared_mark: tuple[Any, ...] | None = None
        self._prepared_at = 0.0
        self.first_view: tuple[tuple[Any, ...], float, Any] | None = None  # (mark, when, dashboard dict)
        self._load_view()  # the first view persisted before a restart, when the store is still exactly as it was
        # Gauges computed off the loop every refresh_interval and read at scrape time.
        self.noncompliant: dict[tuple[str, str], int] = {}
        self.last_block: dict[str, float] = {}
        self.stored = 0
        self.registry = CollectorRegistry()
        self.registry.register(_AnalystCollector(self))

    def _policy_changed(self, policy: Any) -> None:
        self.enforcement = enforcement_of(policy)

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        async with self.gate:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def view_mark(self) -> tuple[Any, ...]:
        """What every memoised aggregation is of, besides its name and filters: the policy table, the events stored
        and deleted so far, the lease book's version (all but the policy only grow)."""
        return (self.enforcement.key(), self.ingester.ingested, self.ingester.deleted, self.identity.version)

    async def aggregate(
        self, name: str, fn: Callable[..., T], f: Filters, *args: Any, mark: tuple[Any, ...] | None = None
    ) -> T:
        """``db(fn, f, *args)`` memoised until the next stored (or deleted) event: aggregations over a large store
        take seconds, and an analyst flips between the same views (and exports the CSV of the view just seen).
        Callers asking for the same aggregation of the same events while it is computed share that one pass.
        The ``TALLIES`` of an app filter are taken from the memoised unfiltered ones of the same events
        (``identity.tallies_of_apps``).

        The first view (no filter) of a store where it takes over ``SLOW_VIEW_SECONDS`` is also prepared in the
        background (``prepare_first_view``, every refresh) and served as last prepared while events keep arriving,
        at most ``STALE_VIEWS`` refresh intervals old: a page that opens does not wait for a full pass over the
        store, and it refreshes itself anyway.

        ``mark``: the ``view_mark`` the caller read before computing what it passes in ``args`` (the rows of the
        dashboard are computed from its tallies): memoised under that mark, not under the current one, which events
        stored or deleted meanwhile may have moved on (a delete between the tallies and their rows kept the rows of
        the deleted events as the view of the store without them, until the next change)."""
        if mark is None:
            mark = self.view_mark()
        ekey = mark[0]
        key = (name, f, *mark)
        if key in self._memo:
            self._memo.move_to_end(key)
            hit: T = self._memo[key]  # stored by this method for the same fn
            return hit
        if name == TALLIES and f.apps and f == Filters(apps=f.apps):
            # An app filter's device figures are a part of the unfiltered ones, when those are memoised for the
            # same events: no pass over the events of the app (seconds at 1M events).
            whole = self._memo.get((name, Filters(), *key[2:]))
            if whole is not None:
                part: T = tallies_of_apps(whole, f.apps)  # type: ignore[assignment]
                self._memo[key] = part
                while len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
                return part
        first_view = f == Filters()
        if first_view and not PREPARING.get():
            prepared = self._prepared.get((name, ekey))
            if prepared is not None and time.monotonic() - prepared[0] <= STALE_VIEWS * self.settings.refresh_interval:
                value_: T = prepared[2]
                return value_
        t0 = time.monotonic()
        task = self._inflight.get(key)
        owner = task is None
        if task is None:
            task = self._inflight[key] = asyncio.ensure_future(self.db(fn, f, *args))
            task.add_done_callback(functools.partial(self._landed, key))
        # Shielded: a caller that goes away (a closed page) does not cancel the pass the others wait for.
        value: T = await asyncio.shield(task)
        took = time.monotonic() - t0
        self._memo[key] = value
        while len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        if not owner:
            return value  # the caller that started the pass records how long it took
        if first_view and took >= SLOW_VIEW_SECONDS:
            self._prepared[(name, ekey)] = (time.monotonic(), took, value)
        elif first_view:
            self._prepared.pop((name, ekey), None)
        return value

    def _landed(self, key: tuple[Any, ...], task: asyncio.Task[Any]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have gone away before it failed

    def first_view_due(self) -> bool:
        """Whether ``prepare_first_view`` should run now: new (or deleted) events since the last preparation, and
        at least twice as long since as the preparation took (a slow one never occupies the pool back to back)."""
        mark = (self.ingester.ingested, self.ingester.deleted, self.enforcement.key())
        if mark == self._prepared_mark:
            return False
        took = max((p[1] for p in self._prepared.values()), default=0.0)
        return time.monotonic() - self._prepared_at >= 2 * took

    def first_view_prepared(self) -> bool:
        """Whether the background refresh has prepared the first view at least once (``/healthz`` says it)."""
        return self._prepared_mark is not None

    async def prepare_first_view(self, build: Callable[[], Awaitable[Any]]) -> None:
        """Compute the first view (``build``: the dashboard with no filter) now, bypassing the prepared copy; a slow
        one is also persisted beside the store for the next start (``_save_view``)."""
        mark = (self.ingester.ingested, self.ingester.deleted, self.enforcement.key())
        # Read before the view: events stored while it is computed make the mark older than the view, never newer,
        # so a restart can only refuse a view that was in fact current, not serve one that was not.
        persisted_mark = await self.db(self._view_mark)
        token = PREPARING.set(True)
        t0 = time.monotonic()
        try:
            view = await build()
        finally:
            PREPARING.reset(token)
        self._prepared_mark = mark
        self._prepared_at = time.monotonic()
        if self._prepared_at - t0 >= SLOW_VIEW_SECONDS:
            self.first_view = (mark, self._prepared_at, view)
            await self.db(self._save_view, persisted_mark, view)
        else:
            self.first_view = None

    # -- the first view across restarts -------------------------------------------------------------------------
    def _view_path(self) -> str:
        return str(self.settings.db) + VIEW_FILE_SUFFIX

    def _view_mark(self) -> dict[str, Any]:
        """Blocking: what a first view is computed from, as JSON values (compared as they read back)."""

        def stat(path: str | None) -> list[Any] | None:
            try:
                st = os.stat(path) if path else None
            except OSError:
                return [path, None]
            return None if st is None else [path, st.st_size, st.st_mtime_ns]

        mark: dict[str, Any] = json.loads(
            json.dumps(
                {
                    "format": VIEW_FORMAT,
                    "store": list(self.store.content_mark()),
                    "policy": self.enforcement.key(),
                    "window": self.settings.attempt_window,
                    "leases": [stat(p) for p in self.settings.leases],
                    "inventory": stat(self.settings.inventory),
                }
            )
        )
        return mark

    def _save_view(self, mark: dict[str, Any], view: Any) -> None:
        """Blocking: the view and its mark, written whole (temporary file, then rename) or not at all."""
        path = self._view_path()
        try:
            # 0600: the view names devices, their owners and their attempts.
            write_atomic(path, json.dumps({"mark": mark, "view": view}, separators=(",", ":")).encode(), mode=0o600)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("cannot keep the first view in %s: %s", path, exc)

    def _load_view(self) -> None:
        """Blocking (the Analyst is built off the loop): serve the persisted first view when the store and every
        input are exactly what it was computed from; otherwise leave it (the refresh loop prepares a new one)."""
        path = self._view_path()
        try:
            if os.path.getsize(path) > MAX_VIEW_FILE_BYTES:
                return
            with open(path, encoding="utf-8") as fh:
                saved = json.load(fh)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring the kept first view %s: %s", path, exc)
            return
        if (
            not isinstance(saved, dict)
            or saved.get("mark") != self._view_mark()
            or not isinstance(saved.get("view"), dict)
        ):
            return
        view = saved["view"]
        # What depends on the clock or on this process, not on the events: as of now.
        from .dashboard import window_counts

        view["windows"] = window_counts(self, self.enforcement)
        view["ingest"] = {"stored": self.store.count(), "ingested": 0, "duplicates": 0, "errors": {}}
        mark = (self.ingester.ingested, self.ingester.deleted, self.enforcement.key())
        self._prepared_mark = mark
        self._prepared_at = time.monotonic()
        self.first_view = (mark, self._prepared_at, view)
        log.info("serving the first view kept in %s (generated at %s)", path, saved["view"].get("generated_at"))

    def prepared_view(self) -> Any | None:
        """The whole unfiltered dashboard as last prepared, when it is still for the current events or at most
        ``STALE_VIEWS`` refresh intervals old (only a slow one is kept: see ``aggregate``); else None."""
        if self.first_view is None:
            return None
        mark, at, view = self.first_view
        current = (self.ingester.ingested, self.ingester.deleted, self.enforcement.key())
        if mark == current or time.monotonic() - at <= STALE_VIEWS * self.settings.refresh_interval:
            return view
        return None

    def refresh_gauges(self, now: datetime | None = None) -> None:
        """Blocking: the per-window non-compliant client counts and the last block per app."""
        now_us = ts_to_us(dt_to_ts(now or datetime.now(UTC)))
        self.identity.refresh()
        # A control app's hits are bypass attempts, never non-compliance: no series that could only read 0
        controls = self.enforcement.controls
        apps = (set(self.enforcement.cutovers) | set(self.store.facets().get("app", []))) - controls
        counts: dict[tuple[str, str], int] = {}
        for window, seconds in WINDOWS.items():
            per_app = self.store.noncompliant(now_us - seconds * 1_000_000, self.enforcement)
            for app in apps | (set(per_app) - controls):
                counts[(app, window)] = per_app.get(app, 0)
        self.noncompliant = counts
        self.last_block = {app: us / 1e6 for app, us in self.store.last_block().items()}
        self.stored = self.store.count()
        self.sync_cases(now_us)

    def sync_cases(self, now_us: int | None = None) -> dict[str, int]:
        """Blocking: open cases for new non-compliant devices, reopen remediated ones that hit again (cases.py: each
        attempt's device is its identity at its own time, leases included)."""
        now_us = now_us if now_us is not None else ts_to_us(dt_to_ts(datetime.now(UTC)))
        self.identity.refresh()  # a stat per lease file when none changed
        return self.cases.sync(self.identity.identifier(), self.enforcement, now_us)

    def close(self) -> None:
        self.ingester.stop()
        self.pool.shutdown(wait=True)
        self.cases.close()
        self.store.close()


class _AnalystCollector(Collector):
    def __init__(self, analyst: Analyst) -> None:
        self.a = analyst

    def collect(self) -> Any:
        out: list[Metric] = []
        nc = GaugeMetricFamily(NONCOMPLIANT_CLIENTS, SPECS[NONCOMPLIANT_CLIENTS].help, labels=["app", "window"])
        for (app, window), n in sorted(self.a.noncompliant.items()):
            nc.add_metric([app, window], n)
        out.append(nc)
        lb = GaugeMetricFamily(LAST_BLOCK_TIMESTAMP, SPECS[LAST_BLOCK_TIMESTAMP].help, labels=["app"])
        for app, ts in sorted(self.a.last_block.items()):
            lb.add_metric([app], ts)
        out.append(lb)
        ing = self.a.ingester
        for name, value in (
            (ANALYST_EVENTS_INGESTED_TOTAL, ing.ingested),
            (ANALYST_EVENTS_DUPLICATE_TOTAL, ing.duplicates),
            (ANALYST_INGEST_FAILURES_TOTAL, ing.poll_failures),
        ):
            c = CounterMetricFamily(name[: -len("_total")], SPECS[name].help)
            c.add_metric([], value)
            out.append(c)
        errs = CounterMetricFamily(
            ANALYST_INGEST_ERRORS_TOTAL[: -len("_total")], SPECS[ANALYST_INGEST_ERRORS_TOTAL].help, labels=["reason"]
        )
        counts = dict(ing.errors)  # one C-level copy: the ingest thread may add a reason meanwhile
        for reason in sorted({*SKIP_REASONS, *counts}):
            errs.add_metric([reason], counts.get(reason, 0))
        out.append(errs)
        skipped = CounterMetricFamily(
            ANALYST_FILES_SKIPPED_TOTAL[: -len("_total")], SPECS[ANALYST_FILES_SKIPPED_TOTAL].help, labels=["reason"]
        )
        files = dict(ing.files_skipped)
        for reason in sorted({"not_regular", "too_large", "unreadable", "compressed", *files}):
            skipped.add_metric([reason], files.get(reason, 0))
        out.append(skipped)
        refused = CounterMetricFamily(
            ANALYST_HOST_REFUSED_TOTAL[: -len("_total")], SPECS[ANALYST_HOST_REFUSED_TOTAL].help
        )
        refused.add_metric([], self.a.host_refused)
        out.append(refused)
        leases = CounterMetricFamily(
            ANALYST_LEASE_LINES_SKIPPED_TOTAL[: -len("_total")], SPECS[ANALYST_LEASE_LINES_SKIPPED_TOTAL].help
        )
        leases.add_metric([], self.a.identity.files.skipped)
        out.append(leases)
        stored = GaugeMetricFamily(ANALYST_EVENTS_STORED, SPECS[ANALYST_EVENTS_STORED].help)
        stored.add_metric([], self.a.stored)
        out.append(stored)
        return iter(out)
