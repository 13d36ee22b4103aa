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
  ``GET /api/candidates`` (discovery's proposed rules with their evidence, candidates.py; read-only),
  ``GET /healthz`` (no auth), ``GET /metrics`` (no auth: counts only, for Prometheus), ``GET /api/cases``,
  ``GET /api/cases.csv``, ``POST /api/cases/{device}`` (cases.py: ``{"state", "note"}`` a
  transition, ``{"note"}`` alone a progress note). ``q`` on the data routes is the search box. The
  page is rendered in the language of ``?lang=`` or ``Accept-Language`` (i18n.py); ``/api/dashboard`` adds the
  retention and the policy notice in that language.
- Auth: with a token, ``/`` and ``/api/*`` need ``Authorization: Bearer TOKEN`` (compared with
  ``hmac.compare_digest``) and answer 401 otherwise. ``/`` without the header still returns the page *shell* (with
  status 401): it holds no data, only a login form; the script keeps the token in ``sessionStorage`` (gone when the
  tab closes) and sends it as a Bearer header on every API call. No cookie. The token file may name one token per
  analyst (``name:token``); the name is who changed a case. A state-changing request must be JSON and not say it
  comes from another origin (``_cross_site``): the CSRF guard of an analyst without a token.
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
import dataclasses
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from ..config import ConfigError
from .candidates import candidates_for
from .cases import CaseError
from .cases import to_csv as cases_csv
from .dashboard import analyst_identity, dashboard, identity_tallies
from .formats import to_csv
from .hostcheck import check_listen, host_allowed
from .i18n import negotiate, render
from .ingest import Ingester
from .records import MAX_US, dt_to_ts, ts_to_us
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
MAX_CASES = 1000  # cases in one GET /api/cases (open and acknowledged first)
MAX_SEARCH = 200  # characters of the search box
MAX_SEARCH_CLIENTS = 500  # clients matched by inventory name for one search
ANONYMOUS = "anonymous"  # who changed a case on an analyst without a token
WHO = web.RequestKey("who", str)
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
    search = request.query.get("q", "").strip()
    if len(search) > MAX_SEARCH:
        raise BadRequest(f"search text too long (max {MAX_SEARCH} characters)")
    f = Filters(
        search=search,
        apps=_values(request, "app"),
        clients=_values(request, "client"),
        categories=_values(request, "category"),
        components=_values(request, "component"),
        since=ts_to_us(since) if since else None,
        until=ts_to_us(until) if until else None,
    )
    return f, since, until


async def checked_filters(request: web.Request) -> tuple[Filters, str | None, str | None]:
    """``filters_from``, and an app filter naming an app that neither the policy nor the stored events know refused
    with a 400 naming the known ones: a typo would otherwise answer an empty, clean-looking report (``enforcer
    report --app`` exits 1 the same way)."""
    f, since, until = filters_from(request)
    analyst: Analyst = request.app[ANALYST]
    unknown = set(f.apps) - set(analyst.enforcement.cutovers)
    if unknown:
        stored = set((await analyst.db(analyst.store.facets))["app"])
        if unknown - stored:
            known = sorted(set(analyst.enforcement.cutovers) | stored)
            raise BadRequest(
                f"unknown app {', '.join(map(repr, sorted(unknown - stored)))}: neither the policy nor the events"
                f" name it (known: {', '.join(known) or 'none'})"
            )
    return f, since, until


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


# -- middleware -------------------------------------------------------------------------------------------------------
def _authorized(request: web.Request, tokens: dict[str, str]) -> str | None:
    """The analyst's name for the request's bearer token (``ANONYMOUS`` when the service has no token), else None."""
    if not tokens:
        return ANONYMOUS
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return None
    raw = given.strip().encode("utf-8", "replace")
    found = None
    for token, name in tokens.items():  # every one compared, in constant time each
        if hmac.compare_digest(raw, token.encode("utf-8")):
            found = name
    return found


def _cross_site(request: web.Request) -> str | None:
    """Why a state-changing request is refused as cross-site, or None. A bearer token in a header is never sent by
    a browser on its own, but an analyst without a token has no such shield: a POST must be JSON (a cross-site
    page cannot send that without a CORS preflight, which this service never grants) and, when the browser says
    where it comes from (``Origin``, ``Sec-Fetch-Site``), come from this origin."""
    if request.content_type != "application/json":
        return "send the body as Content-Type: application/json"
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return "cross-site request refused"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return "cross-origin request refused"
    return None


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
    who = _authorized(request, analyst.tokens) if _protected(request.path) else ANONYMOUS
    if who is None:
        if request.path in ("/", "/index.html"):
            # The shell carries no data; its login form is how a browser gets the token in the first place.
            return _page(_lang(request), status=401)
        return _json({"error": "unauthorized: send Authorization: Bearer TOKEN"}, status=401)
    request[WHO] = who
    missing = request.match_info.http_exception  # no such route (404) or method (405)
    if missing is not None and request.path.startswith("/api"):
        # JSON like every other API answer; before the cross-site check, which told a DELETE to send JSON
        response = _json({"error": f"{missing.reason.lower()}: {request.method} {request.path}"}, status=missing.status)
        if "Allow" in missing.headers:
            response.headers["Allow"] = missing.headers["Allow"]
        return response
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        why = _cross_site(request)
        if why is not None:
            return _json({"error": f"forbidden: {why}"}, status=403)
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
_PAGES: dict[str, bytes] = {}


def _lang(request: web.Request) -> str:
    return negotiate(request.query.get("lang"), request.headers.get("Accept-Language"))


def _page(lang: str, status: int = 200) -> web.Response:
    if lang not in _PAGES:
        _PAGES[lang] = render((TEMPLATES / "index.html").read_text(encoding="utf-8"), lang).encode("utf-8")
    return web.Response(
        body=_PAGES[lang],
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Language": lang, "Vary": "Accept-Language"},
    )


async def index(request: web.Request) -> web.StreamResponse:
    return _page(_lang(request))


async def healthz(request: web.Request) -> web.StreamResponse:
    ing: Ingester = request.app[ANALYST].ingester
    analyst: Analyst = request.app[ANALYST]
    # Degraded is still 200: the page and the API keep answering from what is stored, and an orchestrator that
    # restarted the analyst on it would take them away without freeing the disk. The alert is on the metric.
    error = ing.last_error
    return _json(
        {
            "status": "degraded" if error else "ok",
            "ingest_error": error,
            "ingest_failures": ing.poll_failures,
            "ingested": ing.ingested,
            "polls": ing.polls,
            "deleted": ing.deleted,
            "first_view_prepared": analyst.first_view_prepared(),
        }
    )


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
    f, _, _ = await checked_filters(request)
    raw_limit = request.query.get("limit", str(DEFAULT_LIMIT)).strip()
    if not _LIMIT.fullmatch(raw_limit):
        raise BadRequest(f"limit must be an integer 1..{MAX_LIMIT}")
    limit = int(raw_limit)
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1..{MAX_LIMIT}")
    cursor = _parse_cursor(request.query.get("cursor") or request.query.get("next"))
    f = await _searched(analyst, f)
    docs, nxt = await analyst.db(analyst.store.events, f, limit, cursor)
    return _json({"events": docs, "next": _format_cursor(nxt)})


async def _searched(analyst: Analyst, f: Filters) -> Filters:
    """``f`` with the clients whose inventory device, owner or unit contains the search text (the events table
    holds addresses; the inventory names them)."""
    if not f.search or not analyst.inventory:
        return f
    clients = await analyst.db(_search_clients, analyst, f.search.lower())
    return dataclasses.replace(f, search_clients=clients)


def _search_clients(analyst: Analyst, needle: str) -> tuple[str, ...]:
    out: list[str] = []
    for client in sorted({c for c, _ in analyst.store.pairs(Filters(), analyst.enforcement)}):
        dev = analyst.inventory.lookup(client) if client else None
        if dev is not None and any(needle in (v or "").lower() for v in (dev.device, dev.owner, dev.unit)):
            out.append(client)
            if len(out) >= MAX_SEARCH_CLIENTS:
                break
    return tuple(out)


async def _report(request: web.Request) -> dict[str, Any]:
    analyst: Analyst = request.app[ANALYST]
    f, since, until = await checked_filters(request)
    f = await _searched(analyst, f)
    tallies = await analyst.aggregate("tallies", identity_tallies, f, analyst)
    return build_report(tallies, window_s=analyst_identity(analyst).window_s, since=since, until=until)


async def api_report(request: web.Request) -> web.StreamResponse:
    return _json(await _report(request))


async def api_report_csv(request: web.Request) -> web.StreamResponse:
    text = to_csv(await _report(request))
    return web.Response(
        text=text,
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="enforcer-report.csv"'},
    )


async def api_candidates(request: web.Request) -> web.StreamResponse:
    # Proposals only (enforcer discover over the analyst's events): nothing here changes a blocklist.
    return _json(await candidates_for(request.app[ANALYST]))


async def api_dashboard(request: web.Request) -> web.StreamResponse:
    analyst: Analyst = request.app[ANALYST]
    f, _, _ = await checked_filters(request)
    prepared = analyst.prepared_view() if f == Filters() else None
    # The first view of a large store comes as prepared by the refresh loop (its generated_at says when).
    data = dict(prepared) if prepared is not None else await dashboard(analyst, await _searched(analyst, f))
    lang = _lang(request)
    data["lang"] = lang
    data["retention_seconds"] = analyst.settings.retention
    data["policy"] = [
        {"app": name, "notice": app.localized("notice", lang), "reference": app.localized("reference", lang)}
        for name, app in sorted(analyst.holder.policy.apps.items())
    ]
    return _json(data)


def _owners(analyst: Analyst, cases: list[dict[str, Any]]) -> dict[str, tuple[str | None, str | None]]:
    """Case device -> (owner, unit): the inventory row of that device name (a case is keyed by it when the
    inventory knows the device, cases.case_key); an unknown device (``mac:...``, an address) has none."""
    rows: dict[str, tuple[str | None, str | None]] = {}
    for row in analyst.inventory.rows:
        rows.setdefault(row.device, (row.owner or None, row.unit or None))
    return {c["device"]: rows.get(c["device"], (None, None)) for c in cases}


async def _cases(analyst: Analyst, limit: int = -1) -> list[dict[str, Any]]:
    await analyst.db(analyst.sync_cases)  # a device non-compliant since the last refresh shows at once
    cases = await analyst.db(analyst.cases.cases, None, limit)
    owners = _owners(analyst, cases)
    for c in cases:
        c["owner"], c["unit"] = owners[c["device"]]
    return cases


async def api_cases(request: web.Request) -> web.StreamResponse:
    analyst: Analyst = request.app[ANALYST]
    cases = await _cases(analyst, MAX_CASES)  # open ones first; the CSV has them all
    counts = await analyst.db(analyst.cases.counts)
    return _json({"cases": cases, "counts": counts, "total": sum(counts.values())})


async def api_cases_csv(request: web.Request) -> web.StreamResponse:
    analyst: Analyst = request.app[ANALYST]
    cases = await _cases(analyst)
    return web.Response(
        text=cases_csv(cases, _owners(analyst, cases)),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="enforcer-cases.csv"'},
    )


async def api_case_change(request: web.Request) -> web.StreamResponse:
    analyst: Analyst = request.app[ANALYST]
    try:
        body = await request.json()
    except (ValueError, RecursionError, LookupError):  # not JSON or UTF-8, nested too deep, an unknown charset
        raise BadRequest('the body must be a JSON object {"state": ..., "note": ...}') from None
    if not isinstance(body, dict) or not isinstance(body.get("state", ""), str | None):
        raise BadRequest(
            'the body must be a JSON object with "state" (acknowledged or remediated) and/or "note" (without "state":'
            " a progress note)"
        )
    extra = sorted(set(body) - {"state", "note"})
    if extra:  # a misspelt "note" would otherwise leave the audit without one
        raise BadRequest(f'unknown field(s) {", ".join(map(repr, extra))[:200]}: the body has "state" and "note"')
    note = body.get("note", "")
    if not isinstance(note, str):
        raise BadRequest('"note" must be a string')
    state = body.get("state")
    try:
        ((state or "") + note).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape ("\ud800"): no text the store can keep
        raise BadRequest('"state" and "note" must be Unicode text (a lone surrogate escape is not)') from None
    device = request.match_info["device"]
    now_us = ts_to_us(dt_to_ts(datetime.now(UTC)))
    await analyst.db(analyst.sync_cases)  # the device may have become non-compliant since the last refresh
    try:
        if state is None:
            case = await analyst.db(analyst.cases.add_note, device, note, request[WHO], now_us)
        else:
            case = await analyst.db(analyst.cases.change, device, state, note, request[WHO], now_us)
    except CaseError as exc:
        return _json({"error": str(exc)}, status=exc.status)
    return _json(case)


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
    app.router.add_get("/api/cases", api_cases)
    app.router.add_get("/api/cases.csv", api_cases_csv)
    app.router.add_post("/api/cases/{device}", api_case_change)
    app.router.add_get("/api/candidates", api_candidates)
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    return app


# -- lifecycle --------------------------------------------------------------------------------------------------------
async def _refresh_loop(analyst: Analyst, interval: float) -> None:
    while True:
        try:
            await analyst.db(analyst.refresh_gauges)
            if analyst.first_view_due():
                # The unfiltered dashboard, ready before a page asks for it (state.Analyst.aggregate).
                await analyst.prepare_first_view(lambda: dashboard(analyst, Filters()))
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
