"""``dns_action`` in the exports (enforcer/policy/export_dns.py): each DNS format answers a rule in its own action
where the format can say it, checked in the text and by the real Unbound serving the snippet (a local fake
upstream on 127.0.0.1: a name the snippet fails to block gets the upstream's address, never a public one)."""

from __future__ import annotations

from pathlib import Path

import dns.rcode
import pytest

from enforcer.policy import load_policy
from enforcer.policy.export import export_policy
from tests.conftest import free_port, require_tool
from tests.dns.fakeupstream import FakeUpstream
from tests.policy.policy_helpers import write
from tests.policy.test_export_interop import UPSTREAM_V4, _a, _ask, _serving, _unbound_conf

LIST = """\
app: c
kind: control
block:
  - host: canary.test
    category: bypass
    dns_action: nxdomain
  - domain: relay.test
    category: bypass
    dns_action: nxdomain
  - domain: quiet.test
    category: bypass
    dns_action: refused
  - domain: plain.test
    category: bypass
"""


def _export(tmp_path: Path, fmt: str, mode: str) -> list[str]:
    policy = load_policy(write(tmp_path, "c.yaml", LIST))
    return [line for line in export_policy(policy, fmt, mode=mode).splitlines() if not line.startswith(("#", ";"))]


def test_rpz_answers_each_rule_in_its_action(tmp_path: Path) -> None:
    lines = _export(tmp_path, "rpz", "null")
    assert "canary.test CNAME ." in lines
    assert "relay.test CNAME ." in lines and "*.relay.test CNAME ." in lines
    assert "quiet.test CNAME ." in lines  # RPZ has no REFUSED: NXDOMAIN, the nearest negative answer
    assert "plain.test A 0.0.0.0" in lines and "*.plain.test AAAA ::" in lines  # the mode


def test_unbound_and_dnsmasq_answer_each_rule_in_its_action(tmp_path: Path) -> None:
    unbound = _export(tmp_path, "unbound", "null")
    assert 'local-zone: "canary.test." always_nxdomain' in unbound
    assert 'local-zone: "relay.test." always_nxdomain' in unbound
    assert 'local-zone: "quiet.test." always_refuse' in unbound
    assert 'local-zone: "plain.test." always_null' in unbound
    dnsmasq = _export(tmp_path, "dnsmasq", "null")
    assert "address=/canary.test/" in dnsmasq and "address=/quiet.test/" in dnsmasq
    assert "address=/plain.test/0.0.0.0" in dnsmasq and "address=/relay.test/0.0.0.0" not in dnsmasq


@pytest.mark.timeout(60)
def test_unbound_serves_the_canary_as_nxdomain_under_null_mode(tmp_path: Path) -> None:
    tool = require_tool("unbound")
    snippet = tmp_path / "enforcer.conf"
    snippet.write_text(export_policy(load_policy(write(tmp_path / "p", "c.yaml", LIST)), "unbound", mode="null"))
    upstream = FakeUpstream(ttl=5)
    try:
        port = free_port(host="127.0.0.1")
        conf = _unbound_conf(tmp_path, snippet, port=port, upstream=upstream.port)
        with _serving([tool, "-d", "-c", str(conf)], port):
            assert _ask(port, "canary.test").rcode() == dns.rcode.NXDOMAIN
            assert _ask(port, "x.relay.test").rcode() == dns.rcode.NXDOMAIN
            assert _ask(port, "quiet.test").rcode() == dns.rcode.REFUSED
            assert _a(_ask(port, "plain.test")) == ["0.0.0.0"]
            assert _a(_ask(port, "other.example")) == [UPSTREAM_V4]
    finally:
        upstream.close()
