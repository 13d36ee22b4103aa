"""The analyst web service (aiohttp): dashboard, JSON/CSV API, Prometheus metrics, token auth.

- ``AnalystSettings``: what ``enforcer analyst`` (and ``enforcer serve``) configure: listen, event sources, inventory,
  token, SQLite path, blocklist.
- ``start_analyst(settings) -> AnalystRunner``: start everything inside the running event loop (``enforcer serve``
  calls this): opens the store, starts the ingest thread and the policy watcher, refreshes the compliance gauges
  every ``refresh_interval`` seconds, listens. ``await runner.stop()`` stops listening, the tasks and the ingester,
  and closes the store. ``runner.url`` is the base URL (the real port when 0 was asked for).
- ``build_app(analyst)``: the routes; ``Analyst`` holds the shared state (store, ingester, inventory, policy).
- Routes: ``GET /`` dashboard (static shell; all data comes from the API), ``GET /static/*`` its CSS/JS (local
  files only, no CDN), ``GET /api/events`` (filters app, client, category, component, since, until, limit; newest
  first; ``next`` is an opaque keyset cursor ``TS.SEQ``), ``GET /api/report`` (the ``enforcer report`` JSON),
  ``GET /api/report.csv``, ``GET /api/dashboard`` (chart series, non-compliant devices, top rules, facets),
  ``GET /healthz`` (no auth), ``GET /metrics`` (no auth: counts only, for Prometheus).
- Auth: with a token, ``/`` and ``/api/*`` need ``Authorization: Bearer TOKEN`` (compared with
  ``hmac.compare_digest``) and answer 401 otherwise. ``/`` without the header still returns the page *shell* (with
  status 401): it holds no data, only a login form; the script keeps the token in ``sessionStorage`` (gone when the
  tab closes) and sends it as a Bearer header on every API call. No cookie, hence no CSRF surface.
- Host check (DNS rebinding): without a token, and with a token when ``allowed_hosts`` is given, a request whose
  ``Host`` header is not one of this analyst's names (``host_allowed``: the listen address, ``localhost``,
  ``127.0.0.1``, ``[::1]``, the ``--allowed-host`` names, each with the port the request came in on) is refused with
  403 and counted; a page on ``attacker.example`` that resolves to 127.0.0.1 gets nothing.
- Bad parameters (a time outside 1970..9999, ``until`` before ``since``, a malformed cursor, a limit out of range)
  are 400 with ``{"error": "<one line>"}``; times go through ``report.parse_range``, the parser of ``enforcer
  report``.
- Every response carries the security headers (``SECURITY_HEADERS``: CSP without inline script or style,
  nosniff, frame denial, no referrer). The page builds the DOM with ``textContent`` only, so event data (a hostile
  ``dns.question.name``) is never parsed as HTML.
- Blocking work (SQLite queries) runs in a small thread pool behind a semaphore; the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import ConfigError, default_blocklist
from ..metrics import (
    ANALYST_EVENTS_DUPLICATE_TOTAL,
    ANALYST_EVENTS_INGESTED_TOTAL,
    ANALYST_EVENTS_STORED,
    ANALYST_FILES_SKIPPED_TOTAL,
    ANALYST_HOST_REFUSED_TOTAL,
    ANALYST_INGEST_ERRORS_TOTAL,
    LAST_BLOCK_TIMESTAMP,
    NONCOMPLIANT_CLIENTS,
    SPECS,
    split_host_port,
)
from .ingest import Ingester
from .inventory import Inventory
from .lines import DEFAULT_MAX_FILE_BYTES, SKIP_REASONS
from .records import MAX_US, dt_to_ts, ts_to_us, us_to_ts
from .report import build_report, effective_map, parse_range, to_csv
from .store import Filters, Store

log = logging.getLogger("enforcer.analyst")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_FILTER_VALUES = 50
MEMO_SIZE = 8  # memoised aggregations (a 1M-event store: a few MB each)
# Chart bucket sizes (seconds); the smallest that keeps the chart at or under MAX_BUCKETS points per series.
BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400)
MAX_BUCKETS = 60
_CURSOR = re.compile(r"(\d{1,18})\.([bt])((?:[0-9a-f]{2}){1,256})", re.ASCII)
_LIMIT = re.compile(r"\d{1,6}", re.ASCII)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}

T = TypeVar("T")


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


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracket(host: str) -> str:
    h = host.strip().lower().strip("[]")
    return f"[{h}]" if ":" in h else h.removesuffix(".")


def host_names(settings: AnalystSettings) -> frozenset[str]:
    """The names a request's Host header may carry: loopback, the listen address, the configured names."""
    names = set(LOOPBACK_NAMES)
    with contextlib.suppress(ValueError):
        names.add(_bracket(split_host_port(settings.listen)[0]))
    names.update(_bracket(h) for h in settings.allowed_hosts if h.strip())
    return frozenset(names)


