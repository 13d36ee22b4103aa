"""Candidates -> YAML snippets ready to paste under ``block:`` of a blocklist, and plain data for JSON and the web.

Each rule carries ``source:`` (the evidence in one line: the detectors, queries, clients, first seen, the details)
and a ``# confidence:`` comment; the snippet for each app starts with a comment naming the file it belongs in. The
text is meant for review: ``enforcer discover`` never edits a blocklist.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .model import Candidate


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def source_text(c: Candidate) -> str:
    return (
        f"enforcer discover: {'+'.join(c.signals)}; {c.count} queries from {len(c.clients)} client(s), first seen "
        f"{_when(c.first_seen)}, last seen {_when(c.last_seen)}; " + "; ".join(c.detail[:4])
    )


def as_yaml(cands: Sequence[Candidate]) -> str:
    out: list[str] = []
    for app in sorted({c.app for c in cands}):
        out.append(f"# {app}: review, then paste under 'block:' in the blocklist of app {app}")
        for c in (c for c in cands if c.app == app):
            out.append(f"  - {c.kind}: {c.name}")
            out.append(f"    category: {c.category}")
            out.append(f"    source: {json.dumps(source_text(c), ensure_ascii=False)}")
            out.append(f"    # confidence: {c.confidence}")
        out.append("")
    return "\n".join(out)


def as_dict(c: Candidate) -> dict[str, Any]:
    return {
        "rule": {c.kind: c.name, "category": c.category, "source": source_text(c)},
        "app": c.app,
        "kind": c.kind,
        "name": c.name,
        "confidence": c.confidence,
        "signals": list(c.signals),
        "count": c.count,
        "clients": len(c.clients),
        "first_seen": _when(c.first_seen),
        "last_seen": _when(c.last_seen),
        "detail": list(c.detail),
    }
