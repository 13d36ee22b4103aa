"""Policy changes on a running resolver: file edits and SIGHUP take effect, a broken edit keeps the last good
policy (PATH:LINE:COL logged, failure counted); monitor mode (future effective date, exempt clients)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnshelpers import DnsProcess, addresses, app_file
from fakeupstream import FakeUpstream

from tests.conftest import eventually


@pytest.fixture(scope="module")
def lists(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("lists")
    (d / "live.yaml").write_text(app_file("live", "2020-01-01", ["blocked-one.example"]))
    (d / "future.yaml").write_text(app_file("future", "2099-01-01", ["future.example"]))
    (d / "exempt.yaml").write_text(app_file("exempt", "2020-01-01", ["exempt.example"], "[127.0.0.0/8]"))
    return d


@pytest.fixture(scope="module")
def live(lists: Path, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsProcess]:
    proc = DnsProcess(tmp_path_factory.mktemp("reload"), "--upstream", upstream.address, "--blocklist", str(lists))
    yield proc
    assert proc.stop() == 0


def test_monitor_before_effective_date(live: DnsProcess, upstream: FakeUpstream) -> None:
    msg = live.query("www.future.example", "A")
    assert addresses(msg) == ["192.0.2.53"]  # forwarded, not blocked
    assert "www.future.example" in upstream.names()
    [event] = live.events_for("www.future.example")
    assert event["event"]["type"] == ["allowed"] and event["event"]["action"] == "dns-block"
    assert event["rule"]["ruleset"] == "future"
    assert live.metric("enforcer_monitored_total", component="dns", app="future", category="messaging",
                       action="dns-block") == 1  # fmt: skip
    assert live.metric("enforcer_blocked_total", component="dns", app="future", category="messaging",
                       action="dns-block") == 0  # fmt: skip


def test_monitor_for_exempt_client(live: DnsProcess, upstream: FakeUpstream) -> None:
    msg = live.query("exempt.example", "A")
    assert addresses(msg) == ["192.0.2.53"]
    assert "exempt.example" in upstream.names()
    [event] = live.events_for("exempt.example")
    assert event["event"]["type"] == ["allowed"] and event["labels"]["exempt"] is True
    assert live.metric("enforcer_monitored_total", component="dns", app="exempt", category="messaging",
                       action="dns-block") == 1  # fmt: skip


def test_good_edit_takes_effect(live: DnsProcess, lists: Path) -> None:
    assert addresses(live.query("blocked-two.example", "A")) == ["192.0.2.53"]  # forwarded and now cached
    assert addresses(live.query("blocked-one.example", "A")) == ["0.0.0.0"]
    (lists / "live.yaml").write_text(app_file("live", "2020-01-01", ["blocked-one.example", "blocked-two.example"]))
    assert eventually(lambda: addresses(live.query("blocked-two.example", "A")) == ["0.0.0.0"], 8.0, 0.1)
    assert live.metric("enforcer_policy_reloads_total", result="success") >= 2


def test_broken_edit_keeps_last_good_policy(live: DnsProcess, lists: Path) -> None:
    path = lists / "live.yaml"
    path.write_text(app_file("live", "2020-01-01", ["blocked-one.example", "blocked-two.example"]) + "  - domain: [\n")
    assert eventually(lambda: live.metric("enforcer_policy_reloads_total", result="failure") >= 1, 8.0, 0.1)
    stderr = live.stderr_text()
    assert f"{path}:" in stderr
    # The error line (a block line also names the rule's PATH:LINE: enforcer/blocklog.py).
    line = next(li for li in stderr.splitlines() if f"{path}:" in li and "blocked: dns" not in li)
    rest = line.split(f"{path}:", 1)[1].split(":")
    assert rest[0].isdigit() and rest[1].isdigit()  # PATH:LINE:COL
    # Still the last good policy, and still serving.
    assert addresses(live.query("blocked-two.example", "A")) == ["0.0.0.0"]
    assert addresses(live.query("still-forwarded.example", "A")) == ["192.0.2.53"]


def test_sighup_reload(live: DnsProcess, lists: Path) -> None:
    (lists / "live.yaml").write_text(app_file("live", "2020-01-01", ["blocked-three.example"]))
    live.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: addresses(live.query("blocked-three.example", "A")) == ["0.0.0.0"], 8.0, 0.1)
    assert addresses(live.query("blocked-one.example", "A")) == ["192.0.2.53"]  # removed rule: forwarded again
    assert live.alive()
