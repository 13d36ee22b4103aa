"""Hot answers (enforcer/dns/cache.py ``Cache.hot_get``/``hot_reply``, the chain's step 0c): a packet the cache
answered before is answered again from its raw bytes, and the answer is the one the full chain would give, in every
case that matters.

Driven through the real chain in-process (tests/dns/chainharness.py: real policy, cache, fake upstream on 127.0.0.1,
fake clock), comparing against a chain without hot answers where the bytes must match.
"""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.rcode
import pytest
from chainharness import ChainHarness
from dnshelpers import BLOCKLISTS
from fakeupstream import FakeUpstream

from enforcer.dns.cache import Cache
from enforcer.policy import load_policy


def _packet(name: str, qid: int, qtype: str = "A", edns: bool = False) -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=0 if edns else False, payload=1232)
    q.id = qid
    return q.to_wire()


def _hot_size(chain: ChainHarness) -> int:
    return len(chain.cache._hot)


def test_second_identical_packet_is_answered_hot_with_its_own_id(chain: ChainHarness, upstream: FakeUpstream) -> None:
    upstream.clear()
    first = chain.run(_packet("hot1.example", 1))
    second = chain.run(_packet("hot1.example", 2))  # from the cache (slow path), now remembered
    assert _hot_size(chain) == 1
    third = chain.run(_packet("hot1.example", 3))  # hot
    assert upstream.names().count("hot1.example") == 1
    assert first[2:] == second[2:] == third[2:]
    assert third[:2] == b"\x00\x03"
    assert chain.outcomes()["cached"] == 2
    # The question keeps the asker's letter case (0x20), exactly as the slow path copies it.
    mixed = chain.run(_packet("HoT1.ExAmPlE", 4))
    again = chain.run(_packet("HoT1.ExAmPlE", 5))
    assert b"HoT1" in mixed and mixed[2:] == again[2:]


def test_hot_answer_counts_ttls_down_and_ends_with_the_entry(chain: ChainHarness, upstream: FakeUpstream) -> None:
    chain.run(_packet("short.example", 1))  # TTL 5
    chain.run(_packet("short.example", 2))
    fresh = dns.message.from_wire(chain.run(_packet("short.example", 3)))
    assert fresh.answer[0].ttl == 5
    chain.clock.advance(3)
    aged = dns.message.from_wire(chain.run(_packet("short.example", 4)))
    assert aged.answer[0].ttl == 2
    asked = upstream.names().count("short.example")
    chain.clock.advance(3)  # expired: not answered hot nor from the cache
    chain.run(_packet("short.example", 5))
    assert upstream.names().count("short.example") == asked + 1


def test_an_evicted_entry_is_not_answered_hot(upstream: FakeUpstream) -> None:
    harness = ChainHarness(upstream.address, BLOCKLISTS, cache=Cache(2))
    try:
        harness.run(_packet("ev1.example", 1))
        harness.run(_packet("ev1.example", 2))
        assert _hot_size(harness) == 1
        harness.run(_packet("ev2.example", 3))
        harness.run(_packet("ev3.example", 4))  # evicts ev1 (two entries at most)
        asked = upstream.names().count("ev1.example")
        harness.run(_packet("ev1.example", 5))
        assert upstream.names().count("ev1.example") == asked + 1  # forwarded again, not served from a dead entry
    finally:
        harness.close()


def test_a_reload_that_blocks_a_hot_name_blocks_it_at_once(chain: ChainHarness, tmp_path: Path) -> None:
    chain.run(_packet("soon-banned.example", 1))
    chain.run(_packet("soon-banned.example", 2))
    assert _hot_size(chain) == 1
    (tmp_path / "extra.yaml").write_text(
        "app: extra\npolicy:\n  effective: 2023-10-30\nblock:\n  - domain: soon-banned.example\n    category: web\n"
    )
    chain.holder.policy = load_policy([BLOCKLISTS, tmp_path / "extra.yaml"])
    reply = dns.message.from_wire(chain.run(_packet("soon-banned.example", 3)))
    assert str(reply.answer[0][0]) == "0.0.0.0"
    assert chain.outcomes()["blocked"] == 1


def test_names_with_a_block_rule_are_never_remembered(chain: ChainHarness, tmp_path: Path) -> None:
    # A block rule not in force yet (monitor) lets the name through to the cache, but only for now and for this
    # client: such answers stay on the full path, so the block applies the moment it is enforced.
    (tmp_path / "later.yaml").write_text(
        "app: later\npolicy:\n  effective: 2999-01-01\nblock:\n  - domain: later.example\n    category: web\n"
    )
    chain.holder.policy = load_policy([BLOCKLISTS, tmp_path / "later.yaml"])
    for qid in range(3):
        chain.run(_packet("later.example", qid))
    assert _hot_size(chain) == 0
    # A response-policy block replayed from the cache is never remembered either.
    for qid in range(3):
        reply = dns.message.from_wire(chain.run(_packet("cdn-alias.example", 10 + qid)))
        assert reply.rcode() == dns.rcode.NOERROR and str(reply.answer[-1][0]) == "0.0.0.0"
    assert _hot_size(chain) == 0


def test_tcp_and_truncated_answers_stay_on_the_full_path(chain: ChainHarness) -> None:
    for qid in range(3):
        chain.run(_packet("tcp-only.example", qid), tcp=True)
    assert _hot_size(chain) == 0
    for qid in range(3):  # big.example does not fit in 512 bytes: TC each time, never remembered
        reply = dns.message.from_wire(chain.run(_packet("big.example", qid)))
        assert reply.flags & dns.flags.TC
    assert _hot_size(chain) == 0


@pytest.mark.parametrize("edns", [False, True])
def test_hot_answers_equal_the_full_path(upstream: FakeUpstream, edns: bool) -> None:
    hot, cold = ChainHarness(upstream.address, BLOCKLISTS), ChainHarness(upstream.address, BLOCKLISTS)
    try:
        for qid, name in enumerate(["eq1.example", "eq2.example", "gone.example", "work.weixin.qq.com"] * 3):
            packet = _packet(name, qid, "AAAA" if qid % 2 else "A", edns)
            got = hot.run(packet)
            cold.cache._hot.clear()  # the reference never answers hot
            want = cold.run(packet)
            assert got == want, name
        assert _hot_size(hot) > 0
    finally:
        hot.close()
        cold.close()
