"""The chain (enforcer/dns/chain.py) in-process, on a fake clock: the block step for each of its three callers, the
cache's TTL countdown and expiry (positive and negative answers, --min/--max-cache-ttl), a policy swap, the forwarder's
health. Nothing here sleeps: ``chain.clock.advance`` ages the cache and the backoffs.

The subprocess tests (test_dns_resolver.py and others) keep checking the same behaviour through the real process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest
from chainharness import ChainHarness
from dnshelpers import BLOCKLISTS, addresses, app_file, rcode
from fakeupstream import FakeUpstream
from test_dns_hardening import a_reply

import enforcer.dns.chain as chain_mod
from enforcer.dns import wire
from enforcer.dns.cache import Cache
from enforcer.dns.chain import Blocked, build_chain
from enforcer.dns.sinkhole import Sinkhole, parse_mode
from enforcer.policy import load_policy


@pytest.fixture
def lists(tmp_path: Path) -> Path:
    (tmp_path / "live.yaml").write_text(app_file("live", "2020-01-01", ["blocked-one.example"]))
    (tmp_path / "future.yaml").write_text(app_file("future", "2099-01-01", ["future.example"]))
    (tmp_path / "exempt.yaml").write_text(app_file("exempt", "2020-01-01", ["exempt.example"], "[127.0.0.0/8]"))
    return tmp_path


@pytest.fixture
def aliases() -> Iterator[FakeUpstream]:
    up = FakeUpstream(records={
        "to-exempt.example": ["to-exempt.example. 300 IN CNAME edge.exempt.example.",
                              "edge.exempt.example. 300 IN A 192.0.2.80"],
        "to-future.example": ["to-future.example. 300 IN CNAME edge.future.example.",
                              "edge.future.example. 300 IN A 192.0.2.81"],
    })  # fmt: skip
    yield up
    up.close()


@pytest.fixture
def own(lists: Path, aliases: FakeUpstream) -> Iterator[ChainHarness]:
    harness = ChainHarness(aliases.address, lists, timeout=1.0)
    yield harness
    harness.close()


# -- the block step, from the sinkhole --------------------------------------------------------------------------
def test_sinkhole_blocks_and_never_forwards(chain: ChainHarness, upstream: FakeUpstream) -> None:
    for qtype in ("A", "AAAA", "HTTPS"):
        msg = chain.query("long.weixin.qq.com", qtype)
        assert rcode(msg) == "NOERROR"
        assert addresses(msg) == {"A": ["0.0.0.0"], "AAAA": ["::"], "HTTPS": []}[qtype]
    assert "long.weixin.qq.com" not in upstream.names()
    assert chain.outcomes() == {"blocked": 3}
    assert chain.observer.blocked_total.values[("dns", "wechat", "messaging", "dns-block")] == 3


def test_block_step_is_a_monitor_hit_before_the_date_and_for_an_exempt_client(
    own: ChainHarness, aliases: FakeUpstream
) -> None:
    assert addresses(own.query("blocked-one.example")) == ["0.0.0.0"]
    # Before the effective date: resolved like any name, counted as monitored.
    assert addresses(own.query("future.example")) == ["192.0.2.53"]
    # An exempt client is let through; any other client of the same app is blocked.
    assert addresses(own.query("exempt.example", client="127.0.0.1")) == ["192.0.2.53"]
    assert addresses(own.query("exempt.example", client="::ffff:127.0.0.9")) == ["192.0.2.53"]  # mapped form
    assert addresses(own.query("exempt.example", client="10.0.0.1")) == ["0.0.0.0"]
    monitored = own.observer.monitored_total.values
    assert monitored[("dns", "future", "messaging", "dns-block")] == 1
    assert monitored[("dns", "exempt", "messaging", "dns-block")] == 2
    assert own.outcomes() == {"blocked": 2, "forwarded": 2, "cached": 1}
    assert aliases.names().count("exempt.example") == 1


# -- the block step, from a fresh and from a cached response-policy verdict ----------------------------------------
def test_response_policy_verdict_is_cached_and_replayed_per_client(own: ChainHarness, aliases: FakeUpstream) -> None:
    # First asked by an exempt client: the alias's verdict is a monitor hit, the real answer is served and cached.
    assert addresses(own.query("to-exempt.example", client="127.0.0.1")) == ["192.0.2.80"]
    # The same cached answer for another client: the cached verdict is replayed and enforced for it.
    assert addresses(own.query("to-exempt.example", client="10.0.0.1")) == ["0.0.0.0"]
    assert addresses(own.query("to-exempt.example", client="127.0.0.1")) == ["192.0.2.80"]
    assert aliases.names().count("to-exempt.example") == 1
    assert own.outcomes() == {"forwarded": 1, "response_blocked": 1, "cached": 1}
    assert own.observer.blocked_total.values[("dns", "exempt", "messaging", "dns-response-block")] == 1
    assert own.observer.monitored_total.values[("dns", "exempt", "messaging", "dns-response-block")] == 2


def test_fresh_response_policy_block_and_monitor(own: ChainHarness, aliases: FakeUpstream) -> None:
    msg = own.query("to-exempt.example", client="10.0.0.2")
    assert addresses(msg) == ["0.0.0.0"]
    assert addresses(own.query("to-future.example")) == ["192.0.2.81"]  # the alias's app is not enforced yet
    assert own.outcomes() == {"response_blocked": 1, "forwarded": 1}


def _memo(chain: ChainHarness) -> dict[bytes, Blocked]:
    # The chain's blocked-packet memo, read from the handler's closure (it is deliberately not an attribute).
    handle: Any = chain.handle
    cells = dict(zip(handle.__code__.co_freevars, handle.__closure__, strict=True))
    memo: dict[bytes, Blocked] = cells["blocked_before"].cell_contents
    return memo


def test_a_repeated_blocked_packet_is_answered_from_one_memo_per_client_and_bounded(
    own: ChainHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One memo entry per blocked packet (its bytes after the id): the same bytes under other ids get byte for byte
    # what a fresh sinkhole builds, with their own id; the hit is still counted per query, and whether it is enforced
    # is still decided per client (an exempt client's repeat of a memoised packet is resolved).
    fresh = Sinkhole(parse_mode("null"))
    query = dns.message.make_query("exempt.example", "A", use_edns=0, payload=1232)
    for n, qid in enumerate((1, 2, 65535), 1):
        query.id = qid
        data = query.to_wire()
        reply = own.run(data, client="10.0.0.1")
        q = wire.parse_query(data)
        rule = own.holder.policy.match_key("exempt.example")
        assert q is not None and rule is not None
        assert reply == fresh.answer(data, q, rule) and reply[:2] == data[:2]
        entry = _memo(own)[data[2:]]
        assert entry.answer == reply[2:] and entry.q.key == "exempt.example" and len(_memo(own)) == 1
        assert own.observer.blocked_total.values[("dns", "exempt", "messaging", "dns-block")] == n
    assert addresses(dns.message.from_wire(own.run(data, client="127.0.0.1"))) == ["192.0.2.53"]  # exempt
    assert own.observer.monitored_total.values[("dns", "exempt", "messaging", "dns-block")] == 1
    # Bounded: full, it starts again; every answer stays right.
    monkeypatch.setattr(chain_mod, "BLOCKED_MAX", 2)
    own.handle = build_chain(dataclasses.replace(own.parts))
    for name in ("blocked-one.example", "a.blocked-one.example", "b.blocked-one.example"):
        assert addresses(own.query(name, client="10.0.0.1")) == ["0.0.0.0"]
        assert addresses(own.query(name, client="10.0.0.1")) == ["0.0.0.0"]
    assert len(_memo(own)) == 1


def test_policy_swap_clears_what_the_old_policy_decided(chain: ChainHarness, lists: Path) -> None:
    assert addresses(chain.query("blocked-one.example")) == ["192.0.2.53"]  # not in the shipped lists: cached
    assert addresses(chain.query("weixin.qq.com")) == ["0.0.0.0"]
    chain.holder.policy = load_policy([lists])
    assert addresses(chain.query("blocked-one.example")) == ["0.0.0.0"]
    assert addresses(chain.query("weixin.qq.com")) == ["192.0.2.53"]
    assert len(chain.cache) == 1  # the old answer was dropped, only the new one is kept


def test_truncation_is_counted_besides_the_outcome(chain: ChainHarness) -> None:
    msg = chain.query("big.example", "TXT")
    assert msg.flags & dns.flags.TC and not msg.answer
    assert chain.outcomes() == {"forwarded": 1, "truncated": 1}
    msg = chain.query("big.example", "TXT", tcp=True)
    assert not msg.flags & dns.flags.TC and len(msg.answer[0]) == 12


# -- the cache, on the fake clock (moved from the subprocess tests, which slept through the TTLs) ----------------
def test_cache_ttl_counts_down(chain: ChainHarness, upstream: FakeUpstream) -> None:
    first = chain.query("countdown.example", "A")
    assert first.answer[0].ttl == 300
    chain.clock.advance(2.2)
    second = chain.query("countdown.example", "A")
    assert 296 <= second.answer[0].ttl <= 298
    assert upstream.names().count("countdown.example") == 1


def test_short_ttl_expires(chain: ChainHarness, upstream: FakeUpstream) -> None:
    chain.query("short.example", "A")
    chain.query("short.example", "A")
    assert upstream.names().count("short.example") == 1
    chain.clock.advance(5.3)
    chain.query("short.example", "A")
    assert upstream.names().count("short.example") == 2


def test_negative_caching(chain: ChainHarness, upstream: FakeUpstream) -> None:
    first = chain.query("gone.example", "A")
    assert rcode(first) == "NXDOMAIN" and first.authority[0].rdtype == dns.rdatatype.SOA
    chain.clock.advance(1.1)
    second = chain.query("gone.example", "A")
    assert rcode(second) == "NXDOMAIN"
    assert second.authority[0].ttl < first.authority[0].ttl
    nodata = chain.query("nodata.example", "MX")
    assert rcode(nodata) == "NOERROR" and not nodata.answer
    chain.query("nodata.example", "MX")
    assert upstream.names().count("gone.example") == 1
    assert upstream.names().count("nodata.example") == 1
    chain.clock.advance(30)  # the fake upstream's negative TTL: asked again
    assert dns.rcode.to_text(chain.query("gone.example", "A").rcode()) == "NXDOMAIN"
    assert upstream.names().count("gone.example") == 2


def test_min_and_max_cache_ttl() -> None:
    up = FakeUpstream(raw={"zero.example": a_reply(0), "long.example": a_reply(3600)})
    harness = ChainHarness(up.address, BLOCKLISTS, cache=Cache(1000, min_ttl=1, max_ttl=2))
    try:
        assert harness.query("zero.example", "A").answer[0].ttl == 1
        harness.query("zero.example", "A")
        assert up.names().count("zero.example") == 1  # kept for the minimum
        assert harness.query("long.example", "A").answer[0].ttl == 2
        harness.query("long.example", "A")
        assert up.names().count("long.example") == 1
        harness.clock.advance(2.2)  # past the maximum: asked again
        harness.query("long.example", "A")
        assert up.names().count("long.example") == 2
    finally:
        harness.close()
        up.close()


# -- the forwarder's health, on the same clock ---------------------------------------------------------------------
def test_down_upstream_is_skipped_until_its_backoff_passes(upstream: FakeUpstream) -> None:
    dead = FakeUpstream(silent=True)
    harness = ChainHarness([dead.address, upstream.address], BLOCKLISTS, timeout=0.6)
    try:
        assert addresses(harness.query("health1.example")) == ["192.0.2.53"]  # the dead one failed over in time
        assert "health1.example" in dead.names()
        assert not harness.forwarder.healthy(0) and harness.forwarder.healthy(1)
        assert addresses(harness.query("health2.example")) == ["192.0.2.53"]
        assert "health2.example" not in dead.names()  # marked down: not tried first
        harness.clock.advance(1.0)  # the first backoff is 1 s
        assert harness.forwarder.healthy(0)
        harness.query("health3.example")
        assert "health3.example" in dead.names()  # tried again once its backoff passed
        assert harness.forwarder.health[0].backoff == 2.0  # and failed again: the backoff doubled
    finally:
        harness.close()
        dead.close()
