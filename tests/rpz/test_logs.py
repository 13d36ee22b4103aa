"""RPZ hit log lines of real Unbound and BIND (captured from the interop tests' engines) -> HitEvents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from enforcer.events import iter_events
from enforcer.policy import load_policy
from enforcer.rpz.logs import convert, hit_to_event, parse_line
from tests.conftest import BLOCKLISTS, eventually

UNBOUND = (
    "[1795899598] unbound[15964:0] info: rpz: applied [enforcer] *.kaspersky.com. rpz-nxdomain "
    "10.20.0.7@40383 box.kaspersky.com. A IN"
)
BIND = (
    "28-Nov-2026 20:57:35.419 client @0x7f59f0edbc98 10.20.0.8#51335 (WX2.qq.com): rpz QNAME NXDOMAIN rewrite "
    "WX2.qq.com/AAAA/IN via wx2.qq.com.rpz.enforcer"
)


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policy(BLOCKLISTS)


def test_unbound_line(policy) -> None:  # type: ignore[no-untyped-def]
    hit = parse_line(UNBOUND, "unbound")
    assert hit is not None
    assert (hit.client_ip, hit.client_port, hit.qname, hit.qtype, hit.action) == (
        "10.20.0.7",
        40383,
        "box.kaspersky.com",
        "A",
        "nxdomain",
    )
    assert hit.timestamp == datetime.fromtimestamp(1795899598, UTC)
    doc = hit_to_event(hit, policy).to_ecs()
    assert doc["event"]["dataset"] == "enforcer.rpz" and doc["observer"]["type"] == "dns"
    assert doc["rule"]["ruleset"] == "kaspersky" and doc["event"]["type"] == ["denied"]
    assert doc["source"] == {"ip": "10.20.0.7", "port": 40383}
    assert doc["dns"]["question"] == {"name": "box.kaspersky.com", "type": "A"}


def test_bind_line_uses_the_given_timezone(policy) -> None:  # type: ignore[no-untyped-def]
    hit = parse_line(BIND, "bind", ZoneInfo("America/Toronto"))
    assert hit is not None and hit.qname == "wx2.qq.com" and hit.qtype == "AAAA"
    assert hit.timestamp == datetime(2026, 11, 29, 1, 57, 35, 419000, tzinfo=UTC)
    doc = hit_to_event(hit, policy).to_ecs()
    assert doc["rule"]["ruleset"] == "wechat" and doc["@timestamp"] == "2026-11-29T01:57:35.419000Z"


def test_syslog_prefix_gives_the_observer(policy) -> None:  # type: ignore[no-untyped-def]
    line = "Nov 28 20:57:35 dns-site-3 named[812]: " + BIND.split(" ", 2)[2]
    hit = parse_line(line, "bind")
    assert hit is not None and hit.observer == "dns-site-3"
    assert hit_to_event(hit, policy).to_ecs()["observer"]["hostname"] == "dns-site-3"


def test_passthru_is_a_monitor_event_and_unknown_names_are_skipped(policy) -> None:  # type: ignore[no-untyped-def]
    passthru = UNBOUND.replace("rpz-nxdomain", "rpz-passthru")
    unknown = UNBOUND.replace("box.kaspersky.com.", "example.org.")
    events = list(convert([passthru, unknown, "an unrelated line", UNBOUND], "unbound", policy))
    assert events[0] is not None and events[0].to_ecs()["event"]["type"] == ["allowed"]
    assert events[1] is None
    assert events[2] is not None and events[2].enforced
    assert len(events) == 3


def test_response_ip_trigger_is_attributed_by_address(policy) -> None:  # type: ignore[no-untyped-def]
    line = (
        UNBOUND.replace("*.kaspersky.com.", "21.0.176.74.77.rpz-ip.rpz.enforcer.")
        .replace("applied [enforcer] ", "applied [enforcer] response-ip ")
        .replace("box.kaspersky.com.", "cdn.example.net.")
    )
    hit = parse_line(line, "unbound")
    assert hit is not None and hit.trigger == "response-ip"
    doc = hit_to_event(hit, policy).to_ecs()
    assert doc["event"]["action"] == "dns-response-block" and doc["rule"]["id"] == "kaspersky:cidr:77.74.176.0/21"


def test_cli_converts_a_log_file(tmp_path: Path) -> None:
    log = tmp_path / "named.log"
    log.write_text("\n".join([BIND, "28-Nov-2026 20:57:36.000 general: something else", BIND]) + "\n")
    out = tmp_path / "rpz.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "enforcer",
            "rpz-log",
            "--engine",
            "bind",
            "--events",
            str(out),
            "--blocklist",
            str(BLOCKLISTS),
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 event(s) written" in proc.stderr
    events = list(iter_events(out))
    assert len(events) == 2 and len({e["event"]["id"] for e in events}) == 2
    assert {json.dumps(e["rule"]["id"]) for e in events} == {'"wechat:domain:wx2.qq.com"'}


def test_follow_survives_sigusr1_and_writes_to_the_new_file(tmp_path: Path) -> None:
    """logrotate's postrotate signal reaches rpz-log too: it reopens the event file instead of dying."""
    log = tmp_path / "named.log"
    log.write_text(BIND + "\n")
    out = tmp_path / "rpz.jsonl"
    argv = [sys.executable, "-m", "enforcer", "rpz-log", "--engine", "bind", "--follow", "--events", str(out),
            "--blocklist", str(BLOCKLISTS), str(log)]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: out.exists() and len(list(iter_events(out))) == 1, 20.0, 0.1)
        os.rename(out, tmp_path / "rpz.jsonl.1")
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert proc.poll() is None, "SIGUSR1 ended rpz-log"
        with log.open("a") as fh:
            fh.write(BIND + "\n")
        eventually(lambda: out.exists() and len(list(iter_events(out))) == 1, 20.0, 0.1)
        assert len(list(iter_events(tmp_path / "rpz.jsonl.1"))) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "2 event(s) written" in err


