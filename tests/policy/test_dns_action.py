"""A rule's ``dns_action`` overrides the resolver's ``--mode`` for that rule (issue 12): through the real resolver
chain in-process (tests/dns/chainharness.py: the real policy, sinkhole and chain; the upstream is a local fake on
127.0.0.1, so a name that wrongly passes the sinkhole never leaves this host), on the shipped controls list too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import BLOCKLISTS
from tests.dns.chainharness import ChainHarness
from tests.dns.fakeupstream import FakeUpstream
from tests.policy.policy_helpers import write

LIST = """\
app: t
kind: control
block:
  - host: canary.test
    category: bypass
    dns_action: nxdomain
  - host: refused.test
    category: bypass
    dns_action: refused
  - host: nodata.test
    category: bypass
    dns_action: nodata
  - host: null.test
    category: bypass
    dns_action: "null"
  - host: plain.test
    category: bypass
  - cidr: 192.0.2.99/32
    category: bypass
    dns_action: nxdomain
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(records={"leads-to-bad.test": ["leads-to-bad.test. 300 IN A 192.0.2.99"]})
    yield fake
    fake.close()


def _answer(msg: dns.message.Message) -> tuple[str, list[str], bool]:
    addrs = [rr.to_text() for rrset in msg.answer for rr in rrset if rrset.rdtype in (1, 28)]
    soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in msg.authority)
    return dns.rcode.to_text(msg.rcode()), addrs, soa


@pytest.mark.parametrize("mode", ["null", "nxdomain", "ip:192.0.2.66"])
def test_each_rule_answers_in_its_own_action_whatever_the_mode(
    tmp_path: Path, upstream: FakeUpstream, mode: str
) -> None:
    harness = ChainHarness(upstream.address, write(tmp_path, "t.yaml", LIST), mode=mode)
    try:
        for _ in range(2):  # the second query is answered from the rule's cached template
            assert _answer(harness.query("canary.test", "A")) == ("NXDOMAIN", [], True)
            assert _answer(harness.query("refused.test", "A")) == ("REFUSED", [], False)
            assert _answer(harness.query("nodata.test", "A")) == ("NOERROR", [], True)
            assert _answer(harness.query("null.test", "A")) == ("NOERROR", ["0.0.0.0"], False)
            assert _answer(harness.query("null.test", "AAAA")) == ("NOERROR", ["::"], False)
            plain = {"null": ("NOERROR", ["0.0.0.0"], False), "nxdomain": ("NXDOMAIN", [], True)}
            expected = plain.get(mode, ("NOERROR", ["192.0.2.66"], False))
            assert _answer(harness.query("plain.test", "A")) == expected  # no dns_action: the mode
            # A forwarded answer holding a blocked address is replaced in that cidr rule's action.
            assert _answer(harness.query("leads-to-bad.test", "A")) == ("NXDOMAIN", [], True)
        assert not [a for a in upstream.names() if a.endswith(("canary.test", "refused.test", "null.test"))]
    finally:
        harness.close()


def test_shipped_canaries_are_nxdomain_and_resolvers_follow_the_mode(upstream: FakeUpstream) -> None:
    # The default mode is null (A 0.0.0.0): Firefox would read that as "keep DoH on", so the canary must say NXDOMAIN.
    harness = ChainHarness(upstream.address, BLOCKLISTS, mode="null")
    try:
        for name in ("use-application-dns.net", "mask.icloud.com", "mask-h2.icloud.com", "Mask.iCloud.com."):
            assert _answer(harness.query(name, "A")) == ("NXDOMAIN", [], True), name
            assert _answer(harness.query(name, "HTTPS")) == ("NXDOMAIN", [], True), name
        for name in ("dns.google", "cloudflare-dns.com", "1dot1dot1dot1.cloudflare-dns.com", "abc123.dns.nextdns.io",
                     "doh.pub", "dns.alidns.com"):  # fmt: skip
            assert _answer(harness.query(name, "A")) == ("NOERROR", ["0.0.0.0"], False), name
        # Not controls: a near miss and the Apple/Google parents stay resolvable (answered by the local upstream).
        for name in ("use-application-dns.net.example", "icloud.com", "google.com"):
            assert _answer(harness.query(name, "A"))[0] == "NOERROR" and name in upstream.names(), name
    finally:
        harness.close()
