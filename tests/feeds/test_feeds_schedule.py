"""The scheduled updater (``--feeds-refresh``, enforcer/feeds/schedule.py) against the local HTTPS feed server: what
is due, the metrics it publishes (parsed from the real exposition), and a failure that keeps the copy and is not
retried at once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from enforcer.feeds.schedule import FeedScheduler
from enforcer.policy.feeds import local_copy
from tests.feeds.feedserver import NAMES, FeedServer, blocklist, feed


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_scheduler_updates_due_feeds_and_publishes_metrics(
    tmp_path: Path,
    server: tuple[FeedServer, Path],
) -> None:
    srv, cert = server
    srv.set("/w.txt", feed(NAMES))
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    local = local_copy(folder, srv.url("/w.txt"))
    key = local.stem
    now = [1_000_000_000.0]
    registry = CollectorRegistry()
    sched = FeedScheduler([folder], registry, cafile=str(cert), clock=lambda: now[0])

    # No copy yet: due at once.
    assert asyncio.run(sched.run_once()) == [key]
    assert local.read_bytes() == feed(NAMES)
    m = samples(registry)
    assert m[("enforcer_feed_updates_total", (("feed", key), ("result", "updated")))] == 1
    assert m[("enforcer_feed_updates_total", (("feed", key), ("result", "failed")))] == 0
    assert m[("enforcer_feed_refresh_seconds", (("feed", key),))] == 6 * 3600
    # checked_at is the real time of the swap; the fake clock is far behind it: the age is clamped at 0.
    assert m[("enforcer_feed_age_seconds", (("feed", key),))] == 0

    # Within its refresh (6 h): not due.
    meta = json.loads(local.with_suffix(".json").read_text())
    now[0] = meta["checked_at"] + 3600
    assert asyncio.run(sched.run_once()) == []
    assert samples(registry)[("enforcer_feed_age_seconds", (("feed", key),))] == 3600

    # Past it: due; the server is gone (a failure): the copy is kept, counted, and not retried at the next tick.
    now[0] = meta["checked_at"] + 7 * 3600
    srv.set("/w.txt", b"")
    srv.bodies.pop("/w.txt")
    assert asyncio.run(sched.run_once()) == [key]
    assert local.read_bytes() == feed(NAMES)
    m = samples(registry)
    assert m[("enforcer_feed_updates_total", (("feed", key), ("result", "failed")))] == 1
    assert m[("enforcer_feed_age_seconds", (("feed", key),))] == 7 * 3600  # what the age alert watches
    now[0] += 60
    assert asyncio.run(sched.run_once()) == []  # retried after `retry` (600 s), not every tick