def _bind_from(client: str) -> str:
    return BIND.replace("10.20.0.8", client)


def _clients(path: Path) -> list[str]:
    return [e["source"]["ip"] for e in iter_events(path)] if path.exists() else []


def test_follow_waits_for_whole_lines_and_follows_rotation_truncation_and_sigterm(tmp_path: Path) -> None:
    """``--follow`` on a log that rsyslog writes and logrotate rotates: a line caught half-written was read as two
    lines (the hit lost), and after the first rotation the follower read the renamed file for ever (every later hit
    lost). SIGTERM (a service manager's stop) ended it without writing what was queued."""
    log = tmp_path / "named.log"
    log.write_text(_bind_from("10.20.0.1") + "\n")
    out = tmp_path / "rpz.jsonl"
    argv = [sys.executable, "-m", "enforcer", "rpz-log", "--engine", "bind", "--follow", "--events", str(out),
            "--blocklist", str(BLOCKLISTS), str(log)]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:

        def have(*clients: str) -> bool:
            assert proc.poll() is None, "rpz-log ended"
            return _clients(out) == list(clients)

        eventually(lambda: have("10.20.0.1"), 20.0, 0.1)
        line = _bind_from("10.20.0.2")
        with log.open("a") as fh:
            fh.write(line[:60])
        time.sleep(1.5)  # three polls over the half line
        with log.open("a") as fh:
            fh.write(line[60:] + "\n")
        eventually(lambda: have("10.20.0.1", "10.20.0.2"), 20.0, 0.1)
        # logrotate's create: rename, the writer's last line still goes to the old file, then a new file.
        log.rename(tmp_path / "named.log.1")
        with (tmp_path / "named.log.1").open("a") as fh:
            fh.write(_bind_from("10.20.0.3") + "\n")
        log.write_text(_bind_from("10.20.0.4") + "\n" + "28-Nov-2026 20:57:36.001 general: info: not a hit\n" * 20)
        eventually(lambda: have("10.20.0.1", "10.20.0.2", "10.20.0.3", "10.20.0.4"), 20.0, 0.1)
        # copytruncate: the same file (a day of lines), emptied in place, then written from its start.
        with log.open("r+") as fh:
            fh.truncate(0)
        log.write_text(_bind_from("10.20.0.5") + "\n")
        eventually(lambda: have("10.20.0.1", "10.20.0.2", "10.20.0.3", "10.20.0.4", "10.20.0.5"), 20.0, 0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "5 event(s) written" in err


def test_a_runaway_line_is_skipped_without_stalling_the_patterns(tmp_path: Path) -> None:
    """A line of a megabyte (a torn log, a hostile file) was held whole and searched from each of its thousands of
    ``client`` words to its end; it is skipped and counted, and the lines around it are read."""
    log = tmp_path / "named.log"
    runaway = "client 10.0.0.1#1 (" * 60_000
    log.write_text(f"{_bind_from('10.20.0.1')}\n{runaway}\n{_bind_from('10.20.0.2')}\n{runaway}")
    out = tmp_path / "rpz.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "enforcer", "rpz-log", "--engine", "bind", "--events", str(out),
         "--blocklist", str(BLOCKLISTS), str(log)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _clients(out) == ["10.20.0.1", "10.20.0.2"]
    assert "2 event(s) written" in proc.stderr and "2 line(s) over 16384 bytes skipped" in proc.stderr