def host_allowed(header: str, names: frozenset[str], port: int | None, local: str | None = None) -> bool:
    """Whether ``Host: header`` names this analyst: a name in ``names`` (or the local address the request came in
    on), and the port the request came in on (no port: only when that is 80). Case and one trailing dot of a name
    are ignored."""
    h = header.strip().lower()
    if not h or not h.isascii():
        return False
    if h.startswith("["):
        close = h.find("]")
        if close < 0:
            return False
        host, rest = h[: close + 1], h[close + 1 :]
    else:
        host, sep, tail = h.partition(":")
        rest = sep + tail
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
            return False
        given = int(rest[1:])
    else:
        given = 80
    if port is not None and given != port:
        return False
    host = _bracket(host)
    return host in names or (local is not None and host == _bracket(local))


def check_listen(settings: AnalystSettings) -> tuple[str, int]:
    """HOST:PORT, refusing a non-loopback address without a token (ConfigError, one line)."""
    try:
        host, port = split_host_port(settings.listen)
    except ValueError as exc:
        raise ConfigError(f"analyst: invalid --listen: {exc}") from None
    if not settings.token and not is_loopback(host):
        raise ConfigError(
            f"analyst: refusing to listen on {settings.listen} without a token: give --token-file, "
            "or listen on 127.0.0.1 / ::1"
        )
    return host, port


class Analyst:
    """State shared by the handlers: store, ingester, inventory and the policy's effective dates."""

    def __init__(self, settings: AnalystSettings, *, inventory: Inventory | None = None) -> None:
        from ..policy.reloader import PolicyHolder

        self.settings = settings
        self.token = settings.token or None
        self.inventory = inventory if inventory is not None else Inventory.load(settings.inventory)
        self.holder = PolicyHolder(settings.blocklist, on_change=self._policy_changed)
        self.effective: dict[str, str] = effective_map(self.holder.policy)
        self.store = Store(settings.db)
        self.ingester = Ingester(
            self.store,
            settings.events,
            interval=settings.poll_interval,
            parser_process=settings.parser_process,
            max_file_bytes=settings.max_file_bytes,
        )
        # The Host check: always without a token (the only thing between a rebinding page and the data), and with
        # one when names are configured (defence in depth; by default a token-protected analyst may be reached by
        # any name a site gives it).
        self.host_check = not self.token or bool(settings.allowed_hosts)
        self.host_names = host_names(settings)
        self.host_refused = 0
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="enforcer-analyst-db")
        self.gate = asyncio.Semaphore(16)  # bounds queued DB work; further requests wait here, not in the pool
        self._memo: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        # Gauges computed off the loop every refresh_interval and read at scrape time.
        self.noncompliant: dict[tuple[str, str], int] = {}
        self.last_block: dict[str, float] = {}
        self.stored = 0
        self.registry = CollectorRegistry()
        self.registry.register(_AnalystCollector(self))

    def _policy_changed(self, policy: Any) -> None:
        self.effective = effective_map(policy)

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        async with self.gate:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def aggregate(self, name: str, fn: Callable[..., T], f: Filters, *args: Any) -> T:
        """``db(fn, f, *args)`` memoised until the next stored event: aggregations over a large store take seconds,
        and an analyst flips between the same views (and exports the CSV of the view just seen)."""
        key = (name, f, tuple(sorted(self.effective.items())), self.ingester.ingested)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        value = await self.db(fn, f, *args)
        self._memo[key] = value
        while len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)
        return value

    def refresh_gauges(self, now: datetime | None = None) -> None:
        """Blocking: the per-window non-compliant client counts and the last block per app."""
        now_us = ts_to_us(dt_to_ts(now or datetime.now(UTC)))
        apps = set(self.effective) | set(self.store.facets().get("app", []))
        counts: dict[tuple[str, str], int] = {}
        for window, seconds in WINDOWS.items():
            per_app = self.store.noncompliant(now_us - seconds * 1_000_000, self.effective)
            for app in apps | set(per_app):
                counts[(app, window)] = per_app.get(app, 0)
        self.noncompliant = counts
        self.last_block = {app: us / 1e6 for app, us in self.store.last_block().items()}
        self.stored = self.store.count()

    def close(self) -> None:
        self.ingester.stop()
        self.pool.shutdown(wait=True)
        self.store.close()


