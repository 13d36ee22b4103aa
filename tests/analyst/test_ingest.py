"""The SQLite store fed by the ingester: appends, size rotation, restarts, duplicates, torn and invalid lines.

Counts are checked against the HitEvent objects the test wrote (independent count), read back from the real
SQLite file.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from enforcer.analyst.ingest import Ingester
from enforcer.analyst.report import enforcement_of
from enforcer.analyst.store import Filters, Store
from enforcer.events import EventWriter
from tests.analyst.analyst_helpers import expected_report, generate, write_events
from tests.conftest import eventually


def _stored_ids(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [bytes(r[0]).hex() if isinstance(r[0], bytes) else r[0] for r in conn.execute("SELECT eid FROM events")]


def _pairs_as_rows(store: Store, policy) -> dict:
    pairs = store.pairs(Filters(), enforcement_of(policy))
    return {
        k: {"attempts": v[0], "enforced_attempts": v[1], "first_seen": v[2], "last_seen": v[3]}
        for k, v in pairs.items()
    }


def _expected_rows(policy, events) -> dict:
    return {
        k: {
            "attempts": v["hits"],  # Store.pairs counts raw hits per address
            "enforced_attempts": v["enforced_hits"],
            "first_seen": v["first_seen"],
            "last_seen": v["last_seen"],
        }
        for k, v in expected_report(policy, events).items()
    }


@pytest.mark.parametrize("parser_process", [False, True], ids=["thread-parser", "process-parser"])
def test_ingest_equals_independent_count(tmp_path: Path, policy, parser_process: bool) -> None:
    events = generate(policy, 2500, seed=11)
    write_events(tmp_path / "dns.jsonl", events[:1200])
    write_events(tmp_path / "proxy.jsonl", events[1200:])
    store = Store(tmp_path / "a.sqlite")
    ing = Ingester(store, [tmp_path / "dns.jsonl", tmp_path / "proxy.jsonl"], parser_process=parser_process)
    try:
        assert ing.poll_once() == 2500
        assert ing.poll_once() == 0  # nothing new: nothing read again
    finally:
        ing.stop()
    assert sorted(_stored_ids(tmp_path / "a.sqlite")) == sorted(e.id for e in events)
    assert _pairs_as_rows(store, policy) == _expected_rows(policy, events)
    assert ing.errors == {} and ing.duplicates == 0
    store.close()


def test_rotation_and_restart_without_double_counting(tmp_path: Path, policy) -> None:
    events = generate(policy, 3000, seed=12)
    path = tmp_path / "events.jsonl"
    db = tmp_path / "a.sqlite"
    writer = EventWriter(path, max_bytes=80_000, backups=50)
    store = Store(db)
    ing = Ingester(store, [path], parser_process=False)
    rotations_seen = 0
    try:
        for i, ev in enumerate(events[:2000], 1):
            while not writer.emit(ev):
                writer.flush()
            if i % 150 == 0:
                writer.flush()
                ing.poll_once()  # reads between rotations: offsets must follow the renamed files
                rotations_seen = max(rotations_seen, len(list(tmp_path.glob("events.jsonl.*"))))
        writer.flush()
        ing.poll_once()
    finally:
        ing.stop()
        store.close()
    assert rotations_seen >= 5
    assert len(_stored_ids(db)) == 2000

    # The analyst is down while more events are written and the live file rotates again.
    for ev in events[2000:]:
        while not writer.emit(ev):
            writer.flush()
    writer.close()

    store = Store(db)  # restart: offsets come from the database
    ing = Ingester(store, [path], parser_process=False)
    try:
        assert ing.poll_once() == 1000
        assert ing.duplicates == 0  # resumed at the saved offsets, nothing re-read
    finally:
        ing.stop()
    assert sorted(_stored_ids(db)) == sorted(e.id for e in events)
    assert _pairs_as_rows(store, policy) == _expected_rows(policy, events)
    store.close()


def test_same_events_twice_are_stored_once(tmp_path: Path, policy) -> None:
    events = generate(policy, 400, seed=13)
    write_events(tmp_path / "a" / "events.jsonl", events)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "events.jsonl", tmp_path / "b" / "copy.jsonl")  # e.g. copy-truncate rotation
    store = Store(tmp_path / "s.sqlite")
    ing = Ingester(store, [tmp_path / "a", tmp_path / "b"], parser_process=False)
    try:
        assert ing.poll_once() == 400
    finally:
        ing.stop()
    assert ing.duplicates == 400
    assert store.count() == 400
    store.close()


def test_truncated_file_is_read_from_the_start(tmp_path: Path, policy) -> None:
    events = generate(policy, 300, seed=14)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in events[:200]), encoding="utf-8")
    store = Store(tmp_path / "s.sqlite")
    ing = Ingester(store, [path], parser_process=False)
    try:
        assert ing.poll_once() == 200
        path.write_text("".join(e.to_json() + "\n" for e in events[200:]), encoding="utf-8")  # truncate + rewrite
        assert ing.poll_once() == 100
    finally:
        ing.stop()
    assert store.count() == 300
    store.close()


def test_torn_and_invalid_lines(tmp_path: Path, policy, caplog: pytest.LogCaptureFixture) -> None:
    events = generate(policy, 40, seed=15)
    lines = [e.to_json() for e in events]
    live = tmp_path / "events.jsonl"
    store = Store(tmp_path / "s.sqlite")
    ing = Ingester(store, [live], parser_process=False)
    try:
        # An incomplete last line in the live file is left alone until its newline arrives.
        live.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40], encoding="utf-8")
        assert ing.poll_once() == 5
        with live.open("a", encoding="utf-8") as fh:
            fh.write(lines[5][40:] + "\n")
        assert ing.poll_once() == 1
        # Invalid lines and a torn line (crash mid-write, then the next append) are skipped and counted.
        with live.open("a", encoding="utf-8") as fh:
            fh.write("garbage\n")
            fh.write('{"no": "event"}\n')
            fh.write(lines[6][:50] + lines[7] + "\n")  # event 6 is lost, event 7 is recovered
            fh.write("\n".join(lines[8:20]) + "\n")
        assert ing.poll_once() == 13
        assert ing.errors == {"invalid_json": 1, "not_event": 1, "torn": 1}
        # A rotated file's partial last line will never be completed: counted as torn, the rest kept.
        rotated = tmp_path / "events.jsonl.1"
        rotated.write_text("\n".join(lines[20:30]) + "\n" + lines[30][:60], encoding="utf-8")
        assert ing.poll_once() == 10
        assert ing.errors["torn"] == 2
    finally:
        ing.stop()
    assert "skipped" in caplog.text
    want = [e.id for e in events[:6] + events[7:30]]
    assert sorted(_stored_ids(tmp_path / "s.sqlite")) == sorted(want)
    store.close()


def test_live_follow_while_the_writer_rotates(tmp_path: Path, policy) -> None:
    """The ingest thread and the writer thread run at the same time; rotations race with polls."""
    import time

    events = generate(policy, 4000, seed=16)
    path = tmp_path / "events.jsonl"
    store = Store(tmp_path / "s.sqlite")
    ing = Ingester(store, [path], interval=0.02, parser_process=False)
    ing.start()
    try:
        writer = EventWriter(path, max_bytes=50_000, backups=200, flush_interval=0.005)
        for i, ev in enumerate(events, 1):
            while not writer.emit(ev):
                time.sleep(0.001)
            if i % 40 == 0:
                time.sleep(0.002)  # small batches: many rotations during the run
        writer.close()
        assert writer.dropped == 0
        eventually(lambda: ing.ingested >= len(events), timeout=30, message=lambda: f"ingested {ing.ingested}")
    finally:
        ing.stop()
    # A precondition, not the property: rotations must have raced with polls. How many happen depends on how the
    # writer thread batches (fewer, larger batches on a loaded machine: 19 seen), so ask for ten, not twenty.
    assert len(list(tmp_path.glob("events.jsonl.*"))) >= 10
    assert ing.ingested == len(events)
    assert sorted(_stored_ids(tmp_path / "s.sqlite")) == sorted(e.id for e in events)
    assert ing.errors == {}
    store.close()


def test_parser_process_death_is_survived(tmp_path: Path, policy, caplog: pytest.LogCaptureFixture) -> None:
    import os
    import signal

    events = generate(policy, 600, seed=17)
    path = tmp_path / "events.jsonl"
    store = Store(tmp_path / "s.sqlite")
    ing = Ingester(store, [path], interval=0.05, parser_process=True)
    ing.start()
    try:
        write_events(path, events[:300])
        eventually(lambda: ing.ingested >= 300, timeout=30, message=lambda: f"ingested {ing.ingested}")
        assert ing.ingested == 300
        pids = list(ing._parser._processes)  # type: ignore[attr-defined]
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        write_events(path, events[300:])
        eventually(lambda: ing.ingested >= 600, timeout=30, message=lambda: f"ingested {ing.ingested}")
    finally:
        ing.stop()
    assert ing.ingested == 600
    assert "parser process died" in caplog.text
    assert sorted(_stored_ids(tmp_path / "s.sqlite")) == sorted(e.id for e in events)
    store.close()


def test_flat_keys_and_invalid_utf8_take_the_text_path(tmp_path: Path, policy) -> None:
    import json

    a, b = generate(policy, 2, seed=18)
    flat = {"@timestamp": a.to_ecs()["@timestamp"]}
    for key, value in a.to_ecs().items():
        if isinstance(value, dict):
            for k2, v2 in value.items():
                flat[f"{key}.{k2}"] = v2
    b.dns_question_name = "caf\u00e9.weixin.qq.com"
    broken = b.to_json().encode("utf-8").replace("\u00e9".encode(), b"\xe9")  # Latin-1 byte: invalid UTF-8
    path = tmp_path / "events.jsonl"
    path.write_bytes(json.dumps(flat).encode() + b"\n" + broken + b"\n")
    store = Store(tmp_path / "s.sqlite")
    ing = Ingester(store, [path], parser_process=False)
    try:
        assert ing.poll_once() == 2
    finally:
        ing.stop()
    docs, _ = store.events(Filters(), 10)
    by_id = {d["event"]["id"]: d for d in docs}
    assert by_id[a.id]["rule"]["ruleset"] == a.app and by_id[a.id]["source"]["ip"] == a.source_ip  # re-nested
    assert by_id[b.id]["dns"]["question"]["name"] == "caf\ufffd.weixin.qq.com"  # replacement character, not lost
    store.close()


@pytest.mark.parametrize("parser_process", [False, True], ids=["thread-parser", "process-parser"])
def test_lines_no_utf8_text_or_json_can_hold_are_skipped_and_ingest_goes_on(
    tmp_path: Path, policy, parser_process: bool
) -> None:
    """A lone surrogate escape (``\\udc80``: Python's json takes it, SQLite refuses the string) stopped the ingest for
    good, every poll failing on the same transaction; NaN, Infinity and 1e999 (Python's json takes them) came back out
    of the API as JSON no other reader accepts. Each is an invalid_json line now, for the report as for the ingest,
    and the events around them are stored."""
    from enforcer.analyst.report import stream_report

    events = generate(policy, 12, seed=21)
    lines = [e.to_json() for e in events]
    ip = f'"ip":"{events[0].source_ip}"'
    assert ip in lines[0]
    bad = [
        lines[0].replace(ip, '"ip":"10.0.0.\\udc80"'),
        lines[1].replace(f'"ip":"{events[1].source_ip}"', '"ip":NaN'),
        lines[2].replace(f'"ip":"{events[2].source_ip}"', '"ip":-Infinity'),
        lines[3].replace(f'"ip":"{events[3].source_ip}"', '"ip":1e999'),  # valid JSON, read by Python as inf
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(bad + lines[4:]) + "\n", encoding="utf-8")
    store = Store(tmp_path / "s.sqlite")
    ing = Ingester(store, [path], parser_process=parser_process)
    try:
        assert ing.poll_once() == 8
        assert ing.errors == {"invalid_json": 4}
        # A surrogate pair is a character like any other.
        with path.open("a", encoding="utf-8") as fh:
            fh.write(lines[0].replace(ip, '"ip":"10.0.0.\\ud83d\\ude00"') + "\n")
        assert ing.poll_once() == 1
    finally:
        ing.stop()
        store.close()
    assert sorted(_stored_ids(tmp_path / "s.sqlite")) == sorted(e.id for e in events[4:] + events[:1])
    _tallies, stats = stream_report([path], enforcement=enforcement_of(policy))
    assert (stats.events, stats.skipped) == (9, {"invalid_json": 4})
