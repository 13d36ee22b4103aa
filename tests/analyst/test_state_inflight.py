"""Concurrent callers of one aggregation share its pass (``Analyst.aggregate``): at 10M events the first request
after a start and the refresh loop's preparation of the first view would otherwise each run minutes of one core.

The aggregation here is a real blocking function run in the analyst's thread pool; it counts its runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from enforcer.analyst.store import Filters
from tests.analyst.analyst_helpers import local_analyst


def test_concurrent_callers_share_one_pass_and_a_gone_caller_does_not_cancel_it(tmp_path: Path) -> None:
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    runs: list[Filters] = []
    lock = threading.Lock()

    def slow(f: Filters) -> dict[str, int]:
        with lock:
            runs.append(f)
            n = len(runs)
        time.sleep(0.4)
        return {"pass": n}

    async def scenario() -> None:
        first = asyncio.ensure_future(analyst.aggregate("slow", slow, Filters()))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(analyst.aggregate("slow", slow, Filters()))
        other = asyncio.ensure_future(analyst.aggregate("slow", slow, Filters(apps=("wechat",))))
        await asyncio.sleep(0.05)
        first.cancel()  # the page that asked first is closed: the pass goes on for the second one
        assert await second == {"pass": 1}
        assert await other == {"pass": 2}  # other filters: a pass of their own
        assert first.cancelled()
        # Later, the same events: memoised, no third pass.
        assert await analyst.aggregate("slow", slow, Filters()) == {"pass": 1}

    try:
        asyncio.run(scenario())
    finally:
        analyst.close()
    assert runs == [Filters(), Filters(apps=("wechat",))]


def test_a_failed_pass_fails_every_caller_and_the_next_call_runs_again(tmp_path: Path) -> None:
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    runs: list[int] = []

    def failing(f: Filters) -> int:
        runs.append(1)
        time.sleep(0.2)
        if len(runs) == 1:
            raise RuntimeError("database is locked")
        return len(runs)

    async def scenario() -> None:
        both = await asyncio.gather(
            analyst.aggregate("fails", failing, Filters()),
            analyst.aggregate("fails", failing, Filters()),
            return_exceptions=True,
        )
        assert [type(r) for r in both] == [RuntimeError, RuntimeError]
        assert await analyst.aggregate("fails", failing, Filters()) == 2

    try:
        asyncio.run(scenario())
    finally:
        analyst.close()
    assert len(runs) == 2
