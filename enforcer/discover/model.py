"""A candidate rule and the evidence for it; ``discover`` runs every detector and merges what they found.

- ``Candidate``: a proposed ``host`` or ``domain`` rule for one app, with its category, confidence (high, medium,
  low), the detectors that found it (``signals``), and the evidence: queries counted, distinct clients, first and last
  seen, and short detail lines (the chain that led into the policy, the blocked names it came with, the names seen).
- ``discover(events, query_logs, policy, since, must_pass, now)``: the candidates, most confident first. A name the
  policy already blocks is never proposed, nor one that is (or is a parent of) a must-pass safety name. The same rule
  found by two detectors is one candidate whose confidence rises one step; so is a host under a proposed domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..policy.matcher import Policy

LEVELS = ("low", "medium", "high")


@dataclass
class Candidate:
    kind: str  # host | domain
    name: str
    app: str
    category: str
    confidence: str
    signals: list[str]
    count: int = 0
    clients: set[str] = field(default_factory=set)
    first_seen: float = 0.0
    last_seen: float = 0.0
    detail: list[str] = field(default_factory=list)

    def merge(self, other: Candidate) -> None:
        self.signals += [s for s in other.signals if s not in self.signals]
        self.count += other.count
        self.clients |= other.clients
        self.first_seen = min(self.first_seen, other.first_seen)
        self.last_seen = max(self.last_seen, other.last_seen)
        self.detail += other.detail
        best = max(LEVELS.index(self.confidence), LEVELS.index(other.confidence))
        self.confidence = LEVELS[min(best + 1, len(LEVELS) - 1)]


def _covers_safety(kind: str, name: str, must_pass: Sequence[str]) -> bool:
    return any(m == name or (kind == "domain" and m.endswith("." + name)) for m in must_pass)


def discover(
    events: Sequence[str | Path],
    query_logs: Sequence[str | Path],
    policy: Policy,
    since: float,
    must_pass: Sequence[str] = (),
    window: float = 5.0,
) -> list[Candidate]:
    from .signals import BLOCK_ACTIONS, DISCOVERY_DATASET, app_domains, co_occurrence, resolved_into_policy
    from .sources import read_hits, read_queries

    # Only the hits a detector reads are kept: the blocked queries matter only beside a query log (co-occurrence).
    keep_blocked = bool(query_logs)
    needles = () if keep_blocked else (DISCOVERY_DATASET.encode(), b'server_name"')  # also flat dotted keys
    hits = [
        h
        for h in read_hits(events, since, needles)
        if h.dataset == DISCOVERY_DATASET or h.sni or (keep_blocked and h.action in BLOCK_ACTIONS)
    ]
    queries = list(read_queries(query_logs, since))
    found: dict[tuple[str, str], Candidate] = {}
    for detector in (
        resolved_into_policy(hits, policy),
        co_occurrence(hits, queries, policy, window=window),
        app_domains(hits, queries, policy),
    ):
        for cand in detector:
            if _covers_safety(cand.kind, cand.name, must_pass):
                continue
            key = (cand.kind, cand.name)
            if key in found:
                found[key].merge(cand)
            else:
                found[key] = cand
    # A host under a proposed domain of the same app is the same finding: its evidence joins the domain's.
    domains = [c for c in found.values() if c.kind == "domain"]
    for key, cand in list(found.items()):
        parent = next((d for d in domains if cand.kind == "host" and cand.name.endswith("." + d.name)), None)
        if parent is not None and parent.app == cand.app:
            parent.merge(cand)
            del found[key]
    return sorted(found.values(), key=lambda c: (-LEVELS.index(c.confidence), -len(c.clients), -c.count, c.name))
