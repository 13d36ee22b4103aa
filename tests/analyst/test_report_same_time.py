"""Two events of one resolver process in the same microsecond are two events, for the report as for the store.

The writer's ids are a random per-process prefix (16 hex digits) and a counter: the report's 64-bit fingerprint of
(time, id) once read only the first half, so such a pair was counted once by `enforcer report` and twice by the
analyst's store (UNIQUE on the whole id)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from enforcer.analyst.ingest import Ingester
from enforcer.analyst.lines import fingerprint, parse_event_line
from enforcer.analyst.store import Store
from enforcer.policy import Policy
from tests.analyst.analyst_helpers import dns_hit
from tests.conftest import run_cli

PREFIX = "5f0e3a9c2b7d4e61"  # one process
AT = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _lines(policy: Policy, ids: list[str], at: datetime = AT) -> list[str]:
    return [dns_hit(policy, "long.weixin.qq.com", "10.1.2.3", at, id=i).to_json() for i in ids]


def test_same_microsecond_events_of_one_process_all_count(tmp_path: Path, policy: Policy) -> None:
    ids = [f"{PREFIX}{10**15 + n:016d}" for n in range(5)]
    lines = _lines(policy, ids)
    lines.append(lines[0])  # a true duplicate (same time and id) still counts once
    path = tmp_path / "dns.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    out = run_cli("report", "--format", "json", "--events", str(path))
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["clients"]
    assert row["hits"] == 5
    assert "1 duplicate event(s)" in out.stderr

    store = Store(tmp_path / "analyst.sqlite")
    try:
        Ingester(store, [path], parser_process=False).poll_once()
        assert store.count() == 5
    finally:
        store.close()


def test_fingerprints_differ_for_every_counter_at_one_time(policy: Policy) -> None:
    ids = [f"{PREFIX}{10**15 + n:016d}" for n in range(2000)]
    prints = set()
    for line in _lines(policy, ids):
        parsed, reason = parse_event_line(line.encode())
        assert parsed is not None and reason is None
        prints.add(fingerprint(parsed.ts_us, parsed.key))
    assert len(prints) == 2000
