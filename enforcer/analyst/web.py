"""The analyst web service (aiohttp): dashboard, JSON/CSV API, Prometheus metrics, token auth.

- ``AnalystSettings`` / ``Analyst`` (state.py): the settings and the state the handlers share; what the dashboard
  shows: dashboard.py; the Host check and the listen address: hostcheck.py.
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
  ``Host`` header is not one of this analyst's names (``hostcheck.host_allowed``: the listen address, ``localhost``,
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
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from ..config import ConfigError
from .dashboard import dashboard
from .formats import to_csv
from .hostcheck import check_listen, host_allowed
from .ingest import Ingester
from .records import MAX_US, ts_to_us
from .report import build_report, parse_range
from .state import MAX_LIMIT, Analyst, AnalystSettings
from .store import Filters

__all__ = ["SECURITY_HEADERS", "Analyst", "AnalystRunner", "AnalystSettings", "build_app", "start_analyst"]

log = logging.getLogger("enforcer.analyst")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
DEFAULT_LIMIT = 100
MAX_FILTER_VALUES = 50
_CURSOR = re.compile(r"(\d{1,18})\.([bt])((?:[0-9a-f]{2}){1,256})", re.ASCII)
_LIMIT = re.compile(r"\d{1,6}", re.ASCII)

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


ANALYST = web.AppKey("analyst", Analyst)


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
    pairs = await analyst.aggregate("pairs", analyst.store.pairs, f, analyst.enforcement)
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


async def api_dashboard(request: web.Request) -> web.StreamResponse:
    analyst: Analyst = request.app[ANALYST]
    f, _, _ = filters_from(request)
    return _json(await dashboard(analyst, f))


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
