"""bench/analyst_bench.py runs end to end: a small run in the default suite, the 1M-event run under ``-m slow``.

No timing is asserted (the machine is shared); the figures are checked for completeness and consistency only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _bench(workdir: Path, events: int, timeout: int, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "analyst_bench.py"), "--events", str(events), "--workdir", str(workdir),
         *extra],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _check(result: dict, events: int) -> None:
    assert result["events"] == events
    assert result["ingest"]["events"] == events  # every generated event stored once
    assert result["report"]["seconds"] > 0 and result["report"]["peak_rss_mb_per_process"] > 0
    for key in ("first_page", "first_page_app_filter", "first_page_client_filter", "peer_healthz"):
        assert result["api"][key]["median_ms"] > 0
    assert result["api"]["dashboard_first_view"]["median_ms"] > 0
    assert result["restart"]["dashboard_first_view_after_restart"]["median_ms"] > 0
    # The bench's events are from 2023: --retention 30d deletes them all, while the API answers.
    assert result["retention"]["deleted_all"] is True and result["retention"]["healthz"]["n"] >= 1


def test_bench_small(tmp_path: Path) -> None:
    # 240 s: the run also waits for the prepared first view and runs the retention phase (a loaded machine). The
    # alternating ingest rounds against the naive loop (six more ingests, a ratio nothing here checks) run in the
    # 1M-event run under -m slow.
    _check(_bench(tmp_path, 5000, 240, "--naive-limit", "2000", "--skip", "rounds"), 5000)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_one_million(tmp_path: Path) -> None:
    result = _bench(Path("/tmp/enforcer-analyst-bench"), 1_000_000, 880)
    _check(result, 1_000_000)
    print(json.dumps(result, indent=2))
