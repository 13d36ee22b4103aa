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


def _scheduler(
    tmp_path: Path, server: tuple[FeedServer, Path], now: list[float], registry: CollectorRegistry | None = None
) -> tuple[FeedScheduler, Path, str]:
    """A blocklist with one feed (/w.txt, the test names) and its scheduler on the fake clock ``now[0]``; the copy's
    path and its key (the metrics' ``feed`` label)."""
    srv, cert = server
    srv.set("/w.txt", feed(NAMES))
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    local = local_copy(folder, srv.url("/w.txt"))
    sched = FeedScheduler([folder], registry or CollectorRegistry(), cafile=str(cert), clock=lambda: now[0])
    return sched, local, local.stem


def test_scheduler_updates_due_feeds_and_publishes_metrics(
    tmp_path: Path,
    server: tuple[FeedServer, Path],
) -> None:
    srv, _ = server
    now = [1_000_000_000.0]
    registry = CollectorRegistry()
    sched, local, key = _scheduler(tmp_path, server, now, registry)

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


def test_a_busy_server_is_asked_again_after_its_retry_after_not_before(
    tmp_path: Path, server: tuple[FeedServer, Path]
) -> None:
    """429 with Retry-After: 2 h: the scheduler used its own 600 s, asking a rate-limiting server again and again."""
    srv, _ = server
    now = [2_000_000_000.0]
    sched, local, key = _scheduler(tmp_path, server, now)
    srv.busy["/w.txt"] = (429, "7200")
    assert asyncio.run(sched.run_once()) == [key] and not local.exists()
    asked = len(srv.requests)
    for later in (601, 3600, 7199):  # past its own retry, before the server's
        now[0] = 2_000_000_000.0 + later
        assert asyncio.run(sched.run_once()) == []
    assert len(srv.requests) == asked
    # Asked again once the wait is over; a 503 with a date in the past waits only the scheduler's own retry.
    now[0] = 2_000_000_000.0 + 7200
    srv.busy["/w.txt"] = (503, "Wed, 21 Oct 2015 07:28:00 GMT")
    assert asyncio.run(sched.run_once()) == [key]
    now[0] += 601
    del srv.busy["/w.txt"]
    assert asyncio.run(sched.run_once()) == [key]
    assert local.read_bytes() == feed(NAMES)


def test_retry_after_forms() -> None:
    from enforcer.feeds.fetch import MAX_RETRY_AFTER, retry_after

    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after("120", now) == 120.0 and retry_after(" 0 ", now) == 0.0
    assert retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now) == 120.0
    assert retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now) == 0.0  # in the past: no wait
    assert retry_after("99999999999999999999", now) == MAX_RETRY_AFTER  # capped: a server cannot silence a feed
    assert retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now) == MAX_RETRY_AFTER
    assert retry_after("0000000000003600", now) == 3600.0  # leading zeros are not digits cut off
    assert retry_after("Wed Oct 21 07:30:00 2015", now) == 120.0  # asctime's form: GMT (RFC 9110, 5.6.7)
    assert retry_after("Wednesday, 21-Oct-15 07:30:00 GMT", now) == 120.0  # RFC 850's
    for bad in (None, "", "-5", "1.5", "soon", "Wed, 21 Oct 2015 07:30:00 -0000", "\u0661\u0662"):
        assert retry_after(bad, now) is None, bad
