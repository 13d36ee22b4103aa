"""Fixtures for the resolver tests: one fake upstream and one ``enforcer dns`` process per module where possible;
``chain``: the resolver chain in-process on a fake clock (chainharness.py), fresh per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from chainharness import ChainHarness
from dnshelpers import BLOCKLISTS, DnsProcess
from fakeupstream import FakeUpstream

# Names the fake upstream answers specially (response policy, truncation).
RECORDS = {
    "cdn-alias.example": [
        "cdn-alias.example. 300 IN CNAME edge.long.weixin.qq.com.",
        "edge.long.weixin.qq.com. 300 IN A 192.0.2.80",
    ],
    "work-alias.example": [
        "work-alias.example. 300 IN CNAME work.weixin.qq.com.",
        "work.weixin.qq.com. 300 IN A 192.0.2.81",
    ],
    "kav-ip.example": ["kav-ip.example. 300 IN A 185.85.12.7"],
    "kav-hint.example": ["kav-hint.example. 300 IN HTTPS 1 . alpn=h2 ipv4hint=185.85.14.9"],
    "wx-target.example": ["wx-target.example. 300 IN HTTPS 1 svc.weixin.qq.com. alpn=h2"],
    "clean-hint.example": ["clean-hint.example. 300 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.90"],
    "big.example": [f'big.example. 300 IN TXT "{"x" * 200} {i}"' for i in range(12)],
    "short.example": ["short.example. 5 IN A 192.0.2.5"],
}
NXDOMAIN = {"gone.example"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(records=dict(RECORDS), nxdomain=set(NXDOMAIN))
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def resolver(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsProcess]:
    """The shipped blocklists, default mode (null), the fake upstream."""
    proc = DnsProcess(
        tmp_path_factory.mktemp("dns"), "--upstream", upstream.address, "--blocklist", str(BLOCKLISTS), "--timeout", "1"
    )
    yield proc
    assert proc.stop() == 0, proc.stderr_text()


@pytest.fixture
def fakes() -> Iterator[list[FakeUpstream]]:
    """Fake upstreams a test makes for itself, closed after it."""
    made: list[FakeUpstream] = []
    yield made
    for f in made:
        f.close()


@pytest.fixture
def chain(upstream: FakeUpstream) -> Iterator[ChainHarness]:
    """The real chain (shipped blocklists, default mode null) on a fake clock, forwarding to the module's upstream."""
    harness = ChainHarness(upstream.address, BLOCKLISTS, timeout=1.0)
    yield harness
    harness.close()
