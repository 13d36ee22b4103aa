"""The discovery detectors on hand-made inputs (enforcer/discover/signals.py, model.py): each rule of co-occurrence
(the window, two clients, rarity among other clients), the brand rule, merging, and what is never proposed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from enforcer.discover.model import discover
from enforcer.discover.signals import co_occurrence
from enforcer.discover.sources import Hit
from enforcer.dns.querylog import QueryLog
from enforcer.events import EventWriter, HitEvent
from tests.policy.policy_helpers import shipped

T0 = 1_700_000_000.0  # 2023-11-14: before the query log's own records (written now)


def blocked(client: str, ts: float, app: str = "wechat", name: str = "weixin.qq.com") -> Hit:
    return Hit(ts, client, app, f"{app}:domain:{name}", "messaging", "dns-block", "enforcer.dns", name, "", (), True)


def test_co_occurrence_needs_the_window_two_clients_and_rarity() -> None:
    policy = shipped()
    hits = [blocked(f"10.0.0.{i}", T0 + 100 * i) for i in range(1, 5)]  # four WeChat clients
    queries = []
    for i in range(1, 5):
        t = T0 + 100 * i
        queries += [
            (t + 2, f"10.0.0.{i}", "app-only.example"),  # within 5 s, only these clients
            (t - 3, f"10.0.0.{i}", "shared.example"),  # within 5 s, but also asked by outsiders
            (t + 30, f"10.0.0.{i}", "later.example"),
        ]  # outside the window
    queries += [(T0 + 1000, f"10.9.0.{i}", "shared.example") for i in range(3)]  # 3 others of 7 askers: 43 %
    queries += [(T0 + 102, "10.0.0.1", "one-client.example")]  # a single co-occurring client
    queries += [(T0 + 101, "10.0.0.1", "weixin.qq.com")]  # already blocked: never proposed
    found = {c.name: c for c in co_occurrence(hits, queries, policy, window=5)}
    assert set(found) == {"app-only.example"}
    c = found["app-only.example"]
    assert c.app == "wechat" and c.kind == "host" and c.confidence == "medium" and len(c.clients) == 4
    assert c.count == 4 and c.first_seen == T0 + 102 and c.last_seen == T0 + 402
    # One outsider among five askers (20 %) is still rare; the confidence drops to low.
    queries.append((T0 + 2000, "10.9.9.9", "app-only.example"))
    assert [x.confidence for x in co_occurrence(hits, queries, policy) if x.name == "app-only.example"] == ["low"]
    queries.append((T0 + 2001, "10.9.9.8", "app-only.example"))  # two of six: no longer rare
    assert not [x for x in co_occurrence(hits, queries, policy) if x.name == "app-only.example"]


def test_discover_merges_detectors_and_keeps_safety_names_out(tmp_path: Path) -> None:
    events = tmp_path / "ev.jsonl"
    writer = EventWriter(events)

    def ev(i: int, name: str, client: str, **kw: object) -> HitEvent:
        fields: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(T0 + i, UTC), "action": "dns-response-block", "component": "dns",
            "rule_id": "wechat:cidr:101.32.104.4/32", "app": "wechat", "category": "messaging", "reference": "x",
            "version": "v", "source_ip": client, "dns_question_name": name, "dataset": "enforcer.discovery",
            "related_ip": ["101.32.104.4"],
        }  # fmt: skip
        return HitEvent(**{**fields, **kw})  # type: ignore[arg-type]

    for e in [ev(1, "img.wechatcdn.com", "10.0.0.1"), ev(2, "qq.com", "10.0.0.2"), ev(3, "gtimg.com", "10.0.0.3")]:
        writer.emit(e)
    writer.close()
    qlog = QueryLog(tmp_path / "q.jsonl", 1.0)
    qlog.record("10.0.0.4", "cdn2.wechatcdn.com", 1)
    qlog.close()
    cands = discover([events], [tmp_path / "q.jsonl"], shipped(), T0 - 10, ["qq.com", "gtimg.com"])
    assert [(c.kind, c.name) for c in cands] == [("domain", "wechatcdn.com")]
    c = cands[0]
    # app-domain (brand "wechat", low) + the discovery event under it (medium): merged, one step up from medium.
    assert sorted(c.signals) == ["app-domain", "resolved-into-policy"] and c.confidence == "high"
    assert c.clients == {"10.0.0.1", "10.0.0.4"}
