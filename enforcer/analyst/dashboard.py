"""What the dashboard shows for one set of filters (``GET /api/dashboard``): totals, the chart series, the
non-compliant devices, the top rules, the facets and the live per-window counts.

- ``dashboard(analyst, filters)``: everything, the independent queries run in parallel threads.
- ``chart_series(store, filters)``: attempts per app per bucket, dense, the bucket chosen from the data's time span
  (``BUCKETS``, at most ``MAX_BUCKETS`` points a series).
- ``noncompliant_rows`` / ``window_counts``: the devices with enforced attempts, and per app and window their count.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from typing import Any

from ..policy.enforcement import Enforcement
from .records import dt_to_ts, ts_to_us, us_to_ts
from .state import MAX_LIMIT, WINDOWS, Analyst
from .store import Filters, Store

# Chart bucket sizes (seconds); the smallest that keeps the chart at or under MAX_BUCKETS points per series, and
# per day beyond (long windows read per hour or per day, never per 6 hours or per month; whole hours and days are
# what the per-hour rollups answer).
BUCKETS = (60, 300, 900, 3600, 86400)

MAX_BUCKETS = 200


def noncompliant_rows(analyst: Analyst, pairs: dict[tuple[str, str], list[Any]]) -> list[dict[str, Any]]:
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


def chart_series(store: Store, f: Filters) -> dict[str, Any]:
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


async def dashboard(analyst: Analyst, f: Filters) -> dict[str, Any]:
    """Everything the dashboard shows for one set of filters; the independent queries run in parallel threads."""
    store, eff = analyst.store, analyst.enforcement
    pairs, series, top_rules, facets, windows = await asyncio.gather(
        analyst.aggregate("pairs", store.pairs, f, eff),
        analyst.aggregate("series", functools.partial(chart_series, store), f),
        analyst.aggregate("top_rules", store.top_rules, f, eff, 10),
        analyst.db(store.facets),
        analyst.db(window_counts, analyst, eff),
    )
    noncompliant = noncompliant_rows(analyst, pairs)
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


def window_counts(analyst: Analyst, eff: Enforcement) -> list[dict[str, Any]]:
    """Live per-window counts (the gauges on /metrics are refreshed periodically; the page must not lag them)."""
    now_us = ts_to_us(dt_to_ts(datetime.now(UTC)))
    apps = sorted(set(eff.cutovers) | set(analyst.store.facets().get("app", [])))
    out = []
    for window, seconds in WINDOWS.items():
        per_app = analyst.store.noncompliant(now_us - seconds * 1_000_000, eff)
        out += [{"app": app, "window": window, "clients": per_app.get(app, 0)} for app in apps]
    return out
