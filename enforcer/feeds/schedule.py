"""``--feeds-refresh``: the feed updater on schedule, inside ``enforcer dns`` (and so ``enforcer serve``).

``FeedScheduler(paths, registry, cafile=None, tick=60)``; ``await scheduler.run()`` (a task; cancel to stop). Every
``tick`` seconds it re-reads the blocklist's URL includes (off the event loop), updates each feed whose last
confirmation (``checked_at``: a swap, a 304 or the same content) is at least its ``refresh:`` old, one feed at a
time, and publishes per feed ``enforcer_feed_age_seconds`` (since that confirmation; since the epoch when there is no
copy yet, so the age alert fires), ``enforcer_feed_refresh_seconds`` and ``enforcer_feed_updates_total{result}``.
The download is asynchronous and everything else of an update runs in a worker thread (update.py), so the resolver
keeps answering; a swapped copy reaches the resolver by its usual reload (a file change). A failed update is retried
at the next tick after ``retry`` seconds, not at once, or after the server's ``Retry-After`` (a 429 or 503) when that
is longer (at most a day: fetch.MAX_RETRY_AFTER). ``record(spec, result)`` (each update) and ``publish(specs)``
(ages, intervals) are also what ``enforcer feeds update --metrics-textfile`` writes out (feeds/cli.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from ..metrics import FEED_AGE, FEED_REFRESH, FEED_UPDATES_TOTAL, Metrics
from ..policy.feeds import FeedSpec
from .diff import read_must_pass
from .store import read_meta
from .update import RESULTS, UpdateOptions, default_must_pass, find_feeds, update_feed

log = logging.getLogger("enforcer.feeds")

FEED_METRICS = (FEED_UPDATES_TOTAL, FEED_AGE, FEED_REFRESH)


class FeedScheduler:
    def __init__(
        self,
        paths: Sequence[str | Path],
        registry: CollectorRegistry | None = None,
        *,
        cafile: str | None = None,
        tick: float = 60.0,
        retry: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = list(paths)
        self.metrics = Metrics(registry or CollectorRegistry(), FEED_METRICS)
        self.tick = tick
        self.retry = retry
        self.clock = clock
        self.opts = UpdateOptions(cafile=cafile, record=self.record)
        self._failed_at: dict[str, float] = {}
        self._not_before: dict[str, float] = {}  # a server's Retry-After (429/503), when longer than ``retry``

    def record(self, spec: FeedSpec, result: str) -> None:
        self.metrics[FEED_UPDATES_TOTAL].labels(spec.key, result).inc()
        if result in ("refused", "failed"):
            self._failed_at[spec.key] = self.clock()
        else:
            self._failed_at.pop(spec.key, None)

    def publish(self, specs: list[FeedSpec]) -> None:
        now = self.clock()
        for spec in specs:
            checked = read_meta(spec.local).checked_at if spec.local.is_file() else 0.0
            self.metrics[FEED_AGE].labels(spec.key).set(max(0.0, now - checked))
            self.metrics[FEED_REFRESH].labels(spec.key).set(spec.refresh if not spec.pinned else 0)
            for result in RESULTS:
                self.metrics[FEED_UPDATES_TOTAL].labels(spec.key, result)  # exported as 0 from the start

    def _due(self, spec: FeedSpec) -> bool:
        now = self.clock()
        if now - self._failed_at.get(spec.key, -1e18) < self.retry or now < self._not_before.get(spec.key, -1e18):
            return False
        if not spec.local.is_file():
            return True
        return not spec.pinned and now - read_meta(spec.local).checked_at >= spec.refresh

    async def run_once(self) -> list[str]:
        """One pass: the keys of the feeds updated (any result)."""
        specs, problems = await asyncio.to_thread(find_feeds, self.paths)
        for p in problems:
            log.warning("feeds: %s", p)
        done = []
        try:
            if specs:
                must_pass = await asyncio.to_thread(read_must_pass, default_must_pass(self.paths))
                for spec in specs:
                    if self._due(spec):
                        await self._update(spec, must_pass)
                        done.append(spec.key)
        finally:
            # Ages and intervals even when a pass breaks off: a frozen age would keep EnforcerFeedStale silent.
            self.publish(specs)
        return done

    async def _update(self, spec: FeedSpec, must_pass: Sequence[str]) -> None:
        try:
            result = await update_feed(spec, self.paths, must_pass, self.opts)
            if result.retry_after is not None:
                self._not_before[spec.key] = self.clock() + result.retry_after
            else:
                self._not_before.pop(spec.key, None)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one feed's update: counted and retried after ``retry``, the others go on
            log.exception("feeds: the update of %s (%s) failed", spec.key, spec.url)
            self.record(spec, "failed")

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a vanished folder must not end the schedule: logged, retried next tick
                log.exception("feeds: scheduled update failed")
            await asyncio.sleep(self.tick)
