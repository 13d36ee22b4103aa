"""The resolver's cheap hit events (enforcer/dns/observe.py ``HitLines`` and ``DnsHitEvent``): the JSON written from
templates cut out of ``HitEvent.to_json``, memoised address and question parts and integer-microsecond times is
exactly the shared schema's (``HitEvent.to_json``/``to_ecs``)."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dnshelpers import BLOCKLISTS

from enforcer.blocklog import BLOCKS, BlockLog
from enforcer.dns import observe
from enforcer.dns.observe import DnsHitEvent, HitLines, Observer
from enforcer.dns.wire import qtype_name
from enforcer.events import EventWriter, HitEvent, iter_events
from enforcer.policy import load_policy
from enforcer.policy.model import Match


def test_memoised_json_with_microsecond_times_equals_the_schema() -> None:
    policy = load_policy([BLOCKLISTS])
    rule = policy.match_key("weixin.qq.com")
    cidr = next(r for r in policy.rules if r.kind == "cidr")
    rng = random.Random(11)
    clients = [("127.0.0.1", 5353), ("::1", 7, 0, 0), ("10.0.0.7", 40000), ("10.0.0.7", 40001)]
    names = ['we"ird\\.weixin.qq.com', "a.weixin.qq.com", "é\x01.x", "a.weixin.qq.com"]
    for i in range(2_000):  # repeats on purpose: the second event of a (client, name) comes from the memo
        at_us = rng.randrange(1_700_000_000_000_000, 1_800_000_000_000_000)
        if i % 50 == 0:
            at_us = at_us // 1_000_000 * 1_000_000 + rng.choice((0, 999_999))  # the edges of a second
        r = rule if i % 2 else cidr
        ev = DnsHitEvent(policy, r, "m", "dns-block", i % 3 == 0, i % 3 == 1, rng.choice(clients), rng.choice(names),
                         rng.choice((1, 28, 65)), False, "udp", None, at_us)  # fmt: skip
        reference = DnsHitEvent(policy, r, "m", "dns-block", True, False, None, "x", 1)
        reference._lazy = ev._lazy
        got = json.loads(ev.to_json())
        assert got == reference.to_ecs()
        want = datetime.fromtimestamp(at_us // 1_000_000, UTC).replace(microsecond=at_us % 1_000_000)
        assert got["@timestamp"] == want.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_an_event_without_a_given_time_reads_the_clock() -> None:
    policy = load_policy([BLOCKLISTS])
    rule = policy.match_key("weixin.qq.com")
    before = datetime.now(UTC)
    ev = DnsHitEvent(policy, rule, "weixin.qq.com", "dns-block", True, False, ("10.0.0.1", 1), "weixin.qq.com", 1)
    after = datetime.now(UTC)
    assert before.replace(microsecond=0) <= ev.timestamp <= after


def test_hit_lines_are_byte_for_byte_the_schema_json() -> None:
    # HitLines (the resolver's usual hit, rendered on the loop thread) must write exactly HitEvent.to_json(): same
    # bytes, for IPv4 and IPv6 clients, odd names, every transport, enforced/monitor/exempt, memo hits and misses,
    # times back and forth across seconds and at their edges.
    policy = load_policy([BLOCKLISTS])
    rule = policy.match_key("weixin.qq.com")
    cidr = next(r for r in policy.rules if r.kind == "cidr")
    lines = HitLines()
    rng = random.Random(12)
    clients = [("127.0.0.1", 5353), ("::1", 7, 0, 0), ("10.0.0.7", 40000), ("fe80::1%eth0", 65535, 0, 2)]
    names = ['we"ird\\.weixin.qq.com', "a.weixin.qq.com", "é\x01.x"]
    ids = set()
    for i in range(3_000):
        at_us = rng.randrange(1_700_000_000_000_000, 1_800_000_000_000_000)
        if i % 7 == 0:  # the same second again, or its first and last microsecond
            at_us = 1_750_000_000_000_000 + rng.choice((0, 1, 999, 1000, 999_999, 1_000_000, 123_456))
        r = rule if i % 2 else cidr
        enforced, exempt = (True, False) if i % 3 == 0 else (False, i % 3 == 1)
        addr, qname, qtype = rng.choice(clients), rng.choice(names), rng.choice((1, 28, 65, 4242))
        transport = rng.choice(("udp", "tcp", "dot", "doh", "doq"))
        action = rng.choice(("dns-block", "dns-response-block"))
        got = lines.line(policy, r, action, enforced, exempt, transport, addr, qname, qtype, at_us)
        event_id = json.loads(got)["event"]["id"]
        ids.add(event_id)
        want = HitEvent.from_match(
            Match(r, policy.apps[r.app], ""), action=action, component="dns", version=policy.fingerprint,
            enforced=enforced, exempt=exempt, id=event_id, source_ip=addr[0], source_port=addr[1],
            at=datetime.fromtimestamp(at_us // 1_000_000, UTC).replace(microsecond=at_us % 1_000_000),
            dns_question_name=qname, dns_question_type=qtype_name(qtype), dns_transport=transport,
        )  # fmt: skip
        assert got == want.to_json()
    assert len(ids) == 3_000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[:16] for i in ids}) == 1  # one random prefix per process, then the counter
    assert 1 < lines.size < 3_000  # the memos were used, and hit (3,000 events over far fewer clients and names)


def test_observer_writes_usual_hits_as_lines_and_counts_them(tmp_path: Path) -> None:
    # Through Observer.hit and the real EventWriter: every hit is in the file, in the schema, none dropped.
    policy = load_policy([BLOCKLISTS])
    rule = policy.match_key("weixin.qq.com")
    writer = EventWriter(tmp_path / "dns.jsonl")
    obs = Observer(None, writer)
    for i in range(5_000):
        obs.hit(policy, rule, "weixin.qq.com", "dns-block", True, False, ("10.0.0.9", 1000 + i % 7), "weixin.qq.com",
                1, False, i % 2 == 0, None, 1_750_000_000_000_000 + i)  # fmt: skip
    writer.close()
    docs = list(iter_events(tmp_path / "dns.jsonl"))
    assert writer.written == 5_000 and writer.dropped == 0 and len(docs) == 5_000
    assert [d["@timestamp"][-7:] for d in docs[:2]] == ["000000Z", "000001Z"]
    assert {d["labels"]["dns_transport"] for d in docs} == {"udp", "tcp"}
    assert len({d["event"]["id"] for d in docs}) == 5_000
    assert obs.blocked_total.values[("dns", rule.app, rule.category or "", "dns-block")] == 5_000


def test_block_lines_count_the_held_back_hits_of_every_kind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Observer.hit counts a held-back block line on the app's BlockLog state itself; the next line still reports
    # every hit held back, whichever kind of hit (here: UDP and TCP templates) it came from.
    now = [1000.0]
    monkeypatch.setattr(BLOCKS, "clock", lambda: now[0])
    monkeypatch.setattr(observe, "block_clock", lambda: now[0])
    monkeypatch.setattr(BLOCKS, "_state", {})
    caplog.set_level(logging.INFO, "enforcer.blocks")
    policy = load_policy([BLOCKLISTS])
    rule = policy.match_key("weixin.qq.com")
    assert rule is not None
    obs = Observer(None, None)
    for i in range(30):
        obs.hit(policy, rule, "weixin.qq.com", "dns-block", True, False, ("10.0.0.1", 1), "weixin.qq.com", 1, False,
                i % 2 == 0, None, 0)  # fmt: skip
        now[0] += 0.3  # 9 s in all: within the interval
    now[0] += 2
    obs.hit(policy, rule, "weixin.qq.com", "dns-block", True, False, ("10.0.0.2", 1), "weixin.qq.com", 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "enforcer.blocks"]
    assert len(lines) == 2 and "for 10.0.0.1" in lines[0] and "for 10.0.0.2" in lines[1]
    assert "(29 similar line(s) held back in the last 10 s)" in lines[1]
    assert obs.blocked_total.values[("dns", rule.app, rule.category or "", "dns-block")] == 31


def test_block_lines_with_info_off_keep_the_state_and_read_the_level_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    blocks = BlockLog(interval=10, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "enforcer.blocks")
    assert not blocks.blocked("dns", "wechat", "r", "w.yaml:3", "weixin.qq.com", "10.0.0.7")
    assert blocks.state("dns", "wechat") == [1010.0, 0]  # armed although nothing was written
    assert not blocks.blocked("dns", "wechat", "r", "w.yaml:3", "weixin.qq.com", "10.0.0.7")
    assert blocks.state("dns", "wechat") == [1010.0, 1]
    now[0] += 10
    caplog.set_level(logging.INFO, "enforcer.blocks")
    assert blocks.blocked("dns", "wechat", "r", "w.yaml:3", "dl.wechat.com", None)
    assert [r.getMessage() for r in caplog.records] == [
        "blocked: dns dl.wechat.com for ? (app wechat, rule r, w.yaml:3) (1 similar line(s) held back in the last 10 s)"
    ]
