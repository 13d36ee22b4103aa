"""The discovery event (enforcer/dns/observe.py): a response-policy block of a name that matched no rule is written
by the one event writer with ``event.dataset`` ``enforcer.discovery`` and the chain in ``related``; every other hit
keeps the resolver's dataset and no ``related``."""

from __future__ import annotations

from pathlib import Path

from enforcer.dns.observe import Observer
from enforcer.events import EventWriter, iter_events
from tests.policy.policy_helpers import shipped


def test_only_unlisted_response_blocks_are_discoveries(tmp_path: Path) -> None:
    policy = shipped()
    cidr = next(r for r in policy.rules if r.kind == "cidr" and r.app == "wechat")
    name_rule = policy.match_key("weixin.qq.com")
    assert name_rule is not None
    writer = EventWriter(tmp_path / "ev.jsonl")
    obs = Observer(None, writer)
    common = {"enforced": True, "exempt": False, "addr": ("10.0.0.7", 5353), "qtype": 1}
    obs.hit(policy, cidr, "101.32.104.4", action="dns-response-block", qname="a.unlisted.example", unlisted=True,
            **common)  # type: ignore[arg-type]  # fmt: skip
    obs.hit(policy, name_rule, "weixin.qq.com", action="dns-response-block", qname="alias.unlisted.example",
            unlisted=True, **common)  # type: ignore[arg-type]  # fmt: skip
    obs.hit(policy, cidr, "101.32.104.4", action="dns-response-block", qname="listed.example", unlisted=False,
            **common)  # type: ignore[arg-type]  # fmt: skip
    obs.hit(policy, name_rule, "weixin.qq.com", action="dns-block", qname="weixin.qq.com", unlisted=True,
            **common)  # type: ignore[arg-type]  # fmt: skip
    writer.close()
    docs = list(iter_events(tmp_path / "ev.jsonl"))
    assert [d["dns"]["question"]["name"] for d in docs] == [
        "a.unlisted.example", "alias.unlisted.example", "listed.example", "weixin.qq.com"
    ]  # fmt: skip
    assert [d["event"]["dataset"] for d in docs] == ["enforcer.discovery", "enforcer.discovery", "enforcer.dns",
                                                     "enforcer.dns"]  # fmt: skip
    assert docs[0]["related"] == {"hosts": ["a.unlisted.example"], "ip": ["101.32.104.4"]}
    assert docs[1]["related"] == {"hosts": ["alias.unlisted.example", "weixin.qq.com"]}
    assert "related" not in docs[2] and "related" not in docs[3]
    # Still a hit like any other: denied, the rule that blocked it, the client.
    assert docs[0]["event"]["type"] == ["denied"] and docs[0]["rule"]["id"] == cidr.id
    assert docs[0]["source"]["ip"] == "10.0.0.7" and docs[0]["event"]["action"] == "dns-response-block"
