"""Hit events: their ECS JSON shape (docs/siem.md), and the writer's promises (never blocks or raises, rotation
without loss or duplicates, flush on close, full disk and broken events counted) with real files, a real FIFO and
/dev/full."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from enforcer.events import EventWriter, HitEvent, iter_events
from tests.policy.policy_helpers import shipped

AT = datetime(2023, 10, 30, 4, 0, 0, 123456, tzinfo=UTC)


def _dns_event(**kw: Any) -> HitEvent:
    policy = shipped()
    match = policy.match_name("long.weixin.qq.com")
    assert match is not None
    fields: dict[str, Any] = {
        "action": "dns-block",
        "component": "dns",
        "version": policy.fingerprint,
        "enforced": True,
        "at": AT,
        "source_ip": "10.1.2.3",
        "source_port": 53000,
        "dns_question_name": "long.weixin.qq.com",
        "dns_question_type": "A",
    }
    fields.update(kw)
    return HitEvent.from_match(match, **fields)


def test_dns_event_ecs_shape() -> None:
    doc = _dns_event().to_ecs()
    policy = shipped()
    assert doc["@timestamp"] == "2023-10-30T04:00:00.123456Z"
    assert re.fullmatch(r"[0-9a-f]{32}", doc["event"].pop("id"))
    assert doc["event"] == {
        "kind": "alert",
        "category": ["network"],
        "type": ["denied"],
        "action": "dns-block",
        "dataset": "enforcer.dns",
        "module": "enforcer",
    }
    assert doc["rule"] == {
        "id": "wechat:domain:weixin.qq.com",
        "ruleset": "wechat",
        "category": "messaging",
        "reference": doc["rule"]["reference"],
        "version": policy.fingerprint,
    }
    assert re.fullmatch(r".*blocklists/wechat\.yaml:\d+", doc["rule"]["reference"])
    assert doc["source"] == {"ip": "10.1.2.3", "port": 53000}
    assert doc["dns"] == {"question": {"name": "long.weixin.qq.com", "type": "A"}}
    assert doc["observer"]["type"] == "dns" and doc["observer"]["hostname"]
    # Fields that do not apply are left out, not null.
    for absent in ("url", "http", "tls", "destination", "labels"):
        assert absent not in doc
    assert json.loads(_dns_event().to_json())["event"]["action"] == "dns-block"


def test_proxy_monitor_event_shape() -> None:
    policy = shipped()
    match = policy.match_url("https://dldir1.qq.com/weixin/android/weixin8040android2520_arm64.apk")
    assert match is not None and match.blocked
    ev = HitEvent.from_match(
        match,
        action="http-block",
        component="proxy",
        version=policy.fingerprint,
        enforced=False,
        exempt=True,
        at=AT,
        source_ip="10.99.0.4",
        url_full="https://dldir1.qq.com/weixin/android/weixin8040android2520_arm64.apk",
        url_domain="dldir1.qq.com",
        http_method="GET",
        tls_server_name="dldir1.qq.com",
        destination_ip="203.0.113.9",
        destination_port=443,
    )
    doc = ev.to_ecs()
    assert doc["event"]["type"] == ["allowed"] and doc["event"]["dataset"] == "enforcer.proxy"
    assert doc["labels"] == {"exempt": True}
    assert doc["url"] == {"full": ev.url_full, "domain": "dldir1.qq.com"}
    assert doc["http"] == {"request": {"method": "GET"}}
    assert doc["tls"] == {"client": {"server_name": "dldir1.qq.com"}}
    assert doc["destination"] == {"ip": "203.0.113.9", "port": 443}
    assert doc["source"] == {"ip": "10.99.0.4"}
    assert doc["rule"]["category"] == "download" and doc["observer"]["type"] == "proxy"
    assert "dns" not in doc


def _ids(path: Path) -> list[str]:
    files = sorted(path.parent.glob(path.name + "*"))
    return [doc["event"]["id"] for f in files for doc in iter_events(f)]


def test_emit_into_full_queue_returns_false_and_never_blocks(tmp_path: Path) -> None:
    # A FIFO with no reader: the writer thread blocks in open(), so nothing leaves the queue.
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    writer = EventWriter(fifo, max_queue=100, flush_interval=0.01)
    ev = _dns_event()
    started = time.monotonic()
    results = [writer.emit(ev) for _ in range(5000)]
    elapsed = time.monotonic() - started
    assert elapsed < 2.0  # generous: 5000 appends; a blocking emit would hang here
    refused = results.count(False)
    assert refused > 0 and writer.dropped == refused
    assert writer.queued <= 100
    # Drain the FIFO so the writer can finish; everything it accepted arrives, nothing twice.
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(fifo.read_text().splitlines()), daemon=True)
    reader.start()
    writer.close(timeout=5)
    reader.join(5)
    assert len(got) == results.count(True) == writer.written


def test_rotation_keeps_every_event_once(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    size = len(_dns_event().to_json()) + 1
    writer = EventWriter(path, max_bytes=size * 5, backups=3, flush_interval=0.01)
    sent = []
    for _ in range(18):  # 18 events, 5 per file: 4 files (current + 3 backups) hold all of them
        ev = _dns_event()
        sent.append(ev.id)
        assert writer.emit(ev)
        writer.flush()
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.jsonl",
        "events.jsonl.1",
        "events.jsonl.2",
        "events.jsonl.3",
    ]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= size * 5
    assert sorted(_ids(path)) == sorted(sent)
    assert writer.written == 18 and writer.dropped == 0


def test_rotation_drops_only_the_oldest_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    size = len(_dns_event().to_json()) + 1
    writer = EventWriter(path, max_bytes=size * 2, backups=2, flush_interval=0.01)
    sent = []
    for _ in range(12):
        ev = _dns_event()
        sent.append(ev.id)
        writer.emit(ev)
        writer.flush()
    writer.close()
    assert not (tmp_path / "events.jsonl.3").exists()
    kept = _ids(path)
    assert len(kept) == len(set(kept)) == 6
    assert set(kept) == set(sent[-6:])  # the newest 6 survive (3 files of 2)


def test_close_flushes_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, flush_interval=60)  # the thread would sleep for a minute on its own
    sent = [_dns_event() for _ in range(300)]
    for ev in sent:
        assert writer.emit(ev)
    writer.close()
    assert _ids(path) == [ev.id for ev in sent]
    assert writer.emit(_dns_event()) is False  # closed: refused and counted, no exception
    assert writer.dropped == 1


def test_full_disk_counts_drops_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    writer = EventWriter("/dev/full", flush_interval=0.01)
    with caplog.at_level(logging.ERROR, logger="enforcer.events"):
        for _ in range(5):
            for _ in range(10):
                assert writer.emit(_dns_event())
            writer.flush()
        writer.close()
    assert writer.dropped == 50 and writer.written == 0
    lines = [r for r in caplog.records if r.name == "enforcer.events"]
    assert len(lines) == 1 and "cannot write" in lines[0].getMessage()


def test_unserialisable_event_does_not_kill_the_writer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, flush_interval=0.01)
    good1, bad, good2 = _dns_event(), _dns_event(source_port=object()), _dns_event()
    with caplog.at_level(logging.ERROR, logger="enforcer.events"):
        for ev in (good1, bad, good2):
            assert writer.emit(ev)
        writer.flush()
        later = _dns_event()
        assert writer.emit(later)
        writer.close()
    assert _ids(path) == [good1.id, good2.id, later.id]
    assert writer.dropped == 1
    assert "cannot serialise a hit event" in caplog.text


def test_writer_metrics_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, flush_interval=0.01)
    registry = CollectorRegistry()
    writer.register_metrics(registry)
    for _ in range(3):
        writer.emit(_dns_event())
    writer.close()
    writer.emit(_dns_event())  # refused after close
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["enforcer_events_written"].samples[0].value == 3
    assert families["enforcer_events_dropped"].samples[0].value == 1
    assert families["enforcer_events_queued"].samples[0].value == 0
    with path.open("a") as fh:
        fh.write('{"torn": \n[1,2]\n\n')
    assert len(list(iter_events(path))) == 3


def test_no_path_means_no_thread() -> None:
    writer = EventWriter(None)
    assert writer.emit(_dns_event()) is False
    writer.flush()
    writer.close()
