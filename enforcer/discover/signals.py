"""The three detectors of discovery. Each takes the inputs (sources.py) and the current policy, returns Candidates.

- ``resolved_into_policy(hits, policy)``: discovery events (``event.dataset`` ``enforcer.discovery``: the resolver
  blocked a forwarded answer because its CNAME chain or addresses led into the policy, while the name asked matched
  no rule). The name asked is proposed as a ``host`` rule of the app whose rule the chain reached. Confidence high
  with two or more clients or three or more queries, else medium.
- ``co_occurrence(hits, queries, policy, window)``: allowed names (query log) that a client asked for within
  ``window`` seconds before or after one of its own blocked queries of an app, asked by at least ``MIN_CLIENTS``
  such clients and rare among the others: at most ``MAX_OTHER_SHARE`` of the clients that asked for it had no blocked
  query of that app at all. A ``host`` rule; medium with no such other client and three or more co-occurring
  clients, else low.
- ``app_domains(hits, queries, policy)``: the apps' own brands (the first label of every registrable domain a block
  rule covers whole: ``kaspersky`` of ``kaspersky.com``) and names seen in allowed queries or as SNI in events whose
  registrable domain carries that brand under another suffix (``kaspersky.co.za``: medium) or starts with it
  (``wechatcdn.com``: low, brands of six letters or more). A ``domain`` rule on the registrable domain.
"""

from __future__ import annotations

import bisect
import functools
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from publicsuffixlist import PublicSuffixList

from ..policy.matcher import Policy
from .model import Candidate
from .sources import Hit

DISCOVERY_DATASET = "enforcer.discovery"
BLOCK_ACTIONS = ("dns-block", "dns-response-block")
MIN_CLIENTS = 2
MAX_OTHER_SHARE = 0.2
MIN_PREFIX_BRAND = 6


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@functools.lru_cache(maxsize=100_000)  # names repeat: a week of queries has far fewer distinct names than lines
def registrable(name: str) -> str | None:
    return _psl().privatesuffix(name) or None


def _blocked(policy: Policy, name: str) -> bool:
    m = policy.match_name(name)
    return m is not None and m.rule.action == "block"


def resolved_into_policy(hits: Iterable[Hit], policy: Policy) -> list[Candidate]:
    found: dict[str, Candidate] = {}
    for h in hits:
        if h.dataset != DISCOVERY_DATASET or not h.name or _blocked(policy, h.name):
            continue
        c = found.get(h.name)
        if c is None:
            via = " -> ".join(x for x in h.chain if x != h.name) or "?"
            c = found[h.name] = Candidate(
                "host", h.name, h.app, h.category or "messaging", "medium", ["resolved-into-policy"],
                first_seen=h.ts, last_seen=h.ts, detail=[f"answer led to {via} ({h.rule})"],
            )  # fmt: skip
        c.count += 1
        if h.client:
            c.clients.add(h.client)
        c.first_seen, c.last_seen = min(c.first_seen, h.ts), max(c.last_seen, h.ts)
    for c in found.values():
        if len(c.clients) >= 2 or c.count >= 3:
            c.confidence = "high"
    return list(found.values())


