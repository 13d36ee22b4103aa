"""The slow first view, once prepared, is kept beside the store and served at once by the next start while the store
and its inputs are exactly what it was computed from (state.py, ``VIEW_FILE_SUFFIX``); never otherwise."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import enforcer.analyst.state as state_mod
from enforcer.analyst.dashboard import dashboard
from enforcer.analyst.ingest import Ingester
from enforcer.analyst.store import Filters
from tests.analyst.analyst_helpers import generate, local_analyst, write_events


def _prepare(analyst: state_mod.Analyst) -> dict:
    asyncio.run(analyst.prepare_first_view(lambda: dashboard(analyst, Filters())))
    assert analyst.first_view is not None
    return analyst.first_view[2]


def test_a_restart_serves_the_kept_view_only_while_nothing_changed(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_mod, "SLOW_VIEW_SECONDS", 0.0)  # every view counts as slow: it is kept
    events = generate(policy, 600, seed=5)
    ev = tmp_path / "ev"
    write_events(ev / "dns.jsonl", events)
    first = local_analyst(tmp_path, [str(ev)])
    try:
        assert not first.first_view_prepared()  # nothing kept yet
        assert first.ingester.poll_once() == len(events)
        view = _prepare(first)
        assert view["totals"]["hits"] == len(events)
    finally:
        first.close()
    kept = Path(str(tmp_path / "a.sqlite") + state_mod.VIEW_FILE_SUFFIX)
    assert json.loads(kept.read_text())["mark"]["store"][0] == len(events)

    # Same store, same inputs: served at once, the same figures, without a pass over the events.
    again = local_analyst(tmp_path, [str(ev)])
    try:
        assert again.first_view_prepared() and not again.first_view_due()
        served = again.prepared_view()
        assert served is not None
        assert served["generated_at"] == view["generated_at"]
        assert served["totals"] == view["totals"] and served["noncompliant"] == view["noncompliant"]
        assert served["series"] == view["series"] and served["top_rules"] == view["top_rules"]
    finally:
        again.close()

    # Another attempt window: the bursts would differ, so the kept view is not used.
    other = local_analyst(tmp_path, [str(ev)], attempt_window=5.0)
    try:
        assert not other.first_view_prepared() and other.prepared_view() is None
    finally:
        other.close()

    # One more event stored while no analyst ran: the kept view no longer describes the store.
    write_events(ev / "later.jsonl", generate(policy, 1, seed=6))
    store = state_mod.Store(tmp_path / "a.sqlite")
    ing = Ingester(store, [ev / "later.jsonl"], parser_process=False)
    try:
        assert ing.poll_once() == 1
    finally:
        ing.stop()
        store.close()
    changed = local_analyst(tmp_path, [str(ev)])
    try:
        assert not changed.first_view_prepared() and changed.prepared_view() is None
        changed.ingester.poll_once()
        fresh = _prepare(changed)
        assert fresh["totals"]["hits"] == len(events) + 1
    finally:
        changed.close()

    # A damaged file is ignored (logged), never served.
    kept.write_text("{not json")
    damaged = local_analyst(tmp_path, [str(ev)])
    try:
        assert damaged.prepared_view() is None
    finally:
        damaged.close()


def test_an_app_filter_takes_its_device_figures_from_the_unfiltered_ones(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the unfiltered tallies memoised for the same events, an app filter's dashboard is computed without a pass
    over the events, and equals the one computed from them."""
    events = generate(policy, 800, seed=9)
    write_events(tmp_path / "ev" / "dns.jsonl", events)
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    passes: list[Filters] = []
    rows = analyst.store.identity_rows

    def counted(f: Filters, eff):  # type: ignore[no-untyped-def]
        passes.append(f)
        return rows(f, eff)

    monkeypatch.setattr(analyst.store, "identity_rows", counted)
    try:
        analyst.ingester.poll_once()
        asyncio.run(dashboard(analyst, Filters()))
        assert passes == [Filters()]
        for apps in (("wechat",), ("kaspersky",), ("wechat", "kaspersky")):
            derived = asyncio.run(dashboard(analyst, Filters(apps=apps)))
            assert passes == [Filters()]  # no pass for the filter
            analyst._memo.clear()
            direct = asyncio.run(dashboard(analyst, Filters(apps=apps)))
            assert passes[-1] == Filters(apps=apps)
            for part in ("totals", "noncompliant", "noncompliant_total", "series", "top_rules"):
                assert derived[part] == direct[part], part
            assert 0 < derived["totals"]["hits"] <= len(events)
            asyncio.run(dashboard(analyst, Filters()))  # the unfiltered figures memoised again
            passes[:] = [Filters()]
    finally:
        analyst.close()
