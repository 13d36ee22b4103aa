"""Inputs of discovery, read in bounded memory and filtered by time.

- Event files are listed and opened as ``enforcer report`` and the analyst do (``analyst.files.event_files``,
  ``analyst.lines.open_event_file`` and ``line_blocks``: regular files only, bounded lines); a file they refuse is
  skipped and named in one warning line.
- ``Hit``: the fields discovery needs of one event: time, client, app, rule, category, action, dataset, the name
  asked (``dns.question.name``), the SNI, and the chain (``related.hosts``/``related.ip``).
- ``read_hits(paths, since, needles)``: the hits at or after ``since`` (Unix seconds), at most ``MAX_RECORDS``; with
  ``needles``, only lines containing one of them are parsed.
- ``read_queries(paths, since)``: the query log records ``(ts, client, name)`` at or after ``since``, at most
  ``MAX_RECORDS``; rotated files are read too (``iter_query_log``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..analyst.files import event_files
from ..analyst.lines import EventFileError, line_blocks, open_event_file
from ..dns.querylog import iter_query_log
from ..events import json_docs

log = logging.getLogger("enforcer.discover")
MAX_RECORDS = 1_000_000  # per input kind: bounds memory (a few hundred MB at most) over a week of logs


@dataclass(frozen=True, slots=True)
class Hit:
    ts: float
    client: str
    app: str
    rule: str
    category: str
    action: str
    dataset: str
    name: str
    sni: str
    chain: tuple[str, ...]
    denied: bool


def _get(doc: dict[str, Any], *path: str) -> Any:
    cur: Any = doc
    for key in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    return cur


def _ts(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def hit_from_doc(doc: dict[str, Any]) -> Hit | None:
    ts = _ts(doc.get("@timestamp"))
    app = _get(doc, "rule", "ruleset")
    if ts is None or not isinstance(app, str):
        return None
    related = [*(_get(doc, "related", "hosts") or []), *(_get(doc, "related", "ip") or [])]
    types = _get(doc, "event", "type") or []
    return Hit(
        ts=ts,
        client=str(_get(doc, "source", "ip") or ""),
        app=app,
        rule=str(_get(doc, "rule", "id") or ""),
        category=str(_get(doc, "rule", "category") or ""),
        action=str(_get(doc, "event", "action") or ""),
        dataset=str(_get(doc, "event", "dataset") or ""),
        name=str(_get(doc, "dns", "question", "name") or _get(doc, "url", "domain") or "").lower().rstrip("."),
        sni=str(_get(doc, "tls", "client", "server_name") or "").lower().rstrip("."),
        chain=tuple(str(x) for x in related),
        denied="denied" in types if isinstance(types, list) else types == "denied",
    )


def _docs(path: Path, needles: tuple[bytes, ...]) -> Iterator[dict[str, Any]]:
    """The events of one file whose line contains one of ``needles`` (all without needles): a byte search skips the
    JSON parse of every other line (most of a week of hits, when only discovery events and SNI values are read)."""
    try:
        fh = open_event_file(path)
    except EventFileError as exc:
        log.warning("discover: skipped %s", exc)
        return
    with fh:
        for block in line_blocks(fh):
            if block is None:  # a line over the reader's limit, skipped unread
                continue
            lines = block.splitlines()
            yield from json_docs([x for x in lines if any(n in x for n in needles)] if needles else lines)


def read_hits(paths: Sequence[str | Path], since: float, needles: tuple[bytes, ...] = ()) -> Iterator[Hit]:
    n = 0
    for f in event_files(paths):
        for doc in _docs(f, needles):
            hit = hit_from_doc(doc)
            if hit is None or hit.ts < since:
                continue
            yield hit
            n += 1
            if n >= MAX_RECORDS:
                return


def read_queries(paths: Sequence[str | Path], since: float) -> Iterator[tuple[float, str, str]]:
    n = 0
    for raw in paths:
        for doc in iter_query_log(raw):
            ts = float(doc["ts"])
            if ts < since:
                continue
            yield ts, str(doc.get("client") or ""), str(doc["name"]).lower().rstrip(".")
            n += 1
            if n >= MAX_RECORDS:
                return
