"""The data of the dashboard's "Candidates" view (``GET /api/candidates``): discovery over the analyst's own events.

``await candidates_for(analyst)`` -> ``{"generated_at", "since", "candidates": [...], "note"}``: the candidate rules
``enforcer discover`` would propose from the analyst's event sources (``--events``) over the last ``WINDOW`` (7 days),
each as ``discover.render.as_dict`` (the rule to paste, app, confidence, signals, counts, clients, first/last seen,
detail). Only the event-based detectors can run here (answers that led into the policy, app brands in SNI values):
the co-occurrence detector needs the resolver's query log, which the analyst does not read (it names clients and
what they looked up; ``enforcer discover --query-log`` reads it where it is kept). Candidates are proposals: the view
has no button that applies one.

The files are read in a worker thread and the result is kept for ``TTL`` seconds per analyst (a page load every few
seconds does not re-read a week of events); at most ``MAX_SHOWN`` candidates are returned, most confident first.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from datetime import UTC, datetime
from typing import Any

from ..discover import discover
from ..discover.render import as_dict
from ..feeds.diff import read_must_pass
from ..feeds.update import default_must_pass

WINDOW = 7 * 86400.0
TTL = 300.0
MAX_SHOWN = 200
NOTE = (
    "Proposals from the event files (answers that led into the policy, app brands in SNI values); run "
    "'enforcer discover --query-log ...' for co-occurrence. Review each before pasting it into a blocklist."
)

_cache: weakref.WeakKeyDictionary[Any, tuple[float, dict[str, Any]]] = weakref.WeakKeyDictionary()
_locks: weakref.WeakKeyDictionary[Any, asyncio.Lock] = weakref.WeakKeyDictionary()


def compute(events: list[str], blocklist: list[str], policy: Any, now: float) -> dict[str, Any]:
    try:
        must_pass = read_must_pass(default_must_pass(blocklist))
    except OSError:
        must_pass = []
    cands = discover(events, [], policy, now - WINDOW, must_pass)
    return {
        "generated_at": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "since": datetime.fromtimestamp(now - WINDOW, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "total": len(cands),
        "candidates": [as_dict(c) for c in cands[:MAX_SHOWN]],
        "note": NOTE,
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
            compute, list(settings.events), list(settings.blocklist), analyst.holder.policy, now
        )
        _cache[analyst] = (now, data)
        return data