ANALYST = web.AppKey("analyst", Analyst)


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
        for reason in sorted({"not_regular", "too_large", "unreadable", *files}):
            skipped.add_metric([reason], files.get(reason, 0))
        out.append(skipped)
        refused = CounterMetricFamily(
            ANALYST_HOST_REFUSED_TOTAL[: -len("_total")], SPECS[ANALYST_HOST_REFUSED_TOTAL].help
        )
        refused.add_metric([], self.a.host_refused)
        out.append(refused)
        stored = GaugeMetricFamily(ANALYST_EVENTS_STORED, SPECS[ANALYST_EVENTS_STORED].help)
        stored.add_metric([], self.a.stored)
        out.append(stored)
        return iter(out)


# -- request parsing -------------------------------------------------------------------------------------------------
class BadRequest(ValueError):
    pass


def _values(request: web.Request, name: str) -> tuple[str, ...]:
    out: list[str] = []
    for raw in request.query.getall(name, []):
        out += [v.strip() for v in raw.split(",") if v.strip()]
    if len(out) > MAX_FILTER_VALUES:
        raise BadRequest(f"too many values for {name} (max {MAX_FILTER_VALUES})")
    return tuple(dict.fromkeys(out))


def filters_from(request: web.Request) -> tuple[Filters, str | None, str | None]:
    try:
        since, until = parse_range(request.query.get("since"), request.query.get("until"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    f = Filters(
        apps=_values(request, "app"),
        clients=_values(request, "client"),
        categories=_values(request, "category"),
        components=_values(request, "component"),
        since=ts_to_us(since) if since else None,
        until=ts_to_us(until) if until else None,
    )
    return f, since, until


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


# -- middleware -------------------------------------------------------------------------------------------------------
def _authorized(request: web.Request, token: str | None) -> bool:
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))


def _protected(path: str) -> bool:
    return path == "/" or path == "/index.html" or path.startswith("/api/") or path == "/api"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_ok(request: web.Request, analyst: Analyst) -> bool:
    hosts = request.headers.getall("Host", [])
    if not hosts:
        return True  # HTTP/1.0 without Host: not a browser, so not a rebinding page
    if len(hosts) > 1:
        return False
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    local, port = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) and len(sock) >= 2 else (None, None)
    return host_allowed(hosts[0], analyst.host_names, port, local)


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    analyst: Analyst = request.app[ANALYST]
    if analyst.host_check and not _host_ok(request, analyst):
        analyst.host_refused += 1
        return _json(
            {"error": "forbidden: the Host header is not a name of this analyst (see --allowed-host)"}, status=403
        )
    if _protected(request.path) and not _authorized(request, analyst.token):
        if request.path in ("/", "/index.html"):
            # The shell carries no data; its login form is how a browser gets the token in the first place.
            return _page(status=401)
        return _json({"error": "unauthorized: send Authorization: Bearer TOKEN"}, status=401)
    try:
        return await handler(request)
    except BadRequest as exc:
        return _json({"error": str(exc)}, status=400)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.status == 401 and _protected(request.path):
        response.headers["WWW-Authenticate"] = 'Bearer realm="enforcer-analyst"'


# -- handlers ---------------------------------------------------------------------------------------------------------
_PAGE: bytes | None = None


def _page(status: int = 200) -> web.Response:
    global _PAGE
    if _PAGE is None:
        _PAGE = (TEMPLATES / "index.html").read_bytes()
    return web.Response(body=_PAGE, status=status, content_type="text/html", charset="utf-8")


async def index(request: web.Request) -> web.StreamResponse:
    return _page()


async def healthz(request: web.Request) -> web.StreamResponse:
    ing: Ingester = request.app[ANALYST].ingester
    return _json({"status": "ok", "ingested": ing.ingested, "polls": ing.polls})


