"""The data of the dashboard's "Candidates" view (``GET /api/candidates``): discovery over the analyst's own events.

``await candidates_for(analyst)`` -> ``{"generated_at", "since", "total", "candidates": [...], "co_occurrence",
"query_logs", "note"}``: the candidate rules ``enforcer discover`` would propose from the analyst's event sources
(``--events``) and, when given, the resolver's query log (``--query-log``) over the last ``WINDOW`` (7 days), each
as ``discover.render.as_dict`` (the rule to paste, app, confidence, signals, counts, clients, first/last seen,
detail). The event-based detectors always run (answers that led into the policy, app brands in SNI values); the
co-occurrence detector (the unknown names the clients that hit a banned app ask for within seconds of those hits,
and that other clients rarely ask for) needs the query log: it names clients and what they looked up, so the
analyst reads it only when told where it is. ``co_occurrence`` says whether it ran, ``query_logs`` how many of the
given files exist. Candidates are proposals: the view has no button that applies one.

The files are read in a worker thread and the result is kept for ``TTL`` seconds per analyst (a page load every few
seconds does not re-read a week of events); at most ``MAX_SHOWN`` candidates are returned, most confident first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..discover import discover
from ..discover.render import as_dict
from ..feeds.diff import read_must_pass
from ..feeds.update import default_must_pass
from .files import rotated_siblings

log = logging.getLogger("enforcer.analyst")

WINDOW = 7 * 86400.0
TTL = 300.0
MAX_SHOWN = 200
NOTE = (
    "Proposals from the event files (answers that led into the policy, app brands in SNI values); give the analyst "
    "the resolver's query log (--query-log) for co-occurrence. Review each before pasting it into a blocklist."
)
NOTE_QUERY_LOG = (
    "Proposals from the event files (answers that led into the policy, app brands in SNI values) and the query log "
    "(co-occurrence: names asked around blocked queries). Review each before pasting it into a blocklist."
)

_cache: weakref.WeakKeyDictionary[Any, tuple[float, dict[str, Any]]] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def compute(
    events: list[str], blocklist: list[str], policy: Any, now: float, query_logs: list[str] | None = None
) -> dict[str, Any]:
    try:
        must_pass = read_must_pass(default_must_pass(blocklist))
    except OSError:
        must_pass = []
    # A query log not written yet (the resolver starts after the analyst) is not an error: co-occurrence waits.
    logs = [p for p in query_logs or [] if rotated_siblings(Path(p))]
    note = NOTE_QUERY_LOG if logs else NOTE
    try:
        cands = discover(events, logs, policy, now - WINDOW, must_pass)
    except OSError as exc:  # an unreadable query log: the event-based candidates still show, with why
        log.warning("candidates: cannot read the query log %s: %s", exc.filename, exc.strerror or exc)
        note = f"query log {exc.filename}: {exc.strerror or exc}; co-occurrence left out. {NOTE}"
        logs = []
        cands = discover(events, [], policy, now - WINDOW, must_pass)
    return {
        "generated_at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "since": datetime.fromtimestamp(now - WINDOW, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "total": len(cands),
        "candidates": [as_dict(c) for c in cands[:MAX_SHOWN]],
        "co_occurrence": bool(logs),
        "query_logs": len(logs),
        "note": note,
    }


async def candidates_for(analyst: Any, *, ttl: float = TTL) -> dict[str, Any]:
    lock = _locks.setdefault(analyst, asyncio.Lock())
    async with lock:  # one computation at a time per analyst; the others wait for its result
        now = time.time()
        cached = _cache.get(analyst)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        settings = analyst.settings
        data = await asyncio.to_thread(
            compute,
            list(settings.events),
            list(settings.blocklist),
            analyst.holder.policy,
            now,
            list(settings.query_logs),
        )
        _cache[analyst] = (now, data)
        return data