def co_occurrence(
    hits: Iterable[Hit], queries: Sequence[tuple[float, str, str]], policy: Policy, window: float = 5.0
) -> list[Candidate]:
    blocked: dict[tuple[str, str], list[float]] = defaultdict(list)  # (client, app) -> times of blocked queries
    blocked_names: dict[str, Counter[str]] = defaultdict(Counter)
    categories: dict[str, Counter[str]] = defaultdict(Counter)
    for h in hits:
        if h.action in BLOCK_ACTIONS and h.client:
            blocked[(h.client, h.app)].append(h.ts)
            blocked_names[h.app][h.name] += 1
            categories[h.app][h.category] += 1
    for times in blocked.values():
        times.sort()
    apps = sorted({app for _client, app in blocked})
    app_clients = {app: {c for c, a in blocked if a == app} for app in apps}
    near: dict[tuple[str, str], set[str]] = defaultdict(set)  # (name, app) -> clients
    counts: Counter[tuple[str, str]] = Counter()
    seen: dict[tuple[str, str], list[float]] = {}
    askers: dict[str, set[str]] = defaultdict(set)  # name -> every client that asked for it
    for ts, client, name in queries:
        askers[name].add(client)
        for app in apps:
            times = blocked.get((client, app), [])
            if not times:
                continue
            i = bisect.bisect_left(times, ts - window)
            if i < len(times) and times[i] <= ts + window:
                key = (name, app)
                near[key].add(client)
                counts[key] += 1
                span = seen.setdefault(key, [ts, ts])
                span[0], span[1] = min(span[0], ts), max(span[1], ts)
    out = []
    for (name, app), clients in near.items():
        if len(clients) < MIN_CLIENTS or _blocked(policy, name):
            continue
        others = askers[name] - app_clients[app]
        share = len(others) / len(askers[name])
        if share > MAX_OTHER_SHARE:
            continue
        top = ", ".join(n for n, _ in blocked_names[app].most_common(3))
        confidence = "medium" if not others and len(clients) >= 3 else "low"
        detail = (
            f"asked within {window:g} s of blocked {app} queries ({top}) by {len(clients)} client(s); "
            f"{len(others)} other client(s) asked for it"
        )
        category = categories[app].most_common(1)[0][0] or "messaging"
        first, last = seen[(name, app)]
        cand = Candidate("host", name, app, category, confidence, ["co-occurrence"], counts[(name, app)])
        cand.clients, cand.first_seen, cand.last_seen, cand.detail = set(clients), first, last, [detail]
        out.append(cand)
    return out


def _brands(policy: Policy) -> dict[str, tuple[str, str, str]]:
    """brand label -> (app, category, registrable domain it comes from)."""
    brands: dict[str, tuple[str, str, str]] = {}
    for name, rule, exact in policy.name_entries():
        if exact or rule.action != "block":
            continue
        reg = registrable(name)
        if reg == name:
            brands.setdefault(name.split(".", 1)[0], (rule.app, rule.category or "messaging", name))
    return brands


def _brand_of(
    name: str, policy: Policy, brands: dict[str, tuple[str, str, str]], long_brands: list[str]
) -> tuple[str, str, str] | None:
    reg = registrable(name)
    if reg is None or _blocked(policy, name):
        return None
    label = reg.split(".", 1)[0]
    if label in brands:
        return reg, label, "medium"
    brand = next((b for b in long_brands if label.startswith(b)), "")
    return (reg, brand, "low") if brand else None


def app_domains(hits: Iterable[Hit], queries: Sequence[tuple[float, str, str]], policy: Policy) -> list[Candidate]:
    brands = _brands(policy)
    long_brands = sorted((b for b in brands if len(b) >= MIN_PREFIX_BRAND), key=len, reverse=True)
    seen: list[tuple[float, str, str, str]] = [(ts, client, name, "query") for ts, client, name in queries]
    seen += [(h.ts, h.client, h.sni, "SNI") for h in hits if h.sni]
    found: dict[str, Candidate] = {}
    verdicts: dict[str, tuple[str, str, str] | None] = {}  # name -> (registrable, brand, confidence), once per name
    for ts, client, name, how in seen:
        if name not in verdicts:
            verdicts[name] = _brand_of(name, policy, brands, long_brands) if len(verdicts) < 1_000_000 else None
        verdict = verdicts[name]
        if verdict is None:
            continue
        reg, brand, confidence = verdict
        app, category, origin = brands[brand]
        c = found.get(reg)
        if c is None:
            c = found[reg] = Candidate(
                "domain", reg, app, category, confidence, ["app-domain"], first_seen=ts, last_seen=ts,
                detail=[f"brand '{brand}' of {origin}, seen as {how}"],
            )  # fmt: skip
        c.count += 1
        if client:
            c.clients.add(client)
        c.first_seen, c.last_seen = min(c.first_seen, ts), max(c.last_seen, ts)
        example = f"{how} {name}"
        if len(c.detail) < 4 and example not in c.detail:
            c.detail.append(example)
    return list(found.values())
