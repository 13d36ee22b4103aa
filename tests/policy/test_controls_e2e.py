"""The shipped bypass controls through a real ``enforcer dns`` process (shipped blocklists, default null mode, a
local fake upstream on 127.0.0.1 so a control that failed open would get the fake's address, never a public one):
kdig sees the Firefox canary as NXDOMAIN, a public resolver name is sinkholed, the hit events say
``labels.kind: control`` (ban hits carry no kind) and /metrics counts them under the controls app."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BLOCKLISTS, require_tool
from tests.dns.dnshelpers import DnsProcess, addresses, rcode
from tests.dns.fakeupstream import FakeUpstream

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsProcess]:
    upstream = FakeUpstream()
    proc = DnsProcess(tmp_path_factory.mktemp("controls"), "--upstream", upstream.address, "--blocklist",
                      str(BLOCKLISTS), "--timeout", "1")  # fmt: skip
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.stderr_text()
        upstream.close()
        assert not {"use-application-dns.net", "dns.google"} & set(upstream.names())


def test_kdig_sees_the_canary_as_nxdomain(resolver: DnsProcess) -> None:
    kdig = require_tool("kdig")
    out = subprocess.run(
        [kdig, "-p", str(resolver.port), "@127.0.0.1", "use-application-dns.net", "A", "+timeout=3", "+retry=0"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "status: NXDOMAIN" in out.stdout, out.stdout
    assert "use-application-dns.net." in out.stdout.split("AUTHORITY SECTION:")[1]  # the SOA, RFC 2308


def test_control_hits_are_events_of_kind_control_and_counted(resolver: DnsProcess, tmp_path: Path) -> None:
    msg = resolver.query("dns.google", "A")
    assert rcode(msg) == "NOERROR" and addresses(msg) == ["0.0.0.0"]
    assert rcode(resolver.query("mask.icloud.com", "A")) == "NXDOMAIN"
    assert addresses(resolver.query("long.weixin.qq.com", "A")) == ["0.0.0.0"]
    (control,) = resolver.events_for("dns.google")
    assert control["rule"]["ruleset"] == "controls" and control["rule"]["category"] == "bypass"
    assert control["labels"]["kind"] == "control" and control["event"]["type"] == ["denied"]
    (canary,) = resolver.events_for("mask.icloud.com")
    assert canary["labels"]["kind"] == "control"
    (ban,) = resolver.events_for("long.weixin.qq.com")
    assert "kind" not in ban.get("labels", {}) and ban["rule"]["ruleset"] == "wechat"
    assert resolver.metric("enforcer_blocked_total", component="dns", app="controls", category="bypass",
                           action="dns-block") >= 2  # fmt: skip