async def metrics(request: web.Request) -> web.StreamResponse:
    body = generate_latest(request.app[ANALYST].registry)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def _parse_cursor(value: str | None) -> tuple[int, str | bytes] | None:
    """``TS.bHEX`` (blob id) or ``TS.tHEX`` (text id, UTF-8 as hex): opaque to clients, exact for the keyset."""
    if not value:
        return None
    m = _CURSOR.fullmatch(value)
    if not m or int(m.group(1)) > MAX_US:
        raise BadRequest("invalid cursor (use the 'next' value of the previous page)")
    raw = bytes.fromhex(m.group(3))
    if m.group(2) == "b":
        return int(m.group(1)), raw
    try:
        return int(m.group(1)), raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("invalid cursor (use the 'next' value of the previous page)") from None


def _format_cursor(cursor: tuple[int, str | bytes] | None) -> str | None:
    if cursor is None:
        return None
    ts, eid = cursor
    return f"{ts}.b{eid.hex()}" if isinstance(eid, bytes) else f"{ts}.t{eid.encode('utf-8').hex()}"


async def api_events(request: web.Request) -> web.StreamResponse:
    analyst: Analyst = request.app[ANALYST]
    f, _, _ = filters_from(request)
    raw_limit = request.query.get("limit", str(DEFAULT_LIMIT)).strip()
    if not _LIMIT.fullmatch(raw_limit):
        raise BadRequest(f"limit must be an integer 1..{MAX_LIMIT}")
    limit = int(raw_limit)
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1..{MAX_LIMIT}")
    cursor = _parse_cursor(request.query.get("cursor") or request.query.get("next"))
    docs, nxt = await analyst.db(analyst.store.events, f, limit, cursor)
    return _json({"events": docs, "next": _format_cursor(nxt)})


async def _report(request: web.Request) -> dict[str, Any]:
    analyst: Analyst = request.app[ANALYST]
    f, since, until = filters_from(request)
    pairs = await analyst.aggregate("pairs", analyst.store.pairs, f, analyst.effective)
    return build_report(pairs, inventory=analyst.inventory, since=since, until=until)


async def api_report(request: web.Request) -> web.StreamResponse:
    return _json(await _report(request))


async def api_report_csv(request: web.Request) -> web.StreamResponse:
    text = to_csv(await _report(request))
    return web.Response(
        text=text,
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="enforcer-report.csv"'},
    )


def _noncompliant_rows(analyst: Analyst, pairs: dict[tuple[str, str], list[Any]]) -> list[dict[str, Any]]:
    rows = []
    for (client, app), (attempts, enforced, first, last) in pairs.items():
        if enforced <= 0:
            continue
        dev = analyst.inventory.lookup(client) if client else None
        rows.append(
            {
                "device": dev.device if dev else None,
                "owner": dev.owner if dev else None,
                "unit": dev.unit if dev else None,
                "client": client,
                "app": app,
                "first_seen": first,
                "last_seen": last,
                "attempts": attempts,
                "enforced_attempts": enforced,
            }
        )
    rows.sort(key=lambda r: (-r["enforced_attempts"], r["app"], r["client"]))
    return rows


