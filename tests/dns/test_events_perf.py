"""The resolver's cheap hit events (enforcer/dns/observe.py ``DnsHitEvent``): the JSON written from the memoised
address and question parts and from integer-microsecond times is exactly the shared schema's (``HitEvent.to_ecs``)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

from dnshelpers import BLOCKLISTS

from enforcer.dns.observe import DnsHitEvent
from enforcer.policy import load_policy


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
