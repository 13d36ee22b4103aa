"""The report rows of a dashboard view (the bursts of every device's hit times: seconds at 10M events) are
computed once per set of events and filters, in the thread pool, and memoised with the tallies they come from."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from enforcer.analyst import dashboard as dashboard_module
from enforcer.analyst.dashboard import dashboard
from enforcer.analyst.store import Filters
from tests.analyst.analyst_helpers import generate, local_analyst, write_events


def test_report_rows_once_per_events_and_off_the_event_loop(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events(tmp_path / "ev" / "dns.jsonl", generate(policy, 800, seed=71))
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    calls: list[str] = []
    real = dashboard_module.report_rows

    def counted(*args, **kwargs):  # the real function, its calls and threads recorded
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(dashboard_module, "report_rows", counted)
    try:
        assert analyst.ingester.poll_once() == 800
        wechat = Filters(apps=("wechat",))

        async def views() -> list[dict]:
            loop_thread = threading.current_thread().name
            out = [await dashboard(analyst, f) for f in (Filters(), wechat, wechat, Filters())]
            assert loop_thread not in calls
            return out

        whole, part, part_again, whole_again = asyncio.run(views())
        assert len(calls) == 2  # once per filter, not per request
        for a, b in ((whole, whole_again), (part, part_again)):
            assert a["noncompliant"] == b["noncompliant"] and a["totals"] == b["totals"] and a["bypass"] == b["bypass"]
        assert 0 < part["totals"]["attempts"] < whole["totals"]["attempts"]
        # New events: the rows are computed again.
        write_events(tmp_path / "ev" / "more.jsonl", generate(policy, 50, seed=72))
        assert analyst.ingester.poll_once() == 50
        asyncio.run(dashboard(analyst, wechat))
        assert len(calls) == 3
    finally:
        analyst.close()


def test_rows_follow_a_delete_that_lands_while_their_tallies_are_computed(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retention delete committed after the tallies were read but before their rows are memoised: the rows are
    kept as of the events the tallies were of, so the next view (after the delete) is of the store without them.
    (They were memoised under the counts after the delete: every later view showed the deleted events, until the
    next event stored or deleted; bench/analyst_bench.py's retention phase waited for an empty dashboard forever.)
    The delete is a real one, by the analyst's own ingester with a 30-day retention (the events are from 2023)."""
    write_events(tmp_path / "ev" / "dns.jsonl", generate(policy, 600, seed=73))
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    real = dashboard_module.identity_tallies
    deletes: list[int] = []

    def then_delete(*args, **kwargs):  # the real tallies, then (once) the delete, before the rows are computed
        tallies = real(*args, **kwargs)
        if not deletes:
            analyst.ingester.retention = 30 * 86400.0
            deletes.append(analyst.ingester.prune_now())
        return tallies

    monkeypatch.setattr(dashboard_module, "identity_tallies", then_delete)
    try:
        assert analyst.ingester.poll_once() == 600

        async def views() -> list[dict]:
            return [await dashboard(analyst, Filters()) for _ in range(3)]

        during, after, again = asyncio.run(views())
        assert deletes == [600] and analyst.store.count() == 0
        assert during["totals"]["hits"] == 600  # the view computed before the delete is of the events it read
        for view in (after, again):
            assert view["totals"]["hits"] == view["totals"]["attempts"] == 0
            assert view["noncompliant"] == [] and view["noncompliant_total"] == 0
    finally:
        analyst.close()
