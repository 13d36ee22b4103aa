"""What the dashboard shows for one set of filters (``GET /api/dashboard``): totals, the chart series, the
non-compliant devices, the bypass attempts, the top rules, the facets and the live per-window counts.

- ``dashboard(analyst, filters)``: everything, the independent queries run in parallel threads.
- ``chart_series(store, filters)``: attempts per app per bucket, dense, the bucket chosen from the data's time span
  (``BUCKETS``, at most ``MAX_BUCKETS`` points a series).
- ``noncompliant_rows`` / ``window_counts``: the devices with enforced attempts, and per app and window their count.
- ``identity_tallies(filters, analyst)`` (blocking): the per-device figures (``identity.Tallies``: hits and their
  times, each event identified by ClientID, lease, proxy user, inventory CIDR or address) from the store;
  ``report_document(analyst, filters, since, until)`` (blocking): ``/api/report``, the same document as
  ``enforcer report``. The card totals are sums over the same rows as the tables: ``noncompliant_clients`` counts
  the distinct devices of the non-compliant table, ``noncompliant_rows`` its rows (one per device and app).
  ``bypass`` (``bypass_total``): the rows of control apps (``kind: control`` blocklists, e.g.
  blocklists/controls.yaml), most attempts first, in the report's row shape; never counted in the totals.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime
from typing import Any

from ..policy.enforcement import Enforcement
from .identity import AnalystIdentity, Tallies, report_rows, tally_store_rows
from .records import dt_to_ts, ts_to_us, us_to_ts
from .state import MAX_LIMIT, WINDOWS, Analyst
from .store import Filters, Store

# Chart bucket sizes (seconds); the smallest that keeps the chart at or under MAX_BUCKETS points per series, and
# per day beyond (long windows read per hour or per day, never per 6 hours or per month; whole hours and days are
# what the per-hour rollups answer).
BUCKETS = (60, 300, 900, 3600, 86400)

MAX_BUCKETS = 200


def analyst_identity(analyst: Analyst) -> AnalystIdentity:
    """The analyst's identity sources (inventory, --leases followed as they change, --attempt-window)."""
    return analyst.identity


def identity_tallies(f: Filters, analyst: Analyst) -> Tallies:
    """Blocking: every event of the filters, identified, as per-device tallies."""
    ident = analyst_identity(analyst)
    ident.refresh()  # the lease files followed as they change (a stat per file when none did); off the loop here
    eff = analyst.enforcement
    return tally_store_rows(analyst.store.identity_rows(f, eff), ident.identifier(), eff.controls)


def report_document(analyst: Analyst, f: Filters, since: str | None, until: str | None) -> dict[str, Any]:
    """Blocking: ``/api/report``: ``report.build_report`` over the store's events (what ``enforcer report`` prints)."""
    from .report import build_report

    window = analyst_identity(analyst).window_s
    return build_report(identity_tallies(f, analyst), window_s=window, since=since, until=until)


def noncompliant_rows(analyst: Analyst, tallies: Tallies) -> list[dict[str, Any]]:
    """The rows of devices with enforced attempts (one per device and app; bypass attempts never count)."""
    return _noncompliant(report_rows(tallies, analyst_identity(analyst).window_us)[0])


def _noncompliant(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [r for r in rows if r["enforced_attempts"] > 0]
    out.sort(key=lambda r: (-r["enforced_attempts"], r["app"], r["client"] or "", r["device"] or ""))
    return out


def _device_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What tells devices apart in the rows: the identity that grouped them (MAC, ClientID, user, or address)."""
    return (
        row["identity"],
        row["mac"],
        row["device_id"],
        row["user"] if row["identity"] == "proxy-user" else None,
        row["client"] if row["identity"] in ("cidr", "address") else None,
    )


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
    # One mark for every part of the document: the rows below are computed from these tallies, and memoised as
    # of the events the tallies are of, whatever was stored or deleted while they were computed.
    mark = analyst.view_mark()
    tallies, series, top_rules, facets, windows, stored = await asyncio.gather(
        analyst.aggregate("tallies", identity_tallies, f, analyst, mark=mark),
        analyst.aggregate("series", functools.partial(chart_series, store), f, mark=mark),
        analyst.aggregate("top_rules", store.top_rules, f, eff, 10, mark=mark),
        analyst.db(store.facets),
        analyst.db(window_counts, analyst, eff),
        analyst.db(store.count),
    )
    # In the pool and memoised with the tallies: the bursts of every device's hit times (seconds at 10M events,
    # each request of a filtered view, on the event loop before).
    window = analyst_identity(analyst).window_us
    rows, bypass = await analyst.aggregate("rows", _rows, f, tallies, window, mark=mark)
    noncompliant = _noncompliant(rows)
    return {
        "generated_at": dt_to_ts(datetime.now(UTC)),
        "totals": {
            "attempts": sum(r["attempts"] for r in rows),
            "hits": sum(r["hits"] for r in rows),
            "enforced_attempts": sum(r["enforced_attempts"] for r in rows),
            "enforced_hits": sum(r["enforced_hits"] for r in rows),
            "clients": len({_device_key(r) for r in rows}),
            "noncompliant_clients": len({_device_key(r) for r in noncompliant}),
            "noncompliant_rows": len(noncompliant),
        },
        "series": series,
        "noncompliant": noncompliant[:MAX_LIMIT],
        "noncompliant_total": len(noncompliant),
        # Bypass attempts (control apps): their own table, never in the totals or the non-compliant devices.
        "bypass": bypass[:MAX_LIMIT],
        "bypass_total": len(bypass),
        "top_rules": top_rules,
        "facets": facets,
        "windows": windows,
        "ingest": {
            # The store's events (what the page shows, across restarts) beside this process's own ingest counts.
            "stored": stored,
            "ingested": analyst.ingester.ingested,
            "duplicates": analyst.ingester.duplicates,
            "errors": dict(analyst.ingester.errors),
        },
    }


def _rows(f: Filters, tallies: Tallies, window_us: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Blocking: the report rows of ``tallies`` (those of ``f``), the bypass rows most attempts first."""
    rows, bypass = report_rows(tallies, window_us)
    bypass.sort(key=lambda r: (-r["attempts"], r["app"], r["client"] or "", r["device"] or ""))
    return rows, bypass


def window_counts(analyst: Analyst, eff: Enforcement) -> list[dict[str, Any]]:
    """Live per-window counts (the gauges on /metrics are refreshed periodically; the page must not lag them)."""
    now_us = ts_to_us(dt_to_ts(datetime.now(UTC)))
    apps = sorted((set(eff.cutovers) | set(analyst.store.facets().get("app", []))) - eff.controls)  # bans only
    out = []
    for window, seconds in WINDOWS.items():
        per_app = analyst.store.noncompliant(now_us - seconds * 1_000_000, eff)
        out += [{"app": app, "window": window, "clients": per_app.get(app, 0)} for app in apps]
    return out