def _series(store: Store, f: Filters) -> dict[str, Any]:
    """Blocking: attempts per app per bucket, dense (zeros included), the bucket chosen from the data's time span."""
    bounds = store.bounds(f)
    if bounds is None:
        return {"bucket_seconds": None, "buckets": [], "apps": {}}
    lo, hi = bounds
    span = max(1, (hi - lo) // 1_000_000 + 1)
    bucket = next((b for b in BUCKETS if span / b <= MAX_BUCKETS), BUCKETS[-1])
    bucket_us = bucket * 1_000_000
    first_b = lo // bucket_us * bucket_us
    n = (hi // bucket_us * bucket_us - first_b) // bucket_us + 1
    apps: dict[str, list[int]] = {}
    for b, app, count in store.series(f, bucket_us):
        apps.setdefault(app, [0] * n)[(b - first_b) // bucket_us] = count
    return {
        "bucket_seconds": bucket,
        "buckets": [us_to_ts(first_b + i * bucket_us) for i in range(n)],
        "apps": dict(sorted(apps.items())),
    }


async def _dashboard(analyst: Analyst, f: Filters) -> dict[str, Any]:
    """Everything the dashboard shows for one set of filters; the independent queries run in parallel threads."""
    store, eff = analyst.store, dict(analyst.effective)
    pairs, series, top_rules, facets, windows = await asyncio.gather(
        analyst.aggregate("pairs", store.pairs, f, eff),
        analyst.aggregate("series", functools.partial(_series, store), f),
        analyst.aggregate("top_rules", store.top_rules, f, eff, 10),
        analyst.db(store.facets),
        analyst.db(_windows, analyst, eff),
    )
    noncompliant = _noncompliant_rows(analyst, pairs)
    return {
        "generated_at": dt_to_ts(datetime.now(UTC)),
        "totals": {
            "attempts": sum(v[0] for v in pairs.values()),
            "enforced_attempts": sum(v[1] for v in pairs.values()),
            "clients": len({c for c, _ in pairs}),
            "noncompliant_clients": len({r["client"] for r in noncompliant}),
        },
        "series": series,
        "noncompliant": noncompliant[:MAX_LIMIT],
        "noncompliant_total": len(noncompliant),
        "top_rules": top_rules,
        "facets": facets,
        "windows": windows,
        "ingest": {
            "ingested": analyst.ingester.ingested,
            "duplicates": analyst.ingester.duplicates,
            "errors": dict(analyst.ingester.errors),
        },
    }


def _windows(analyst: Analyst, eff: dict[str, str]) -> list[dict[str, Any]]:
    """Live per-window counts (the gauges on /metrics are refreshed periodically; the page must not lag them)."""
    now_us = ts_to_us(dt_to_ts(datetime.now(UTC)))
    apps = sorted(set(eff) | set(analyst.store.facets().get("app", [])))
    out = []
    for window, seconds in WINDOWS.items():
        per_app = analyst.store.noncompliant(now_us - seconds * 1_000_000, eff)
        out += [{"app": app, "window": window, "clients": per_app.get(app, 0)} for app in apps]
    return out


async def api_dashboard(request: web.Request) -> web.StreamResponse:
    analyst: Analyst = request.app[ANALYST]
    f, _, _ = filters_from(request)
    return _json(await _dashboard(analyst, f))


def build_app(analyst: Analyst) -> web.Application:
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=64 * 1024)
    app[ANALYST] = analyst
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/report", api_report)
    app.router.add_get("/api/report.csv", api_report_csv)
    app.router.add_get("/api/dashboard", api_dashboard)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app


# -- lifecycle --------------------------------------------------------------------------------------------------------
async def _refresh_loop(analyst: Analyst, interval: float) -> None:
    while True:
        try:
            await analyst.db(analyst.refresh_gauges)
        except Exception:  # a locked or damaged database must not stop the service
            log.exception("cannot refresh compliance gauges")
        await asyncio.sleep(interval)


class AnalystRunner:
    """A started analyst: ``url``, ``analyst`` (state), ``app``; ``await stop()`` for a clean shutdown."""

    def __init__(self, analyst: Analyst, runner: web.AppRunner, site: web.TCPSite, tasks: list[asyncio.Task[Any]]):
        self.analyst = analyst
        self.app = runner.app
        self._runner = runner
        self._site = site
        self._tasks = tasks
        addresses = runner.addresses
        host, port = (str(addresses[0][0]), int(addresses[0][1])) if addresses else ("127.0.0.1", 0)
        self.port = port
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(None, self.analyst.close)


async def start_analyst(settings: AnalystSettings) -> AnalystRunner:
    """Start the analyst in the running loop. Raises ConfigError (bad listen/inventory) or PolicyError."""
    host, port = check_listen(settings)
    loop = asyncio.get_running_loop()
    # Loading the policy and inventory and opening SQLite touch the disk: do it off the loop.
    analyst = await loop.run_in_executor(None, Analyst, settings)
    for path in settings.events:
        if not Path(path).exists():
            log.warning("events path %s does not exist yet; it will be read when it appears", path)
    analyst.ingester.start()
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(_refresh_loop(analyst, settings.refresh_interval), name="analyst-refresh"),
        asyncio.create_task(analyst.holder.watch(), name="analyst-policy-watch"),
    ]
    runner = web.AppRunner(build_app(analyst), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), port)
        await site.start()
    except OSError as exc:
        for task in tasks:
            task.cancel()
        await runner.cleanup()
        await loop.run_in_executor(None, analyst.close)
        raise ConfigError(f"analyst: cannot listen on {settings.listen}: {exc.strerror or exc}") from None
    started = AnalystRunner(analyst, runner, site, tasks)
    log.info("analyst listening on %s (events: %s; db: %s)", started.url, ", ".join(settings.events), settings.db)
    return started
