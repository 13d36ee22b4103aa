"""A full disk under the analyst's store: ingest fails, says so (one log line, /healthz, a metric) and keeps serving;
once there is room again it goes on where it stopped, storing every event once and counting each bad line once.

The disk is a real one: a small tmpfs (root, as in CI) that a filler file fills after the analyst has started, and
that deleting the filler frees; the analyst is a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.analyst.analyst_helpers import dns_hit, write_events
from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port, small_tmpfs

EVENTS = 6000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        yield disk


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"{name} {labels} not in /metrics")


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: full
    return filler


def test_full_disk_is_reported_and_nothing_is_lost(tmp_path: Path, small_disk: Path, policy) -> None:
    events = tmp_path / "events.jsonl"
    events.touch()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "analyst.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "enforcer", "analyst", "--listen", f"127.0.0.1:{port}",
                "--events", str(events), "--db", str(small_disk / "a.sqlite"), "--blocklist", str(BLOCKLISTS),
                "--poll-interval", "0.1",
            ],
            cwd=ROOT, stderr=log, stdout=log,
        )  # fmt: skip
    try:

        def health() -> dict | None:
            assert proc.poll() is None, log_path.read_text()
            try:
                return dict(json.loads(_get(base + "/healthz")[1]))
            except OSError:
                return None

        def failing() -> dict | None:
            h = health()
            return h if h and h["ingest_failures"] >= 5 else None

        eventually(lambda: (x := health()) and x["polls"] > 0, timeout=30, interval=0.1, message="no poll")
        filler = _fill(small_disk)
        start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
        write_events(
            events,
            (dns_hit(policy, "weixin.qq.com", f"10.1.{i % 200}.{i % 250 + 1}", start + timedelta(seconds=i))
             for i in range(EVENTS)),
        )  # fmt: skip
        with events.open("ab") as fh:
            fh.write(b"{not json\n")  # one bad line: counted once, however many times the failed polls read it
        h = eventually(failing, timeout=60, interval=0.2, message="ingest did not fail on the full disk")
        assert h["status"] == "degraded" and "full" in h["ingest_error"], h
        assert h["ingested"] < EVENTS
        metrics = _get(base + "/metrics")[1].decode()
        assert _metric(metrics, "enforcer_analyst_ingest_failures_total") >= 5
        assert _get(base + "/api/report")[0] == 200  # the page and the API keep answering
        text = log_path.read_text()
        assert text.count("ingest poll failed") == 1, text  # one line per streak, not one a poll
        assert "disk is full" in text and "Traceback" not in text

        filler.unlink()
        h = eventually(
            lambda: (x := health()) and x["status"] == "ok" and x["ingested"] == EVENTS and x,
            timeout=60, interval=0.2, message="ingest did not resume once the disk had room",
        )  # fmt: skip
        assert h["ingest_error"] is None and h["ingest_failures"] >= 5
        metrics = _get(base + "/metrics")[1].decode()
        assert _metric(metrics, "enforcer_analyst_events_ingested_total") == EVENTS
        assert _metric(metrics, "enforcer_analyst_events_duplicate_total") == 0
        assert _metric(metrics, "enforcer_analyst_ingest_errors_total", reason="invalid_json") == 1
        eventually(  # the gauge follows the store on the background refresh
            lambda: _metric(_get(base + "/metrics")[1].decode(), "enforcer_analyst_events_stored") == EVENTS,
            timeout=30, interval=0.2, message="the stored gauge did not reach every event",
        )  # fmt: skip
        assert "ingest works again after" in log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 0, log_path.read_text()
