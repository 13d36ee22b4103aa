"""Answers the resolver cannot check are not served, a monitor hit does not switch off the alias checks, and a
resolver cannot be pointed at itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dnshelpers import BLOCKLISTS, DnsProcess, free_port
from fakeupstream import FakeUpstream


def test_unparsable_upstream_answer_is_servfail_not_served(tmp_path: Path) -> None:
    # The answer points into a blocked Kaspersky range; a junk byte after it makes strict parsing fail. Served
    # unchecked, it would hand the client a banned address.
    up = FakeUpstream(records={"cdn.example.net": ["cdn.example.net. 60 IN A 77.74.177.5"]},
                      trailing={"cdn.example.net", "fine.example.net"})  # fmt: skip
    proc = DnsProcess(tmp_path, "--upstream", up.address)
    try:
        assert proc.query("cdn.example.net").rcode() == 2  # SERVFAIL
        assert proc.query("fine.example.net").rcode() == 2
        assert proc.query("example.org").answer[0][0].to_text() == "192.0.2.53"  # normal answers unaffected
        assert proc.metric("enforcer_dns_queries_total", outcome="servfail") == 2
    finally:
        proc.stop()
        up.close()


def test_monitor_hit_still_checks_aliases_of_other_apps(tmp_path: Path) -> None:
    bl = tmp_path / "blocklists"
    shutil.copytree(BLOCKLISTS, bl)
    wechat = bl / "wechat.yaml"
    wechat.write_text(wechat.read_text().replace("effective: 2023-10-30", "effective: 2099-01-01", 1))
    # A WeChat name (monitor mode) whose answer is a CNAME into Kaspersky (enforced): the alias must still block.
    up = FakeUpstream(records={"weixin.qq.com": ["weixin.qq.com. 60 IN CNAME dnl-01.geo.kaspersky.com.",
                                                 "dnl-01.geo.kaspersky.com. 60 IN A 192.0.2.80"]})  # fmt: skip
    proc = DnsProcess(tmp_path, "--blocklist", str(bl), "--upstream", up.address)
    try:
        r = proc.query("weixin.qq.com")
        assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["0.0.0.0"], r
        actions = {(e["event"]["action"], e["event"]["type"][0]) for e in proc.read_events(wait_for=2)}
        assert ("dns-block", "allowed") in actions and ("dns-response-block", "denied") in actions
    finally:
        proc.stop()
        up.close()


def test_upstream_equal_to_listen_is_refused() -> None:
    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "enforcer", "dns", "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "own --listen address" in lines[0], out.stderr
