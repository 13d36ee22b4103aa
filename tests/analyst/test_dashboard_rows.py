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
